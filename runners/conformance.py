"""The optimizer conformance kit: what every optimizer must do to run in spam-bench, one named check each.

A plug-in author runs it on their optimizer before registering it, from pytest
(`spam_bench.testing.check_optimizer(MyOpt).raise_for_failures()`) or the command line
(`spambench check-optimizer my_pkg.opt:SPEC`). The target is a registered name (`po:<name>` too),
an `OptimizerSpec`, a factory `(model, model_info, *, lr, **hparams) -> Optimizer`, or a
`torch.optim.Optimizer` subclass.

The model is a tiny LLaMA (`spam_bench.tasks.llm.model`) whose parameters carry real roles, so
role-driven optimizers (GaLore, Adam-mini, sparse SPAM) are exercised the way the tasks use them;
one check also uses an attention-free MLP with roles from `roles_by_rank`, as the RL/TSF tasks do.

Every check reports pass, fail or skip; a check that does not apply (a role check on an optimizer
that is not role-driven, a dtype the spec does not declare, a feature the spec lists in
`unsupported`) is a skip with its reason, never a pass. `OptimizerSpec.unsupported` keys the kit
honours are the check names below and these feature names: `state_dict`, `closure`,
`params_without_grad`, `lr_scheduler`, `add_param_group`, `state_bytes`, `no_attention`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import functools
import importlib
import io
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from spam_bench.suite.config import build_config, parse_assignments
from spam_bench.suite.errors import ConfigError, NotApplicable
from spam_bench.suite.model_info import MATRIX_ROLES, ModelInfo, roles_by_rank
from spam_bench.suite.registry import OPTIMIZERS, OptimizerSpec
from spam_bench.suite.telemetry import optimizer_state_bytes
from spam_bench.tasks.llm.model import Llama, LlamaShape

Status = Literal["pass", "fail", "skip"]
Factory = Callable[..., torch.optim.Optimizer]

SHAPE = LlamaShape(vocab_size=32, hidden_size=16, intermediate_size=24, n_heads=2, n_layers=1, max_seq_len=8)
LR = 3e-3
# Settings that make the short runs cross the built-in optimizers' periodic events (GaLore's projector
# refresh, SPAM's momentum reset and mask resample), where state_dict bugs hide, and leave a real
# low-rank subspace / sparse density at hidden size 16. Only fields the spec's config has are used;
# `hparams` given to `check_optimizer` override them.
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "galore": {"rank": 4, "update_proj_gap": 3},
    "spam_sparse": {"rank": 4},
    "spam": {"reset_interval": 5, "warmup_steps": 2, "clip_delay": 2},
    "stable_spam": {"reset_interval": 5},
}
BATCH = torch.randint(0, SHAPE.vocab_size, (4, SHAPE.max_seq_len + 1), generator=torch.Generator().manual_seed(1))
INVALID_TARGET = (
    "a registered name or module:attribute naming an OptimizerSpec, a factory or a torch.optim.Optimizer subclass"
)


# ---- the report ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome; `message` is one line (what was measured, what failed, or why skipped)."""

    name: str
    status: Status
    message: str
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    """The outcome of every check on one optimizer, in the order they ran."""

    optimizer: str
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No check failed (skips are not failures: each carries its reason)."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def table(self) -> str:
        """A plain-text table, one row per check, under a one-line summary."""
        counts = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}
        head = (
            f"conformance of {self.optimizer}: {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['skip']} skipped in {self.seconds:.1f} s"
        )
        width = max([len("check"), *(len(r.name) for r in self.results)])
        rows = [f"{'check':<{width}}  status  message"]
        rows += [f"{r.name:<{width}}  {r.status:<6}  {r.message}" for r in self.results]
        return "\n".join([head, *rows])

    def raise_for_failures(self) -> None:
        """Raise AssertionError listing each failed check with its message (for use inside a test)."""
        if self.failures:
            lines = [f"{self.optimizer}: {len(self.failures)} conformance check(s) failed:"]
            lines += [f"  {r.name}: {r.message}" for r in self.failures]
            raise AssertionError("\n".join(lines))


class CheckSkipped(Exception):
    """Raised by a check that does not apply to the optimizer; the message is the reason."""


