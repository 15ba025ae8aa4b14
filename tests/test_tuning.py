"""Fair tuning: quasi-random points from declared spaces, ASHA, best saved, re-run with --from-tuning."""

import pytest
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json
from spam_bench.suite.tuning import Dist, draw, load_best


def test_points_are_seeded_inside_bounds_and_log_spaced():
    space = {"lr": Dist(1e-4, 1e-2, log=True), "opt.k": Dist(10, 1000, log=True, integer=True)}
    a, b = draw(space, 16, seed=0), draw(space, 16, seed=0)
    assert a == b and len({p["lr"] for p in a}) == 16
    assert all(1e-4 <= p["lr"] <= 1e-2 and 10 <= p["opt.k"] <= 1000 and isinstance(p["opt.k"], int) for p in a)
    below_1e3 = sum(p["lr"] < 1e-3 for p in a)
    assert 5 <= below_1e3 <= 11  # log-uniform: about half the points below the geometric midpoint


@pytest.mark.slow
def test_tune_saves_the_best_finished_trial_and_sweep_reuses_it(tmp_path, capsys):
    out = tmp_path / "out"
    sets = small_llm_sets(steps=18, eval_every=3)
    argv = ["tune", "--task", "llm", "--opt", "adamw", "--trials", "3", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    best = read_json(out / "tuning" / "best" / "llm" / "tiny" / "adamw.json")
    summaries = [read_json(p) for p in (out / "tuning").glob("runs/llm/*/summary.json")]
    values = [s["value"] for s in summaries if s["status"] == "complete"]
    assert best["value"] == min(values) and best["trials"] == 3
    assert not (out / "runs").exists(), "tuning runs stay out of the evaluation store"

    argv = ["sweep", "--task", "llm", "--opt", "adamw", "--seeds", "0", "--from-tuning", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    (summary,) = [read_json(p) for p in out.glob("runs/llm/*/summary.json")]
    tuned = load_best(out, "llm", "tiny", "adamw")
    assert summary["overrides"]["lr"] == float(tuned["lr"]) and summary["seed"] == 0
    assert summary["opt_hparams"]["beta2"] == float(tuned["opt.beta2"])


def test_from_tuning_without_a_tuned_optimizer_is_a_one_line_error(out_dir, capsys):
    assert main(["sweep", "--task", "llm", "--opt", "adamw", "--from-tuning", "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--from-tuning: invalid value 'adamw'" in err
