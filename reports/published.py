"""`spambench publish`: the published results, `results/RESULTS.md` and the snapshot beside it.

A results store (the leaderboard's, the LR studies', the spiky regime's) becomes a snapshot a reader can
trust without running anything: the report's leaderboard Markdown (no figures: the file lives in the
repository), preceded by what the numbers are tied to and what they say:

- *Coverage*: per task, the optimizers at 3+ seeds and those not yet.
- *Provenance*: per task, the code fingerprints and git commits of its runs, their dates, and the
  commands that make them again. Published runs may come from an older checkout than the one reading
  them, so every run is reported whatever its code (the report's `--all-code`), and an entry that mixes
  code versions is named as such by the leaderboard.
- *In short* and *Findings* (reports/findings.py), computed from the same statistics the leaderboard
  ranks with, never written by hand, and saying where the data cannot separate the optimizers.

Beside RESULTS.md lies the snapshot it is computed from (reports/snapshot.py): runs.parquet, the runs
table, and results.parquet, the report's long format (every complete run's metrics, long curves thinned
to summary.CURVE_POINTS points, with the run columns): no checkpoints, no gradient samples. Publishing
adds a store's runs to the snapshot already in the folder, so results made on several machines (or in
sessions whose stores are gone) accumulate; `--replace` starts the snapshot afresh.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from spam_bench.reports import leaderboard, sensitivity, snapshot, stats
from spam_bench.reports.build import tuning_records, write_leaderboard
from spam_bench.reports.findings import BASELINE, findings, headline, natural_spike_lines
from spam_bench.reports.leaderboard import _duration, _json
from spam_bench.reports.summary import load_runs
from spam_bench.suite.errors import NOT_APPLICABLE
from spam_bench.suite.registry import OPTIMIZERS, TASKS
from spam_bench.suite.results import RunStore

RESULTS_MD = "RESULTS.md"
FIGURES = "figures"  # the LR studies' figures, in a folder beside RESULTS.md


def coverage(runs: pd.DataFrame) -> list[str]:
    """Which registered tasks and optimizers the snapshot covers at MIN_SEEDS complete seeds, and which
    not; with each task's runs and their wall-clock times added up (what its leaderboard costs)."""
    lines = []
    for task in TASKS.names():
        mine = runs[runs.task == task] if len(runs) else runs
        refused = set(mine.loc[mine.status == NOT_APPLICABLE, "optimizer"]) if len(mine) else set()
        done = mine[mine.status.isin(["complete", "diverged"])] if len(mine) else mine
        seeds = done.groupby("optimizer")["seed"].nunique() if len(done) else pd.Series(dtype=int)
        wanted = [o for o in OPTIMIZERS.names() if o not in refused]
        full = sorted(o for o in wanted if seeds.get(o, 0) >= stats.MIN_SEEDS)
        missing = sorted(o for o in wanted if seeds.get(o, 0) < stats.MIN_SEEDS)
        na = f" ({', '.join(sorted(refused))} not applicable)" if refused else ""
        cost = f" [{len(done)} runs, {_duration(pd.to_numeric(done.wall_time_s, errors='coerce').sum())} of run time]"
        if len(done) == 0:
            lines.append(f"- `{task}`: **not in this snapshot yet**")
        elif not missing:
            lines.append(f"- `{task}`: every applicable optimizer at {stats.MIN_SEEDS}+ seeds{na}{cost}")
        elif not full:
            lines.append(
                f"- `{task}`: no optimizer at {stats.MIN_SEEDS}+ seeds yet; not yet: {', '.join(missing)}{cost}"
            )
        else:
            lines.append(
                f"- `{task}`: {len(full)} optimizers at {stats.MIN_SEEDS}+ seeds; not yet: {', '.join(missing)}{cost}"
            )
    return lines


def _machine(hardware: Any) -> str:
    """A run's machine class: CPU model and torch's CPU capability (what decides float32's last bits),
    and the accelerator where there is one; the bare ISA for runs that predate those fields."""
    h = _json(hardware)
    cpu = h.get("cpu_model") or h.get("cpu") or "unknown"
    cpu = f"{cpu} ({h['cpu_capability']})" if h.get("cpu_capability") else str(cpu)
    device = h.get("device")
    return f"{cpu}, {device}" if device and device != "cpu" else cpu