class CheckFailed(AssertionError):
    """Raised by a check whose behaviour is wrong; the message says what differs."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ---- what is checked -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """The optimizer under test: how to build it and what its spec declares (defaults when no spec)."""

    name: str
    factory: Factory
    hparams: Mapping[str, Any]
    grad_clip: float | None = None
    needs_roles: bool = False
    needs_closure: bool = False
    unsupported: Mapping[str, str] = field(default_factory=dict)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    spec_name: str | None = None  # the spec's own name, which the reference role partitions are keyed by

    def build(self, model: torch.nn.Module, info: ModelInfo | None = None, lr: float = LR) -> torch.optim.Optimizer:
        info = info if info is not None else model.model_info()  # type: ignore[operator]
        return self.factory(model, info, lr=lr, **copy.deepcopy(dict(self.hparams)))

    def step(self, opt: torch.optim.Optimizer, closure: Callable[[], Any]) -> Any:
        """step() the way a task does: with a closure only when the spec says it needs one."""
        return opt.step(closure) if self.needs_closure else opt.step()


def _spec_hparams(spec: OptimizerSpec, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The tiny settings under the caller's hparams, validated by the spec's config class (ConfigError)."""
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    values = {k: v for k, v in TINY_SETTINGS.get(spec.name, {}).items() if k in fields}
    config: Any = build_config(spec.config_cls, {**values, **hparams}, prefix="opt.")
    return dataclasses.asdict(config)


def _class_factory(cls: type[torch.optim.Optimizer]) -> Factory:
    make: Factory = cls  # a subclass takes lr and its own keywords; the base class declares neither

    def factory(model: torch.nn.Module, model_info: ModelInfo, *, lr: float, **hparams: Any) -> torch.optim.Optimizer:
        return make([p for p in model.parameters() if p.requires_grad], lr=lr, **hparams)

    factory.__qualname__ = f"{cls.__qualname__}.<factory>"
    return factory


def subject_of(target: Any, *, name: str | None = None, hparams: Mapping[str, Any] | None = None) -> Subject:
    """Resolve a `check_optimizer` target; `opt.` prefixes on hparams keys are dropped."""
    hp = {k.removeprefix("opt."): v for k, v in (hparams or {}).items()}
    if isinstance(target, str):
        target = OPTIMIZERS.get(target)  # ConfigError naming the allowed values
    if isinstance(target, OptimizerSpec):
        return Subject(
            name=name or target.name,
            factory=target.factory,
            hparams=_spec_hparams(target, hp),
            grad_clip=target.grad_clip,
            needs_roles=target.needs_roles,
            needs_closure=target.needs_closure,
            unsupported=dict(target.unsupported),
            dtypes=tuple(target.dtypes),
            spec_name=target.name,
        )
    if isinstance(target, type) and issubclass(target, torch.optim.Optimizer):
        return Subject(name=name or target.__qualname__, factory=_class_factory(target), hparams=hp)
    if callable(target) and not isinstance(target, type):
        return Subject(name=name or str(getattr(target, "__qualname__", repr(target))), factory=target, hparams=hp)
    raise TypeError(f"check_optimizer: target {target!r} is not {INVALID_TARGET}")


# ---- the toy problems ------------------------------------------------------------------------------------


def tiny_llama(dtype: torch.dtype = torch.float32) -> Llama:
    """The same tiny LLaMA every time (seeded), so an original and a resumed run start equal."""
    torch.manual_seed(0)
    return Llama(SHAPE).to(dtype)


def loss_of(model: Llama) -> torch.Tensor:
    return model.loss(BATCH[:, :-1], BATCH[:, 1:])


def train(
    model: Llama,
    opt: torch.optim.Optimizer,
    steps: int,
    subject: Subject,
    before_step: Callable[[], None] | None = None,
) -> list[float]:
    """The task loop: zero_grad, backward, the spec's clip, step; returns the loss before each step."""
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward()
        losses.append(loss.item())
        if subject.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), subject.grad_clip)
        if before_step is not None:
            before_step()
        subject.step(opt, lambda: loss_of(model))
    return losses


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def names_in_group_order(opt: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The model's name for each parameter, in param_groups order (how state_dict numbers them)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [
        by_id.get(id(p), f"<extra param {i}>") for i, p in enumerate(p for g in opt.param_groups for p in g["params"])
    ]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError("dtypes", name, "floating torch dtype names, e.g. float32, bfloat16")
    return dtype


