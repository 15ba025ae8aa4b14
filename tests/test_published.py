"""`spambench publish`: RESULTS.md and results.parquet from a store, on the checked-in gaming fixture
(tests/fixtures/honest_runs/): findings come from the paired tests and say where the data cannot
separate the optimizers; every number is tied to its runs' code and to a command that remakes them."""

import json
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from spam_bench.reports.build import write_leaderboard
from spam_bench.reports.findings import natural_spike_lines
from spam_bench.reports.published import _seed_ranges, commands_for, coverage
from spam_bench.runners.cli import main
from spam_bench.suite.sweep import parse_seeds

FIXTURE = Path(__file__).parent / "fixtures" / "honest_runs"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    for part in ("runs", "tuning"):
        shutil.copytree(FIXTURE / part, store / part)
    into = tmp_path_factory.mktemp("results")
    assert main(["publish", "--out", str(store), "--into", str(into)]) == 0
    return store, into, (into / "RESULTS.md").read_text()


def _finding(text: str, head: str) -> str:
    (line,) = [line for line in text.splitlines() if line.strip().startswith(f"- {head}")]
    return line


def test_findings_say_which_differences_the_paired_test_resolves_and_which_it_cannot(published):
    _, _, text = published
    # tsf: adamw's CI [0.0163, 0.0568] holds spam's spread; the paired test cannot separate them
    spam = _finding(text.split("- `tsf` at `tiny`", 1)[1], "spam ")
    assert "**cannot separate**" in spam and "paired t-test on 3 seeds" in spam
    assert "seeds would resolve the observed difference at 80% power" in spam
    # one seed is never tested, whatever its value
    lone = _finding(text.split("- `tsf` at `tiny`", 1)[1], "stable_spam ")
    assert "not tested (1 shared complete seeds" in lone
    # rl is "higher is better": the direction is stated with the metric
    assert "- `rl` at `tiny`, eval_return (higher is better):" in text


def test_provenance_ties_every_task_to_its_code_and_commands_remake_the_runs(published):
    store, into, text = published
    runs = pd.read_parquet(into / "results.parquet").drop_duplicates("run_id")
    provenance = text.split("## Provenance", 1)[1].split("## Findings", 1)[0]
    for task, g in runs.groupby("task", observed=True):
        row = next(line for line in provenance.splitlines() if line.startswith(f"| {task} |"))
        assert f"| {len(g)} |" in row and all(str(c)[:10] in row for c in g["git_commit"].dropna().unique())
    assert not [c for c in runs.columns if "checkpoint" in c or "grad_sample" in c]
    # the commands, expanded as spambench would, make exactly the published runs
    made = set()
    for line in text.splitlines():
        if line.startswith("    spambench sweep "):
            made |= _expand(line.split()[2:], store)
    published_runs = {
        (r.task, r.optimizer, int(r.seed), json.loads(r.overrides).get("lr"), r.opt_hparams) for r in runs.itertuples()
    }
    assert made == published_runs


def _expand(args: list[str], store: Path) -> set[tuple]:
    flags: dict[str, list[str]] = {}
    for flag, value in zip(args[::2], args[1::2]):
        flags.setdefault(flag, []).append(value)
    assert flags["--out"] == ["STORE"]
    opt_sets = {k[4:]: json.loads(v) for k, v in (kv.split("=", 1) for kv in flags.get("--set", []))}
    lrs = [float(x) for x in flags["--grid"][0].removeprefix("lr=").split(",")] if "--grid" in flags else [None]
    return {
        (flags["--task"][0], opt, seed, lr, json.dumps(opt_sets, sort_keys=True))
        for opt in flags["--opt"][0].split(",")
        for seed in parse_seeds(flags["--seeds"][0])
        for lr in lrs
    }


def test_the_leaderboard_part_is_the_reports_markdown_under_results_headings(published):
    store, _, text = published
    markdown, _ = write_leaderboard(store, plots=False, all_code=True)
    body = text.split("## The leaderboard\n\n", 1)[1]
    assert body.strip() == "\n".join(("#" + x) if x.startswith("#") else x for x in markdown.splitlines()).strip()


def test_seed_ranges_use_spambenchs_seed_syntax():
    assert _seed_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and _seed_ranges([3]) == "3"


