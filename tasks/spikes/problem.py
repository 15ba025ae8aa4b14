"""Two small stochastic problems whose only difficulty is noise: a place to watch optimizers take spikes.

Both are `nn.Module`s so every optimizer factory (which wants a model) can be used unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spam_bench.suite.model_info import ModelInfo


class NoisyQuadratic(nn.Module):
    """f(w) = 1/2 sum_i h_i (w_i - w*_i)^2 with log-spaced curvatures; stochastic gradients carry
    Student-t noise, so rare large gradients occur even before injection."""

    def __init__(self, dim: int, condition: float, noise_scale: float, noise_df: float, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("h", torch.logspace(0, math.log10(condition), dim) / condition)
        self.register_buffer("target", torch.randn(dim, generator=gen))
        self.w = nn.Parameter(torch.zeros(dim))
        self.noise_scale, self.noise_df = noise_scale, noise_df

    def objective(self) -> torch.Tensor:
        return 0.5 * (self.h * (self.w - self.target) ** 2).sum()

    def stochastic_loss(self, step_gen: torch.Generator, batch_size: int = 1) -> torch.Tensor:
        # The loss whose gradient is the true gradient plus noise: add <noise, w>.
        noise = _student_t(self.w.shape, self.noise_df, step_gen)
        return self.objective() + self.noise_scale * (noise * self.w).sum()

    def model_info(self) -> ModelInfo:
        return ModelInfo(roles={"w": "other"})


class Logistic(nn.Module):
    """Logistic regression on synthetic separable-with-noise data from a teacher vector."""

    def __init__(self, dim: int, n_train: int, label_noise: float, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        teacher = torch.randn(dim, generator=gen)
        x = torch.randn(2 * n_train, dim, generator=gen)
        y = (x @ teacher > 0).float()
        flip = torch.rand(2 * n_train, generator=gen) < label_noise
        y = torch.where(flip, 1 - y, y)
        self.register_buffer("x_train", x[:n_train])
        self.register_buffer("y_train", y[:n_train])
        self.register_buffer("x_test", x[n_train:])
        self.register_buffer("y_test", y[n_train:])
        self.linear = nn.Linear(dim, 1)

    def loss_on(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self.linear(x).squeeze(-1), y)

    def objective(self) -> torch.Tensor:
        return self.loss_on(self.x_test, self.y_test)

    def stochastic_loss(self, step_gen: torch.Generator, batch_size: int = 32) -> torch.Tensor:
        idx = torch.randint(0, len(self.x_train), (batch_size,), generator=step_gen)
        return self.loss_on(self.x_train[idx], self.y_train[idx])

    def model_info(self) -> ModelInfo:
        return ModelInfo(roles={"linear.weight": "output", "linear.bias": "bias"})


def _student_t(shape: torch.Size, df: float, gen: torch.Generator) -> torch.Tensor:
    """Student-t draws from a seeded generator (torch.distributions cannot take one)."""
    z = torch.randn(shape, generator=gen)
    chi2 = torch._standard_gamma(torch.full(shape, df / 2), generator=gen) * 2
    return z / torch.sqrt(chi2 / df)
