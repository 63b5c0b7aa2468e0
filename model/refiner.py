"""SimGAN's refiner: make generator samples look like a project's real (unlabeled) images, labels kept.

Shrivastava et al. (SimGAN) refine synthetic images with a fully convolutional network trained against
a discriminator on unlabeled real images, with three modifications that this module implements:

1. **Self-regularization**: an L1 loss between a feature transform ψ of the refined image and of its
   input keeps what carries the annotation. Here ψ is the Sobel gradient magnitude of the luminance
   (``structure``): part boundaries must stay where they are, while colours and contrast polarity may
   change (a domain that paints skin green or eyes dark keeps every edge in place).
2. **Local adversarial loss**: the discriminator is fully convolutional and judges every 47 px patch
   separately (:class:`PatchDiscriminator`); its loss is the mean over patches (no single artefact can fool or fail a whole image).
   The per-patch loss is least squares (LSGAN) rather than SimGAN's cross-entropy: with cross-entropy the
   critic won outright after ~300 steps on the embedded domain and the refiner never recovered.
3. **History of refined images**: half of every discriminator batch comes from a buffer of earlier
   refinements, so the refiner cannot reintroduce artefacts the discriminator has forgotten.

The refiner starts as the identity (its last convolution is zero-initialised and its output is added to
the input in tanh space), so an untrained or lightly trained refiner never destroys an image. It changes appearance
and not geometry by construction: a few 3×3 convolutions (a 19 px receptive field) with no resampling.

**Part colours** (``RefinerConfig.part_colours``, the product's default): before the residual network, each
part gets its own affine colour map (a 3×3 matrix and an offset per class, in tanh space, the identity at
init), the parts read by a frozen segmenter that the refiner carries (the project's teacher U-Net). A domain
that inverts one small part's contrast (dark eyes with bright pupils) needs a map the residual network
cannot reach by small steps: the part's edge would vanish half way, which the self-regularization
forbids. A per-part colour map cannot move or blur an edge at all, so it is left out of the
self-regularization, which then ties the refined image to the colour-mapped one.

Images cross this interface as uint8 [N, H, W, 3]; inside, float32 [N, 3, H, W] in [-1, 1].
Training is resumable: :func:`train_refiner` writes its whole state every ``save_every`` steps.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .segmenter import TrainingStopped, UNet, UNetConfig, to_input

STOP_CHECK_EVERY = 25


@dataclass
class RefinerConfig:
    channels: int = 24            # width of the refiner's residual blocks
    blocks: int = 4               # residual blocks (receptive field 3 + 4·2·2 = 19 px)
    d_channels: int = 48          # width of the local (patch) discriminator
    d_dilated: int = 2            # dilated layers widening its patches (15 px → 47 px at 2)
    self_reg: float = 1.0         # λ of the self-regularization term
    lr: float = 5e-4              # Adam, betas (0.5, 0.999), for the refiner and the discriminator
    batch: int = 16
    steps: int = 1200
    history: int = 512            # images kept in the history buffer
    history_frac: float = 0.5     # share of every discriminator fake batch drawn from the buffer
    part_colours: bool = False    # an affine colour map per part before the residual network (needs a part segmenter)
    colour_lr: float = 5e-3       # Adam's step for the part colour maps (120 parameters for 10 classes)

    def to_dict(self) -> dict:
        return asdict(self)


_EDGE = 1 - 1e-3           # inputs are clamped to ±this before atanh (uint8 0 and 255 still round back)


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.2),
                                  nn.Conv2d(ch, ch, 3, padding=1, padding_mode="reflect"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.body(x), 0.2)


class RefinerNet(nn.Module):
    """float32 [N, 3, H, W] in [-1, 1] → refined images of the same shape and range (identity at init).

    ``parts``: with ``cfg.part_colours``, the frozen segmenter (images in [-1, 1] → logits [N, C, H, W])
    whose argmax picks each pixel's colour map; it is saved and loaded with the refiner."""

    def __init__(self, cfg: RefinerConfig, parts: UNet | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.part_colours != (parts is not None):
            raise ValueError("a refiner with part colours needs the segmenter that reads the parts (and only it "
                             f"takes one): part_colours={cfg.part_colours}, parts given: {parts is not None}")
        self.parts = parts
        if parts is not None:
            parts.requires_grad_(False).eval()
            n = parts.cfg.n_classes
            self.colour_w = nn.Parameter(torch.eye(3).repeat(n, 1, 1))     # [C, 3, 3]
            self.colour_b = nn.Parameter(torch.zeros(n, 3))                # [C, 3]
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.channels, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(*[_Residual(cfg.channels) for _ in range(cfg.blocks)])
        self.head = nn.Conv2d(cfg.channels, 3, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> "RefinerNet":
        super().train(mode)
        if self.parts is not None:
            self.parts.eval()          # the part segmenter is frozen: its batch norms keep their statistics
        return self

    def coloured(self, x: torch.Tensor) -> torch.Tensor:
        """The part colour maps alone, in tanh space: [N, 3, H, W] in [-1, 1] → [N, 3, H, W] (unbounded);
        without part colours, atanh(x)."""
        z = torch.atanh(x.clamp(-_EDGE, _EDGE))
        if self.parts is None:
            return z
        with torch.no_grad():
            onehot = F.one_hot(self.parts(x).argmax(1), self.parts.cfg.n_classes).permute(0, 3, 1, 2).to(x.dtype)
        w = torch.einsum("nchw,cij->nijhw", onehot, self.colour_w)
        return torch.einsum("nijhw,njhw->nihw", w, z) + torch.einsum("nchw,ci->nihw", onehot, self.colour_b)

    def refine_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(refined, colour-mapped) images, both [N, 3, H, W] in [-1, 1]: the second is what the
        self-regularization compares the first with (``x`` itself without part colours)."""
        z = self.coloured(x)
        base = x if self.parts is None else torch.tanh(z)
        # a residual in tanh space: bounded output, gradients everywhere (a clamp would stop them on
        # saturated pixels and let the critic win for good), the identity while the head is zero
        return torch.tanh(z + self.head(self.blocks(self.stem(base)))), base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine_pair(x)[0]


class PatchDiscriminator(nn.Module):
    """Local adversarial critic: images [N, 3, H, W] → real/refined logits [N, 1, H/4, W/4], one per patch.

    Two stride-2 layers and one plain 3×3 judge 15 px patches; each of ``dilated`` 3×3 layers of dilation 2
    (at a quarter of the resolution) widens them by 16 px. At 64 px the 47 px patches of the default see a
    part with its surroundings: an eye is a few pixels wide, and a critic that sees it with the face
    around it tells a white eye from a dark one (the 15 px critic did not; docs/results.md)."""

    def __init__(self, ch: int = 48, dilated: int = 2) -> None:
        super().__init__()
        wide = [m for _ in range(dilated)
                for m in (nn.Conv2d(2 * ch, 2 * ch, 3, padding=2, dilation=2), nn.LeakyReLU(0.2))]
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), nn.LeakyReLU(0.2),
            *wide,
            nn.Conv2d(2 * ch, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def structure(x: torch.Tensor) -> torch.Tensor:
    """ψ of the self-regularization: Sobel gradient magnitude of the luminance.

    x: float32 [N, 3, H, W] in [-1, 1] → float32 [N, 1, H, W] ≥ 0 (0 on flat colour, ~1 on a black/white
    edge). Invariant to hue changes and to the sign of a contrast, not to where the edges are."""
    y = (x * _LUMA.to(x)).sum(1, keepdim=True)
    y = F.pad(y, (1, 1, 1, 1), mode="replicate")
    k = _SOBEL.to(x)
    gx = F.conv2d(y, k.view(1, 1, 3, 3))
    gy = F.conv2d(y, k.t().contiguous().view(1, 1, 3, 3))
    return (gx.square() + gy.square() + 1e-6).sqrt()


class HistoryBuffer:
    """SimGAN's buffer of earlier refined images (float32 [size, 3, H, W]), filled as training goes."""

    def __init__(self, size: int, g: torch.Generator) -> None:
        self.size, self.g = size, g
        self.images: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    def sample(self, n: int) -> torch.Tensor:
        idx = torch.randint(0, len(self), (n,), generator=self.g)
        return self.images[idx.to(self.images.device)]

    def add(self, batch: torch.Tensor) -> None:
        batch = batch.detach()
        if self.images is None:
            self.images = batch.clone()
        elif len(self.images) < self.size:
            self.images = torch.cat([self.images, batch])[: self.size]
        else:   # replace random entries
            idx = torch.randperm(self.size, generator=self.g)[: len(batch)]
            self.images[idx.to(self.images.device)] = batch[: len(idx)]


@dataclass
class Refiner:
    """A trained refiner plus what it belongs to (the generator whose samples it refines) and how it went."""

    net: RefinerNet
    generator_id: str | None = None
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def refine(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        """uint8 [N, H, W, 3] → refined uint8 [N, H, W, 3] (same geometry, so labels carry over).
        ``batch`` 32: on a 2-core CPU at 64 px 1,000 images take 2.8 s, against 10.7 s in batches of 128
        (whose activations leave the cache)."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"refine expects uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        self.net.eval()
        device = next(self.net.parameters()).device
        out = np.empty_like(images)
        for i in range(0, len(images), batch):
            y = self.net(to_input(images[i:i + batch]).to(device))
            out[i:i + batch] = y.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        return out

    def to(self, device: str | torch.device) -> "Refiner":
        self.net.to(device)
        return self

    def save(self, path: str | Path) -> Path:
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        parts = None if self.net.parts is None else self.net.parts.cfg.to_dict()
        return save_checkpoint(path, "refiner", {"config": self.net.cfg.to_dict(), "state_dict": state,
                                                 "parts_config": parts, "generator_id": self.generator_id,
                                                 "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path, generator_id: str | None = None) -> "Refiner":
        data = load_checkpoint(path, "refiner", generator_id)
        parts = data.get("parts_config")
        net = RefinerNet(RefinerConfig(**data["config"]), None if parts is None else UNet(UNetConfig(**parts)))
        net.load_state_dict(data["state_dict"])
        return cls(net.eval(), data.get("generator_id"), data.get("meta") or {})


def _cpu(obj):
    """A state dict (nested dicts/lists of tensors) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def _random_batch(images: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return images[torch.randint(0, len(images), (n,), generator=g).to(images.device)]


def train_refiner(synthetic: np.ndarray, real: np.ndarray, cfg: RefinerConfig | None = None, seed: int = 0,
                  parts: UNet | None = None, generator_id: str | None = None,
                  state_path: str | Path | None = None, save_every: int = 100,
                  should_stop: Callable[[], bool] | None = None,
                  log: Callable[[str], None] = lambda _m: None, device: str | torch.device = "cpu") -> Refiner:
    """Train a refiner that maps ``synthetic`` images towards the look of ``real`` ones.

    synthetic: uint8 [N, H, W, 3] (generator samples; their labels stay valid after refinement);
    real: uint8 [M, H', W', 3] unlabeled images of the target domain (H', W' may differ from H, W: the
    discriminator judges patches, so only the pixel scale matters; pass images at the generator's
    resolution). ``parts``: with ``cfg.part_colours``, the segmenter that reads the parts of the images
    (a copy is frozen into the refiner). ``state_path``: where the full training state is written every
    ``save_every`` steps and resumed from when it exists with the same configuration (a stopped run continues where it was).
    ``should_stop`` is asked every 25 steps; True raises :class:`~model.segmenter.TrainingStopped`
    after saving the state. ``device``: where it trains (the state and the result are saved from the CPU)."""
    cfg = cfg or RefinerConfig()
    if len(synthetic) == 0 or len(real) == 0:
        raise ValueError(f"a refiner needs synthetic and real images, got {len(synthetic)} synthetic, {len(real)} real")
    for name, arr in (("synthetic", synthetic), ("real", real)):
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{name} images must be uint8 [N, H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    R = RefinerNet(cfg, None if parts is None else copy.deepcopy(parts).cpu()).to(device)
    D = PatchDiscriminator(cfg.d_channels, cfg.d_dilated).to(device)
    colour = [p for n, p in R.named_parameters() if n.startswith("colour_")]
    rest = [p for n, p in R.named_parameters() if p.requires_grad and not n.startswith("colour_")]
    opt_r = torch.optim.Adam([{"params": rest}] + ([{"params": colour, "lr": cfg.colour_lr}] if colour else []),
                             lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    history = HistoryBuffer(cfg.history, g)
    x_syn, x_real = to_input(synthetic).to(device), to_input(real).to(device)
    start, seconds = 0, 0.0
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        try:
            st = load_checkpoint(state_path, "refiner-state", generator_id)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (delete {state_path} to start the refiner's training afresh)") from e
        if st["config"] != cfg.to_dict():
            raise ValueError(f"{state_path} holds a refiner training with another configuration ({st['config']}); "
                             f"delete it or pass the same settings ({cfg.to_dict()}) to resume")
        R.load_state_dict(st["refiner"]), D.load_state_dict(st["discriminator"])
        opt_r.load_state_dict(st["opt_refiner"]), opt_d.load_state_dict(st["opt_discriminator"])
        history.images = None if st["history"] is None else st["history"].to(device)
        g.set_state(st["rng"])
        start, seconds = int(st["step"]), float(st["seconds"])
        log(f"resuming refiner training at step {start}/{cfg.steps}")

    def save_state(step: int) -> None:
        if state_path is not None:
            save_checkpoint(state_path, "refiner-state", {
                "config": cfg.to_dict(), "generator_id": generator_id, "step": step, "seconds": seconds,
                "refiner": _cpu(R.state_dict()), "discriminator": _cpu(D.state_dict()),
                "opt_refiner": _cpu(opt_r.state_dict()), "opt_discriminator": _cpu(opt_d.state_dict()),
                "history": None if history.images is None else history.images.cpu(), "rng": g.get_state()})

    losses: dict[str, float] = {}
    t0 = time.time()
    step = start
    for step in range(start, cfg.steps):
        if should_stop is not None and step % STOP_CHECK_EVERY == 0 and step > start and should_stop():
            seconds += time.time() - t0
            save_state(step)
            raise TrainingStopped(f"refiner training stopped at step {step} of {cfg.steps} (state saved)")
        syn = _random_batch(x_syn, cfg.batch, g)
        # refiner: fool the patch critic, keep the structure
        refined, base = R.refine_pair(syn)
        logits = D(refined)
        adv = (logits - 1).square().mean()
        reg = (structure(refined) - structure(base)).abs().mean()
        loss_r = adv + cfg.self_reg * reg
        opt_r.zero_grad(set_to_none=True)
        loss_r.backward()
        opt_r.step()
        # discriminator: real patches vs refined ones, half of them from the history
        fake = refined.detach()
        if len(history) >= cfg.batch:
            k = int(round(cfg.batch * cfg.history_frac))
            fake_d = torch.cat([fake[: cfg.batch - k], history.sample(k)])
        else:
            fake_d = fake
        real_b = _random_batch(x_real, cfg.batch, g)
        lr_, lf_ = D(real_b), D(fake_d)
        loss_d = 0.5 * ((lr_ - 1).square().mean() + lf_.square().mean())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        history.add(fake)
        losses = {"adversarial": adv.item(), "self_reg": reg.item(), "discriminator": loss_d.item()}
        if (step + 1) % save_every == 0:
            seconds += time.time() - t0
            t0 = time.time()
            log(f"refiner step {step + 1}/{cfg.steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
                + f" ({seconds:.0f} s)")
            if step + 1 < cfg.steps:
                save_state(step + 1)
    seconds += time.time() - t0
    if state_path is not None and state_path.exists():
        state_path.unlink()
    meta = {"steps": cfg.steps, "part_colours": cfg.part_colours, "seconds": round(seconds, 1),
            "n_synthetic": int(len(synthetic)), "n_real": int(len(real)), "final_losses": {k: round(v, 4) for k, v in losses.items()}}
    return Refiner(R.eval(), generator_id, meta)
