"""A compact U-Net for semantic segmentation, trained on labeled images (real or synthetic).

Used as the downstream segmenter of DatasetGAN, as the fast pre-annotator, and as the feature
extractor of the GAN quality figure (Fréchet distance of its features, since no Inception weights
exist offline).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class UNetConfig:
    n_classes: int
    base: int = 16          # channels at full resolution; doubled per level
    depth: int = 4          # number of downsamplings
    in_channels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """images float32 [N, 3, H, W] in [-1, 1] (H, W divisible by 2**depth) → logits [N, n_classes, H, W]."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base * 2 ** i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList([_block(cfg.in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(cfg.depth)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(cfg.depth))
        self.dec = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in range(cfg.depth))
        self.head = nn.Conv2d(widths[0], cfg.n_classes, 1)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        bottleneck = x
        for i in reversed(range(self.cfg.depth)):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return x, bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._forward(x)[0])

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image feature vector [N, base + base·2**depth]: the spatial means of the penultimate
        (full-resolution) features and of the bottleneck."""
        pen, bott = self._forward(x)
        return torch.cat([pen.mean(dim=[2, 3]), bott.mean(dim=[2, 3])], dim=1)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@dataclass
class SegTrainResult:
    model: UNet
    seconds: float
    steps: int
    final_loss: float


def train_segmenter(images: np.ndarray, labels: np.ndarray, n_classes: int, steps: int = 1000, batch: int = 16,
                    lr: float = 2e-3, base: int = 16, seed: int = 0, progress: bool = False,
                    desc: str = "unet") -> SegTrainResult:
    """Train a U-Net with cross-entropy, AdamW and a cosine schedule; random flips as augmentation.

    images: uint8 [N, H, W, 3]; labels: uint8/int [N, H, W] in [0, n_classes)."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need the same non-zero number of images and labels, got {len(images)} and {len(labels)}")
    if int(labels.max()) >= n_classes:
        raise ValueError(f"label value {int(labels.max())} is outside the {n_classes} classes")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UNet(UNetConfig(n_classes=n_classes, base=base)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1 if steps >= 20 else 0.5)
    x_all, y_all = to_input(images), torch.from_numpy(labels.astype(np.int64))
    t0 = time.time()
    loss_val = float("nan")
    for _ in tqdm(range(steps), disable=not progress, desc=desc, unit="step"):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x, y = x_all[idx], y_all[idx]
        if torch.rand([], generator=g) < 0.5:
            x, y = x.flip(3), y.flip(2)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = loss.item()
    return SegTrainResult(model.eval(), time.time() - t0, steps, loss_val)


@torch.no_grad()
def predict(model: UNet, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 images [N, H, W, 3] → predicted class map uint8 [N, H, W]."""
    model.eval()
    out = [model(to_input(images[i:i + batch])).argmax(1).to(torch.uint8) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def embed(model: UNet, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """uint8 images [N, H, W, 3] → feature vectors float64 [N, D] (see :meth:`UNet.embed`)."""
    model.eval()
    return torch.cat([model.embed(to_input(images[i:i + batch])) for i in range(0, len(images), batch)]).double().numpy()


def save_segmenter(model: UNet, path: str | Path, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "dgan-unet", "config": model.cfg.to_dict(), "state_dict": model.state_dict(),
                "meta": meta or {}}, path)
    return path


def load_segmenter(path: str | Path) -> UNet:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != "dgan-unet":
        raise ValueError(f"{path} is not a segmenter checkpoint written by dgan (format 'dgan-unet')")
    model = UNet(UNetConfig(**data["config"]))
    model.load_state_dict(data["state_dict"])
    return model.eval()