def _require_dtype(subject: Subject, dtype: str) -> None:
    if dtype not in subject.dtypes:
        raise CheckSkipped(f"{subject.name} declares dtypes {', '.join(subject.dtypes)} only")


# ---- the checks ------------------------------------------------------------------------------------------


def loss_falls_on_a_toy_problem(subject: Subject, dtype: str) -> str:
    """12 steps must lower the loss clearly, and leave the parameters in their dtype."""
    _require_dtype(subject, dtype)
    model = tiny_llama(_dtype(dtype))
    opt = subject.build(model)
    losses = train(model, opt, 12, subject)
    final = loss_of(model).item()
    require(final < losses[0] - 0.05, f"loss {losses[0]:.4f} -> {final:.4f} in 12 steps (needs to fall by > 0.05)")
    wrong = [n for n, p in model.named_parameters() if p.dtype != _dtype(dtype)]
    require(not wrong, f"parameters changed dtype from {dtype}: {', '.join(wrong[:3])}")
    return f"loss {losses[0]:.3f} -> {final:.3f} in 12 steps"


def _value_differences(a: Any, b: Any, depth: int = 0) -> str | None:
    """How a state value changed across the round trip (None: it did not), for the failure message."""
    if depth > 4:
        return None
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"type {type(a).__name__} -> {type(b).__name__}"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} -> {b.dtype}".replace("torch.", "")
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} -> {tuple(b.shape)}"
        same = torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
        return None if same else "values changed"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"keys {sorted(map(repr, a))} -> {sorted(map(repr, b))}"
        return next((f"[{k!r}] {d}" for k in a if (d := _value_differences(a[k], b[k], depth + 1))), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"length {len(a)} -> {len(b)}"
        return next(
            (f"[{i}] {d}" for i, (x, y) in enumerate(zip(a, b)) if (d := _value_differences(x, y, depth + 1))), None
        )
    if type(a) is not type(b):
        return f"type {type(a).__name__} -> {type(b).__name__}"
    if hasattr(a, "__dict__") and not callable(a):
        return _value_differences(vars(a), vars(b), depth + 1)
    try:
        return None if a == b else f"{a!r} -> {b!r}"
    except Exception:
        return None


def state_differences(before: torch.optim.Optimizer, after: torch.optim.Optimizer, names: list[str]) -> list[str]:
    """What a freshly loaded optimizer holds differently from the one that was saved, summarised per
    (state key, kind of difference) with a count and the first parameter, so one bug is one line."""
    found: dict[str, list[str]] = {}
    ours = [p for g in before.param_groups for p in g["params"]]
    theirs = [p for g in after.param_groups for p in g["params"]]
    if len(ours) != len(theirs):
        return [f"{len(ours)} parameters saved, {len(theirs)} after load"]
    for pname, pa, pb in zip(names, ours, theirs):
        sa, sb = before.state.get(pa, {}), after.state.get(pb, {})
        for key in sa:
            if key not in sb:
                found.setdefault(f"state key {key!r} missing after the round trip", []).append(pname)
            elif (diff := _value_differences(sa[key], sb[key])) is not None:
                found.setdefault(f"state[{key!r}]: {diff}", []).append(pname)
        for key in sb:
            if key not in sa:
                found.setdefault(f"state key {key!r} appeared after the round trip", []).append(pname)
    for i, (ga, gb) in enumerate(zip(before.param_groups, after.param_groups)):
        for key in sorted(set(ga) | set(gb), key=str):
            if key != "params" and (diff := _value_differences(ga.get(key), gb.get(key))) is not None:
                found.setdefault(f"param_groups[{i}][{key!r}]: {diff}", []).append(f"group {i}")
    return [
        f"{what} ({len(where)}/{len(names)} params, first {where[0]})" if not where[0].startswith("group ") else what
        for what, where in found.items()
    ]


def _parameter_differences(expected: list[torch.Tensor], model: torch.nn.Module) -> str | None:
    names = [n for n, _ in model.named_parameters()]
    differ = [(n, a, b) for n, a, b in zip(names, expected, model.parameters()) if not torch.equal(a, b)]
    if not differ:
        return None
    n, a, b = differ[0]
    delta = (a.float() - b.detach().float()).abs().max().item()
    return f"{len(differ)}/{len(names)} parameters differ (first {n}, max |diff| {delta:.3g})"


def state_dict_round_trip_continues_bit_identically(subject: Subject, dtype: str) -> str:
    """Save mid-training (deep copy, torch.save, torch.load with weights_only), load into a fresh
    optimizer on a fresh model, and continue both: the parameters must stay bit-identical. A
    resumed run that drifts is a run whose checkpoint silently changed its result."""
    _require_dtype(subject, dtype)
    model = tiny_llama(_dtype(dtype))
    opt = subject.build(model)
    train(model, opt, 4, subject)  # the continuation crosses GaLore's refresh (6), SPAM's reset (5), resample (9)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": copy.deepcopy(opt.state_dict())}, buf)
    buf.seek(0)
    try:  # torch.load's default since torch 2.6 (https://pytorch.org/docs/stable/generated/torch.load.html)
        saved = torch.load(buf, weights_only=True)
    except Exception as err:
        raise CheckFailed(
            f"state_dict does not load with torch.load(weights_only=True): {type(err).__name__}: {err}"
        ) from None
    resumed = tiny_llama(_dtype(dtype))
    resumed.load_state_dict(saved["model"])
    opt2 = subject.build(resumed)
    try:
        opt2.load_state_dict(saved["opt"])
    except Exception as err:
        raise CheckFailed(
            f"a fresh optimizer's load_state_dict refused the saved state: {type(err).__name__}: {err}"
        ) from None
    diagnosis = state_differences(opt, opt2, names_in_group_order(opt, model))

    def failed(what: str) -> CheckFailed:
        return CheckFailed("; ".join([*diagnosis, what]))

    train(model, opt, 5, subject)
    expected = params_of(model)
    try:
        train(resumed, opt2, 5, subject)
    except Exception as err:
        raise failed(f"the loaded optimizer's step raised {type(err).__name__}: {err}") from err
    drift = _parameter_differences(expected, resumed)
    if drift is not None:
        raise failed(f"after 5 more steps {drift}")
    note = f" (state after load differed: {'; '.join(diagnosis)})" if diagnosis else ""
    return f"4 + 5 steps, bit-identical after the round trip{note}"


def closure_is_called_and_its_loss_returned(subject: Subject) -> str:
    """step(closure) must call the closure and return its loss (LBFGS-style loops rely on both)."""
    model = tiny_llama()
    opt = subject.build(model)
    calls: list[float] = []

    def closure() -> Any:
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        calls.append(loss.item())
        return loss

    before = params_of(model)
    returned = [opt.step(closure) for _ in range(2)]  # two: ADOPT's first step only initialises v
    require(len(calls) >= 2, f"the closure was called {len(calls)} time(s) in 2 steps")
    got = [None if r is None else float(torch.as_tensor(r).detach()) for r in returned]
    require(got == calls[-2:], f"step returned {got}, the closure's last losses were {calls[-2:]}")
    require(any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no parameter moved")
    return f"closure called {len(calls)} times in 2 steps, its loss returned"


def parameters_without_grads_are_left_alone(subject: Subject) -> str:
    """A parameter whose grad is None (never, or no longer) must not move: frozen layers, unused
    experts and the parameters a task masks out rely on it."""
    model: Any = tiny_llama()
    opt = subject.build(model)
    never = model.layers[0].mlp.up_proj.weight  # no gradient ever
    later = model.layers[0].self_attn.q_proj.weight  # gradients for 3 steps, then none
    initial = never.detach().clone()
    train(model, opt, 3, subject, before_step=lambda: setattr(never, "grad", None))
    require(torch.equal(never, initial), "a parameter that never had a gradient moved")
    snapshot = later.detach().clone()

    def drop() -> None:
        never.grad = None
        later.grad = None

    train(model, opt, 2, subject, before_step=drop)
    require(torch.equal(never, initial), "a parameter that never had a gradient moved")
    require(torch.equal(later, snapshot), "a parameter moved in steps where its gradient was None (stale momentum?)")
    return "never-graded and no-longer-graded parameters stayed put for 5 steps"


def lr_scheduler_change_takes_effect(subject: Subject) -> str:
    """The schedulers write param_groups[i]['lr']; an optimizer must read it each step (a cached
    lr makes every schedule a constant one). Scheduled to 0, nothing may move."""
    model = tiny_llama()
    opt = subject.build(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 2 else 0.0)
    for _ in range(2):
        train(model, opt, 1, subject)
        sched.step()
    require(all(g["lr"] == 0.0 for g in opt.param_groups), "LambdaLR did not set every group's lr to 0")
    frozen = params_of(model)
    train(model, opt, 2, subject)
    drift = _parameter_differences(frozen, model)
    require(drift is None, f"lr 0 from the scheduler must stop every update, but {drift}")
    return "lr scheduled to 0 stopped every update"


def add_param_group_trains_the_new_parameters(subject: Subject) -> str:
    """Parameters added later (a new head, unfrozen layers) must be trained like the others."""
    model = tiny_llama()
    opt = subject.build(model)
    extra = torch.nn.Parameter(torch.randn(4, 3) * 0.1)
    bias = torch.nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})
    opt.add_param_group({"params": [bias]})
    before_extra, before_bias = extra.detach().clone(), bias.detach().clone()
    target, x = torch.randn(5, 3), torch.randn(5, 4)
    for _ in range(3):
        opt.zero_grad()
        loss = loss_of(model) + ((x @ extra + bias - target) ** 2).mean()
        loss.backward()
        subject.step(opt, lambda: loss_of(model))
    require(not torch.equal(extra, before_extra), "the added 2-D parameter did not move in 3 steps")
    require(not torch.equal(bias, before_bias), "the added 1-D parameter did not move in 3 steps")
    return "a 2-D and a 1-D parameter added as new groups trained"


