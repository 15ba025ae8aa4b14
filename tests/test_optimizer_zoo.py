"""The zoo's own behaviours, one per test: GaLore's projector against the paper's definition, the
matched density rule, Stable-SPAM's formulas, Adam-mini's partition, the `po:` family, and runs
through the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math

import pytest
import torch
from adam_mini import Adam_mini
from conftest import small_llm_sets

from spam_bench.optimizers import adafactor, adam, adam_mini, galore, po, spam_sparse, stable_spam
from spam_bench.optimizers.galore import GaLoreAdamW, paper_preset, paper_rank
from spam_bench.optimizers.stable_spam import StableSPAM
from spam_bench.runners.cli import main
from spam_bench.suite.config import build_config
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.results import read_json
from spam_bench.tasks.llm.model import Llama, LlamaShape

ZOO = (adam.SPEC, adam.CLIP_SPEC, adafactor.SPEC, adam_mini.SPEC, galore.SPEC, spam_sparse.SPEC, stable_spam.SPEC)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds hand-offs (and the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def meta_llama(hidden: int, intermediate: int, heads: int, layers: int) -> Llama:
    with torch.device("meta"):
        return Llama(LlamaShape(32000, hidden, intermediate, heads, layers, 256))


def tiny_llama() -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaShape(32, 16, 24, 2, 1, 8))


# ---- GaLore ------------------------------------------------------------------------------------
def paper_update(grad: torch.Tensor, rank: int, lr: float, scale: float, eps: float) -> torch.Tensor:
    """One GaLore-AdamW step from zero state, written from the paper (Alg. 1) with an independent SVD:
    project on the top-r singular vectors of the shorter side, Adam in the subspace, project back.
    After one step Adam's direction is r / (|r| + eps'), with eps' = eps / sqrt(1 - β2) because eps
    is added to the uncorrected sqrt(v) (official GaLore AdamW, like torch's)."""
    eps = eps / math.sqrt(1 - 0.999)
    u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
    if grad.shape[0] >= grad.shape[1]:
        p = vh[:rank]
        r = grad.double() @ p.T
        return -lr * scale * (r / (r.abs() + eps)) @ p
    p = u[:, :rank]
    r = p.T @ grad.double()
    return -lr * scale * p @ (r / (r.abs() + eps))


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)], ids=["tall", "wide"])
def test_galore_first_step_is_the_papers_projected_adam_step(shape) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(shape))
    start = w.detach().clone()
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 10, "scale": 0.25}], lr=0.1, eps=1e-6)
    w.grad = torch.randn(shape)
    opt.step()
    torch.testing.assert_close(
        (w.detach() - start).double(), paper_update(w.grad, 2, 0.1, 0.25, 1e-6), rtol=1e-4, atol=1e-6
    )
    m, v = opt.state[w]["exp_avg"], opt.state[w]["exp_avg_sq"]
    assert m.shape == v.shape == ((12, 2) if shape[0] >= shape[1] else (2, 12))
    proj = opt.state[w]["projector"]
    assert proj.shape == ((2, 5) if shape[0] >= shape[1] else (5, 2)) and proj.is_contiguous()
    assert proj.untyped_storage().nbytes() == proj.numel() * 4, "no view of the full U / V^T kept alive"


def test_galore_refreshes_the_projector_every_update_proj_gap_steps_only() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 6))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 3}], lr=1e-3)
    grads = [torch.randn(8, 6) for _ in range(7)]
    projectors = []
    for g in grads:
        w.grad = g
        opt.step()
        projectors.append(opt.state[w]["projector"].clone())

    def subspace(p):  # sign-free: the projection matrix onto the row space
        return p.T @ p

    for call, p in enumerate(projectors):  # refreshed at the parameter's steps 0, 3, 6
        source = grads[call // 3 * 3]
        expected = torch.linalg.svd(source, full_matrices=False)[2][:2]
        torch.testing.assert_close(subspace(p), subspace(expected), rtol=1e-4, atol=1e-5)
    assert torch.equal(projectors[1], projectors[0]) and not torch.equal(projectors[3], projectors[2])


def test_galore_svd_failure_falls_back_without_killing_the_run(monkeypatch) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 1}], lr=1e-3)

    def broken(*a, **k):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    w.grad = torch.randn(6, 4)
    opt.step()
    good = opt.state[w]["projector"].clone()
    monkeypatch.setattr(torch.linalg, "svd", broken)
    with pytest.warns(RuntimeWarning, match="SVD"):
        opt.step()  # refresh fails: the previous projector is kept
    assert torch.equal(opt.state[w]["projector"], good) and opt.svd_fallbacks == 1
    fresh = torch.nn.Parameter(torch.randn(6, 4))  # no previous projector: random orthonormal basis
    opt.add_param_group({"params": [fresh], "rank": 2, "update_proj_gap": 1})
    fresh.grad = torch.randn(6, 4)
    opt.step()
    p = opt.state[fresh]["projector"]
    torch.testing.assert_close(p @ p.T, torch.eye(2), rtol=0, atol=1e-6)
    assert torch.isfinite(fresh).all() and opt.svd_fallbacks == 3


