"""GAN training: non-saturating loss, lazy R1, EMA generator, style mixing, optional path-length
regularisation and differentiable augmentation. Checkpoints every few minutes and resumes.

Run directory layout::

    run/state.pt          everything needed to resume (G, D, G_ema, optimisers, counters, configs)
    run/generator.pt      latest G_ema in our generator format (what `dgan sample --generator` reads)
    run/snapshots/        G_ema per checkpoint (generator format), for per-checkpoint metrics
    run/grid-*.png        a fixed-seed sample grid per checkpoint
    run/log.jsonl         one line per checkpoint: kimg, losses, images/s, wall time
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..images import load_image_folder, save_grid, to_uint8
from .augment import augment
from .checkpoints import generator_id, save_generator
from .discriminator import Discriminator, DiscriminatorConfig, save_discriminator
from .stylegan2 import Generator, GeneratorConfig


@dataclass
class TrainConfig:
    data: str = ""                        # folder of images (any images; resized/cropped to resolution)
    out: str = "runs/gan"                 # run directory
    batch: int = 16
    lr: float = 0.0025
    r1_gamma: float = 0.05                # R1 weight (StyleGAN2-ADA heuristic 0.0002·res²/batch)
    r1_interval: int = 16                 # lazy regularisation
    pl_weight: float = 0.0                # path-length regularisation weight (0 = off)
    pl_interval: int = 4
    style_mixing: float = 0.9             # probability of mixing two latents per batch
    ema_kimg: float = 5.0                 # EMA half-life in thousands of images
    ema_rampup: float = 0.05
    augment: tuple[str, ...] = ("translation",)
    xflip: bool = True                    # random horizontal flips of real images
    total_kimg: float = 10_000.0          # stop after this many thousand images
    checkpoint_minutes: float = 10.0
    seed: int = 0
    threads: int = 0                      # torch threads (0 = torch default)
    max_images: int | None = None         # use at most this many dataset images
    device: str = "cpu"                   # "cpu" or "cuda" (the run folder is portable between them)
    time_limit_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    generator: dict = field(default_factory=dict)       # GeneratorConfig fields
    discriminator: dict = field(default_factory=dict)   # DiscriminatorConfig fields


def _mixed_ws(G: Generator, batch: int, prob: float) -> torch.Tensor:
    dev = G.synthesis.b4.const.device
    z = torch.randn(batch, G.cfg.z_dim, device=dev)
    ws = G.map(z)
    if prob > 0 and torch.rand([]) < prob:
        cut = int(torch.randint(1, G.num_ws, []))
        ws2 = G.map(torch.randn(batch, G.cfg.z_dim, device=dev))
        ws = torch.cat([ws[:, :cut], ws2[:, cut:]], dim=1)
    return ws


def _real_batch(data: torch.Tensor, batch: int, xflip: bool) -> torch.Tensor:
    idx = torch.randint(0, data.shape[0], (batch,), device=data.device)
    x = data[idx].float() / 127.5 - 1
    if xflip:
        flip = torch.rand(batch, device=data.device) < 0.5
        x[flip] = x[flip].flip(3)
    return x


LOG_EVERY = 20   # steps between reading losses back from the device


class Trainer:
    """Owns the networks, optimisers and counters; ``run()`` trains until ``total_kimg`` or interrupted."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / "state.pt"
        state = None
        if resume and state_path.exists():
            state = load_checkpoint(state_path, "train-state")
            saved = state["train_config"]
            # Architecture comes from the checkpoint; schedule settings may be changed on resume.
            cfg.generator, cfg.discriminator = saved["generator"], saved["discriminator"]
        elif resume:
            raise FileNotFoundError(f"--resume given but {state_path} does not exist; start without --resume")
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda given but torch sees no CUDA device; use --device cpu")
            torch.backends.cudnn.benchmark = True
        self.G = Generator(GeneratorConfig(**cfg.generator)).train()
        res = self.G.cfg.resolution
        dcfg = {"resolution": res, "channels": {r: c for r, c in self.G.cfg.channels.items()}, **cfg.discriminator}
        self.D = Discriminator(DiscriminatorConfig(**dcfg)).train()
        cfg.generator, cfg.discriminator = self.G.cfg.to_dict(), self.D.cfg.to_dict()
        self.G.to(self.device)
        self.D.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        c_g = self.cfg.pl_interval / (self.cfg.pl_interval + 1) if cfg.pl_weight > 0 else 1.0
        c_d = self.cfg.r1_interval / (self.cfg.r1_interval + 1)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr * c_g, betas=(0.0, 0.99 ** c_g), eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * c_d, betas=(0.0, 0.99 ** c_d), eps=1e-8)
        self.step, self.nimg, self.wall = 0, 0, 0.0
        self.pl_mean = torch.zeros([], device=self.device)
        if state is not None:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.G_ema.load_state_dict(state["G_ema"])
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.step, self.nimg, self.wall = state["step"], state["nimg"], state["wall"]
            self.pl_mean = state["pl_mean"].to(self.device)
            torch.set_rng_state(state["rng"])
        self.grid_z = torch.randn(32, self.G.cfg.z_dim, generator=torch.Generator().manual_seed(1234))

    # -- one iteration ------------------------------------------------------------------------
    def _d_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with torch.no_grad():
            fake = self.G.synthesis(_mixed_ws(self.G, cfg.batch, cfg.style_mixing), noise_mode="random")
        logits_fake = self.D(augment(fake, cfg.augment))
        logits_real = self.D(augment(real, cfg.augment))
        loss = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        out = {"loss_D": loss.detach(), "real": logits_real.mean().detach(), "fake": logits_fake.mean().detach()}
        if self.step % cfg.r1_interval == 0:
            r = real.detach().requires_grad_(True)
            logits = self.D(augment(r, cfg.augment))
            (grad,) = torch.autograd.grad(logits.sum(), r, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            loss = loss + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            out["r1"] = r1.detach()
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        return out

    def _g_step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.D.requires_grad_(False)
        ws = _mixed_ws(self.G, cfg.batch, cfg.style_mixing)
        fake = self.G.synthesis(ws, noise_mode="random")
        loss = F.softplus(-self.D(augment(fake, cfg.augment))).mean()
        out = {"loss_G": loss.detach()}
        if cfg.pl_weight > 0 and self.step % cfg.pl_interval == 0:
            half = max(cfg.batch // 2, 1)
            ws_pl = _mixed_ws(self.G, half, 0.0).requires_grad_(True)
            img = self.G.synthesis(ws_pl, noise_mode="random")
            noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * noise).sum(), ws_pl, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), 0.01)
            pl = (lengths - self.pl_mean).square().mean()
            loss = loss + pl * cfg.pl_weight * cfg.pl_interval
            out["pl"] = pl.detach()
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        return out

    @torch.no_grad()
    def _ema(self) -> None:
        cfg = self.cfg
        ema_nimg = min(cfg.ema_kimg * 1000, self.nimg * cfg.ema_rampup) if cfg.ema_rampup else cfg.ema_kimg * 1000
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        # One fused multi-tensor update (p_ema ← p + β·(p_ema − p)) instead of a kernel per parameter.
        torch._foreach_lerp_(list(self.G_ema.parameters()), [p.detach() for p in self.G.parameters()], 1.0 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, stats: dict[str, float]) -> None:
        kimg = self.nimg / 1000
        state = {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                 "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(), "step": self.step,
                 "nimg": self.nimg, "wall": self.wall, "pl_mean": self.pl_mean.cpu(), "rng": torch.get_rng_state(),
                 "train_config": asdict(self.cfg)}
        save_checkpoint(self.out / "state.pt", "train-state", state)
        meta = {"kimg": kimg, "step": self.step, "train_config": asdict(self.cfg)}
        save_generator(self.G_ema, self.out / "generator.pt", meta=meta)
        # D's early features serve as a perceptual loss for inversion (model/inversion.py).
        save_discriminator(self.D, self.out / "discriminator.pt", generator_id(self.G_ema))
        save_generator(self.G_ema, self.out / "snapshots" / f"G_ema-kimg{kimg:07.1f}.pt", meta=meta)
        with torch.no_grad():
            grid = self.G_ema(self.grid_z.to(self.device), noise_mode="const").cpu()
        save_grid(to_uint8(grid), self.out / f"grid-kimg{kimg:07.1f}.png", cols=8, scale=2)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"kimg": round(kimg, 2), "step": self.step, "wall_s": round(self.wall, 1),
                                **{k: round(v, 4) for k, v in stats.items()}}) + "\n")

    def run(self, data: torch.Tensor, show_progress: bool = True) -> None:
        """Train on uint8 images [N, 3, res, res] until total_kimg (or the time limit); checkpoint on
        time and at the end. Losses are read back every ``LOG_EVERY`` steps (one device sync)."""
        cfg = self.cfg
        res = self.G.cfg.resolution
        if data.shape[1:] != (self.G.cfg.img_channels, res, res):
            raise ValueError(f"training images must be [N, {self.G.cfg.img_channels}, {res}, {res}], "
                             f"got {list(data.shape)}")
        data = data.to(self.device)
        total = int(cfg.total_kimg * 1000)
        started = last_ckpt = time.time()
        stats: dict[str, float] = {}
        pending: dict[str, torch.Tensor] = {}
        bar = tqdm(total=total, initial=self.nimg, unit="img", disable=not show_progress, smoothing=0.05)
        t_window, n_window = time.time(), 0
        try:
            while self.nimg < total:
                t0 = time.time()
                pending.update(self._d_step(_real_batch(data, cfg.batch, cfg.xflip)))
                pending.update(self._g_step())
                self.step += 1
                self.nimg += cfg.batch
                n_window += cfg.batch
                self._ema()
                if self.step % LOG_EVERY == 0:
                    stats.update({k: float(v) for k, v in pending.items()})   # syncs the device once
                    now = time.time()
                    stats["img_per_s"] = n_window / max(now - t_window, 1e-9)
                    t_window, n_window = now, 0
                    bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()
                                     if k in ("loss_D", "loss_G", "r1", "img_per_s")})
                self.wall += time.time() - t0
                bar.update(cfg.batch)
                if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
                    self.checkpoint(stats)
                    last_ckpt = time.time()
                if cfg.time_limit_minutes is not None and time.time() - started >= cfg.time_limit_minutes * 60:
                    break
        finally:
            bar.close()
            stats.update({k: float(v) for k, v in pending.items()})
            self.checkpoint(stats)


def train_gan(cfg: TrainConfig, resume: bool = False, show_progress: bool = True) -> Trainer:
    """Load the image folder ``cfg.data`` and train (or resume) a GAN into ``cfg.out``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg, resume=resume)
    data = load_image_folder(cfg.data, trainer.G.cfg.resolution, limit=cfg.max_images)
    trainer.run(data, show_progress=show_progress)
    return trainer
