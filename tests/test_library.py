"""spam-bench as a library: one import name, the Python API, in-process plug-ins, the built wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import spam_bench
from spam_bench.runners.ray_tune import _register_carried, carried_plugins
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.resolve import resolve

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("suite", "tasks", "optimizers", "runners", "reports")

MY_LION = textwrap.dedent('''
    import torch

    class MyLion(torch.optim.Optimizer):
        """Lion (Chen et al. 2023, arXiv 2302.06675), written the way a researcher's notebook would."""

        def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
            super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            loss = closure() if closure is not None else None
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["exp_avg"] = torch.zeros_like(p)
                    m = state["exp_avg"]
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                    m.mul_(b2).add_(p.grad, alpha=1 - b2)
            return loss
''')

NOTEBOOK = MY_LION + textwrap.dedent("""
    import spam_bench
    result = spam_bench.run("spikes", MyLion, scale="smoke", out="out", optimizer_kwargs={"betas": (0.9, 0.99)})
    assert result.status == "complete" and result.value is not None, result
    assert not result.curves.empty
    table = spam_bench.compare("spikes", ["adamw", "spam", MyLion], seeds=[0], scale="smoke", out="out")
    assert sorted(table["optimizer"]) == ["MyLion", "adamw", "spam"], table
    assert spam_bench.__file__.startswith(EXPECTED), spam_bench.__file__
    print("ok", result.value)
""")


@pytest.fixture(autouse=True)
def _registry_as_it_was():
    """What a test registers in this process must not leak into other tests' listings."""
    OPTIMIZERS.names()  # loaded first: restoring a snapshot of a registry not yet loaded would empty it
    saved = dict(OPTIMIZERS._items), dict(OPTIMIZERS._modules), dict(OPTIMIZERS.local)
    yield
    OPTIMIZERS._items, OPTIMIZERS._modules, OPTIMIZERS.local = saved


def _decoys(where: Path) -> None:
    """What a researcher's working directory may hold: names that would shadow a top-level `optimizers`."""
    (where / "optimizers.py").write_text("raise ImportError('the decoy optimizers.py was imported')\n")
    (where / "tasks").mkdir()
    (where / "tasks" / "__init__.py").write_text("raise ImportError('the decoy tasks/ was imported')\n")
    (where / "suite.py").write_text("raise ImportError('the decoy suite.py was imported')\n")


def test_no_top_level_layer_package_is_installed(tmp_path):
    code = f"import importlib.util as u; print([n for n in {LAYERS!r} if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_notebook_with_decoy_modules_runs_and_compares_its_own_optimizer(tmp_path):
    _decoys(tmp_path)
    script = f"EXPECTED = {str(REPO)!r}\n" + NOTEBOOK
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


@pytest.mark.slow
def test_run_accepts_a_name_a_class_with_kwargs_and_a_factory(tmp_path):
    by_name = spam_bench.run("spikes", "adamw", scale="smoke", out=tmp_path)
    by_class = spam_bench.run(
        "spikes", torch.optim.SGD, scale="smoke", out=tmp_path, optimizer_kwargs={"momentum": 0.9}
    )

    def heavy_ball(model, model_info, *, lr):
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    by_factory = spam_bench.run("spikes", heavy_ball, scale="smoke", out=tmp_path)
    assert by_name.status == by_class.status == by_factory.status == "complete"
    assert by_class.value == by_factory.value  # the same optimizer, reached two ways
    assert by_class.summary["opt_hparams"] == {"momentum": 0.9}  # kwargs are part of the run's identity
    assert isinstance(by_name.curves, pd.DataFrame) and {"step", "split", "name", "value"} <= set(by_name.curves)
    again = spam_bench.run("spikes", torch.optim.SGD, scale="smoke", out=tmp_path, optimizer_kwargs={"momentum": 0.9})
    assert again.reused and again.value == by_class.value


@pytest.mark.slow
def test_an_optimizer_registered_with_an_lr_scale_is_compared_at_its_own_lr(tmp_path, monkeypatch):
    for attr in ("_items", "_modules", "local"):  # the probe must not outlive this test
        monkeypatch.setattr(OPTIMIZERS, attr, dict(getattr(OPTIMIZERS, attr)))
    name = spam_bench.register_optimizer(torch.optim.Adam, name="adam_tenth_lr", lr_scale=0.1)
    table = spam_bench.compare("spikes", ["adamw", name], seeds=[0], scale="smoke", out=tmp_path)
    recipe = resolve(task="spikes", optimizer="adamw", scale="smoke").config.lr
    lrs = dict(zip(table["optimizer"], table["lr"]))
    assert lrs == {"adamw": recipe, name: pytest.approx(recipe * 0.1, rel=1e-12)}
    assert set(table["protocol"]) == {"defaults"}  # a declared scale is still the optimizer at its defaults


@pytest.mark.slow
def test_compare_returns_the_leaderboard_table(tmp_path):
    table = spam_bench.compare("spikes", ["adamw", "spam"], seeds=[0, 1], scale="smoke", out=tmp_path)
    assert list(table["optimizer"]).count("adamw") == 1 and set(table["n"]) == {2}
    assert {"mean", "ci_lo", "ci_hi", "rank"} <= set(table.columns)


def test_a_name_taken_by_another_optimizer_is_refused():
    with pytest.raises(ConfigError, match="a name not taken"):
        spam_bench.register_optimizer(torch.optim.Adam, name="adamw")


def test_sweeps_carry_importable_plugins_by_path_and_refuse_main_ones(monkeypatch):
    for attr in ("_items", "_modules", "local"):  # the probes must not outlive this test
        monkeypatch.setattr(OPTIMIZERS, attr, dict(getattr(OPTIMIZERS, attr)))
    name = spam_bench.register_optimizer(torch.optim.SGD, name="sgd_probe", lr_scale=0.5, momentum=0.5)
    run = resolve(task="spikes", optimizer=name, scale="smoke")
    path, kwargs, lr_scale = carried = carried_plugins([run])[name]
    assert path.endswith(":SGD") and kwargs == {"momentum": 0.5} and lr_scale == 0.5

    del OPTIMIZERS._items[name], OPTIMIZERS.local[name]  # a Ray worker: it has never seen the probe
    _register_carried({name: carried})
    rebuilt = resolve(task="spikes", optimizer=name, scale="smoke")
    assert rebuilt.lr_scale == 0.5 and rebuilt.config.lr == run.config.lr and rebuilt.spec.run_id == run.spec.run_id

    local = type("NotebookOpt", (torch.optim.SGD,), {"__module__": "__main__"})
    name = spam_bench.register_optimizer(local)
    run = resolve(task="spikes", optimizer=name, scale="smoke")
    with pytest.raises(ConfigError, match=r"entry point in group spam_bench\.optimizers"):
        carried_plugins([run])
    assert name in OPTIMIZERS.local


@pytest.mark.slow
def test_the_built_wheel_installs_in_a_fresh_venv_where_spambench_list_works(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("spam_bench-*.whl")
    assert list(dist.glob("spam_bench-*.tar.gz"))
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The fresh venv borrows this one's third-party packages (a path line, not a site dir, so the
    # editable install's finder is not loaded there) and gets spam-bench from the wheel alone.
    fresh_site = next((venv / "lib").glob("python*/site-packages"))
    (fresh_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    _decoys(tmp_path)
    listing = subprocess.run([venv / "bin" / "spambench", "list"], cwd=tmp_path, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "spikes" in listing.stdout and "spam " in listing.stdout
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import spam_bench.tasks.llm as m; print(m.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(fresh_site))
    smoke = subprocess.run(
        [
            venv / "bin" / "spambench",
            "run",
            "--task",
            "llm",
            "--opt",
            "adamw",
            "--scale",
            "smoke",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert smoke.returncode == 0, smoke.stderr[-2000:]  # scale YAMLs and the tiny corpus ship with the wheel
