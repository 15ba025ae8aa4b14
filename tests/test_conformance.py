"""The conformance kit (spam_bench.runners.conformance), run on every registered optimizer.

Parametrized over every optimizer registered through entry points and a sample of `po:` ones: the
kit's report must be ok and every skip must carry its reason. The kit must also catch a broken
optimizer by name, take a plain Optimizer class, and give `spambench check-optimizer` its exit codes.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

from spam_bench.optimizers import galore
from spam_bench.runners import conformance
from spam_bench.runners.conformance import SHAPE, main, subject_of, tiny_llama, train
from spam_bench.suite.model_info import MATRIX_ROLES
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.telemetry import optimizer_state_bytes
from spam_bench.testing import ConformanceReport, check_optimizer

PO_SAMPLE = ["po:lion", "po:adopt"]
NAMES = OPTIMIZERS.names() + PO_SAMPLE
ROUND_TRIP = "state_dict_round_trip_continues_bit_identically"


@pytest.mark.parametrize("name", NAMES)
def test_registered_optimizer_conforms(name: str) -> None:
    report = check_optimizer(name)
    report.raise_for_failures()
    assert report.ok
    assert [r.name for r in report.results] == [c.name for c in conformance.checks_for(("float32", "bfloat16"))]
    assert all(r.message.strip() for r in report.results if r.status == "skip"), report.table()
    if OPTIMIZERS.get(name).needs_roles:  # role-driven: the role checks ran, none was skipped
        assert all(r.status == "pass" for r in report.results), report.table()


class ForgetfulAdamW(torch.optim.AdamW):
    """Drops `exp_avg_sq` from every state entry of its state_dict: the bug the round trip exists for.

    torch's state_dict hands out the live per-parameter dicts, so it filters into new ones
    (popping would damage the running optimizer too)."""

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["state"] = {i: {k: v for k, v in s.items() if k != "exp_avg_sq"} for i, s in out["state"].items()}
        return out


def test_a_state_dict_that_drops_a_key_fails_the_round_trip_naming_it() -> None:
    report = check_optimizer(ForgetfulAdamW)
    assert not report.ok
    assert {r.name for r in report.failures} == {f"{ROUND_TRIP}[float32]", f"{ROUND_TRIP}[bfloat16]"}
    assert all("'exp_avg_sq' missing" in r.message for r in report.failures)
    with pytest.raises(AssertionError, match=rf"(?s){ROUND_TRIP}\[float32\]: state key 'exp_avg_sq' missing"):
        report.raise_for_failures()
    assert "fail" in report.table()


def test_an_optimizer_class_is_a_target() -> None:
    report = check_optimizer(torch.optim.SGD, hparams={"momentum": 0.9})
    report.raise_for_failures()
    assert isinstance(report, ConformanceReport) and report.optimizer == "SGD"
    assert {r.name for r in report.results if r.status == "skip"} == {
        "roles_put_each_parameter_in_exactly_one_block",
        "an_unclassified_weight_fails_loudly",
    }


def test_the_kit_leaves_threads_and_the_global_rng_as_found() -> None:
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    check_optimizer(torch.optim.SGD, dtypes=("float32",))
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)


def test_check_optimizer_command_prints_the_table_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spam_bench.optimizers.adamw:SPEC"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conformance of spam_bench.optimizers.adamw:SPEC: ") and " 0 failed" in out.splitlines()[0]
    assert f"{ROUND_TRIP}[bfloat16]" in out and "skip" in out


def test_check_optimizer_command_with_an_unknown_target_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no.such:thing"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err == (
        "spambench: error: optimizer: invalid value 'no.such:thing' (allowed: a registered name "
        "or module:attribute naming an OptimizerSpec, a factory or a torch.optim.Optimizer subclass)\n"
    )


def test_state_bytes_see_the_reduced_and_compact_states() -> None:
    """The counts are the formulas: GaLore projector + low-rank moments, Adam-mini's per-block v,
    SPAM's compact masked moments with int32 indices."""
    model = tiny_llama()
    info = model.model_info()
    shapes = [tuple(p.shape) for n, p in model.named_parameters() if info.roles[n] in MATRIX_ROLES]
    others = sum(p.numel() for n, p in model.named_parameters() if info.roles[n] not in MATRIX_ROLES)
    subject = subject_of("galore")
    opt = subject.build(model)
    train(model, opt, 1, subject)
    low = sum(galore.state_numel(m, n, 4) for m, n in shapes)
    assert optimizer_state_bytes(opt) == 4 * (low + 2 * others)

    model = tiny_llama()
    subject = subject_of("adam_mini")
    opt = subject.build(model)
    train(model, opt, 1, subject)
    v = {n: opt.state[p]["vmean"].numel() for n, p in model.named_parameters()}
    assert v["layers.0.self_attn.q_proj.weight"] == SHAPE.n_heads
    assert v["layers.0.mlp.down_proj.weight"] == SHAPE.hidden_size  # one per output neuron
    assert v["embed_tokens.weight"] == SHAPE.vocab_size and v["norm.weight"] == 1

    model = tiny_llama()
    subject = subject_of("spam_sparse")
    opt = subject.build(model)
    train(model, opt, 1, subject)
    masked = [p for g in opt.param_groups if "density" in g for p in g["params"]]
    assert masked
    for p in masked:
        k = opt.mask(p).sum().item()
        assert opt.state[p]["exp_avg"].numel() == opt.state[p]["exp_avg_sq"].numel() == k < p.numel()


def test_the_kit_covers_the_whole_zoo() -> None:
    """Every optimizer entry point loads and is checked; the role-driven ones have a reference partition."""
    declared = {ep.name for ep in entry_points(group="spam_bench.optimizers")} - set(OPTIMIZERS.families)
    assert not OPTIMIZERS.broken
    assert declared <= set(NAMES)  # other tests may register more at run time: a subset, not equality
    assert {
        "adamw",
        "spam",
        "adam",
        "adam_clip",
        "adafactor",
        "adam_mini",
        "galore",
        "spam_sparse",
        "stable_spam",
    } <= declared
    role_driven = {n for n in declared if OPTIMIZERS.get(n).needs_roles}
    assert role_driven <= set(conformance.ROLE_TREATMENTS)
    assert PO_SAMPLE == ["po:lion", "po:adopt"]