def test_an_into_that_is_a_file_is_refused_in_one_line(published, tmp_path, capsys):
    store, _, _ = published
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["publish", "--out", str(store), "--into", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "into: invalid value" in err


def _run_row(task: str, optimizer: str, seed: int, loss_spikes: int, injected: int = 0, recipe: str = "defaults"):
    events = json.dumps({"injected": injected, "loss_spikes": loss_spikes})
    return dict(
        task=task,
        scale="tiny",
        problem="defaults",
        recipe=recipe,
        status="complete",
        optimizer=optimizer,
        seed=seed,
        spike_events=events,
    )


def test_natural_spikes_are_counted_without_injection_and_compared_by_the_paired_test():
    rows = [_run_row("llm", o, s, 0) for o in ("adamw", "spam") for s in range(3)]
    rows += [_run_row("rl", "adamw", s, n) for s, n in enumerate((10, 12, 11))]
    rows += [_run_row("rl", "spam", s, n) for s, n in enumerate((1, 2, 1))]
    rows += [_run_row("spikes", o, s, 5, injected=40) for o in ("adamw", "spam") for s in range(3)]
    rows += [_run_row("rl", "spam", s, 500, recipe="lr=0.1") for s in range(3)]  # not at defaults: left out
    lines = natural_spike_lines(pd.DataFrame(rows))
    text = "\n".join(lines)
    assert "`spikes`" not in text  # injected spikes are the spikes task's own finding
    (rl,) = [line for line in lines if line.startswith("- `rl` at `tiny`")]
    assert "adamw 11 [10, 12] (n=3)" in rl and "spam 1.333 [1, 2] (n=3)" in rl
    assert "spam vs adamw: **spam has fewer** (paired t-test on 3 seeds" in text
    assert "spam vs adamw: **cannot separate** (paired t-test on 3 seeds, p = 1;" in text  # llm: 0 vs 0
    assert lines[-1].startswith("- adamw met no loss spike without injection on `llm`: not a spiky regime")


def test_the_headline_calls_calm_exactly_the_problems_the_natural_spike_lines_call_calm():
    """One rule for both: AdamW's loss spikes counted by telemetry on every seed that has a count, all
    zero. A run without the count (older telemetry) says nothing, so a problem of such runs is not calm."""
    from spam_bench.reports.findings import headline

    rows = [_run_row("llm", o, s, 0) for o in ("adamw", "spam") for s in range(3)]  # counted, none: calm
    rows += [_run_row("rl", o, s, 0) for o in ("adamw", "spam") for s in range(3)]
    for row in rows[-6:]:
        row["spike_events"] = json.dumps({"injected": 0})  # rl: no count recorded, so not calm
    rows += [_run_row("tsf", "adamw", s, n) for s, n in enumerate((0, 3, 0))]  # one spike run: not calm
    runs = pd.DataFrame(rows).assign(value=1.0, direction="min")
    table = pd.DataFrame(columns=["protocol", "task", "scale", "problem", "optimizer"])
    short = "\n".join(headline(table, runs, []))
    assert "adamw met no loss spike on `llm` at `tiny`: no naturally spiky regime" in short
    assert natural_spike_lines(runs)[-1].startswith("- adamw met no loss spike without injection on `llm`: not")


def _store_of(tmp_path: Path, name: str, tasks: tuple[str, ...], tuning: bool = True) -> Path:
    store = tmp_path / name
    for task in tasks:
        shutil.copytree(FIXTURE / "runs" / task, store / "runs" / task)
    if tuning:
        shutil.copytree(FIXTURE / "tuning", store / "tuning")
    return store


def _table(folder: Path, name: str) -> pd.DataFrame:
    frame = pd.read_parquet(folder / name)
    frame = frame.astype({c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)})
    order = [c for c in ("task", "run_id", "split", "name", "step") if c in frame]
    return frame.sort_values(order).reset_index(drop=True)


