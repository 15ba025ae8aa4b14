"""tsf data: the anomaly injector, the Weather CSV and gluonts repository loaders, bad data set names."""

import json

import numpy as np
import pandas as pd
import pytest

from spam_bench.runners.cli import main
from spam_bench.suite.config import build_config, load_yaml
from spam_bench.suite.registry import TASKS
from spam_bench.suite.results import read_json
from spam_bench.tasks.tsf import TASK
from spam_bench.tasks.tsf.anomaly import inject, inject_anomalies
from spam_bench.tasks.tsf.config import TSFConfig
from spam_bench.tasks.tsf.data import load_gluonts_repository, load_weather_csv, prepare

TASKS.register("tsf", TASK)  # until pyproject.toml declares the entry point


def _tiny(**changes):
    return build_config(TSFConfig, {**load_yaml(TASK.scale_path("tiny")), **changes})


def test_injector_corrupts_exactly_the_fraction_with_noise_scaled_by_severity_times_max():
    x = np.linspace(-3.0, 5.0, 1000, dtype=np.float32)
    before = x.copy()
    s2 = inject(x, 0.1, 2.0, np.random.default_rng(0))
    s5 = inject(x, 0.1, 5.0, np.random.default_rng(0))
    assert np.array_equal(x, before)  # the input is never modified in place
    changed = np.flatnonzero(s2 != x)
    assert len(changed) == 100 and np.array_equal(changed, np.flatnonzero(s5 != x))
    noise2, noise5 = (s2 - x)[changed], (s5 - x)[changed]
    np.testing.assert_allclose(noise5, 2.5 * noise2, rtol=1e-4)  # the same draws, scaled by S
    assert 0.7 < np.std(noise2) / (2.0 * 5.0) < 1.3  # std = S * max|x| = 2 * 5
    assert np.array_equal(inject(x, 0.1, 0.0, np.random.default_rng(0)), x)
    other_seed = np.flatnonzero(inject(x, 0.1, 2.0, np.random.default_rng(1)) != x)
    assert not np.array_equal(other_seed, changed)


def test_injection_is_seeded_per_run():
    entries = [{"target": np.arange(50, dtype=np.float32) + 1}, {"target": np.ones(30, dtype=np.float32)}]
    a, b, c = (inject_anomalies(entries, 0.2, 2.0, seed) for seed in (0, 0, 1))
    assert all(np.array_equal(x["target"], y["target"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["target"], c[0]["target"])
    assert [int((e["target"] != o["target"]).sum()) for e, o in zip(a, entries)] == [10, 6]


def test_anomalies_reach_training_data_only():
    clean, noisy = prepare(_tiny(anomaly_severity=0.0), seed=0), prepare(_tiny(anomaly_severity=5.0), seed=0)
    assert clean.n_series == noisy.n_series == 192 and clean.n_dropped == 0  # 192 of 219 countries are complete
    changed = sum(int((c["target"] != n["target"]).sum()) for c, n in zip(clean.train, noisy.train))
    assert changed == 192 * round(0.1 * 40)  # 52 years - 12 held out = 40 training values per series
    for split in ("input", "label"):
        for c, n in zip(getattr(clean.test, split), getattr(noisy.test, split)):
            assert np.array_equal(c["target"], n["target"])
    # the test windows' labels are the last 12 clean years: 3 windows x 4 years
    assert [len(lbl["target"]) for lbl in list(clean.test.label)[:3]] == [4, 4, 4]


def _write_weather_csv(path, rows=400):
    dates = pd.date_range("2020-01-01 00:10:00", periods=rows, freq="10min")
    t = np.arange(rows)
    df = pd.DataFrame(
        {
            "date": dates.strftime("%Y-%m-%d %H:%M:%S"),
            "p (mbar)": 1000 + np.sin(t / 20),
            "T (degC)": 10 + 5 * np.sin(t / 144 * 2 * np.pi),
            "rh (%)": 60 + 10 * np.cos(t / 30),
            "OT": 400 + np.sin(t / 50),
        }
    )
    df.to_csv(path, index=False)


def test_weather_csv_loader_reads_patchtst_format(tmp_path):
    path = tmp_path / "weather.csv"
    _write_weather_csv(path)
    entries, freq = load_weather_csv(str(path))
    assert freq == "10min" and [e["item_id"] for e in entries] == ["p (mbar)", "T (degC)", "rh (%)", "OT"]
    assert entries[0]["start"] == pd.Period("2020-01-01 00:10", freq="10min")
    assert all(e["target"].dtype == np.float32 and len(e["target"]) == 400 for e in entries)
    (ot,), _ = load_weather_csv(str(path), ("OT",))
    np.testing.assert_allclose(ot["target"], 400 + np.sin(np.arange(400) / 50), rtol=1e-6)


def test_a_tiny_run_on_a_weather_csv(tmp_path):
    path = tmp_path / "weather.csv"
    _write_weather_csv(path)
    sets = {
        "dataset": "weather",
        "data_path": str(path),
        "standardize": "true",
        "prediction_length": 12,
        "context_length": 48,
        "patch_len": 8,
        "patch_stride": 4,
        "test_windows": 2,
        "epochs": 1,
        "num_batches_per_epoch": 5,
        "d_model": 16,
        "dim_feedforward": 32,
        "num_layers": 1,
        "threads": 1,
    }
    argv = ["run", "--task", "tsf", "--opt", "adamw", "--out", str(tmp_path / "out")]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "out" / "runs" / "tsf").iterdir()
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "complete" and summary["n_series"] == 4 and summary["n_test_windows"] == 8


def test_gluonts_repository_data_set_loads_from_a_local_root(tmp_path):
    root = tmp_path / "datasets" / "exchange_rate"
    root.mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({"freq": "B", "prediction_length": 30}))
    lines = [
        json.dumps({"start": "1990-01-01", "target": list(range(i, i + 60)), "item_id": f"c{i}"}) for i in range(3)
    ]
    for split in ("train", "test"):  # the test split is required by gluonts but not read by us
        (root / split).mkdir(exist_ok=True)
        (root / split / "data.json").write_text("\n".join(lines) + "\n")
    entries, freq = load_gluonts_repository("exchange_rate", str(tmp_path / "datasets"))
    assert freq == "B" and [e["item_id"] for e in entries] == ["c0", "c1", "c2"]
    assert entries[2]["target"].dtype == np.float32 and entries[2]["target"][0] == 2.0


BAD = [
    (["--set", "dataset=nope"], "dataset: invalid value 'nope' (allowed: one of fertility, co2, weather or a gluonts"),
    (["--set", "dataset=weather"], "data_path: invalid value None (allowed: the path or URL of weather.csv"),
    (
        ["--set", "dataset=weather", "--set", "data_path=/no/such/weather.csv"],
        "data_path: invalid value '/no/such/weather.csv' (allowed: an existing CSV file or a URL)",
    ),
    (["--set", "model=lstm"], "model: invalid value 'lstm' (allowed: one of patchtst, deepar, simple_feedforward)"),
    (["--set", "n_heads=3"], "n_heads: invalid value 3 (allowed: a divisor of d_model=32)"),
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[e.split(":")[0] for _, e in BAD])
def test_bad_data_set_or_model_is_one_line_exit_2_and_writes_nothing(argv, expected, out_dir, capsys):
    code = main(["run", "--task", "tsf", "--opt", "adamw", "--out", str(out_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("spambench: error: ")
    assert expected in err
    assert not out_dir.exists()
