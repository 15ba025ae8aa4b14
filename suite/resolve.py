"""Turn command-line choices into a validated `ResolvedRun`, before anything touches the disk.

`--set key=value` goes to the task's config when the task has that field, to the optimizer's
hyperparameters when the key is `opt.<name>` (or only the optimizer has it). Every value is typed
and bounds-checked here, so a bad one fails with one line and no run folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from spam_bench.suite.clipping import ClipRule
from spam_bench.suite.config import build_config, coerce, shown_field, to_dict
from spam_bench.suite.contract import Task
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.identity import fingerprint
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OPTIMIZERS, TASKS, OptimizerSpec
from spam_bench.suite.spec import RunSpec

# fullmatch with ASCII digits: `$` would accept "cpu\n" and `\d` other scripts' digits (a second name
# for the same device, hence a second run id for the same run).
_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,4})?", re.ASCII)
# numpy (np.random.seed, RandomState) takes 32-bit seeds; a larger one fails only once the run starts.
SEED_LIMIT = 2**32


@dataclass
class ResolvedRun:
    """A RunSpec with its task and optimizer looked up and their configs built and validated."""

    spec: RunSpec
    task: Task
    config: Any
    optimizer: OptimizerSpec
    opt_config: Any
    # The factor applied to the task recipe's lr: the optimizer's declared lr_scale when the run
    # kept the recipe's lr, 1 when the lr was set (an lr the user sets is never scaled).
    lr_scale: float = 1.0

    @property
    def clip(self) -> ClipRule:
        """The one clip rule (suite/clipping.py): the task recipe's and the optimizer's clip both apply."""
        return ClipRule(task=getattr(self.config, "grad_clip", None), optimizer=self.optimizer.grad_clip)

    @property
    def code(self) -> dict[str, Any]:
        """The fingerprint of the code that makes this run's numbers (suite/identity.py)."""
        return code_of(self.spec.task, self.spec.optimizer)

    def make_optimizer(self, model: torch.nn.Module, model_info: ModelInfo, *, lr: float) -> torch.optim.Optimizer:
        return self.optimizer.instantiate(model, model_info, lr, self.opt_config)

    def record(self) -> dict[str, Any]:
        """What spec.json holds: identity, plus every effective value (defaults included)."""
        return {
            "run_id": self.spec.run_id,
            "spec": self.spec.canonical(),
            "task_config": to_dict(self.config),
            "optimizer_config": to_dict(self.opt_config),
            **self.clip.record(),
            "lr_scale": self.lr_scale,
            "code": self.code,
            "primary_metric": self.task.primary_metric,
            "direction": self.task.direction,
        }


def _split_sets(
    sets: Mapping[str, str], task_fields: set[str], opt_fields: set[str], opt_name: str
) -> tuple[dict, dict]:
    """(task values, optimizer values). `beta2=...` and `opt.beta2=...` name one field: giving both is
    refused (as a repeated --set key is), not settled by the order of a dict."""
    task_vals, opt_vals = {}, {}
    for key, value in sets.items():
        if key.startswith("opt."):
            if key[4:] not in opt_fields:
                raise ConfigError(
                    shown_field(key), value, f"optimizer {opt_name} keys " + ", ".join(sorted(opt_fields))
                )
            if key[4:] in opt_vals:
                raise ConfigError(key, value, f"one value per field (opt.{key[4:]} is also given as {key[4:]})")
            opt_vals[key[4:]] = value
        elif key in task_fields:
            task_vals[key] = value
        elif key in opt_fields:
            if key in opt_vals:
                raise ConfigError(key, value, f"one value per field ({key} is also given as opt.{key})")
            opt_vals[key] = value
        else:
            raise ConfigError(
                shown_field(key),
                value,
                "task keys "
                + ", ".join(sorted(task_fields))
                + f"; optimizer keys opt.<{'|'.join(sorted(opt_fields))}>",
            )
    return task_vals, opt_vals


def code_of(task: str, optimizer: str) -> dict[str, Any]:
    """The current code fingerprint of a registered (task, optimizer) pair; it does not depend on the
    seed or the settings, so reports compute it once per pair."""
    task_obj, opt = TASKS.get(task), OPTIMIZERS.get(optimizer)
    return fingerprint(
        task_module=TASKS.module_of(task),
        optimizer_module=opt.module,
        libraries=tuple(task_obj.libraries) + tuple(opt.libraries),
    )