def provenance(runs: pd.DataFrame) -> list[str]:
    """Per task: its runs' code fingerprints, commits, machines and finishing dates."""
    if runs.empty:
        return []
    lines = [
        "| task | runs | code fingerprint(s) | git commit(s) | machine(s) | finished |",
        "|---|---|---|---|---|---|",
    ]
    for task, g in runs.groupby("task", sort=True):
        codes = sorted({str(c) for c in g["code_id"].dropna()})
        commits = sorted({str(c)[:10] for c in g["git_commit"].dropna()})
        machines = sorted({_machine(h) for h in g["hardware"]})
        ends = pd.to_datetime(g["finished_at"], utc=True, errors="coerce", format="ISO8601").dropna()
        when = f"{ends.min():%Y-%m-%d} to {ends.max():%Y-%m-%d}" if len(ends) else "-"
        lines.append(
            f"| {task} | {len(g)} | {', '.join(codes) or '-'} | {', '.join(commits) or '-'} "
            f"| {'; '.join(machines)} | {when} |"
        )
    return lines


def commands_for(runs: pd.DataFrame, store: Path) -> list[str]:
    """`spambench sweep` commands that make every run of `runs` again (and reuse the complete ones).

    Runs are grouped by task, scale, task settings other than the lr, and opt.* values; within a group,
    the learning rates an optimizer ran on the same seeds share one command (a grid still under way has
    lrs with fewer seeds: a command per seed set, so that no command claims a run that was not made),
    and optimizers with the same seeds and learning rates share it too."""
    if runs.empty:
        return []
    plans: dict[tuple[str, ...], list[str]] = {}
    settings_of = runs["overrides"].map(lambda o: json.dumps({k: v for k, v in _json(o).items() if k != "lr"}))
    at_default_lr = runs["overrides"].map(lambda o: "lr" not in _json(o))  # its own command: no --grid
    for (task, scale, settings_json, opt_hparams, optimizer, _), g in runs.assign(
        _settings=settings_of, _default_lr=at_default_lr
    ).groupby(["task", "scale", "_settings", "opt_hparams", "optimizer", "_default_lr"], sort=True):
        settings = json.loads(settings_json)
        sets = [f"{k}={v}" for k, v in sorted(settings.items())]
        sets += [f"opt.{k}={v}" for k, v in sorted(_json(opt_hparams).items())]
        seeds_at: dict[float | None, set[int]] = {}
        for overrides, seed in zip(g["overrides"], g["seed"]):
            lr = _json(overrides).get("lr")
            seeds_at.setdefault(None if lr is None else float(lr), set()).add(int(seed))
        lrs_with: dict[str, list[float]] = {}
        for lr, seeds in seeds_at.items():
            lrs_with.setdefault(_seed_ranges(sorted(seeds)), []).extend([] if lr is None else [lr])
        for seed_text, lrs in lrs_with.items():
            key = (task, scale, " ".join(sets), ",".join(map(repr, sorted(lrs))), seed_text)
            plans.setdefault(key, []).append(optimizer)
    out = []
    for (task, scale, sets, lrs, seeds), optimizers in sorted(plans.items()):
        line = f"spambench sweep --task {task} --scale {scale} --opt {','.join(sorted(optimizers))} --seeds {seeds}"
        line += "".join(f" --set {kv}" for kv in sets.split())
        line += f" --grid lr={lrs}" if lrs else ""
        out.append(f"{line} --out {store}")
    return out


