"""`spambench report`: the results store -> `<out>/report/` (a filtered report -> its own folder in it).

Writes results.parquet (long format, every complete run that passes the filters: the metric rows the
report reads, long curves cut to summary.CURVE_POINTS points, with the run columns), summary.md (the
plain per-settings table), leaderboard.md, leaderboard.csv and leaderboard.parquet (the leaderboard's
entries, for scripts: LEADERBOARD_COLUMNS), the figures (*.png, each with an *.svg beside it) and
leaderboard.html (the same content with the PNGs embedded). Reads only complete runs and the tuning
records of `spambench tune` (`<out>/tuning/best/`, which mark the tuned protocol's entries); writes
nothing outside `<out>/report`. A report with filters (--task/--opt/--scale/--since) goes to a folder
of its own named after them (`report_folder`), so it never overwrites the full report.

A store on object storage (`write_report`) is reported from a local mirror of what the report reads
(suite/object_store.py, `pull_for_report`), and the report folder is uploaded to `<url>/report/`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from spam_bench.reports import html, leaderboard, sensitivity
from spam_bench.reports.summary import (
    current_code,
    load_runs,
    mixed_code,
    select,
    summary_table,
    to_markdown,
    with_run_columns,
)
from spam_bench.suite.errors import NOT_APPLICABLE
from spam_bench.suite.object_store import ObjectStore
from spam_bench.suite.results import RunStore
from spam_bench.suite.tuning import best_path

# leaderboard.csv / leaderboard.parquet: one row per task, scale, problem (task settings), optimizer and
# recipe (lr and opt.* values), as `leaderboard.entries` computes them: the effective lr, the protocol
# (defaults, tuned, hand-set), the configurations the optimizer tried on the problem, the primary
# metric's mean and 95% bootstrap CI over `n` complete seeds, diverged seeds, rank within the problem
# (1 = best; entries the paired tests cannot separate share a rank; empty below stats.MIN_SEEDS
# seeds), best, speed and optimizer-state bytes. Missing values are empty (CSV) or null (Parquet).
LEADERBOARD_COLUMNS = [
    "task",
    "scale",
    "problem",
    "optimizer",
    "recipe",
    "lr",
    "protocol",
    "configs",
    "metric",
    "direction",
    "mean",
    "ci_lo",
    "ci_hi",
    "n",
    "diverged",
    "rank",
    "best",
    "steps_per_s",
    "state_bytes",
    "grad_clip",
]


def _write_entries(table: pd.DataFrame, report_dir: Path) -> None:
    """The leaderboard's entries as CSV and Parquet, the same columns in both, for scripts and notebooks."""
    rows = table.reindex(columns=LEADERBOARD_COLUMNS)
    rows = rows.assign(grad_clip=pd.to_numeric(rows["grad_clip"], errors="coerce"))  # None -> NaN: one dtype
    rows.to_csv(report_dir / "leaderboard.csv", index=False)
    rows.to_parquet(report_dir / "leaderboard.parquet", index=False)


def tuning_records(out_root: Path, runs: pd.DataFrame) -> leaderboard.TuningRecords:
    """What `spambench tune` saved for each (task, scale, optimizer) of `runs` that has a record:
    {"sets": the tuned `--set` values, "trials": how many were tried, ...}. A record that is not
    readable as one is left out (those runs then count as hand-set, never as tuned)."""
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    if runs.empty:
        return records
    for task, scale, optimizer in runs[["task", "scale", "optimizer"]].drop_duplicates().itertuples(index=False):
        try:
            path = best_path(out_root, task, scale, optimizer)
            record = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("sets"), dict):
            records[(task, scale, optimizer)] = record
    return records


def report_folder(out_root: Path, **filters: str | None) -> Path:
    """`<out>/report` for the full report; a filtered one gets a folder of its own inside it, named
    after the filters (`task-rl`, `task-rl_opt-adamw,spam`), so it never overwrites the full report.
    Characters other than letters, digits and `.,=+-` become `_`; the name then ends with a short hash
    of the filters (two filters never share a folder), as does a name longer than 80 characters."""
    root = Path(out_root) / "report"
    given = [(k, str(v)) for k, v in filters.items() if v]
    if not given:
        return root
    raw = "_".join(f"{k}-{v}" for k, v in given)
    name = re.sub(r"[^A-Za-z0-9.,=+-]", "_", raw)
    if name != raw or len(name) > 80:
        name = f"{name[:80]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return root / name


