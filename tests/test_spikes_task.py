"""The `spikes` task end to end, and the SPAM ablations it exists for."""

import pytest

from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them


def _run(out, opt, *sets):
    # The test's own sets replace the defaults here: the CLI refuses a key given twice.
    values = {"steps": "600", "eval_every": "200", **dict(s.split("=", 1) for s in sets)}
    argv = ["run", "--task", "spikes", "--opt", opt, "--out", str(out)]
    for key, value in values.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    (summary,) = [read_json(p) for p in out.glob(f"runs/spikes/{opt}-*/summary.json")]
    return summary


def test_spikes_run_reports_robustness_against_its_clean_twin(out_dir):
    s = _run(out_dir, "adamw")
    assert s["status"] == "complete" and s["spikes_injected"] > 0
    assert s["robustness"] == pytest.approx(s["value"] / s["clean_value"])
    assert s["robustness"] > 1.0  # the injected spikes cost Adam something
    assert sum(s["gss_spikes"].values()) > 0
    assert (out_dir / "runs" / "spikes" / s["run_id"] / "grad_samples.npz").exists()


def test_without_injection_there_is_no_twin(out_dir):
    s = _run(out_dir, "adamw", "inject_step_fraction=0")
    assert "robustness" not in s and s["spikes_injected"] == 0  # every summary carries the key


@pytest.mark.parametrize("ablation", ["opt.reset_interval=0", "opt.spike_threshold=0", "opt.warmup_steps=0", ""])
def test_spam_ablations_run_end_to_end(tmp_path, ablation):
    pytest.importorskip("spam_bench.optimizers.spam")
    s = _run(tmp_path, "spam", *([ablation] if ablation else []), "steps=1100")
    assert s["status"] == "complete" and s["steps"] == 1100


def test_report_shows_spike_counts_and_robustness_per_optimizer(out_dir):
    from spam_bench.reports.build import write_leaderboard

    _run(out_dir, "adamw")
    markdown, _ = write_leaderboard(out_dir, plots=False)
    section = markdown[markdown.index("## Gradient spikes") :]
    row = next(line for line in section.splitlines() if line.startswith("| adamw |"))
    summary = next(iter(read_json(p) for p in out_dir.glob("runs/spikes/*/summary.json")))
    assert f"other {summary['gss_spikes']['other']}" in row
    assert row.split("|")[6].strip() == f"{summary['robustness']:.3g}"


@pytest.mark.parametrize("opt", ["spam", "stable_spam"])
def test_spike_aware_optimizers_report_what_they_clipped_and_when_they_reset(out_dir, opt):
    s = _run(out_dir, opt, "steps=1100")
    assert s["reset_steps"] == ([500, 1000] if opt == "spam" else [1000])
    assert sum(s["clipped_entries"].values()) > 0


@pytest.mark.parametrize("opt", ["spam_sparse", "galore"])
def test_an_optimizer_with_nothing_to_act_on_is_recorded_as_not_applicable(out_dir, opt, capsys):
    # The spikes problems have no attention/MLP matrices: nothing to mask or project. A sweep over
    # every task x optimizer meets this; it is a recorded fact, not a crash to retry.
    s = _run(out_dir, opt)
    assert s["status"] == "not_applicable" and s["value"] is None
    assert s["reason"].startswith(f"{opt}: the model has no 2-D attention/MLP weights")
    assert f"(not_applicable: {opt}: the model has no 2-D" in capsys.readouterr().out


def test_report_names_inapplicable_pairs_without_ranking_them(out_dir):
    from spam_bench.reports.build import write_leaderboard

    _run(out_dir, "adamw")
    _run(out_dir, "spam_sparse")
    markdown, report_dir = write_leaderboard(out_dir, plots=False)
    assert "1 complete runs (0 diverged) of 1 tasks and 1 optimizers" in markdown
    assert "1 runs were not applicable" in markdown
    assert "Not applicable here, so not ranked: spam_sparse (spam_sparse: the model has no 2-D" in markdown
    assert "| adamw |" in markdown and "| spam_sparse |" not in markdown
    assert "spam_sparse" not in (report_dir / "summary.md").read_text()
