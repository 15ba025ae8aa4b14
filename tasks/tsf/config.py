"""The `tsf` task's configuration; the scales in configs/*.yaml set these fields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spam_bench.suite.config import param
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.spike_config import RunFields

MODELS = ("patchtst", "deepar", "simple_feedforward")
LOSSES = ("nll", "mse")
SCALINGS = ("mean", "std", "none")
# Data sets this package reads itself; any gluonts repository name is accepted too (see validate()).
LOCAL_DATASETS = ("fertility", "co2", "weather")


@dataclass
class TSFConfig(RunFields):
    # --- model (gluonts' PyTorch estimators; one univariate model shared by all series) ---
    model: str = param(
        "patchtst", "gluonts estimator: patchtst (the follow-up paper's), deepar or simple_feedforward.", choices=MODELS
    )
    prediction_length: int = param(4, "Forecast horizon in time steps (paper/PatchTST: 96).", ge=1)
    context_length: int = param(16, "Input window in time steps (PatchTST/42 on Weather: 336).", ge=1)
    patch_len: int = param(4, "patchtst: patch length (PatchTST: 16).", ge=1)
    patch_stride: int = param(2, "patchtst: stride between patches (PatchTST: 8).", ge=1)
    d_model: int = param(32, "Width: patchtst d_model, deepar LSTM hidden size, simple_feedforward hidden width.", ge=1)
    n_heads: int = param(4, "patchtst: attention heads.", ge=1)
    dim_feedforward: int = param(64, "patchtst: feed-forward width inside each encoder layer.", ge=1)
    num_layers: int = param(
        2, "Depth: patchtst encoder layers, deepar LSTM layers, simple_feedforward hidden layers.", ge=1
    )
    dropout: float = param(0.1, "patchtst/deepar dropout (PatchTST on Weather: 0.2).", ge=0.0, lt=1.0)
    loss: str = param(
        "nll",
        "patchtst: nll (gluonts' Student-t head on negative log-likelihood) or mse (a point head on squared "
        "error, as the PatchTST and Stable-SPAM papers train it).",
        choices=LOSSES,
    )
    scaling: str = param(
        "mean",
        "patchtst: instance normalisation of each input window: mean (gluonts' default, divide by the mean "
        "|x|), std (z-score by the window's mean and std: PatchTST's RevIN without affine) or none.",
        choices=SCALINGS,
    )
    # --- data ---
    dataset: str = param(
        "fertility",
        "fertility (192 yearly series, statsmodels), co2 (weekly, statsmodels), "
        "weather (PatchTST's weather.csv at data_path) or any gluonts repository name.",
    )
    data_path: str | None = param(
        None,
        "weather: the CSV path or URL; gluonts repository names: the repository root (default ~/.gluonts/datasets).",
    )
    columns: tuple[str, ...] | None = param(
        None,
        "weather: the columns to forecast, comma-separated "
        "(default every numeric column, PatchTST's channel-independent 'M').",
    )
    test_windows: int = param(3, "Rolling test windows at the end of every series (gluonts.dataset.split).", ge=1)
    window_distance: int | None = param(
        None, "Steps between test windows (default prediction_length: no overlap).", ge=1
    )
    standardize: bool = param(
        True,
        "z-score each series with its training part's mean and std (PatchTST's "
        "convention), so MSE is comparable across series and with PatchTST's tables.",
    )
    anomaly_fraction: float = param(
        0.1, "A: fraction of training values that get anomaly noise (follow-up paper: 0.1).", ge=0.0, le=1.0
    )
    anomaly_severity: float = param(
        0.0, "S: noise std as a multiple of the series' max |x| (paper sweeps 0, 2, 5).", ge=0.0
    )
    # --- optimisation: one fixed budget, equal for every optimizer ---
    epochs: int = param(10, "Training epochs; no early stopping, the final weights are evaluated.", ge=1)
    num_batches_per_epoch: int = param(50, "Batches per epoch (gluonts samples training windows at random).", ge=1)
    batch_size: int = param(32, "Windows per batch (PatchTST on Weather: 128).", ge=1)
    shuffle_buffer: int | None = param(
        None, "Shuffle training windows through a buffer of this size (None = off).", ge=1
    )
    lr: float = param(1e-3, "Learning rate, constant for the whole run (gluonts' default schedule).", gt=0.0)
    # --- bookkeeping ---
    threads: int | None = param(None, "torch CPU threads (None = torch's default).", ge=1)

    @property
    def distance(self) -> int:
        return self.window_distance or self.prediction_length

    @property
    def test_length(self) -> int:
        """Steps held out at the end of each series for the rolling test windows."""
        return (self.test_windows - 1) * self.distance + self.prediction_length

    def validate(self) -> None:
        if self.dataset not in LOCAL_DATASETS:
            from gluonts.dataset.repository import dataset_names

            if self.dataset not in dataset_names:
                raise ConfigError(
                    "dataset",
                    self.dataset,
                    f"one of {', '.join(LOCAL_DATASETS)} or a gluonts "
                    f"repository name such as electricity, traffic, exchange_rate, m4_hourly "
                    f"({len(dataset_names)} in gluonts.dataset.repository.dataset_names)",
                )
        if self.dataset == "weather" and not self.data_path:
            raise ConfigError("data_path", self.data_path, "the path or URL of weather.csv when dataset=weather")
        if self.dataset == "weather" and "://" not in self.data_path and not _is_file(self.data_path):
            raise ConfigError("data_path", self.data_path, "an existing CSV file or a URL")
        if self.columns is not None and self.dataset != "weather":
            raise ConfigError("columns", ",".join(self.columns), "None unless dataset=weather")
        if self.model != "patchtst":
            for name, default in (("loss", "nll"), ("scaling", "mean")):
                if getattr(self, name) != default:
                    raise ConfigError(name, getattr(self, name), f"{default} unless model=patchtst")
        if self.model == "patchtst":
            if self.d_model % self.n_heads:
                raise ConfigError("n_heads", self.n_heads, f"a divisor of d_model={self.d_model}")
            if self.patch_len > self.context_length:
                raise ConfigError("patch_len", self.patch_len, f"<= context_length={self.context_length}")


def _is_file(text: str) -> bool:
    """Whether `text` names a file (a NUL byte or an over-long name is a "no", not a traceback)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False
