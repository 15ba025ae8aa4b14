"""Images in memory, and the training batches of a run as a pure function of (seed, step).

Both datasets are small enough to hold as uint8 pixels (CIFAR-10's 50k training images are 150 MB),
so there is no DataLoader: each epoch's order and augmentation are drawn at once from a generator
seeded by (seed, epoch) alone. Step s's batch is then the same in a resumed run as in an
uninterrupted one, with no data-loader state to checkpoint, and augmentation runs batched on the
model's device (as fast CIFAR trainers do, e.g. github.com/KellerJordan/cifar10-airbench).
Pixels are standardised per channel with the training split's mean and std, after augmentation,
so crop padding is black, as torchvision's RandomCrop(padding) before Normalize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.paths import data_cache
from spam_bench.tasks.vision.config import VisionConfig

TORCHVISION_NEEDED = (
    "an install with torchvision (pip install 'spam-bench[vision]' with a torchvision matching your torch)"
)
SPLIT_SEED = 0  # the digits train/test split: fixed, so every seed and optimizer is tested on the same images


@dataclass
class Images:
    """A labelled image set: uint8 pixels (N, C, H, W), int64 labels, and the train split's channel stats."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int

    def __post_init__(self) -> None:
        pixels = self.train_x.double()
        self.mean = pixels.mean(dim=(0, 2, 3)).float().view(1, -1, 1, 1)
        self.std = pixels.std(dim=(0, 2, 3)).float().view(1, -1, 1, 1)

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    def to(self, device: torch.device) -> Images:
        for name in ("train_x", "train_y", "test_x", "test_y", "mean", "std"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def load_digits(test_fraction: float) -> Images:
    """scikit-learn's copy of the UCI optical digits (8x8, values 0..16), shipped inside the package:
    no download. https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=SPLIT_SEED)
    return Images(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te), 10)


def load_cifar10(data_dir: str | None) -> Images:
    """CIFAR-10 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) through torchvision,
    downloaded once (and checksummed by torchvision) into `data_dir` or the suite's data cache."""
    try:
        from torchvision.datasets import CIFAR10
    except Exception:  # missing, or built for another torch (it then fails while registering its operators)
        raise ConfigError("dataset", "cifar10", TORCHVISION_NEEDED) from None
    root = Path(data_dir) if data_dir else data_cache() / "cifar10"
    splits = [CIFAR10(str(root), train=train, download=True) for train in (True, False)]
    # .data is (N, 32, 32, 3) uint8 and .targets a list of ints, before any transform.
    x_tr, x_te = (torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous() for s in splits)
    y_tr, y_te = (torch.tensor(s.targets, dtype=torch.int64) for s in splits)
    return Images(x_tr, y_tr, x_te, y_te, 10)


def build_data(config: VisionConfig) -> Images:
    if config.dataset == "digits":
        return load_digits(config.test_fraction)
    return load_cifar10(config.data_dir)


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad (B, C, H, W) by `padding` zeros and cut each image's HxW window at its (row, col) `offsets`."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


class Batches:
    """The run's training batches: `batch(step)` depends only on (seed, step), never on what ran before."""

    def __init__(self, data: Images, config: VisionConfig, seed: int):
        self.data, self.seed = data, seed
        self.batch_size, self.padding, self.flip = config.batch_size, config.crop_padding, config.flip
        self.steps_per_epoch = len(data.train_y) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError("batch_size", config.batch_size, f"<= the {len(data.train_y)} training images")
        self._epoch, self._plan = -1, None

    def _draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Epoch `epoch`'s order, crop offsets and flips, from a generator seeded by (seed, epoch) alone."""
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        n = len(self.data.train_y)
        order = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        device = self.data.train_x.device
        return order.to(device), offsets.to(device), flips.to(device)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (normalised images, labels) of update `step` (0-based)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, self._draw(epoch)
        order, offsets, flips = self._plan
        pick = slice(i * self.batch_size, (i + 1) * self.batch_size)
        idx = order[pick]
        x = self.data.train_x[idx].float()
        if self.padding:
            x = random_crop(x, offsets[pick], self.padding)
        if self.flip:
            x = torch.where(flips[pick, None, None, None], x.flip(3), x)
        return self.data.normalize(x), self.data.train_y[idx]

    def test_batches(self, size: int):
        """The whole test set, in order, normalised, in chunks of `size` (no augmentation)."""
        for start in range(0, len(self.data.test_y), size):
            yield self.data.normalize(self.data.test_x[start : start + size]), self.data.test_y[start : start + size]