def test_publishing_two_stores_into_one_folder_gives_what_one_store_of_both_gives(published, tmp_path):
    """Results accumulate across machines: a snapshot merged with a second store's runs is the report
    of all of them, word for word (the Markdown, the runs table, the long table), tuning records
    included although only the first store had them."""
    _, whole, text = published
    into = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no dtype guessing from all-empty columns
        assert main(["publish", "--out", str(_store_of(tmp_path, "a", ("tsf",))), "--into", str(into)]) == 0
        first = (into / "RESULTS.md").read_text()
        assert "`rl`" not in first.split("## Provenance", 1)[1].split("## Findings", 1)[0]
        second = _store_of(tmp_path, "b", ("rl",), tuning=False)
        assert main(["publish", "--out", str(second), "--into", str(into)]) == 0
    assert (into / "RESULTS.md").read_text() == text
    assert "tuned" in text.split("### Across tasks", 1)[1]
    for name in ("runs.parquet", "results.parquet"):
        pd.testing.assert_frame_equal(_table(into, name), _table(whole, name), check_like=True)
    assert json.loads((into / "tuned.json").read_text()) == json.loads((whole / "tuned.json").read_text())
    # publishing the same store again changes nothing: a run in both is kept once
    assert main(["publish", "--out", str(_store_of(tmp_path, "c", ("rl",))), "--into", str(into)]) == 0
    assert (into / "RESULTS.md").read_text() == text
    assert not [p.name for p in into.rglob(".*")]  # no temporary file left, figures/ included
    umask = os.umask(0o022)
    os.umask(umask)
    files = [p for p in into.rglob("*") if p.is_file()]  # figures/ included
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}  # as open() makes


def test_a_stale_copy_in_a_store_does_not_replace_a_newer_published_run(published, tmp_path):
    """A machine whose store still holds an old copy of a run must not undo the snapshot's newer one."""
    _, whole, _ = published
    into = tmp_path / "results"
    shutil.copytree(whole, into)
    runs = pd.read_parquet(into / "runs.parquet")
    (task, run_id), value = runs[["task", "run_id"]].iloc[0], float(runs["value"].iloc[0])
    runs["finished_at"] = "2200-01-01T00:00:00+00:00"  # the snapshot's copies are the newest
    runs.loc[0, "value"] = value + 1.0
    runs.to_parquet(into / "runs.parquet", index=False)
    assert main(["publish", "--out", str(_store_of(tmp_path, "old", (task,))), "--into", str(into)]) == 0
    kept = pd.read_parquet(into / "runs.parquet").set_index(["task", "run_id"])
    assert kept.loc[(task, run_id), "value"] == value + 1.0


