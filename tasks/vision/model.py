"""A ResNet of BasicBlocks for small images, and the parameter roles the optimizers see.

He et al. 2016, "Deep Residual Learning for Image Recognition" (arXiv 1512.03385), in the CIFAR
form most optimizer papers train: a 3x3 stem with no max-pool, stages of two-conv BasicBlocks whose
width doubles as the resolution halves, global average pooling and a linear head. With width 64 and
blocks 2,2,2,2 it is the usual CIFAR ResNet-18 (11,173,962 parameters for 10 classes, as in
github.com/kuangliu/pytorch-cifar); `torchvision_resnet18` builds torchvision's with the same stem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.model_info import ModelInfo
from spam_bench.tasks.vision.config import VisionConfig


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (through a 1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # the paper's option B: a projection only where shapes differ
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, width: int, blocks: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c = [], width
        for stage, n_blocks in enumerate(blocks):
            c_out = width * 2**stage
            for i in range(n_blocks):
                layers.append(BasicBlock(c, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, n_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _init_weights(module: nn.Module) -> None:
    # torchvision's ResNet initialisation (He et al. 2015, arXiv 1502.01852): Kaiming-normal fan-out
    # convolutions, BatchNorm at identity; the linear head keeps torch's default.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def torchvision_resnet18(in_channels: int, n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first conv and no max-pool, so 32x32
    inputs reach the last stage at 4x4 instead of 1x1."""
    try:
        from torchvision.models import resnet18
    except Exception:  # missing, or built for another torch
        from spam_bench.tasks.vision.data import TORCHVISION_NEEDED

        raise ConfigError("arch", "torchvision_resnet18", TORCHVISION_NEEDED) from None
    model = resnet18(num_classes=n_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def build_model(config: VisionConfig, in_channels: int, n_classes: int) -> nn.Module:
    if config.arch == "torchvision_resnet18":
        return torchvision_resnet18(in_channels, n_classes)
    return ResNet(in_channels, n_classes, config.width, config.blocks)


def model_info(model: nn.Module) -> ModelInfo:
    """Roles by module type, so they hold for our ResNet and torchvision's alike: conv kernels are
    `mlp` (4-D weight matrices; optimizers that only act on 2-D matrices treat them as dense),
    the linear head is `output`, BatchNorm scales and shifts are `norm`, other biases `bias`."""
    roles = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                roles[name] = "norm"
            elif param_name == "bias":
                roles[name] = "bias"
            elif isinstance(module, nn.Linear):
                roles[name] = "output"
            else:
                roles[name] = "mlp" if isinstance(module, nn.Conv2d) else "other"
    return ModelInfo(roles=roles)