def test_galore_survives_a_non_finite_gradient() -> None:
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 1}], lr=1e-3)
    w.grad = torch.full((6, 4), float("nan"))
    with pytest.warns(RuntimeWarning):
        opt.step()  # the loss guard of the task decides what a NaN run is; the optimizer must not raise


def test_galore_projects_only_attention_and_mlp_matrices_at_the_paper_rank() -> None:
    model = meta_llama(512, 1376, 8, 1)
    opt = galore.make(model, model.model_info(), lr=1e-2)
    (dense, low) = opt.param_groups
    assert low["rank"] == 128 and low["update_proj_gap"] == 200 and low["scale"] == 0.25
    assert len(low["params"]) == 7 and any(p is model.lm_head.weight for p in dense["params"])
    assert [paper_rank(h) for h in (512, 768, 1024, 2048, 128)] == [128, 256, 256, 512, 32]
    assert paper_preset("paper-1b") == {"opt.rank": 512, "opt.update_proj_gap": 200, "opt.scale": 0.25}


# ---- spam_sparse --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hidden, intermediate, heads, layers, density",
    [
        (512, 1376, 8, 8, 0.3225388601036269),  # 60M, r 128: the authors' logged --rank value
        (768, 2048, 12, 12, 0.4305555555555556),  # 130M, r 256: logged
        (1024, 2736, 16, 24, 0.3228218465539662),  # 350M, r 256
        (2048, 5461, 32, 24, 0.3229196337741607),  # 1B, r 512
    ],
)
def test_matched_density_reproduces_the_authors_values(hidden, intermediate, heads, layers, density) -> None:
    model = meta_llama(hidden, intermediate, heads, layers)
    assert spam_sparse.matched_density(model, model.model_info()) == density


def test_spam_sparse_masks_attention_and_mlp_at_the_matched_density_and_rank_moves_it() -> None:
    model = tiny_llama()
    info = model.model_info()
    opt = spam_sparse.make(model, info, lr=1e-3, rank=4)
    (masked,) = [g for g in opt.param_groups if "density" in g]
    assert masked["density"] == spam_sparse.matched_density(model, info, 4) < 1
    assert spam_sparse.matched_density(model, info, 2) < masked["density"]
    assert spam_sparse.matched_density(model, info, 16) == 1.0  # capped: rank >= the matrices' side
    assert {f.name for f in dataclasses.fields(spam_sparse.SPEC.config_cls)} >= {"rank", "reset_interval"}
    assert "density" not in spam_sparse.SPEC.defaults()


# ---- Stable-SPAM ---------------------------------------------------------------------------------
def literal_stable_spam(params, grads_per_step, lr, betas, eps, wd, g1, g2, g3, dt, total, eta_min):
    """docs/spam.md#stable-spam line by line, one tensor at a time, in float64."""
    state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), k=0, mn=0.0, vn=0.0, mx=0.0) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        s = 1.0 if total is None else eta_min + (1 - eta_min) * (1 + math.cos(math.pi * t / total)) / 2
        for p, g, st in zip(params, grads, state):
            g = g.clone()
            st["k"] += 1
            p.mul_(1 - lr * wd)
            gmax = g.abs().max().item()
            st["mx"] = g3 * st["mx"] + (1 - g3) * gmax
            mhat = st["mx"] / (1 - g3 ** st["k"])
            mask = g.abs() > mhat
            g[mask] = g[mask] / gmax * mhat
            n = g.norm().item()
            st["mn"] = g1 * s * st["mn"] + (1 - g1 * s) * n
            st["vn"] = g2 * st["vn"] + (1 - g2) * n * n
            c = (st["mn"] / (1 - (g1 * s) ** st["k"])) / (math.sqrt(st["vn"] / (1 - g2 ** st["k"])) + eps)
            if n > 0:
                g = g / n * c
            m, v = st["m"], st["v"]
            if t % dt == 0:
                st["m"], st["v"], st["k"] = torch.zeros_like(m), torch.zeros_like(v), 1
            b1 = betas[0] * s
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
            size = lr * math.sqrt(1 - betas[1] ** st["k"]) / (1 - b1 ** st["k"])
            p.addcdiv_(m, v.sqrt().add_(eps), value=-size)