def _device_syntax_ok(device: Any) -> bool:
    return isinstance(device, str) and _DEVICE.fullmatch(device) is not None


def check_device(device: str) -> None:
    """A device this machine has: refused in one line before any run folder exists."""
    if not _device_syntax_ok(device):
        raise ConfigError("device", device, "cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ConfigError(
                "device",
                device,
                "cpu" + (f" or cuda:0..cuda:{count - 1}" if count else " (no CUDA device is visible here)"),
            )


def check_capabilities(task: Task, config: Any, opt_name: str, opt: OptimizerSpec, device: str) -> None:
    """Refuse a task/optimizer pair that cannot work, from what each declares (before the disk)."""
    offers = task.offers(config)
    if opt.needs_closure and not offers.closure:
        raise ConfigError(
            "opt", opt_name, f"an optimizer that steps without a closure (task {task.name} does not pass one to step())"
        )
    if device.split(":")[0] not in opt.devices:
        raise ConfigError("device", device, f"{', '.join(opt.devices)} (what optimizer {opt_name} supports)")
    missing = [d for d in offers.dtypes if d not in opt.dtypes]
    if missing:
        raise ConfigError(
            "opt", opt_name, f"an optimizer supporting {', '.join(missing)} (it supports {', '.join(opt.dtypes)})"
        )


def _declared_lr(config: Any, opt: OptimizerSpec, *, lr_set: bool) -> tuple[Any, float]:
    """The task config with the optimizer's declared default lr, and the factor applied.

    The scale moves the task config's `lr` itself rather than the lr handed to the factory, so every
    consumer of the lr agrees: the factory, the task's schedule (SB3 rewrites each group's lr from its
    own schedule before every update), the logged lr and the spec.json the leaderboard reads."""
    lr = getattr(config, "lr", None)
    if lr_set or opt.lr_scale == 1.0 or isinstance(lr, bool) or not isinstance(lr, int | float):
        return config, 1.0  # a task without a numeric `lr` field has no recipe lr to scale
    return dataclasses.replace(config, lr=float(lr) * opt.lr_scale), float(opt.lr_scale)


def _typed_overrides(values: Mapping[str, Any], built: Any) -> dict[str, Any]:
    return {k: getattr(built, k) for k in values}


def resolve(
    *,
    task: str,
    optimizer: str,
    seed: Any = 0,
    scale: str = "tiny",
    sets: Mapping[str, str] | None = None,
    device: str = "cpu",
    device_here: bool = True,
) -> ResolvedRun:
    """`device_here=False` skips the check that this machine has the device (a sweep's driver may
    have no GPU while its cluster does; each trial resolves again where it runs)."""
    task_obj = TASKS.get(task)
    opt_spec = OPTIMIZERS.get(optimizer)
    seed = coerce("seed", seed, int)
    if seed < 0:
        raise ConfigError("seed", seed, "int >= 0")
    if seed >= SEED_LIMIT:
        raise ConfigError("seed", seed, f"int < 2**32 = {SEED_LIMIT} (numpy seeds are 32-bit)")
    if scale not in task_obj.scales():
        raise ConfigError("scale", scale, task_obj.scales())
    if device_here:
        check_device(device)
    elif not _device_syntax_ok(device):
        raise ConfigError("device", device, "cpu, cuda or cuda:N")
    task_fields = {f.name for f in dataclasses.fields(task_obj.config_cls)}
    opt_fields = {f.name for f in dataclasses.fields(opt_spec.config_cls)}
    task_sets, opt_sets = _split_sets(sets or {}, task_fields, opt_fields, optimizer)

    base = task_obj.scale_values(scale)
    config = build_config(task_obj.config_cls, {**base, **task_sets})
    config, lr_scale = _declared_lr(config, opt_spec, lr_set="lr" in task_sets)
    opt_config: Any = build_config(opt_spec.config_cls, opt_sets, prefix="opt.")
    check_capabilities(task_obj, config, optimizer, opt_spec, device)
    spec = RunSpec(
        task=task,
        optimizer=optimizer,
        seed=seed,
        scale=scale,
        overrides=_typed_overrides(task_sets, config),
        opt_hparams=_typed_overrides(opt_sets, opt_config),
        device=device,
    )
    return ResolvedRun(spec, task_obj, config, opt_spec, opt_config, lr_scale)
