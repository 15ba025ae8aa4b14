"""Test helpers for optimizer plug-in authors: the conformance kit, importable from one stable place.

Before registering an optimizer under the `spam_bench.optimizers` entry point, check that it does
what the suite's tasks rely on (loss falls in fp32 and bf16, bit-identical state_dict resume,
closures, parameters without gradients, LR schedulers, add_param_group, honest state bytes). In a
pytest file::

    import torch
    from spam_bench.testing import check_optimizer

    class MyOpt(torch.optim.Optimizer):
        ...

    def test_my_optimizer_conforms():
        check_optimizer(MyOpt).raise_for_failures()

The target may also be a factory `(model, model_info, *, lr, **hparams)`, an `OptimizerSpec` or a
registered name; `check_optimizer(MyOpt, hparams={"momentum": 0.9})` passes keyword arguments. From
the shell: `spambench check-optimizer my_pkg.my_module:MyOpt`.
"""

from __future__ import annotations

from spam_bench.runners.conformance import ConformanceReport, check_optimizer

__all__ = ["ConformanceReport", "check_optimizer"]