def test_a_snapshot_of_the_older_format_is_refused_not_dropped(published, tmp_path, capsys):
    store, whole, _ = published
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copyfile(whole / "results.parquet", legacy / "results.parquet")
    (legacy / "RESULTS.md").write_text("kept")
    capsys.readouterr()
    assert main(["publish", "--out", str(store), "--into", str(legacy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "published: invalid value" in err and "--replace" in err
    assert sorted(p.name for p in legacy.iterdir()) == ["RESULTS.md", "results.parquet"]
    assert (legacy / "RESULTS.md").read_text() == "kept"
    assert main(["publish", "--out", str(store), "--into", str(legacy), "--replace"]) == 0
    assert (legacy / "RESULTS.md").read_text() == (whole / "RESULTS.md").read_text()


def _spoil_metadata(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"pandas": b'{"columns": 5, "index_columns": 3}'}), path)


def _runs_edit(edit):
    def spoil(folder: Path) -> None:
        runs = pd.read_parquet(folder / "runs.parquet")
        edit(runs).to_parquet(folder / "runs.parquet", index=False)

    return spoil


def _bytes(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


SPOILED = {
    "not parquet": (_bytes("runs.parquet", b"PAR1 not really"), "not readable as Parquet"),
    "a seed that is text": (_runs_edit(lambda r: r.astype({"seed": object}).assign(seed="x")), "column seed"),
    "a missing column": (_runs_edit(lambda r: r.drop(columns=["problem"])), "column problem"),
    "a run twice": (_runs_edit(lambda r: pd.concat([r, r.iloc[:1]])), "each (task, run_id) once"),
    "a name that breaks a table": (_runs_edit(lambda r: r.assign(optimizer="spam|x")), "column optimizer"),
    "a non-finite count": (
        _runs_edit(lambda r: r.assign(spike_events='{"loss_spikes": Infinity}')),
        "column spike_events",
    ),
    "metrics of an unknown run": (
        _runs_edit(lambda r: r.iloc[1:]),
        "a run of runs.parquet",
    ),
    "tuning records that are not records": (_bytes("tuned.json", b'[{"task": 1}]'), "tuned.json"),
}


@pytest.mark.parametrize("spoil", SPOILED.values(), ids=SPOILED.keys())
def test_a_damaged_or_hostile_snapshot_is_refused_in_one_line_and_nothing_is_written(
    published, tmp_path, capsys, spoil
):
    store, whole, _ = published
    into = tmp_path / "results"
    shutil.copytree(whole, into)
    damage, words = spoil
    damage(into)
    before = {p.relative_to(into): p.read_bytes() for p in into.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["publish", "--out", str(store), "--into", str(into)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert {p.relative_to(into): p.read_bytes() for p in into.rglob("*") if p.is_file()} == before


def test_a_files_own_pandas_metadata_is_ignored_not_followed(published, tmp_path):
    """The pandas schema in a Parquet file is its writer's word: the data are read without it."""
    store, whole, text = published
    into = tmp_path / "results"
    shutil.copytree(whole, into)
    _spoil_metadata(into / "runs.parquet")
    assert main(["publish", "--out", str(store), "--into", str(into)]) == 0
    assert (into / "RESULTS.md").read_text() == text


def test_a_planted_link_is_replaced_never_written_through(published, tmp_path):
    store, _, _ = published
    into, outside = tmp_path / "results", tmp_path / "bashrc"
    into.mkdir()
    outside.write_text("mine")
    (into / "RESULTS.md").symlink_to(outside)
    assert main(["publish", "--out", str(store), "--into", str(into)]) == 0
    assert outside.read_text() == "mine" and not (into / "RESULTS.md").is_symlink()


def test_a_sweep_skips_what_the_snapshot_holds_by_the_current_code(tmp_path, capsys):
    """A new machine runs only what the published snapshot lacks: a published run counts as done when
    the current code made it, and is run again when the code changed."""
    made, into = tmp_path / "made", tmp_path / "results"
    argv = ["--task", "spikes", "--opt", "adamw", "--scale", "smoke", "--seeds", "0"]
    assert (
        main(["run", "--task", "spikes", "--opt", "adamw", "--scale", "smoke", "--seed", "0", "--out", str(made)]) == 0
    )
    assert main(["publish", "--out", str(made), "--into", str(into)]) == 0
    capsys.readouterr()
    assert main(["sweep", *argv, "--out", str(tmp_path / "fresh"), "--published", str(into)]) == 0
    assert "1 already complete (1 of them published in" in capsys.readouterr().out
    assert not (tmp_path / "fresh" / "runs").exists()  # nothing ran

    from spam_bench.runners.cli import _not_published
    from spam_bench.suite.sweep import expand

    (run,) = expand(task="spikes", optimizers=["adamw"], seeds=[0], grid={}, sets={}, scale="smoke", device="cpu")
    assert _not_published([run], str(into)) == ([], 1)
    runs = pd.read_parquet(into / "runs.parquet").assign(code_id="made-by-other-code")
    runs.to_parquet(into / "runs.parquet", index=False)
    assert _not_published([run], str(into)) == ([run], 0)
    assert main(["sweep", *argv, "--out", str(tmp_path / "x"), "--published", str(tmp_path / "nowhere")]) == 2


def test_provenance_names_each_runs_machine_class():
    from spam_bench.reports.published import _machine

    new = json.dumps({"cpu": "x86_64", "cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "device": "cpu"})
    gpu = json.dumps({"cpu_model": "Intel Xeon", "cpu_capability": "AVX512", "device": "NVIDIA H200"})
    assert _machine(new) == "AMD EPYC (AVX2)"
    assert _machine(gpu) == "Intel Xeon (AVX512), NVIDIA H200"
    assert _machine(json.dumps({"cpu": "x86_64", "device": "cpu"})) == "x86_64"  # runs from before the fields
    assert _machine(None) == "unknown"


def test_coverage_tells_a_task_with_too_few_seeds_from_a_task_with_no_runs():
    rows = [("llm", "adamw", seed, "complete", 600.0) for seed in (0, 1)]
    rows += [("tsf", "adamw", seed, "complete", 60.0) for seed in (0, 1, 2)] + [("tsf", "spam", 0, "diverged", 30.0)]
    lines = coverage(pd.DataFrame(rows, columns=["task", "optimizer", "seed", "status", "wall_time_s"]))
    by_task = {line.split("`")[1]: line for line in lines}
    assert "no optimizer at 3+ seeds yet" in by_task["llm"] and "adamw" in by_task["llm"]
    assert by_task["llm"].endswith("[2 runs, 20.0 min of run time]")
    assert by_task["tsf"].endswith("[4 runs, 3.5 min of run time]")
    assert by_task["rl"].endswith("**not in this snapshot yet**")
    assert "1 optimizers at 3+ seeds" in by_task["tsf"] and "spam" in by_task["tsf"].split("not yet:")[1]


def test_in_short_answers_the_three_questions_from_the_same_tests_as_the_findings(published):
    _, _, text = published
    short = text.split("## In short", 1)[1].split("## Coverage", 1)[0]
    assert "- **Does SPAM widen the stable LR range?**\n  - no LR study of both spam and adamw" in short
    # the fixture's runs carry no spike telemetry: no claim about spikes either way
    assert "met no loss spike" not in short
    assert "  - no problem with spike counts, injected or natural, in this snapshot yet" in short
    iqm = [line for line in short.splitlines() if line.startswith("  - ") and " IQM **" in line]
    assert [line.split()[1] for line in iqm] == ["spam", "adafactor"]  # best IQM first
    # spam: better by the paired test on rl, cannot separate on tsf (the Findings above say the same)
    assert iqm[0].endswith("paired tests: better on 1, cannot separate on 1")
    findings = text.split("## Findings", 1)[1]
    assert "**spam better** (paired t-test on 3 seeds" in findings.split("- `tsf`", 1)[0]
    assert "**cannot separate**" in _finding(findings.split("- `tsf`", 1)[1], "spam ")
    # stable_spam has one seed: it enters no aggregate
    assert "stable_spam" not in "\n".join(iqm)


def test_each_lr_study_figure_is_published_beside_results_md_and_a_stale_one_goes(published, tmp_path):
    store, into, text = published
    (link,) = [line for line in text.splitlines() if "![LR sensitivity, tsf](" in line]
    figure = into / link.split("](", 1)[1].rstrip(")")
    assert figure.parent == into / "figures" and figure.read_bytes().startswith(b"\x89PNG")
    # publishing again into a copy: a figure no study draws any more is removed, the study's stays
    again = tmp_path / "again"
    shutil.copytree(into, again)
    (again / "figures" / "lr-sensitivity-gone-tiny.png").write_bytes(b"old")
    assert main(["publish", "--out", str(store), "--into", str(again)]) == 0
    assert sorted(p.name for p in (again / "figures").iterdir()) == [figure.name]


def test_the_committed_results_md_is_what_publish_makes_from_the_committed_snapshot(tmp_path):
    """results/RESULTS.md is never edited by hand and never goes stale: republishing the committed
    snapshot (with an empty store) gives it again, word for word but for the date, with its figures.
    After a change to what publish writes, run `spambench publish --out <empty> --into results`."""
    committed = Path(__file__).parents[1] / "results"
    into = tmp_path / "results"
    shutil.copytree(committed, into, ignore=shutil.ignore_patterns("archive-*"))
    (tmp_path / "store").mkdir()
    assert main(["publish", "--out", str(tmp_path / "store"), "--into", str(into)]) == 0
    dated = lambda text: [line for line in text.splitlines() if not line.startswith("Generated on ")]
    assert dated((into / "RESULTS.md").read_text()) == dated((committed / "RESULTS.md").read_text())
    assert sorted(p.name for p in (into / "figures").iterdir()) == sorted(
        p.name for p in (committed / "figures").iterdir()
    )


def test_a_grid_still_under_way_gets_a_command_per_seed_set_and_none_claims_a_missing_run():
    # adamw has seeds 0-2 at lr 0.01 but only 0-1 at lr 0.1 (its seed 2 there not run yet): the product
    # of all its seeds and lrs would claim a run nobody made.
    made = [("adamw", 0.01, s) for s in (0, 1, 2)] + [("adamw", 0.1, s) for s in (0, 1)]
    made += [("spam", lr, s) for lr in (0.01, 0.1) for s in (0, 1)] + [("spam", None, s) for s in (0, 1, 2)]
    runs = pd.DataFrame(
        [
            {
                "task": "spikes",
                "scale": "tiny",
                "optimizer": opt,
                "seed": seed,
                "overrides": json.dumps({} if lr is None else {"lr": lr}),
                "opt_hparams": "{}",
            }
            for opt, lr, seed in made
        ]
    )
    commands = commands_for(runs, Path("STORE"))
    expanded = set().union(*(_expand(c.split()[2:], Path("STORE")) for c in commands))
    assert expanded == {("spikes", opt, seed, lr, "{}") for opt, lr, seed in made}
    adamw = [c.split(" --opt adamw ")[1] for c in commands if " --opt adamw " in c]
    assert sorted(adamw) == ["--seeds 0-1 --grid lr=0.1 --out STORE", "--seeds 0-2 --grid lr=0.01 --out STORE"]