def test_stable_spam_matches_the_literal_update_rule() -> None:
    torch.manual_seed(0)
    shapes = [(5, 3), (4,)]
    steps = [[torch.randn(s) for s in shapes] for _ in range(12)]
    steps[7][0][1, 1] = 200.0  # a spike for AdaClip
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.1, g1=0.7, g2=0.9, g3=0.999, dt=5, total=10, eta_min=0.5)
    ref = [
        torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i, s in enumerate(shapes)
    ]
    ours = [torch.nn.Parameter(r.clone()) for r in ref]
    opt = StableSPAM(ours, lr=1e-2, weight_decay=0.1, reset_interval=5, total_steps=10)
    for grads in steps:
        for p, g in zip(ours, grads):
            p.grad = g.double()
        opt.step()
    literal_stable_spam(
        ref,
        [[g.double() for g in gs] for gs in steps],
        kw["lr"],
        kw["betas"],
        kw["eps"],
        kw["wd"],
        kw["g1"],
        kw["g2"],
        kw["g3"],
        kw["dt"],
        kw["total"],
        kw["eta_min"],
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fresh, expected", [(False, [1, 1, 1, 1, 1.833, 0.744, 0.856]), (True, [1] * 7)])
def test_stable_spam_reset_step_uses_the_old_moments_as_official(fresh, expected) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = StableSPAM([p], lr=1.0, reset_interval=5, fresh_reset=fresh)
    deltas = []
    for _ in range(7):
        before = p.item()
        p.grad = torch.ones(1)
        opt.step()
        deltas.append(before - p.item())
    assert deltas == pytest.approx(expected, abs=2e-3)
    assert torch.equal(p.grad, torch.ones(1)), "the user's gradient is never modified"


# ---- Adam-mini -----------------------------------------------------------------------------------
def test_adam_mini_classifies_every_llama_block_without_warnings() -> None:
    model = tiny_llama()
    opt = adam_mini.make(model, model.model_info(), lr=1e-3)
    opt.verbose = True
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # capture (not silence) the package's own census
        opt.count_block()
    text = out.getvalue()
    assert "Warning" not in text
    assert "1 embedding layers, 1 output layers; 2 Querys and Keys;  1 Values;  1 attn_proj;  3 MLPs" in text


def test_adam_mini_equals_the_package_on_conventionally_named_llama() -> None:
    """Our role-named blocks give bit-identical training to the package's own name matching."""
    x = torch.randint(0, 32, (4, 9))
    results = []
    for build in (
        lambda m: adam_mini.make(m, m.model_info(), lr=1e-2),
        lambda m: Adam_mini(m.named_parameters(), lr=1e-2, dim=16, n_heads=2, verbose=False),
    ):
        model = tiny_llama()
        opt = build(model)
        for _ in range(3):
            opt.zero_grad()
            model.loss(x[:, :-1], x[:, 1:]).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_adam_mini_refuses_an_attention_model_without_head_counts() -> None:
    model = tiny_llama()
    info = model.model_info()
    info = ModelInfo(roles=info.roles, hidden_size=16)
    with pytest.raises(ValueError, match="n_heads"):
        adam_mini.make(model, info, lr=1e-3)


# ---- Adam, Adam + clip, Adafactor ------------------------------------------------------------------
def test_adam_clip_is_adam_with_global_norm_clip_1() -> None:
    assert adam.CLIP_SPEC.grad_clip == 1.0 and adam.SPEC.grad_clip is None
    assert adam.CLIP_SPEC.factory is adam.SPEC.factory


@pytest.mark.parametrize("scale_parameter, rms", [(False, 1e-3), (True, 1e-3 * 0.02)])
def test_adafactor_first_step_has_the_papers_absolute_size(scale_parameter, rms) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 32) * 0.02)
    start = w.detach().clone()
    opt = adafactor.make(
        torch.nn.ParameterList([w]),
        ModelInfo(roles={"0": "mlp"}),
        lr=1e-3,
        beta2_decay=-0.8,
        eps1=None,
        clip_threshold=1.0,
        weight_decay=0.0,
        scale_parameter=scale_parameter,
        foreach=True,
    )
    w.grad = torch.randn(64, 32)
    opt.step()
    step_rms = (w.detach() - start).pow(2).mean().sqrt().item()
    assert step_rms == pytest.approx(rms, rel=0.05)


