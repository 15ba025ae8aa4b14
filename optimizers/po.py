"""`po:<name>`: any optimizer of pytorch_optimizer (pinned 4.1.0) by its registry name, e.g. `po:lion`.

The spec is built on first use from the class's constructor: every keyword with a plain default
(number, bool, string, tuple of numbers, or None where the annotation says which scalar) becomes
an `opt.<field>` with the library's own default, so `--set opt.betas=0.95,0.98` works and nothing
here restates a default. Constructors that take the model instead of parameters (lomo, adalomo,
adammini) get the model. Required arguments (ranger21's num_iterations, bsam's num_data) become
required fields. Wrappers around another optimizer (magma) are refused.

A few optimizers need more than `loss.backward(); step()`: AliG, BSAM and LBFGS need a closure;
AdaHessian/SophiaH need Hessian-vector products (`backward(create_graph=True)`), which no task
does; the Muon family needs `use_muon` param groups; LOMO fuses its update into backward. The
closure ones say so in `needs_closure`; the others are refused with a one-line ConfigError. On a 5-step smoke test of a tiny LLaMA, 101 of
the 128 names build and train with defaults alone.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from functools import lru_cache
from importlib.metadata import version
from typing import Any

import torch

from spam_bench.suite.config import param
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import Family, OptimizerSpec

SKIP = {"self", "params", "model", "lr", "maximize", "foreach"}
SCALARS = (bool, int, float, str)
NEEDS_CLOSURE = {"alig", "bsam", "lbfgs"}
# Declared default lrs relative to the task recipe's (OptimizerSpec.lr_scale), from each paper's own
# advice. Lion: "a suitable learning rate for Lion is typically 3-10x smaller than that for AdamW"
# (Chen et al. 2023, arXiv 2302.06675, section 5); we take the 3x end, the smaller move away from a
# recipe lr: results/RESULTS.md's LR study finds the tiny llm recipe's lr at the low end of AdamW's good range.
LR_SCALES = {"lion": 0.3}
_MUON = "needs param groups flagged use_muon (Muon on matrices, AdamW elsewhere): write a role-aware plug-in"
# name -> why a task's backward() + step() loop cannot train it
NOT_TRAINABLE = {
    **{n: _MUON for n in ("muon", "muonclip", "adamuon", "normuon", "distributedmuon", "adago")},
    "adammini": "needs the model's dims and head counts: use the `adam_mini` optimizer",
    "lomo": "fuses the update into backward (its own training loop)",
    "adalomo": "fuses the update into backward (its own training loop)",
    "adahessian": "needs Hessian-vector products: backward(create_graph=True), which no task does",
    "sophiah": "needs Hessian-vector products: backward(create_graph=True), which no task does",
}


def members() -> list[str]:
    try:
        import pytorch_optimizer
    except ImportError:
        raise ConfigError(
            "optimizer", "po:<name>", "pytorch_optimizer installed (pip install 'spam-bench[zoo]')"
        ) from None
    return sorted(pytorch_optimizer.get_supported_optimizers())


def _field(p: inspect.Parameter) -> tuple[str, Any, Any] | None:
    default = p.default
    if default is inspect.Parameter.empty:
        tp = p.annotation if p.annotation in SCALARS else float
        return p.name, tp, param(help="required (no default in pytorch_optimizer)")
    if isinstance(default, float) and not math.isfinite(default):
        return None  # e.g. growth_rate=inf: the config layer takes finite floats only
    if isinstance(default, SCALARS):
        return p.name, type(default), param(default, "pytorch_optimizer default")
    if isinstance(default, tuple) and default and all(type(v) in (int, float) for v in default):
        elem = float if any(type(v) is float for v in default) else int
        return p.name, tuple[elem, ...], param(default, "pytorch_optimizer default (comma-separated)")
    if default is None:
        ann = p.annotation
        args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else ()
        scalars = [a for a in args if a in SCALARS]
        if len(scalars) == 1 and type(None) in args:
            return p.name, scalars[0] | None, param(None, "pytorch_optimizer default")
    return None  # a callable, enum, dtype...: keep the library's default, not settable here


def build(name: str) -> OptimizerSpec:
    import pytorch_optimizer

    if name not in members():
        raise ConfigError("optimizer", f"po:{name}", members())
    if name in NOT_TRAINABLE:
        raise ConfigError(
            "optimizer",
            f"po:{name}",
            f"a pytorch_optimizer optimizer that trains with backward() + step() ({name} {NOT_TRAINABLE[name]})",
        )
    cls = pytorch_optimizer.load_optimizer(name)
    sig = inspect.signature(cls.__init__)
    first = next(iter(list(sig.parameters)[1:]), "params")
    if first == "optimizer":
        raise ConfigError("optimizer", f"po:{name}", "a pytorch_optimizer optimizer, not a wrapper of one")
    fields = [
        f
        for p in sig.parameters.values()
        if p.name not in SKIP and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and (f := _field(p))
    ]
    fields.sort(key=lambda f: f[2].default is not dataclasses.MISSING)  # required fields first
    config_cls = dataclasses.make_dataclass(f"PO_{cls.__name__}Config", fields)
    config_cls.__doc__ = f"Keyword arguments of pytorch_optimizer.{cls.__name__} with its defaults."

    def factory(model: torch.nn.Module, model_info: ModelInfo, *, lr: float, **kw: Any) -> torch.optim.Optimizer:
        if first == "model":
            return cls(model, lr=lr, **kw)
        return cls([p for p in model.parameters() if p.requires_grad], lr=lr, **kw)

    return OptimizerSpec(
        name=f"po:{name}",
        factory=factory,
        config_cls=config_cls,
        description=f"pytorch_optimizer {cls.__name__} with its own defaults",
        reference=f"pytorch_optimizer {version('pytorch_optimizer')} {cls.__module__}.{cls.__name__}",
        needs_closure=name in NEEDS_CLOSURE,
        libraries=("pytorch-optimizer",),
        lr_scale=LR_SCALES.get(name, 1.0),
    )


FAMILY = Family(
    prefix="po",
    build=lru_cache(maxsize=None)(build),
    members=members,
    description="any pytorch_optimizer optimizer by registry name, e.g. po:lion, po:adopt",
)
