"""The conformance kit: what every registered optimizer must do, one behaviour per test.

Parametrized over every registered optimizer (entry points, plus the zoo until its entry points
are in pyproject.toml) and a sample of `po:` ones. The model is a tiny LLaMA with real roles, so
role-driven optimizers (GaLore, Adam-mini, sparse SPAM) are exercised the way the tasks use them.
"""
from __future__ import annotations

import copy
import dataclasses
import io
from typing import Any, Callable

import pytest
import torch

from spam_bench.optimizers import adafactor, adam, adam_mini, galore, po, spam_sparse, stable_spam
from spam_bench.suite.config import build_config
from spam_bench.suite.model_info import MATRIX_ROLES, roles_by_rank
from spam_bench.suite.registry import OPTIMIZERS, OptimizerSpec
from spam_bench.suite.telemetry import optimizer_state_bytes
from spam_bench.tasks.llm.model import Llama, LlamaShape

ZOO = {s.name: s for s in (adam.SPEC, adam.CLIP_SPEC, adafactor.SPEC, adam_mini.SPEC, galore.SPEC,
                           spam_sparse.SPEC, stable_spam.SPEC)}
PO_SAMPLE = ["po:lion", "po:adopt"]
SHAPE = LlamaShape(vocab_size=32, hidden_size=16, intermediate_size=24, n_heads=2, n_layers=1, max_seq_len=8)
LR = 3e-3
# Small enough to leave a low-rank subspace (rank 4 of 16) and a real sparse density.
SETTINGS: dict[str, dict[str, Any]] = {"galore": {"rank": 4, "update_proj_gap": 3}, "spam_sparse": {"rank": 4},
                                       "spam": {"reset_interval": 5, "warmup_steps": 2, "clip_delay": 2},
                                       "stable_spam": {"reset_interval": 5}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds hand-offs (and the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def registered() -> dict[str, OptimizerSpec]:
    specs = {name: OPTIMIZERS.get(name) for name in OPTIMIZERS.names()}
    return {**ZOO, **specs}


def spec_of(name: str) -> OptimizerSpec:
    if name.startswith("po:"):
        family = OPTIMIZERS.families.get("po", po.FAMILY)
        return family.build(name.split(":", 1)[1])
    return registered()[name]


NAMES = sorted(registered()) + PO_SAMPLE


def build(name: str, model: torch.nn.Module, info=None, **changes: Any) -> torch.optim.Optimizer:
    spec = spec_of(name)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    values = {k: v for k, v in {**SETTINGS.get(name, {}), **changes}.items() if k in fields}
    config = build_config(spec.config_cls, values, prefix="opt.")
    return spec.factory(model, info or model.model_info(), lr=LR, **dataclasses.asdict(config))


def tiny(dtype: torch.dtype = torch.float32) -> Llama:
    torch.manual_seed(0)
    return Llama(SHAPE).to(dtype)


BATCH = torch.randint(0, SHAPE.vocab_size, (4, SHAPE.max_seq_len + 1), generator=torch.Generator().manual_seed(1))


def loss_of(model: Llama) -> torch.Tensor:
    return model.loss(BATCH[:, :-1], BATCH[:, 1:])


def train(model: Llama, opt: torch.optim.Optimizer, steps: int, spec: OptimizerSpec,
          before_step: Callable[[], None] | None = None) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward()
        losses.append(loss.item())
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        if before_step is not None:
            before_step()
        opt.step(lambda: loss_of(model)) if spec.needs_closure else opt.step()
    return losses


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def skip_unsupported(spec: OptimizerSpec, feature: str) -> None:
    if feature in spec.unsupported:
        pytest.skip(f"{spec.name}: {feature} unsupported: {spec.unsupported[feature]}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_toy_problem(name: str, dtype: torch.dtype) -> None:
    model = tiny(dtype)
    opt = build(name, model)
    losses = train(model, opt, 12, spec_of(name))
    final = loss_of(model).item()
    assert final < losses[0] - 0.05, (losses[0], final)
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_training_continues_bit_identically(name: str, dtype: torch.dtype) -> None:
    spec = spec_of(name)
    model = tiny(dtype)
    opt = build(name, model)
    train(model, opt, 4, spec)  # the continuation crosses GaLore's refresh (6), SPAM's reset (5), resample (9)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, 5, spec)
    expected = params_of(model)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = tiny(dtype)
    resumed.load_state_dict(saved["model"])
    opt2 = build(name, resumed)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, 5, spec)
    for a, b in zip(expected, params_of(resumed)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_closure_is_called_and_its_loss_returned(name: str) -> None:
    model = tiny()
    opt = build(name, model)
    calls = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        calls.append(loss.item())
        return loss

    before = params_of(model)
    returned = [opt.step(closure) for _ in range(2)]  # two: ADOPT's first step only initialises v
    assert len(calls) >= 2 and [float(torch.as_tensor(r).detach()) for r in returned] == calls[-2:]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradients_are_left_alone(name: str) -> None:
    model = tiny()
    opt = build(name, model)
    spec = spec_of(name)
    never = model.layers[0].mlp.up_proj.weight        # no gradient ever
    later = model.layers[0].self_attn.q_proj.weight   # gradients for 3 steps, then none
    initial = never.detach().clone()
    train(model, opt, 3, spec, before_step=lambda: setattr(never, "grad", None))
    assert torch.equal(never, initial)
    snapshot = later.detach().clone()

    def drop() -> None:
        never.grad = None
        later.grad = None

    train(model, opt, 2, spec, before_step=drop)
    assert torch.equal(never, initial) and torch.equal(later, snapshot)


@pytest.mark.parametrize("name", NAMES)
def test_lr_scheduler_change_takes_effect(name: str) -> None:
    model = tiny()
    opt = build(name, model)
    spec = spec_of(name)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 2 else 0.0)
    for _ in range(2):
        train(model, opt, 1, spec)
        sched.step()
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    frozen = params_of(model)
    train(model, opt, 2, spec)
    for a, b in zip(frozen, model.parameters()):
        assert torch.equal(a, b), "lr 0 from the scheduler must stop every update"


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_trains_the_new_parameters(name: str) -> None:
    spec = spec_of(name)
    skip_unsupported(spec, "add_param_group")
    model = tiny()
    opt = build(name, model)
    extra = torch.nn.Parameter(torch.randn(4, 3) * 0.1)
    bias = torch.nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})
    opt.add_param_group({"params": [bias]})
    before_extra, before_bias = extra.detach().clone(), bias.detach().clone()
    target = torch.randn(5, 3)
    x = torch.randn(5, 4)
    for _ in range(3):
        opt.zero_grad()
        loss = loss_of(model) + ((x @ extra + bias - target) ** 2).mean()
        loss.backward()
        opt.step(lambda: loss_of(model)) if spec.needs_closure else opt.step()
    assert not torch.equal(extra, before_extra) and not torch.equal(bias, before_bias)


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


