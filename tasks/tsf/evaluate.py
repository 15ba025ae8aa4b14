"""Test metrics of a trained predictor on the rolling test windows, computed by gluonts itself.

`gluonts.model.evaluate_forecasts` (the body of `evaluate_model`) aggregates over every window
and time step (axis=None) and runs in-process (no evaluator worker pool, so it works inside Ray
trials). Point metrics use the forecast gluonts defines for each: the mean for MSE and NRMSE, the
median for MAE, MASE, sMAPE and ND. On standardised data MSE and MAE are the numbers PatchTST's
tables report.

Distribution forecasts (PatchTST, SimpleFeedForward) are first turned into quantile forecasts
holding exactly the levels the metrics read plus the mean: gluonts would otherwise build a scipy
Student-t per level per window (30 s instead of 1 s on the tiny scale); the numbers are the same.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def metric_definitions() -> dict[str, Any]:
    from gluonts.ev.metrics import MAE, MASE, MSE, ND, NRMSE, SMAPE, MeanWeightedSumQuantileLoss

    return {
        "mse": MSE(),
        "mae": MAE(),
        "mase": MASE(),
        "smape": SMAPE(),
        "wql": MeanWeightedSumQuantileLoss(quantile_levels=QUANTILES),
        "nd": ND(),
        "nrmse": NRMSE(),
    }


def with_quantiles(forecast: Any) -> Any:
    """A DistributionForecast as a QuantileForecast of QUANTILES and the mean (one icdf call); a point
    forecast (point_head.py: the single level 0.5) as that point at every level and as the mean; others
    as they are."""
    from gluonts.model.forecast import QuantileForecast
    from gluonts.torch.model.forecast import DistributionForecast

    if isinstance(forecast, QuantileForecast) and list(forecast.forecast_keys) == ["0.5"]:
        point = forecast.forecast_array[0]
        return QuantileForecast(
            np.repeat(point[None], len(QUANTILES) + 1, axis=0),
            start_date=forecast.start_date,
            forecast_keys=[*map(str, QUANTILES), "mean"],
            item_id=forecast.item_id,
            info=forecast.info,
        )
    if not isinstance(forecast, DistributionForecast):
        return forecast
    dist = forecast.distribution
    levels = torch.tensor(QUANTILES, dtype=dist.mean.dtype, device=dist.mean.device).unsqueeze(-1)
    arrays = np.concatenate([dist.icdf(levels).cpu().numpy(), forecast.mean[None]], axis=0)
    return QuantileForecast(
        arrays,
        start_date=forecast.start_date,
        forecast_keys=[*map(str, QUANTILES), "mean"],
        item_id=forecast.item_id,
        info=forecast.info,
    )


def evaluate_forecasts(forecasts: Any, test_data: Any) -> dict[str, float]:
    """Our metric name -> value, e.g. {"mse": ..., "wql": ...}, for forecasts of `test_data`'s windows."""
    from gluonts.model import evaluate_forecasts as gluonts_evaluate

    defs = metric_definitions()
    with warnings.catch_warnings():
        # gluonts' seasonality lookup spells yearly frequencies the way pandas now deprecates.
        warnings.filterwarnings("ignore", category=FutureWarning, module="gluonts")
        frame = gluonts_evaluate(forecasts, test_data=test_data, metrics=list(defs.values()), axis=None)
    row = frame.iloc[0]
    return {name: float(row[d().name]) for name, d in defs.items()}


def evaluate(predictor: Any, test_data: Any) -> dict[str, float]:
    return evaluate_forecasts(map(with_quantiles, predictor.predict(test_data.input)), test_data)
