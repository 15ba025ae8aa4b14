"""Series for the `tsf` task: loaders, per-series standardisation, anomaly injection, rolling test windows.

Every source becomes a list of univariate gluonts entries (`start` Period, float32 `target`,
`item_id`); multivariate files become one series per column, PatchTST's channel independence.
The last `config.test_length` steps of each series are held out; rolling test windows are cut
there with `gluonts.dataset.split`, always from the clean series. Anomalies go into the training
part only: this module must never corrupt what the evaluation reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spam_bench.tasks.tsf.anomaly import inject_anomalies
from spam_bench.tasks.tsf.config import TSFConfig

Entry = dict[str, Any]


def _entry(start: pd.Period, values: Any, item_id: str) -> Entry:
    return {"start": start, "target": np.asarray(values, dtype=np.float32), "item_id": item_id}


def load_fertility() -> tuple[list[Entry], str]:
    """World Bank fertility rates shipped with statsmodels: the 192 countries complete over 1960-2011."""
    from statsmodels.datasets import fertility

    df = fertility.load_pandas().data.set_index("Country Code")
    years = df.loc[:, "1960":].astype(float).dropna(axis=1, how="all")  # 2012-2013 are empty
    complete = years.dropna(axis=0)
    start = pd.Period(years.columns[0], freq="Y")
    return [_entry(start, row.to_numpy(), str(code)) for code, row in complete.iterrows()], "Y"


def load_co2() -> tuple[list[Entry], str]:
    """Mauna Loa weekly CO2 (statsmodels), 2284 weeks; its 59 gaps are interpolated linearly."""
    from statsmodels.datasets import co2

    series = co2.load_pandas().data["co2"].interpolate(limit_direction="both")
    freq = series.index.freqstr  # W-SAT
    return [_entry(pd.Period(series.index[0], freq=freq), series.to_numpy(), "co2")], freq


def load_weather_csv(path: str, columns: tuple[str, ...] | None = None) -> tuple[list[Entry], str]:
    """PatchTST's weather.csv (or any file like it): a `date` column plus numeric columns, one series each."""
    df = pd.read_csv(path)
    if "date" not in df.columns:
        raise ValueError(f"{path}: no 'date' column (columns: {', '.join(map(str, df.columns[:8]))} ...)")
    dates = pd.to_datetime(df.pop("date"))
    freq = pd.infer_freq(dates[: min(len(dates), 1000)])
    if freq is None:
        raise ValueError(f"{path}: cannot infer a regular frequency from the 'date' column")
    wanted = list(columns) if columns else [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(missing)}")
    start = pd.Period(dates.iloc[0], freq=freq)
    return [_entry(start, df[c].to_numpy(dtype=float), str(c)) for c in wanted], freq


def load_gluonts_repository(name: str, root: str | None = None) -> tuple[list[Entry], str]:
    """A gluonts repository data set (downloads unless already under `root`); its train split's series."""
    from gluonts.dataset.repository import get_dataset

    kwargs = {"path": Path(root)} if root else {}
    ds = get_dataset(name, **kwargs)
    entries = [_entry(e["start"], e["target"], str(e.get("item_id", i))) for i, e in enumerate(ds.train)]
    return entries, ds.metadata.freq


def load_series(config: TSFConfig) -> tuple[list[Entry], str]:
    if config.dataset == "fertility":
        return load_fertility()
    if config.dataset == "co2":
        return load_co2()
    if config.dataset == "weather":
        return load_weather_csv(config.data_path, config.columns)
    return load_gluonts_repository(config.dataset, config.data_path)


def standardize(entries: list[Entry], train_length: int) -> list[Entry]:
    """z-score each series with the mean and std of its training part (PatchTST's StandardScaler)."""
    out = []
    for e in entries:
        head = e["target"][:train_length]
        mean, std = float(np.nanmean(head)), float(np.nanstd(head))
        std = std if np.isfinite(std) and std > 0 else 1.0
        out.append({**e, "target": ((e["target"] - mean) / std).astype(np.float32)})
    return out


@dataclass
class TSFData:
    train: list[Entry]  # training parts, anomalies injected
    test: Any  # gluonts TestData: rolling windows over the clean series
    freq: str
    n_series: int
    n_dropped: int  # series too short for the context plus the test windows


def prepare(config: TSFConfig, seed: int, entries: list[Entry] | None = None, freq: str | None = None) -> TSFData:
    from gluonts.dataset.split import split

    if entries is None:
        entries, freq = load_series(config)
    hold = config.test_length
    need = hold + config.context_length + config.prediction_length
    usable = [e for e in entries if len(e["target"]) >= need]
    if not usable:
        raise ValueError(
            f"{config.dataset}: no series has the {need} steps that context_length + prediction_length "
            f"+ the test windows need"
        )
    # Series differ in length: hold out the same number of final steps from each.
    clean = [standardize([e], len(e["target"]) - hold)[0] for e in usable] if config.standardize else usable
    train = [{**e, "target": e["target"][:-hold]} for e in clean]
    train = inject_anomalies(train, config.anomaly_fraction, config.anomaly_severity, seed)
    _, template = split(clean, offset=-hold)
    test = template.generate_instances(
        prediction_length=config.prediction_length, windows=config.test_windows, distance=config.distance
    )
    return TSFData(train=train, test=test, freq=freq, n_series=len(usable), n_dropped=len(entries) - len(usable))
