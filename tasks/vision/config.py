"""The `vision` task's configuration; the scales in configs/*.yaml set these fields.

Weight decay is deliberately not here: it is the optimizer's hyperparameter (`opt.weight_decay`),
so that one optimizer name means the same update rule on every task.
"""

from __future__ import annotations

from dataclasses import dataclass

from spam_bench.suite.config import param
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.spike_config import RunFields


@dataclass
class VisionConfig(RunFields):
    # --- data ---
    dataset: str = param(
        "digits",
        "digits (scikit-learn's bundled 1797 8x8 images: offline, seconds) or cifar10 "
        "(50k/10k 32x32 colour images, downloaded once by torchvision).",
        choices=("digits", "cifar10"),
    )
    data_dir: str | None = param(
        None,
        "cifar10: where torchvision keeps the dataset (None = the suite's data cache, "
        "$SPAMBENCH_DATA or ~/.cache/spam-bench).",
    )
    test_fraction: float = param(
        0.5,
        "digits: share held out for testing, by a fixed stratified split (the same "
        "test images for every seed). Half: 899 test images resolve 0.1% of accuracy.",
        gt=0.0,
        lt=1.0,
    )
    crop_padding: int = param(
        1,
        "Random-crop augmentation: pad by this many pixels, cut a window of the original "
        "size (CIFAR's standard is 4 of 32; 1 of 8 on digits is the same 1/8 shift; 0 = off).",
        ge=0,
    )
    flip: bool = param(
        False, "Random horizontal flips (CIFAR's standard; never on digits: a mirrored digit is another glyph)."
    )
    # --- model ---
    arch: str = param(
        "resnet",
        "resnet (model.py: CIFAR-style ResNet of BasicBlocks, shaped by width/blocks) or "
        "torchvision_resnet18 (torchvision's, with the usual CIFAR stem: 3x3 conv, no max-pool).",
        choices=("resnet", "torchvision_resnet18"),
    )
    width: int = param(
        8, "resnet: channels of the stem and first stage; each later stage doubles them (ResNet-18: 64).", ge=1
    )
    blocks: tuple[int, ...] = param(
        (1, 1, 1),
        "resnet: residual blocks per stage; every stage after the first "
        "halves the resolution (ResNet-18: 2,2,2,2; 8x8 digits allow at most 4 stages).",
    )
    dtype: str = param(
        "float32",
        "Parameter dtype; float32 only, as CIFAR recipes keep it (speed there comes from "
        "autocast, which leaves parameters and optimizer state in float32).",
        choices=("float32",),
    )
    # --- optimisation ---
    steps: int = param(
        1000,
        "Optimizer updates (epochs = steps x batch_size / training images). Tiny keeps >= 1000 "
        "so SPAM's momentum reset (every 500) happens.",
        ge=1,
    )
    batch_size: int = param(
        32,
        "Images per update (CIFAR recipes: 128); the last partial batch of an epoch is "
        "dropped so every update sees the same number of images.",
        ge=1,
    )
    lr: float = param(
        8e-3,
        "Peak learning rate of the schedule, the same for every optimizer (tiny: AdamW's best "
        "of 1e-3..1.6e-2 by doubling; paper: Adam's default 1e-3).",
        gt=0.0,
    )
    lr_warmup_steps: int = param(50, "Linear warmup from 0 (tiny: about two epochs; CIFAR: one).", ge=0)
    min_lr_ratio: float = param(
        0.0, "Cosine decays to this fraction of the peak (0: to zero, as CIFAR recipes do).", ge=0.0, le=1.0
    )
    # --- evaluation and bookkeeping ---
    eval_every: int = param(100, "Evaluate on the whole test set every this many updates (and at the end).", ge=1)
    eval_batch_size: int = param(500, "Test images per forward pass (memory only: results do not depend on it).", ge=1)
    checkpoint_every: int = param(100, "Checkpoint every this many updates (and on Ctrl-C).", ge=1)
    threads: int | None = param(
        1,
        "torch CPU threads (None = torch's default). Tiny: 1, since 8x8 convolutions "
        "only pay for a second thread's hand-offs.",
        ge=1,
    )

    def validate(self) -> None:
        if not self.blocks or min(self.blocks) < 1:
            raise ConfigError("blocks", self.blocks, "one or more stages of >= 1 block each, e.g. 2,2,2,2")
        if self.dataset == "digits" and len(self.blocks) > 4 and self.arch == "resnet":
            raise ConfigError("blocks", self.blocks, "at most 4 stages for 8x8 digits (each later stage halves 8x8)")
        if self.dataset == "digits" and self.flip:
            raise ConfigError("flip", self.flip, "false for digits (a mirrored digit is another glyph)")
        if self.lr_warmup_steps > self.steps:
            raise ConfigError("lr_warmup_steps", self.lr_warmup_steps, f"<= steps={self.steps}")
