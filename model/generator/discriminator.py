"""A slim residual StyleGAN2-style discriminator (equalised learning rate, minibatch std)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, save_checkpoint
from .stylegan2 import EqualizedLinear, default_channels


@dataclass
class DiscriminatorConfig:
    resolution: int = 64
    channels: dict[int, int] = field(default_factory=lambda: default_channels(64))  # {res: width}
    img_channels: int = 3
    mbstd_group: int = 4

    def __post_init__(self) -> None:
        self.channels = {int(k): int(v) for k, v in self.channels.items()}

    def to_dict(self) -> dict:
        return asdict(self)


class EqualizedConv2d(nn.Module):
    """k×k convolution with equalised learning rate and optional lrelu·√2."""

    def __init__(self, in_ch: int, out_ch: int, k: int, bias: bool = True, activation: str = "lrelu") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.gain = 1 / math.sqrt(in_ch * k * k)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.activation == "lrelu" else x


class DiscriminatorBlock(nn.Module):
    """[N, in, r, r] → [N, out, r/2, r/2]: two 3×3 convs + average-pool, with a 1×1 residual path."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3)
        self.skip = EqualizedConv2d(in_ch, out_ch, 1, bias=False, activation="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(self.conv1(self.conv0(x)), 2)
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Image float32 [N, C, res, res] in [-1, 1] → realness logit [N, 1]."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        res = cfg.resolution
        ch = cfg.channels
        self.fromrgb = EqualizedConv2d(cfg.img_channels, ch[res], 1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[r], ch[r // 2])
                                    for r in [res // 2 ** i for i in range(int(math.log2(res)) - 2)])
        self.conv = EqualizedConv2d(ch[4] + 1, ch[4], 3)
        self.fc = EqualizedLinear(ch[4] * 16, ch[4], activation="lrelu")
        self.out = EqualizedLinear(ch[4], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        n, c, h, w = x.shape
        g = min(self.cfg.mbstd_group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[1, 2, 3])   # [n/g]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        x = self.conv(torch.cat([x, y], dim=1))
        return self.out(self.fc(x.flatten(1)))


def save_discriminator(D: Discriminator, path: str | Path, generator_id: str) -> Path:
    """Write ``D`` (config + state dict + the id of the generator it was trained with) atomically."""
    return save_checkpoint(path, "discriminator", {
        "config": D.cfg.to_dict(), "generator_id": generator_id,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in D.state_dict().items()}})


def load_discriminator(path: str | Path, generator_id: str | None = None) -> Discriminator:
    """Load a discriminator written by :func:`save_discriminator` (eval mode, no grad); with
    ``generator_id``, refuse one trained with another generator."""
    data = load_checkpoint(path, "discriminator", generator_id)
    D = Discriminator(DiscriminatorConfig(**data["config"]))
    D.load_state_dict(data["state_dict"])
    return D.eval().requires_grad_(False)
