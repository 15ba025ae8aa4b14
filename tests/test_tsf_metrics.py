"""tsf metrics: what gluonts computes on our rolling windows equals the textbook formulas on a known forecast."""

import numpy as np
import pandas as pd
import torch
from gluonts.dataset.split import split
from gluonts.model import evaluate_forecasts as gluonts_evaluate
from gluonts.model.forecast import SampleForecast
from gluonts.torch.distributions.studentT import StudentT
from gluonts.torch.model.forecast import DistributionForecast

from spam_bench.tasks.tsf.evaluate import QUANTILES, evaluate, evaluate_forecasts, metric_definitions, with_quantiles

PL, WINDOWS = 3, 2
OFFSETS = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.5, 3.0])  # 7 samples: the median is the 4th


def _test_data():
    rng = np.random.default_rng(0)
    entries = [
        {
            "start": pd.Period("2000", freq="Y"),
            "target": (5 + rng.normal(size=20)).astype(np.float32),
            "item_id": str(i),
        }
        for i in range(3)
    ]
    _, template = split(entries, offset=-(WINDOWS * PL))
    return template.generate_instances(prediction_length=PL, windows=WINDOWS, distance=PL)


class KnownPredictor:
    """Forecasts label-independent samples: the last input value plus fixed offsets times the step."""

    def predict(self, inputs):
        for entry in inputs:
            last = float(entry["target"][-1])
            samples = last + OFFSETS[:, None] * np.arange(1, PL + 1)[None, :]
            start = entry["start"] + len(entry["target"])
            yield SampleForecast(samples=samples, start_date=start, item_id=entry["item_id"])


def test_metrics_equal_the_formulas_on_a_known_forecast():
    test = _test_data()
    got = evaluate(KnownPredictor(), test)

    ys, means, medians, quantiles, scales = [], [], [], [], []
    for inp, label, fc in zip(test.input, test.label, KnownPredictor().predict(test.input)):
        ys.append(label["target"].astype(float))
        means.append(fc.samples.mean(axis=0))
        medians.append(np.median(fc.samples, axis=0))
        # gluonts' sample quantile: the order statistic at round((n - 1) q)
        ordered = np.sort(fc.samples, axis=0)
        quantiles.append(np.stack([ordered[int(np.round((len(ordered) - 1) * level))] for level in QUANTILES]))
        past = inp["target"].astype(float)
        scales.append(np.full(PL, np.mean(np.abs(np.diff(past)))))  # yearly: seasonality 1
    y, mean, med, q, scale = map(np.concatenate, (ys, means, medians, [x.T for x in quantiles], scales))

    mse = np.mean((y - mean) ** 2)
    expected = {
        "mse": mse,
        "mae": np.mean(np.abs(y - med)),
        "mase": np.mean(np.abs(y - med) / scale),
        "smape": np.mean(2 * np.abs(y - med) / (np.abs(y) + np.abs(med))),
        "nd": np.sum(np.abs(y - med)) / np.sum(np.abs(y)),
        "nrmse": np.sqrt(mse) / np.mean(np.abs(y)),
        "wql": np.mean(
            [
                np.sum(2 * np.abs((y - q[:, i]) * ((y <= q[:, i]) - level))) / np.sum(np.abs(y))
                for i, level in enumerate(QUANTILES)
            ]
        ),
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)


def test_fast_path_for_distribution_forecasts_gives_gluonts_own_numbers():
    test = _test_data()
    torch.manual_seed(0)
    forecasts = []
    for inp in test.input:
        loc, scale = 5 + torch.randn(PL), 0.5 + torch.rand(PL)
        forecasts.append(
            DistributionForecast(
                StudentT(torch.full((PL,), 4.0), loc, scale),
                start_date=inp["start"] + len(inp["target"]),
                item_id=inp["item_id"],
            )
        )
    ours = evaluate_forecasts(map(with_quantiles, forecasts), test)
    defs = metric_definitions()
    theirs = gluonts_evaluate(forecasts, test_data=test, metrics=list(defs.values()), axis=None).iloc[0]
    for name, d in defs.items():
        np.testing.assert_allclose(ours[name], theirs[d().name], rtol=1e-6, err_msg=name)