def _seed_ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (spambench's seed syntax)."""
    parts: list[str] = []
    start = prev = seeds[0]
    for s in [*seeds[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if s is not None:
            start = prev = s
    return ",".join(parts)


def write_published(
    store: Path,
    into: Path,
    commands: Iterable[str] | None = None,
    today: dt.date | None = None,
    replace: bool = False,
) -> Path:
    """Write RESULTS.md and the snapshot (runs.parquet, results.parquet, tuned.json) for `store` into
    the folder `into`, added to the snapshot already there (reports/snapshot.py) unless `replace`;
    returns RESULTS.md's path.

    The report is built first from the merged runs (in a folder of its own, figures skipped), so the
    leaderboard part of RESULTS.md is the report's Markdown, word for word. Everything is computed
    before anything is written, and the files are written together (`snapshot.write_files`): a
    snapshot that cannot be read, or a failure on the way, leaves the folder as it was."""
    prior = None if replace else snapshot.read_snapshot(into)
    store_runs, store_long = load_runs(RunStore(store))
    merged = snapshot.merge(prior, store_runs, store_long, tuning_records(store, store_runs))
    every, long = merged.runs, merged.long
    with tempfile.TemporaryDirectory(prefix="spambench-publish-") as tmp:
        markdown, _ = write_leaderboard(
            store,
            plots=False,
            all_code=True,
            frames=(every, long),
            tuned=merged.tuned,
            report_dir=Path(tmp) / "report",
        )
    runs = every[every.status != NOT_APPLICABLE].reset_index(drop=True) if len(every) else every
    table = leaderboard.entries(runs, merged.tuned) if len(runs) else pd.DataFrame()
    # The store's path is this machine's: the commands name it STORE.
    commands = list(commands) if commands is not None else commands_for(every, Path("STORE"))
    studies = sensitivity.studies(runs, long)  # once, for the headline, the findings and the figures
    figures = study_figures(studies, runs)
    date = (today or dt.date.today()).isoformat()
    body = [
        "# spam-bench: published results",
        "",
        f"Generated on {date} by `spambench publish --out STORE`, from results stores (STORE) filled by these "
        "commands (complete runs are reused, so they resume where they stopped; not-applicable pairs included):",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Every number below is computed from the runs in `runs.parquet` and `results.parquet` beside this "
        "file (a snapshot that later `spambench publish` runs add to); each run there records its spec, "
        "code fingerprint, git commit and machine.",
        "",
        "## In short",
        "",
        *headline(table, runs, studies),
        "",
        "## Coverage",
        "",
        *coverage(every),
        "",
        "## Provenance",
        "",
        "The same spec and seed give the same numbers on machines of one class; across CPU models or "
        "torch CPU capabilities (AVX2, AVX512) float32 results can differ in their last bits, since BLAS "
        "chooses its kernels by the CPU.",
        "",
        *provenance(runs),
        "",
        "## Findings",
        "",
        f"Each optimizer against {BASELINE}, both at their declared defaults: a two-sided paired t-test on "
        f"the seeds both completed (alpha {stats.ALPHA}); means with 95% bootstrap CIs.",
        "",
        *findings(table, studies, {name: f"{FIGURES}/{name}" for name in figures}),
        "",
        "### Natural loss spikes",
        "",
        "Loss spikes are counted by the suite's own rule (a training loss above `loss_spike_factor` = 2 x its "
        "running median) in runs without injected spikes, at declared defaults; means per run with 95% "
        "bootstrap CIs. On noisy per-batch losses near zero (rl, tsf, vision) the rule also counts noise, so a "
        "count is a spike only where the loss curve shows one. No tiny configuration of `llm` was found "
        "where AdamW spikes without injection (docs/spiky-regime.md lists those tried); SPAM's effect on "
        "injected spikes is the `spikes` finding above.",
        "",
        *natural_spike_lines(runs),
        "",
        "## The leaderboard",
        "",
        _demoted(markdown),
    ]
    text = "\n".join(body).rstrip() + "\n"
    # The figures first, so that RESULTS.md never links one that is not there; then figures that no
    # study draws any more go (a figure's name is its problem's, so a kept one is overwritten).
    if figures:
        snapshot.write_files(into / FIGURES, figures)
    snapshot.write_files(into, {**snapshot.snapshot_files(merged), RESULTS_MD: text.encode()})
    for stale in (into / FIGURES).glob("*.png") if (into / FIGURES).is_dir() else ():
        if stale.name not in figures:
            stale.unlink()
    return into / RESULTS_MD


def study_figures(found: list[sensitivity.Study], runs: pd.DataFrame) -> dict[str, bytes]:
    """Each LR study's figure (reports/sensitivity_plot.py) as PNG bytes, by its file name: the
    studies are RESULTS.md's one picture worth its bytes in the repository."""
    if not found:
        return {}
    from spam_bench.reports import plots, sensitivity_plot  # matplotlib only when drawing

    with tempfile.TemporaryDirectory(prefix="spambench-figures-") as tmp:
        names = sensitivity_plot.write_all(found, plots.palette(list(runs["optimizer"].unique())), Path(tmp))
        return {name: (Path(tmp) / name).read_bytes() for name in sorted(names)}


def _demoted(markdown: str) -> str:
    """The report's Markdown one heading level down, under RESULTS.md's own headings."""
    return "\n".join(("#" + line) if line.startswith("#") else line for line in markdown.splitlines())