def _split_inapplicable(runs: pd.DataFrame, long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, long, inapplicable): pairs an optimizer refused (status not_applicable) have no metric,
    so the report names them but never ranks, averages or plots them."""
    if runs.empty:
        return runs, long, runs
    refused = runs.status == NOT_APPLICABLE
    gone = pd.MultiIndex.from_frame(runs.loc[refused, ["task", "run_id"]])
    long = long[~pd.MultiIndex.from_frame(long[["task", "run_id"]]).isin(gone)].reset_index(drop=True)
    return runs[~refused].reset_index(drop=True), long, runs[refused].reset_index(drop=True)


def _code_filter(runs: pd.DataFrame, long: pd.DataFrame, all_code: bool) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Keep the current code's runs (or all of them), and the words that say what was done."""
    if runs.empty:
        return runs, long, ""
    if all_code:
        mixed = mixed_code(runs)
        note = ("runs of different code versions averaged together for " + ", ".join(mixed)) if mixed else ""
        return runs, long, note
    current = current_code(runs)
    hidden = int((~current).sum())
    runs = runs[current].reset_index(drop=True)
    long = long[long.run_id.isin(set(runs.run_id))].reset_index(drop=True)
    note = f"current code only ({hidden} runs made by other code hidden; --all-code shows them)" if hidden else ""
    return runs, long, note


def write_leaderboard(
    out_root: Path,
    task: str | None = None,
    opt: str | None = None,
    scale: str | None = None,
    since: str | None = None,
    plots: bool = True,
    all_code: bool = False,
    frames: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    tuned: leaderboard.TuningRecords | None = None,
    report_dir: Path | None = None,
) -> tuple[str, Path]:
    """Write the report folder; returns (leaderboard Markdown, report folder): `<out>/report`, or with
    any filter a folder of its own inside it (`report_folder`).

    Filters take comma-separated names; `since` an ISO date/datetime or an age (7d, 12h).
    By default only runs made by the code installed now are reported (their code fingerprint is the
    current one); `all_code=True` reports every run and names the entries that mix code versions.
    `plots=False` skips the figures (faster; the Markdown then links none).
    `frames` = (runs, long) reports those runs instead of the store's, and `tuned` those tuning records
    (`spambench publish` reports a store merged with a published snapshot); `report_dir` puts the
    report folder elsewhere."""
    out_root = Path(out_root)
    runs, long = select(*(frames or load_runs(RunStore(out_root))), task=task, opt=opt, scale=scale, since=since)
    runs, long, code_note = _code_filter(runs, long, all_code)
    runs, long, inapplicable = _split_inapplicable(runs, long)
    tuned = tuning_records(out_root, runs) if tuned is None else tuned
    report_dir = report_dir or report_folder(out_root, task=task, opt=opt, scale=scale, since=since)
    report_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.png", "*.svg"):  # figures of problems that are filtered out now must not linger
        for stale in report_dir.glob(pattern):
            stale.unlink()
    with_run_columns(long, runs).to_parquet(report_dir / "results.parquet", index=False)
    (report_dir / "summary.md").write_text(to_markdown(summary_table(runs)))
    table = leaderboard.entries(runs, tuned) if not runs.empty else pd.DataFrame()
    _write_entries(table, report_dir)

    lr_studies = sensitivity.studies(runs, long)  # LR-sensitivity studies (reports/sensitivity.py), if any
    images: set[str] = set()
    if plots and not runs.empty:
        import matplotlib

        from spam_bench.reports import plots as figures  # matplotlib only when drawing
        from spam_bench.reports import spikes

        images = figures.write_all(long, runs, table, leaderboard.acrosses(table), report_dir)
        # The gradient-norm traces label raw optimizer names: read no `$` in them as mathtext
        # (rcParam text.parse_math, https://matplotlib.org/stable/users/explain/customizing.html).
        with matplotlib.rc_context({"text.parse_math": False}):
            images |= spikes.plot_traces(long, runs, report_dir)
        if lr_studies:
            from spam_bench.reports import sensitivity_plot

            images |= sensitivity_plot.write_all(
                lr_studies, figures.palette(list(runs["optimizer"].unique())), report_dir
            )
    filters = ", ".join(
        [f"{k}={v}" for k, v in (("task", task), ("opt", opt), ("scale", scale), ("since", since)) if v]
        + ([code_note] if code_note else [])
    )
    blocks = leaderboard.build(
        runs,
        filters=filters,
        images=images,
        inapplicable=inapplicable,
        tuned=tuned,
        task_sections=sensitivity.blocks(lr_studies, images),
    )
    markdown = leaderboard.to_markdown(blocks)
    (report_dir / "leaderboard.md").write_text(markdown)
    (report_dir / "leaderboard.html").write_text(html.render(blocks, report_dir))
    return markdown, report_dir


def write_report(store: RunStore, **options: Any) -> tuple[str, str]:
    """`write_leaderboard` for any store; returns (leaderboard Markdown, where the report folder is).

    On object storage, what the report reads of every complete run (summary, spec, metrics,
    steps.parquet) and the tuning records are mirrored into a local folder first (only files that
    changed are downloaded again), the report is built there, and its folder is uploaded to
    `<url>/report/` (stale figures removed there too)."""
    if not isinstance(store, ObjectStore):
        markdown, report_dir = write_leaderboard(store.root, **options)
        return markdown, str(report_dir)
    markdown, report_dir = write_leaderboard(store.pull_for_report(), **options)
    return markdown, store.push_report(report_dir)
