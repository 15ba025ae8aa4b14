"""The report's store loader (reports/summary.py): column-wise reading of metrics.jsonl that accepts and
refuses exactly what the line-by-line json reading does, the per-run cut of long curves, the lazy join of
run columns, and the synthetic store of `make perf-report` (runners/perf_report.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from spam_bench.reports import summary
from spam_bench.reports.summary import CURVE_POINTS, LONG_COLUMNS, MalformedRun, load_runs, with_run_columns
from spam_bench.runners.perf_report import StoreBuilder
from spam_bench.suite.results import RunStore

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "report_runs" / "runs"


def _line(step: object = 1, split: object = "train", name: object = "loss", value: object = 1.5) -> str:
    return json.dumps({"step": step, "split": split, "name": name, "value": value, "wall": 0.25})


OK = _line() + "\n"
# name -> metrics.jsonl bytes: well-formed files the column-wise parse takes, files only the line-by-line
# reading takes (blank lines, CRLF, float steps, large floats), and files both must refuse.
CORPUS: dict[str, bytes] = {
    "plain": (OK + _line(2, "val", "ppl", 30) + "\n" + _line(2, "optim", "grad_spike/mlp", None) + "\n").encode(),
    "empty": b"",
    "blank-lines": f"\n{OK}\n  \n{OK}".encode(),
    "only-whitespace": b" \n\n",
    "crlf": OK.replace("\n", "\r\n").encode(),
    "float-step": (_line(2.0) + "\n").encode(),
    "huge-float": (_line(value=1e300) + "\n").encode(),
    "missing-step-value-wall": b'{"split": "train", "name": "loss"}\n',
    "extra-fields-of-changing-types": b'{"split": "a", "name": "b", "x": 1}\n{"split": "a", "name": "b", "x": "s"}\n',
    "non-ascii-name": (_line(name="loss/é") + "\n").encode(),
    "duplicate-key": b'{"split": "a", "name": "b", "value": "x", "value": 2}\n',
    "nested-extra": b'{"split": "a", "name": "b", "extra": {"deep": [1, 2]}}\n',
    # refused
    "truncated": (OK + OK[:30]).encode(),
    "last-line-whole-but-cut": OK.rstrip("\n").encode(),
    "not-json": (OK + "not json\n").encode(),
    "null-first-line": b"null\n" + OK.encode(),  # pyarrow's reader crashes the process on this one
    "null-line": (OK + "null\n").encode(),
    "two-objects-one-line": (_line() + " " + _line() + "\n").encode(),
    "object-then-null": (_line() + " null\n").encode(),
    "array": b"[1, 2]\n",
    "number": b"3\n",
    "empty-object": b"{}\n",
    "split-not-text": (_line(split=3) + "\n").encode(),
    "split-null": (_line(split=None) + "\n").encode(),
    "name-missing": b'{"split": "train", "step": 1, "value": 1}\n',
    "value-text": (_line(value="abc") + "\n").encode(),
    "value-bool": (_line(value=True) + "\n").encode(),
    "value-object": (_line(value={"a": 1}) + "\n").encode(),
    "value-nan": OK.replace("1.5", "NaN").encode(),
    "value-infinity": OK.replace("1.5", "-Infinity").encode(),
    "value-overflows-double": OK.replace("1.5", "1e999").encode(),
    "value-int-past-int64": OK.replace("1.5", str(2**63)).encode(),
    "step-int-past-int64": OK.replace('"step": 1', f'"step": {2**64}').encode(),
    "step-int64-min": OK.replace('"step": 1', f'"step": {-(2**63)}').encode(),
    "wall-nan": OK.replace("0.25", "NaN").encode(),
    "trailing-comma": OK.replace("}", ",}").encode(),
    "bad-utf8-in-name": (_line(name="lo") + "\n").encode().replace(b"lo", b"l\xffo"),
    "bad-utf8-in-ignored-field": b'{"split": "a", "name": "b", "x": "\xff"}\n',
    "utf8-bom": b"\xef\xbb\xbf" + OK.encode(),
}


def _reference(path: Path) -> list[tuple] | str:
    """What the line-by-line json reading (the loader's reference) makes of the file: rows or the reason."""
    try:
        rows = summary._check_lines(path)
    except MalformedRun as err:
        return str(err)
    return [
        (m["split"], m["name"], *(None if m.get(k) is None else float(m[k]) for k in ("step", "value", "wall")))
        for m in rows
    ]


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_metrics_are_accepted_and_refused_exactly_as_the_line_by_line_reading_decides(case, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(CORPUS[case])
    expected = _reference(path)
    try:
        table = summary._metric_table(path)
    except MalformedRun as err:
        assert str(err) == expected  # the same one-line reason, naming the file
        return
    assert not isinstance(expected, str), f"accepted what the json reading refuses: {expected}"
    got = [
        (r["split"], r["name"], *(None if r[k] is None else float(r[k]) for k in ("step", "value", "wall")))
        for r in table.to_pylist()
    ]
    assert got == expected


def test_a_missing_metrics_file_is_refused_naming_it(tmp_path):
    with pytest.raises(MalformedRun, match=r"metrics\.jsonl: No such file"):
        summary._metric_table(tmp_path / "metrics.jsonl")


def _long_run(steps: int = 5000) -> tuple[pa.Table, dict]:
    """A long run's metrics: a loss curve, a telemetry trace with spikes, events, an eval curve and noise."""
    rng = np.random.default_rng(0)
    spike_steps = [137, 138, 2500, 4999]
    rows = []
    for step in range(1, steps + 1):
        norm = float(rng.lognormal(0, 0.2)) * (100.0 if step in spike_steps else 1.0)
        rows += [("optim", "grad_norm", step, norm), ("optim", "grad_norm/mlp", step, norm / 2)]
        if step in spike_steps:
            rows.append(("optim", "grad_spike/mlp", step, 1.0))
        if step == 3000:
            rows.append(("optim", "optimizer_reset", step, 1.0))
        rows += [
            ("train", "loss", step, 5.0 * math.exp(-step / 1000) + float(rng.normal(0, 0.01))),
            ("train", "lr", step, 1e-3),
        ]
        if step % 10 == 0:
            rows.append(("val", "ppl", step, 100.0 - step / 100))
    table = pa.table({k: [r[i] for r in rows] for i, k in enumerate(("split", "name", "step", "value"))})
    table = table.append_column("wall", pa.array(np.arange(len(rows)) * 0.001))
    return table.cast(
        pa.schema(
            [
                ("split", pa.string()),
                ("name", pa.string()),
                ("step", pa.int64()),
                ("value", pa.float64()),
                ("wall", pa.float64()),
            ]
        )
    ), {"spikes": spike_steps}


def test_long_curves_are_cut_to_the_bound_keeping_ends_peaks_events_and_eval_points():
    table, info = _long_run()
    keys, index, (step, value, _wall) = summary._keep_metrics(table)
    kept = pd.DataFrame({"series": [keys[i] for i in index], "step": step, "value": value})
    full = table.to_pandas()
    by = dict(tuple(kept.groupby("series")))
    assert set(by) == {
        ("optim", "grad_norm"),
        ("optim", "grad_spike/mlp"),
        ("optim", "optimizer_reset"),
        ("train", "loss"),
        ("val", "ppl"),
    }  # lr and per-role norms: the report draws neither
    loss, norm = by[("train", "loss")], by[("optim", "grad_norm")]
    assert len(loss) <= CURVE_POINTS and len(norm) <= CURVE_POINTS + len(info["spikes"])
    src_loss = full[(full.split == "train") & (full.name == "loss")]
    assert loss.iloc[[0, -1]][["step", "value"]].to_numpy().tolist() == (
        src_loss.iloc[[0, -1]][["step", "value"]].to_numpy().tolist()
    )  # the first and last point exactly
    assert loss["step"].is_monotonic_increasing and abs(loss["value"].mean() - src_loss["value"].mean()) < 0.02
    src_norm = full[(full.split == "optim") & (full.name == "grad_norm")]
    assert norm["value"].max() == src_norm["value"].max() and norm["value"].min() == src_norm["value"].min()
    at_spikes = src_norm[src_norm.step.isin(info["spikes"])]
    assert norm[norm.step.isin(info["spikes"])]["value"].tolist() == at_spikes["value"].tolist()
    for series in (("optim", "grad_spike/mlp"), ("optim", "optimizer_reset"), ("val", "ppl")):  # whole
        src = full[(full.split == series[0]) & (full.name == series[1])]
        assert by[series][["step", "value"]].to_numpy().tolist() == src[["step", "value"]].to_numpy().tolist()


@pytest.mark.parametrize("name", ["loss", "grad_norm"])
def test_a_long_series_without_steps_is_dropped_not_a_crash(name):
    n = CURVE_POINTS + 10
    split = "train" if name == "loss" else "optim"
    table = pa.table(
        {
            "split": [split] * n,
            "name": [name] * n,
            "step": pa.nulls(n, pa.float64()),
            "value": np.ones(n),
            "wall": np.ones(n),
        }
    )
    _keys, index, (step, _, _) = summary._keep_metrics(table)
    assert len(step) == 0 and len(index) == 0


def test_the_fixture_store_loads_every_metric_row_with_run_columns_joined_as_before(tmp_path):
    shutil.copytree(FIXTURE_RUNS, tmp_path / "runs")
    runs, long = load_runs(RunStore(tmp_path))
    assert list(long.columns) == LONG_COLUMNS and len(runs) == 20 and runs.attrs[summary.MALFORMED_ATTR] == 0
    assert isinstance(long["name"].dtype, pd.CategoricalDtype) and long["wall"].dtype == np.float32
    expected = []  # the rows the old loader made: every metrics.jsonl line, then the run's final row
    for run in runs.itertuples():
        lines = (tmp_path / "runs" / run.task / run.run_id / "metrics.jsonl").read_text().splitlines()
        for m in map(json.loads, lines):
            expected.append((run.task, run.run_id, m["split"], m["name"], float(m["step"]), m["value"]))
        expected.append((run.task, run.run_id, "final", run.primary_metric, float(run.steps), run.value))
    got = [
        (t, r, s, n, st, None if pd.isna(v) else v)
        for t, r, s, n, st, v in long[["task", "run_id", "split", "name", "step", "value"]].itertuples(index=False)
    ]
    assert got == [(t, r, s, n, st, None if v is None or pd.isna(v) else v) for t, r, s, n, st, v in expected]
    joined = with_run_columns(long, runs)
    assert list(joined.columns) == [*summary.RUN_COLUMNS, "split", "name", "step", "value", "wall"]
    by_run = runs.set_index(["task", "run_id"])
    for row in joined.drop_duplicates(["task", "run_id"]).itertuples(index=False):
        run = by_run.loc[(row.task, row.run_id)]
        assert (row.optimizer, row.seed, row.overrides, row.hardware) == (
            run.optimizer,
            run.seed,
            run.overrides,
            run.hardware,
        )


def test_with_run_columns_leaves_rows_of_unknown_runs_empty():
    long = pd.DataFrame({"task": ["llm", "llm"], "run_id": ["a", "gone"], "value": [1.0, 2.0]})
    runs = pd.DataFrame({"task": ["llm"], "run_id": ["a"], "seed": [3], "optimizer": ["spam"]})
    joined = with_run_columns(long, runs, ["seed", "optimizer"])
    assert joined["seed"].tolist()[0] == 3 and math.isnan(joined["seed"].tolist()[1])
    assert joined["optimizer"].tolist()[0] == "spam" and pd.isna(joined["optimizer"].tolist()[1])


def test_the_perf_report_store_reads_back_with_every_run_and_bounded_rows(tmp_path):
    builder = StoreBuilder(tmp_path, fingerprint=False)
    builder.grow(3)
    builder.grow(6)  # grows, never rewrites
    assert builder.rows_per_run() > 8000
    runs, long = load_runs(RunStore(tmp_path))
    assert len(runs) == 6 and runs.attrs[summary.MALFORMED_ATTR] == 0
    assert set(runs.optimizer) == {"adamw", "spam", "adam", "stable_spam"} and set(runs.status) == {"complete"}
    per_run = long.groupby("run_id", observed=True).size()
    assert per_run.max() < 2 * CURVE_POINTS + 50  # of ~8,100 rows a run
    final = long[long.split == "final"].set_index("run_id")["value"]
    assert final.sort_index().tolist() == runs.set_index("run_id")["value"].sort_index().tolist()
    assert {"spam", "stable_spam"} >= set(
        runs.set_index("run_id").loc[long[long.name == "optimizer_reset"].run_id.unique(), "optimizer"]
    )
    assert (long.split == "optim").any()  # the per-step telemetry came from steps.parquet


def test_a_damaged_step_log_skips_its_run_with_one_line_naming_it(tmp_path, capsys):
    builder = StoreBuilder(tmp_path, fingerprint=False)
    builder.grow(2)
    damaged = sorted(tmp_path.glob("runs/*/*/steps.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    runs, _ = load_runs(RunStore(tmp_path))
    assert len(runs) == 1 and runs.attrs[summary.MALFORMED_ATTR] == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "steps.parquet" in x]
    assert str(damaged) in line and "run folder skipped" in line