def own_storages(model: torch.nn.Module) -> set[int]:
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return own | {p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}


@pytest.mark.parametrize("name", NAMES)
def test_state_bytes_count_every_tensor_the_optimizer_holds(name: str) -> None:
    """`optimizer_state_bytes` equals an independent count of everything reachable from the state
    (by storage, through objects); outside the state an optimizer may hold only one-element
    constants (e.g. SPAM's cached step count) and work buffers in attributes named `_scratch*`,
    which are scratch, not state, and reported separately by the perf benchmark."""
    model = tiny()
    opt = build(name, model)
    train(model, opt, 4, spec_of(name))
    own = own_storages(model)
    in_state = held_tensors(dict(opt.state), own)
    counted = optimizer_state_bytes(opt)
    assert counted > 0 and counted == sum(in_state.values())
    attrs = {k: v for k, v in vars(opt).items()
             if k not in ("state", "param_groups", "defaults") and not k.startswith("_scratch")}
    attrs["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    outside = held_tensors(attrs, own | set(in_state))
    assert all(nbytes <= 8 for nbytes in outside.values()), f"tensors held outside state: {outside}"


def test_state_bytes_see_the_reduced_and_compact_states() -> None:
    """The counts are the formulas: GaLore projector + low-rank moments, Adam-mini's per-block v,
    SPAM's compact masked moments with int32 indices."""
    model = tiny()
    shapes = [tuple(p.shape) for n, p in model.named_parameters() if model.model_info().roles[n] in MATRIX_ROLES]
    others = sum(p.numel() for n, p in model.named_parameters() if model.model_info().roles[n] not in MATRIX_ROLES)
    opt = build("galore", model)
    train(model, opt, 1, ZOO["galore"])
    low = sum(galore.state_numel(m, n, 4) for m, n in shapes)
    assert optimizer_state_bytes(opt) == 4 * (low + 2 * others)

    model = tiny()
    opt = build("adam_mini", model)
    train(model, opt, 1, ZOO["adam_mini"])
    v = {n: opt.state[p]["vmean"].numel() for n, p in model.named_parameters()}
    assert v["layers.0.self_attn.q_proj.weight"] == SHAPE.n_heads
    assert v["layers.0.mlp.down_proj.weight"] == SHAPE.hidden_size      # one per output neuron
    assert v["embed_tokens.weight"] == SHAPE.vocab_size and v["norm.weight"] == 1

    model = tiny()
    opt = build("spam_sparse", model)
    train(model, opt, 1, ZOO["spam_sparse"])
    masked = [p for g in opt.param_groups if "density" in g for p in g["params"]]
    assert masked
    for p in masked:
        k = opt.mask(p).sum().item()
        assert opt.state[p]["exp_avg"].numel() == opt.state[p]["exp_avg_sq"].numel() == k < p.numel()


ROLE_NAMES = [n for n in NAMES if spec_of(n).needs_roles]


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_lands_in_exactly_one_group(name: str) -> None:
    model = tiny()
    opt = build(name, model)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def role_blocks(name: str, opt: torch.optim.Optimizer, model: Llama) -> dict[str, str]:
    """parameter name -> the optimizer's treatment of it, read from the built optimizer."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, str] = {}
    for g in opt.param_groups:
        for p in g["params"]:
            if name == "adam_mini":
                kind = opt.block_of[by_id[id(p)]]
            elif name == "galore":
                kind = "low-rank" if "rank" in g and p.ndim == 2 else "dense"
            else:
                kind = "masked" if "density" in g else "dense"
            assert by_id[id(p)] not in out
            out[by_id[id(p)]] = kind
    return out


@pytest.mark.parametrize("name", ROLE_NAMES)
def test_llama_roles_put_each_parameter_in_exactly_one_role_block(name: str) -> None:
    model = tiny()
    info = model.model_info()
    blocks = role_blocks(name, build(name, model), model)
    assert set(blocks) == set(info.roles)
    special = {"adam_mini": {"attn_q": "head", "attn_k": "head", "attn_v": "neuron", "attn_o": "neuron", "mlp": "neuron",
                             "embedding": "neuron", "output": "neuron", "norm": "tensor"},
               "galore": {r: "low-rank" for r in MATRIX_ROLES},
               "spam_sparse": {r: "masked" for r in MATRIX_ROLES}}[name]
    default = {"galore": "dense", "spam_sparse": "dense"}.get(name)
    for pname, kind in blocks.items():
        assert kind == special.get(info.roles[pname], default), pname


@pytest.mark.parametrize("name", ROLE_NAMES)
def test_an_unclassified_weight_fails_loudly(name: str) -> None:
    model = tiny()
    other = model.model_info()
    other.roles["layers.0.self_attn.q_proj.weight"] = "other"
    with pytest.raises(ValueError, match=r"q_proj.weight.*'other'"):
        build(name, model, other)
    missing = model.model_info()
    del missing.roles["layers.0.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="up_proj.weight.*no role"):
        build(name, model, missing)


@pytest.mark.parametrize("name", NAMES)
def test_works_on_a_model_without_attention(name: str) -> None:
    """The RL/TSF networks: an MLP whose roles come from `roles_by_rank`."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 1))
    spec = spec_of(name)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    values = {k: v for k, v in SETTINGS.get(name, {}).items() if k in fields}
    opt = spec.factory(net, roles_by_rank(net), lr=1e-2, **dataclasses.asdict(build_config(spec.config_cls, values)))
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    first = None
    for _ in range(10):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        first = first if first is not None else loss.item()
        opt.step((lambda: ((net(x) - y) ** 2).mean())) if spec.needs_closure else opt.step()
    assert ((net(x) - y) ** 2).mean().item() < first


def test_the_kit_covers_the_whole_zoo() -> None:
    assert set(ZOO) | {"adamw", "spam"} <= set(NAMES)
    assert copy.copy(PO_SAMPLE) == ["po:lion", "po:adopt"]
