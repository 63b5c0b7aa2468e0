"""GAN inversion: a real image → a W+ latent whose generated image reconstructs it.

Two stages, as in SemanticGAN / EditGAN:
1. an encoder trained on generator samples (image → W+, predicted as an offset from w_avg) gives
   the start (``dgan train-encoder``);
2. a few Adam steps on W+ minimise pixel MSE (plus, optionally, a feature loss) with a small pull
   towards the encoder's estimate.

Everything is batched (many images at once) and deterministic given a seed. Both stages run on the
generator's device (images are moved there); encoder checkpoints are written from CPU tensors, so one
trained on a GPU loads on the CPU and back.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .device import module_device
from .generator.checkpoints import generator_id
from .generator.stylegan2 import Generator


@dataclass
class EncoderConfig:
    resolution: int
    num_ws: int
    w_dim: int
    base: int = 32          # channels after the stem; doubled per downsampling up to 8·base


class Encoder(nn.Module):
    """image float32 [N, 3, R, R] in [-1, 1] → W+ offset from w_avg, float32 [N, num_ws, w_dim]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.base, 3, padding=1), nn.LeakyReLU(0.2)]
        ch, res = cfg.base, cfg.resolution
        while res > 4:
            nxt = min(ch * 2, cfg.base * 8)
            layers += [nn.Conv2d(ch, nxt, 3, stride=2, padding=1), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2),
                       nn.Conv2d(nxt, nxt, 3, padding=1), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2)]
            ch, res = nxt, res // 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 16, cfg.num_ws * cfg.w_dim)
        nn.init.zeros_(self.head.bias)
        self.head.weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).reshape(-1, self.cfg.num_ws, self.cfg.w_dim)


@dataclass
class InversionResult:
    ws: torch.Tensor            # float32 [N, num_ws, w_dim]
    images: torch.Tensor        # float32 [N, 3, R, R] reconstructions in ≈[-1, 1]
    psnr_db: np.ndarray         # float32 [N] reconstruction PSNR (peak-to-peak 2, i.e. images in [-1, 1])
    psnr_encoder_db: np.ndarray # float32 [N] PSNR of the encoder's start
    steps: int
    seconds: float              # wall time for the whole batch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2): [N, C, H, W] × 2 → [N]."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).square().mean(dim=[1, 2, 3]).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def train_encoder(G: Generator, steps: int = 2000, batch: int = 32, lr: float = 1e-3, base: int = 32,
                  psi: float = 1.0, seed: int = 0, progress: bool = False) -> "LatentEncoder":
    """Train an encoder on samples of G (half of the batches style-mixed): loss = ‖E(G(w)) − (w − w_avg)‖².
    Runs on G's device (move G first to train on a GPU)."""
    torch.manual_seed(seed)
    dev = module_device(G)
    cfg = EncoderConfig(G.cfg.resolution, G.num_ws, G.cfg.w_dim, base)
    enc = Encoder(cfg).to(dev).train()
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    G = G.eval().requires_grad_(False)
    w_avg = G.mapping.w_avg
    bar = tqdm(range(steps), disable=not progress, desc="encoder", unit="step")
    loss_val = float("nan")
    for step in bar:
        with torch.no_grad():
            ws = G.map(torch.randn(batch, G.cfg.z_dim, device=dev), psi=psi)
            if step % 2:  # style-mixed samples so every W+ slot is learned on its own
                cut = int(torch.randint(1, G.num_ws, []))
                ws[:, cut:] = G.map(torch.randn(batch, G.cfg.z_dim, device=dev), psi=psi)[:, cut:]
            img = G.synthesis(ws, noise_mode="const")
        pred = enc(img)
        loss = (pred - (ws - w_avg)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_val:.4f}")
    return LatentEncoder(enc.eval(), generator_id(G), {"steps": steps, "batch": batch, "final_loss": loss_val})


