"""The `spikes` task's configuration: a small stochastic problem with heavy-tailed, injected spikes."""

from __future__ import annotations

from dataclasses import dataclass

from spam_bench.suite.config import check_fits_memory, param
from spam_bench.suite.spike_config import RunFields


@dataclass
class SpikesConfig(RunFields):
    problem: str = param(
        "quadratic",
        "quadratic (ill-conditioned, heavy-tailed gradient noise) or logistic regression.",
        choices=("quadratic", "logistic"),
    )
    dim: int = param(100, "Parameter dimension.", ge=2)
    condition: float = param(100.0, "quadratic: ratio of the largest to the smallest curvature.", ge=1.0)
    noise_scale: float = param(0.1, "quadratic: scale of the Student-t gradient noise.", ge=0.0)
    noise_df: float = param(3.0, "quadratic: Student-t degrees of freedom (smaller = heavier tails).", gt=0.0)
    n_train: int = param(4096, "logistic: training examples.", ge=16)
    label_noise: float = param(0.05, "logistic: fraction of flipped labels.", ge=0.0, lt=0.5)
    batch_size: int = param(32, "Examples per step (logistic).", ge=1)
    steps: int = param(2000, "Optimizer steps; >= 1000 so SPAM's reset (every 500) happens.", ge=1)
    lr: float = param(1e-2, "Constant learning rate.", gt=0.0)
    eval_every: int = param(100, "Evaluate the full objective every this many steps.", ge=1)
    with_clean_twin: bool = param(True, "Also train without injection, to report robustness = injected / clean.")

    def validate(self) -> None:
        """Refuse sizes this machine cannot hold (dim=10**13 would be an allocation traceback)."""
        check_fits_memory(self, bytes_at_least, ("dim", "n_train", "batch_size"), f"the {self.problem} problem")


def bytes_at_least(config: SpikesConfig) -> int:
    """A lower bound on the bytes a run holds at once (float32). Quadratic: the parameters, their
    gradient, the curvatures, the target and one noise draw (5 x dim). Logistic: the parameters and
    their gradient, the train and test examples (2 x n_train x dim) and one batch of them. Optimizer
    state is left out so that the bound holds for every optimizer."""
    if config.problem == "quadratic":
        return 4 * 5 * config.dim
    return 4 * (2 * (config.dim + 1) + 2 * config.n_train * config.dim + config.batch_size * config.dim)