def held_tensors(obj: Any, exclude: set[int]) -> dict[int, int]:
    """storage -> bytes of every tensor reachable from `obj` (through dicts, lists, tuples and the
    attributes of plain objects, such as a projector object kept in the state), except storages in
    `exclude`. Counted by storage, so a slice that keeps a larger tensor alive counts in full."""
    seen: dict[int, int] = {}
    visited: set[int] = set()

    def walk(o: Any) -> None:
        if id(o) in visited or isinstance(o, (str, bytes, int, float, bool, type(None), torch.nn.Module)):
            return
        visited.add(id(o))
        if isinstance(o, torch.Tensor):
            if o.untyped_storage().data_ptr() not in exclude:
                seen[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                walk(v)
        elif hasattr(o, "__dict__") and not callable(o):
            walk(vars(o))

    walk(obj)
    return seen


def _own_storages(model: torch.nn.Module) -> set[int]:
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return own | {p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}


def state_bytes_count_every_tensor_held(subject: Subject) -> str:
    """`optimizer_state_bytes` (the memory column of every leaderboard) must equal an independent
    count of everything reachable from the state (by storage, through objects); outside the state an
    optimizer may hold only one-element constants (e.g. a cached step count) and work buffers in
    attributes named `_scratch*`, which are scratch, not state."""
    model = tiny_llama()
    opt = subject.build(model)
    train(model, opt, 4, subject)
    own = _own_storages(model)
    in_state = held_tensors(dict(opt.state), own)
    counted = optimizer_state_bytes(opt)
    require(
        counted == sum(in_state.values()),
        f"optimizer_state_bytes says {counted} B, the tensors reachable from the state hold {sum(in_state.values())} B",
    )
    attrs = {
        k: v
        for k, v in vars(opt).items()
        if k not in ("state", "param_groups", "defaults") and not k.startswith("_scratch")
    }
    attrs["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    outside = held_tensors(attrs, own | set(in_state))
    big = {k: v for k, v in outside.items() if v > 8}
    require(
        not big,
        f"{len(big)} tensor(s) of {sum(big.values())} B held outside optimizer.state "
        f"(keep state in .state, or scratch in attributes named _scratch*)",
    )
    return f"{counted} B counted = {len(in_state)} storages reachable from the state"


def every_parameter_lands_in_exactly_one_group(subject: Subject) -> str:
    """A parameter in no group is never trained; one in two groups is updated twice per step."""
    model = tiny_llama()
    opt = subject.build(model)
    names = names_in_group_order(opt, model)
    twice = sorted({n for n in names if names.count(n) > 1})
    missing = [n for n, _ in model.named_parameters() if n not in names]
    require(not twice, f"in more than one group: {', '.join(twice[:3])}")
    require(not missing, f"in no group: {', '.join(missing[:3])}")
    return f"{len(names)} parameters in {len(opt.param_groups)} group(s)"


@dataclass(frozen=True)
class RoleTreatment:
    """How a built-in role-driven optimizer treats each LLaMA role, and how to read that off it."""

    read: Callable[[torch.optim.Optimizer, dict[str, Any], torch.Tensor, str], str]
    expected: Mapping[str, str]
    default: str | None = None  # for roles not in `expected`; None: every role must be listed


# The partitions the papers define: Adam-mini (arXiv 2406.16793, §2.3: one v per query/key head,
# per output neuron for values, attention output, MLP, embedding and output, per tensor for norms);
# GaLore (arXiv 2403.03507: low-rank on the attention/MLP matrices); sparse SPAM (arXiv 2501.06842:
# masks on the attention/MLP matrices). Embeddings, norms and the head stay dense in both.
ROLE_TREATMENTS: dict[str, RoleTreatment] = {
    "adam_mini": RoleTreatment(
        read=lambda opt, group, p, name: opt.block_of[name],  # type: ignore[attr-defined]
        expected={
            "attn_q": "head",
            "attn_k": "head",
            "attn_v": "neuron",
            "attn_o": "neuron",
            "mlp": "neuron",
            "embedding": "neuron",
            "output": "neuron",
            "norm": "tensor",
        },
    ),
    "galore": RoleTreatment(
        read=lambda opt, group, p, name: "low-rank" if "rank" in group and p.ndim == 2 else "dense",
        expected={r: "low-rank" for r in MATRIX_ROLES},
        default="dense",
    ),
    "spam_sparse": RoleTreatment(
        read=lambda opt, group, p, name: "masked" if "density" in group else "dense",
        expected={r: "masked" for r in MATRIX_ROLES},
        default="dense",
    ),
}


def _require_roles(subject: Subject) -> None:
    if not subject.needs_roles:
        raise CheckSkipped(f"{subject.name} is not declared role-driven (needs_roles on an OptimizerSpec)")


def roles_put_each_parameter_in_exactly_one_block(subject: Subject) -> str:
    """Each LLaMA parameter gets exactly the treatment its role calls for, once."""
    _require_roles(subject)
    treatment = ROLE_TREATMENTS.get(subject.spec_name or "")
    if treatment is None:
        raise CheckSkipped(
            f"no reference role partition for {subject.spec_name or subject.name!r} (the kit has one for "
            f"{', '.join(sorted(ROLE_TREATMENTS))}); the group partition is checked above"
        )
    model = tiny_llama()
    info = model.model_info()
    opt = subject.build(model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    blocks: dict[str, str] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            name = by_id[id(p)]
            require(name not in blocks, f"{name} is in two blocks")
            blocks[name] = treatment.read(opt, group, p, name)
    require(set(blocks) == set(info.roles), f"blocks cover {len(blocks)} of {len(info.roles)} parameters")
    for name, kind in blocks.items():
        want = treatment.expected.get(info.roles[name], treatment.default)
        require(kind == want, f"{name} (role {info.roles[name]}) is treated as {kind!r}, expected {want!r}")
    kinds = sorted(set(blocks.values()))
    return f"{len(blocks)} parameters: " + ", ".join(f"{k} x{list(blocks.values()).count(k)}" for k in kinds)


def an_unclassified_weight_fails_loudly(subject: Subject) -> str:
    """A role-driven optimizer must refuse a weight it cannot classify, naming it, instead of
    silently treating it as "everything else"."""
    _require_roles(subject)
    model = tiny_llama()
    cases = [
        ("layers.0.self_attn.q_proj.weight", "role 'other'", r"q_proj\.weight.*'other'"),
        ("layers.0.mlp.up_proj.weight", "no role", r"up_proj\.weight.*no role"),
    ]
    for pname, what, pattern in cases:
        info = model.model_info()
        if what == "no role":
            del info.roles[pname]
        else:
            info.roles[pname] = "other"
        try:
            subject.build(model, info)
        except ValueError as err:
            require(
                re.search(pattern, str(err)) is not None,
                f"{pname} with {what}: the ValueError does not name it ({err})",
            )
        else:
            raise CheckFailed(f"{pname} with {what}: built without a ValueError")
    return "a weight with role 'other' and one with no role are refused by name"


def works_on_a_model_without_attention(subject: Subject) -> str:
    """The RL/TSF networks: an MLP whose roles come from `roles_by_rank`, trained 10 steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    try:
        opt = subject.build(net, roles_by_rank(net), lr=1e-2)
    except NotApplicable as err:
        raise CheckSkipped(f"not applicable to an attention-free MLP: {err}") from None
    x, y = torch.randn(64, 6), torch.randn(64, 1)

    def loss() -> torch.Tensor:
        return ((net(x) - y) ** 2).mean()

    first = loss().item()
    for _ in range(10):
        opt.zero_grad()
        loss().backward()
        subject.step(opt, loss)
    final = loss().item()
    require(final < first, f"MLP loss {first:.4f} -> {final:.4f} in 10 steps")
    return f"MLP loss {first:.3f} -> {final:.3f} in 10 steps"


# ---- running them ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A named check; `feature` is the `unsupported` key (besides its name) that turns it off."""

    name: str
    run: Callable[[Subject], str]
    feature: str | None = None


def checks_for(dtypes: Sequence[str]) -> list[Check]:
    """Every check in the order they run; the dtype-dependent ones once per dtype, named `check[dtype]`."""
    for d in dtypes:
        _dtype(d)
    per_dtype = [(loss_falls_on_a_toy_problem, None), (state_dict_round_trip_continues_bit_identically, "state_dict")]
    out = [
        Check(f"{fn.__name__}[{d}]", functools.partial(fn, dtype=d), feature)
        for fn, feature in per_dtype
        for d in dtypes
    ]
    return [
        *out,
        Check(closure_is_called_and_its_loss_returned.__name__, closure_is_called_and_its_loss_returned, "closure"),
        Check(
            parameters_without_grads_are_left_alone.__name__,
            parameters_without_grads_are_left_alone,
            "params_without_grad",
        ),
        Check(lr_scheduler_change_takes_effect.__name__, lr_scheduler_change_takes_effect, "lr_scheduler"),
        Check(
            add_param_group_trains_the_new_parameters.__name__,
            add_param_group_trains_the_new_parameters,
            "add_param_group",
        ),
        Check(state_bytes_count_every_tensor_held.__name__, state_bytes_count_every_tensor_held, "state_bytes"),
        Check(every_parameter_lands_in_exactly_one_group.__name__, every_parameter_lands_in_exactly_one_group),
        Check(roles_put_each_parameter_in_exactly_one_block.__name__, roles_put_each_parameter_in_exactly_one_block),
        Check(an_unclassified_weight_fails_loudly.__name__, an_unclassified_weight_fails_loudly),
        Check(works_on_a_model_without_attention.__name__, works_on_a_model_without_attention, "no_attention"),
    ]


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_check(check: Check, subject: Subject) -> CheckResult:
    """Run one check from a fixed seed; any exception is that check's failure, not the kit's."""
    start = time.perf_counter()
    for key in (check.name.partition("[")[0], check.feature):
        if key is not None and key in subject.unsupported:
            return CheckResult(check.name, "skip", _one_line(f"{key} unsupported: {subject.unsupported[key]}"))
    torch.manual_seed(0)
    status: Status = "pass"
    try:
        message = check.run(subject)
    except CheckSkipped as skip:
        status, message = "skip", str(skip) or "does not apply"
    except AssertionError as err:
        status, message = "fail", str(err) or "assertion failed"
    except Exception as err:
        status, message = "fail", f"{type(err).__name__}: {err}"
    return CheckResult(check.name, status, _one_line(message), time.perf_counter() - start)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds hand-offs; the caller's setting comes back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_optimizer(
    target: Any,
    *,
    name: str | None = None,
    hparams: Mapping[str, Any] | None = None,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
) -> ConformanceReport:
    """Run every conformance check on `target` (a registered name, an OptimizerSpec, a factory
    `(model, model_info, *, lr, **hparams)` or a torch.optim.Optimizer subclass) and report each.

    `hparams` are the optimizer's keyword arguments (for a spec: its config fields, validated, with
    `ConfigError` on a bad one). The caller's torch thread count and global RNG are left as found.
    """
    subject = subject_of(target, name=name, hparams=hparams)
    checks = checks_for(dtypes)
    report = ConformanceReport(optimizer=subject.name)
    start = time.perf_counter()
    with _one_thread(), torch.random.fork_rng(devices=[]):
        for check in checks:
            report.results.append(run_check(check, subject))
    report.seconds = time.perf_counter() - start
    return report


# ---- `spambench check-optimizer` -------------------------------------------------------------------------


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error over several lines; spambench promises one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"spambench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _invalid(text: str, allowed: str = INVALID_TARGET) -> ConfigError:
    return ConfigError("optimizer", text, allowed)


def _registered(text: str) -> OptimizerSpec:
    """A registered optimizer; an unknown name is the generic one-line error, while a family member
    that exists but is refused (po:muon) or a broken entry point keeps the registry's reason."""
    try:
        return OPTIMIZERS.get(text)
    except ConfigError:
        prefix, _, member = text.partition(":")
        family = OPTIMIZERS.families.get(prefix)
        if text in OPTIMIZERS.broken or (family is not None and member in family.members()):
            raise
        raise _invalid(text) from None


def resolve_target(text: str) -> Any:
    """A TARGET of the command line: a registered name, or `module:attribute` (dotted attributes too)."""
    module_name, sep, attribute = text.partition(":")
    if not sep or module_name in OPTIMIZERS.families or text in OPTIMIZERS.names():
        return _registered(text)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise _invalid(text) from None
        raise _invalid(text, f"an importable module ({type(err).__name__}: {err})") from None
    except Exception as err:
        raise _invalid(text, _one_line(f"an importable module ({type(err).__name__}: {err})")) from None
    obj: Any = module
    for part in attribute.split("."):
        if not part or not hasattr(obj, part):
            raise _invalid(text)
        obj = getattr(obj, part)
    is_class = isinstance(obj, type)
    if (
        isinstance(obj, OptimizerSpec)
        or (is_class and issubclass(obj, torch.optim.Optimizer))
        or (callable(obj) and not is_class)
    ):
        return obj
    raise _invalid(text)


def _literal(value: str) -> Any:
    """A command-line value for a target without a config class: a Python literal, else the string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def hparams_from_flags(items: list[str] | None, target: Any) -> dict[str, Any]:
    """`--set opt.KEY=VALUE` flags -> hparams; a spec types the strings itself, others get literals."""
    out: dict[str, Any] = {}
    for key, value in parse_assignments(items).items():
        if not key.startswith("opt.") or key == "opt.":
            raise ConfigError("--set", f"{key}={value}", "opt.KEY=VALUE (an optimizer hyperparameter)")
        out[key.removeprefix("opt.")] = value if isinstance(target, OptimizerSpec) else _literal(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`spambench check-optimizer TARGET [--set opt.KEY=VALUE ...]`: print the table; 0 if every check
    passed or was skipped with a reason, 1 if one failed, 2 (one line on stderr) for a bad TARGET or flag."""
    parser = _OneLineParser(
        prog="spambench check-optimizer",
        description="Run the optimizer conformance kit on a registered or importable optimizer.",
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="a registered optimizer (e.g. adamw, po:lion) or module:attribute naming an "
        "OptimizerSpec, a factory or a torch.optim.Optimizer subclass",
    )
    parser.add_argument(
        "--set", action="append", metavar="opt.KEY=VALUE", help="an optimizer hyperparameter (repeatable)"
    )
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help (0) or a one-line usage error (2)
        return int(stop.code or 0)
    try:
        target = resolve_target(args.target)
        report = check_optimizer(target, name=args.target, hparams=hparams_from_flags(args.set, target))
    except ConfigError as err:
        print(f"spambench: error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