class LatentEncoder:
    """The trained encoder plus the identity of the generator it belongs to."""

    def __init__(self, encoder: Encoder, generator_id: str, meta: dict | None = None) -> None:
        self.encoder = encoder
        self.generator_id = generator_id
        self.meta = meta or {}

    @property
    def device(self) -> torch.device:
        return module_device(self.encoder)

    def to(self, device: str | torch.device) -> "LatentEncoder":
        """Move the encoder to ``device`` (in place); returns self."""
        self.encoder.to(device)
        return self

    def save(self, path: str | Path) -> Path:
        """Write config, generator id, weights and ``meta`` atomically (CPU tensors, whatever the device)."""
        # Float weights stored as fp16 (half the size; the start it gives is refined by optimisation anyway).
        state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in self.encoder.state_dict().items()}
        return save_checkpoint(path, "encoder", {"config": asdict(self.encoder.cfg), "generator_id": self.generator_id,
                                                 "state_dict": state, "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path, generator_id: str | None = None) -> "LatentEncoder":
        """Load (eval mode, fp32); if ``generator_id`` is given, refuse an encoder trained for another generator."""
        data = load_checkpoint(path, "encoder", generator_id)
        enc = Encoder(EncoderConfig(**data["config"]))
        enc.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()})
        return cls(enc.eval(), data["generator_id"], data.get("meta"))

    @torch.no_grad()
    def __call__(self, G: Generator, images: torch.Tensor) -> torch.Tensor:
        """images float32 [N, 3, R, R] in [-1, 1] → W+ float32 [N, num_ws, w_dim], on G's device."""
        return self.encoder(images.to(self.device)).to(G.mapping.w_avg.device) + G.mapping.w_avg


class DiscriminatorFeatureLoss:
    """A perceptual loss needing no download: the GAN's own discriminator's early feature maps.

    Features after ``fromrgb`` and the first ``blocks`` blocks (64 px: 64², 32², 16²), each unit-normalised
    over channels as LPIPS does; the loss per image is the mean over pixels of the squared distance between
    the unit vectors (in [0, 4]), summed over layers and images, times ``weight``.
    ``__call__(img, target)``: float32 [N, 3, R, R] in [-1, 1] each → scalar."""

    def __init__(self, D: nn.Module, blocks: int = 2, weight: float = 0.05) -> None:
        self.D = D.eval().requires_grad_(False)
        self.blocks, self.weight = blocks, weight
        self._cache: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.D.fromrgb(x)
        out = [h]
        for block in list(self.D.blocks)[:self.blocks]:
            h = block(h)
            out.append(h)
        return [f / (f.square().sum(1, keepdim=True) + 1e-10).sqrt() for f in out]

    def __call__(self, img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._cache is None or self._cache[0] is not target:
            with torch.no_grad():
                self._cache = (target, self.features(target))
        loss = sum((a - b).square().sum(1).mean(dim=[1, 2]).sum() for a, b in zip(self.features(img), self._cache[1]))
        return self.weight * loss


def invert(G: Generator, images: torch.Tensor, encoder: LatentEncoder | None = None, steps: int = 30,
           lr: float = 0.05, latent_weight: float = 1e-3,
           feature_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           seed: int = 0, appearance: Callable[[torch.Tensor], torch.Tensor] | None = None) -> InversionResult:
    """Invert images float32 [N, 3, R, R] in [-1, 1] into W+ (batched; deterministic given ``seed``).

    Start: the encoder's estimate (or w_avg without one). Then ``steps`` Adam steps with a cosine-decayed
    learning rate on ‖G(w) − x‖² (+ ``feature_loss``) + latent_weight·‖w − w_start‖². Runs on G's device
    (``images`` are moved there; ``ws`` and ``images`` of the result stay there, the PSNRs are numpy).

    ``appearance``: a differentiable map of generated images to the look of ``images`` (a SimGAN refiner
    trained on their domain): the loss then compares ``appearance(G(w))`` with them, so a drifted image
    still finds the latent of its geometry (out-of-domain inversion); the encoder's start is computed
    from the images as they are."""
    torch.manual_seed(seed)
    G = G.eval().requires_grad_(False)
    images = images.to(module_device(G))
    t0 = time.time()
    with torch.no_grad():
        start = encoder(G, images) if encoder is not None else G.mapping.w_avg.expand(
            images.shape[0], G.num_ws, -1).clone()
        look = appearance if appearance is not None else (lambda img: img)
        psnr0 = psnr(look(G.synthesis(start)), images)
    ws = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=lr, betas=(0.9, 0.999))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        img = look(G.synthesis(ws))
        loss = (img - images).square().mean(dim=[1, 2, 3]).sum()
        if feature_loss is not None:
            loss = loss + feature_loss(img, images)
        loss = loss + latent_weight * (ws - start).square().mean(dim=[1, 2]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = ws.detach()
        recon = look(G.synthesis(final))
    return InversionResult(final, recon, psnr(recon, images).cpu().numpy(), psnr0.cpu().numpy(), steps,
                           time.time() - t0)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