# ---- po: family and registry ---------------------------------------------------------------------
@pytest.fixture
def po_registered(monkeypatch):
    OPTIMIZERS.names()
    monkeypatch.setitem(OPTIMIZERS.families, "po", po.FAMILY)
    monkeypatch.setattr(OPTIMIZERS, "_built", {})


def test_po_prefix_builds_a_spec_with_the_librarys_defaults(po_registered) -> None:
    spec = OPTIMIZERS.get("po:lion")
    assert spec.name == "po:lion" and spec.defaults()["betas"] == (0.9, 0.99)
    assert OPTIMIZERS.get("po:lion") is spec
    config = build_config(spec.config_cls, {"betas": "0.95,0.98"}, prefix="opt.")
    assert config.betas == (0.95, 0.98)
    assert "po:lion" not in OPTIMIZERS.names()


def test_po_unknown_names_are_one_line_config_errors(po_registered) -> None:
    with pytest.raises(
        ConfigError,
        match=r"optimizer: invalid value 'po:lionx' \(allowed: po:<name> with <name> one of "
        r"a2grad, .*lion, .*spambench list optimizers",
    ):
        OPTIMIZERS.get("po:lionx")
    with pytest.raises(ConfigError, match="not a wrapper"):
        OPTIMIZERS.get("po:magma")
    with pytest.raises(ConfigError, match=r"allowed: one of adafactor.*adamw.*po:<name>"):
        OPTIMIZERS.get("nope")
    with pytest.raises(ConfigError) as refused:
        OPTIMIZERS.get("po:zzz")
    assert "\n" not in str(refused.value)


def test_po_specs_declare_closures_and_refuse_what_a_task_cannot_train() -> None:
    assert po.build("alig").needs_closure and po.build("lbfgs").needs_closure
    for name, reason in [("adahessian", "Hessian"), ("muon", "use_muon"), ("adammini", "adam_mini")]:
        with pytest.raises(ConfigError, match=reason):
            po.build(name)
    assert {f.name for f in dataclasses.fields(po.build("ranger21").config_cls)} >= {"num_iterations"}


# ---- through the CLI -----------------------------------------------------------------------------
@pytest.fixture
def zoo_registered(monkeypatch, po_registered):
    for spec in ZOO:
        monkeypatch.setitem(OPTIMIZERS._items, spec.name, spec)


@pytest.mark.parametrize("opt, clip", [("adam_clip", 1.0), ("po:lion", None), ("galore", None)])
def test_zoo_optimizers_run_the_llm_task_through_the_cli(opt, clip, out_dir, zoo_registered) -> None:
    argv = ["run", "--task", "llm", "--opt", opt, "--out", str(out_dir)]
    for s in small_llm_sets(steps=4, eval_every=4, checkpoint_every=4):
        argv += ["--set", s]
    assert main(argv) == 0
    (run_dir,) = (out_dir / "runs" / "llm").iterdir()
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "complete" and math.isfinite(summary["value"])
    assert summary["grad_clip"] == clip and summary["optimizer_state_bytes"] > 0


def test_every_zoo_spec_is_complete() -> None:
    for spec in ZOO:
        assert spec.description and spec.reference and spec.defaults() is not None
        build_config(spec.config_cls, {}, prefix="opt.")
        for key in spec.search_space:
            assert key == "lr" or key.removeprefix("opt.") in spec.defaults(), (spec.name, key)
    assert {s.name for s in ZOO if s.needs_roles} == {"adam_mini", "galore", "spam_sparse"}
