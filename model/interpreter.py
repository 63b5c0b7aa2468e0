"""DatasetGAN's interpreter: an ensemble of per-pixel MLP classifiers over generator features.

Each member is ``Linear(d,128)-ReLU-BN-Linear(128,32)-ReLU-BN-Linear(32,C)`` (256/128 hidden when
C ≥ 32), initialised N(0, 0.02), trained with cross-entropy and Adam (lr 1e-3) as in DatasetGAN.
Unlike its reference loop (10 separate MLPs, batch 64), the members are fused: their weights are
stacked and every layer is one batched matmul, each member drawing its own mini-batch (keeping the
members' diversity) — an order of magnitude more pixels per second on a CPU.

Memory is bounded by a class-balanced pixel sample: at most ``per_class`` pixels of each class are
kept per fit (all pixels of rare classes). By default (``class_weighting="balanced"``) every class
then weighs the same in the loss, which labels small parts better; ``"natural"`` re-weights each
pixel by its class's sampling rate, so the loss sees the natural class frequencies as DatasetGAN's
plain cross-entropy does.

Prediction: per-pixel majority vote of the members, mean probabilities, Jensen–Shannon uncertainty
H(mean p) − mean H(p), and a per-image score (mean of the top 10% pixel uncertainties).

Device: fitting runs where it is told (``fit(device=...)``); prediction runs on the device of the
feature maps it is given (the ensemble moves there); a :class:`Prediction` is always numpy.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .device import module_device

# Config keys older files carry that no longer mean anything (min_region_px was always 0).
_RETIRED_CONFIG_KEYS = ("min_region_px",)

@dataclass
class InterpreterConfig:
    in_dim: int                           # feature dimension d (from the generator)
    n_classes: int                        # C, background included
    members: int = 10                     # ensemble size
    hidden: tuple[int, int] = (128, 32)   # (256, 128) when C ≥ 32, as DatasetGAN
    lr: float = 1e-3
    batch: int = 1024                     # pixels per member per step
    # Passes over the pixel sample. DatasetGAN stops after ~4 epochs, but its sample is millions of pixels
    # (tens of thousands of steps); 16 images at 64 px give ~40k pixels, where 4 epochs (78 steps) leave
    # the MLPs undertrained: 36.5 % mIoU through inversion vs 58.8 % at 12 epochs of batch 1024 (466
    # steps, 22 s on 2 cores); more adds < 1 point (docs/results.md, "Interpreter training length").
    epochs: float = 12.0
    per_class: int = 20_000               # pixel-sample cap per class
    # "balanced": every class weighs the same in the loss (pixels sampled per class, no reweighting);
    # "natural": importance weights restore each class's pixel frequency (DatasetGAN's plain CE). On the
    # default domain, balanced labels small parts better: 36.4 vs 32.7 % mIoU through inversion
    # (docs/results.md, "Inversion").
    class_weighting: str = "balanced"

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if self.class_weighting not in ("balanced", "natural"):
            raise ValueError(f"class_weighting must be 'balanced' or 'natural', got {self.class_weighting!r}")
        if self.n_classes >= 32 and self.hidden == (128, 32):
            self.hidden = (256, 128)


class EnsembleMLP(nn.Module):
    """E fused MLPs: features [E, B, d] (or [B, d], shared) → logits [E, B, C]."""

    def __init__(self, cfg: InterpreterConfig) -> None:
        super().__init__()
        e, dims = cfg.members, [cfg.in_dim, *cfg.hidden, cfg.n_classes]
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(e, dims[i], dims[i + 1]) * 0.02)
                                        for i in range(len(dims) - 1))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(e, 1, dims[i + 1])) for i in range(len(dims) - 1))
        self.norms = nn.ModuleList(nn.BatchNorm1d(e * h) for h in cfg.hidden)
        self.members = e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:   # shared input: one matmul for all members' first layers
            w0 = self.weights[0]
            h = (x @ w0.permute(1, 0, 2).reshape(w0.shape[1], -1)).reshape(x.shape[0], self.members, -1)
            h = h.permute(1, 0, 2) + self.biases[0]
        else:
            h = torch.baddbmm(self.biases[0], x, self.weights[0])
        for i in range(1, len(self.weights)):
            h = F.relu(h)
            e, b, c = h.shape
            h = self.norms[i - 1](h.permute(1, 0, 2).reshape(b, e * c)).reshape(b, e, c).permute(1, 0, 2)
            h = torch.baddbmm(self.biases[i], h, self.weights[i])
        return h


@dataclass
class Prediction:
    """Interpreter output for N images of H×W pixels."""

    labels: np.ndarray          # uint8 [N, H, W] majority vote of the members (ties: higher mean p)
    probs: np.ndarray           # float32 [N, C, H, W] mean of the members' softmax
    uncertainty: np.ndarray     # float32 [N, H, W] Jensen–Shannon divergence across members, ≥ 0
    score: np.ndarray           # float32 [N] mean of the top-10% pixel uncertainties (higher = less certain)


@dataclass
class FitReport:
    seconds: float
    steps: int
    pixels: int
    final_loss: float
    pixels_per_s: float
    class_pixels: list[int] = field(default_factory=list)


def balanced_pixel_sample(labels: torch.Tensor, per_class: int, n_classes: int,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose pixels of label maps [N, H, W]: all of a class if it has ≤ per_class, else per_class at random.

    Returns (flat pixel indices int64 [K] into N·H·W, weight per pixel float32 [K] = count_c / kept_c)."""
    flat = labels.reshape(-1).long()
    if int(flat.max()) >= n_classes:
        raise ValueError(f"label value {int(flat.max())} is outside the {n_classes} classes")
    picks, weights = [], []
    for c in range(n_classes):
        idx = torch.nonzero(flat == c).squeeze(1)
        if idx.numel() == 0:
            continue
        if idx.numel() > per_class:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:per_class]]
        picks.append(idx)
        weights.append(torch.full([idx.numel()], int((flat == c).sum()) / idx.numel()))
    return torch.cat(picks), torch.cat(weights)


@functools.lru_cache(maxsize=32)
def upsample_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """float32 [size_out, size_in]: 1-D linear interpolation exactly as F.interpolate(mode="bilinear",
    align_corners=False) does per axis, so that up(P) = U·P·Uᵀ for a [size_in, size_in] map P."""
    eye = torch.eye(size_in).unsqueeze(0)                                        # [1, in (channels), in]
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[0].t().contiguous()


def _argmax_first(x: torch.Tensor) -> torch.Tensor:
    """argmax over dim 0 of x [C, ...] → int64 [...] (first index on ties), as C elementwise passes over
    contiguous memory: much faster than torch.argmax over a small strided dim."""
    best, idx = x[0].clone(), torch.zeros(x.shape[1:], dtype=torch.long, device=x.device)
    for c in range(1, x.shape[0]):
        better = x[c] > best
        best = torch.where(better, x[c], best)
        idx.masked_fill_(better, c)
    return idx


def summarise_members(logits: torch.Tensor, hgt: int, wid: int) -> Prediction:
    """Ensemble members' logits [E, C, N, H·W] → :class:`Prediction`: majority vote (ties → higher mean
    probability), mean probabilities, Jensen–Shannon uncertainty per pixel, image score = mean of the
    top-10 % pixel uncertainties. Shared by every ensemble label source (interpreter, label branch).
    Computed on the logits' device; the :class:`Prediction` is numpy."""
    e, n_cls, n, _ = logits.shape
    dev = logits.device
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    mean = p.mean(0)                                                                 # [C, N, HW]
    ent_mean = -(mean * mean.clamp_min(1e-12).log()).sum(0)
    mean_ent = -(p * logp).sum(1).mean(0)
    votes = torch.zeros(n_cls, n * hgt * wid, device=dev).scatter_add_(
        0, _argmax_first(logits.transpose(0, 1)).reshape(e, -1), torch.ones(e, n * hgt * wid, device=dev))
    labels = _argmax_first(votes.reshape(n_cls, n, -1) + 1e-3 * mean)               # ties → higher mean p
    js = (ent_mean - mean_ent).clamp_min(0)                                          # [N, HW]
    labels = labels.reshape(n, hgt, wid).to(torch.uint8).cpu().numpy()
    top = max(1, int(round(0.1 * hgt * wid)))
    return Prediction(labels, mean.reshape(n_cls, n, hgt, wid).permute(1, 0, 2, 3).contiguous().cpu().numpy(),
                      js.reshape(n, hgt, wid).cpu().numpy(), js.topk(top, dim=1).values.mean(1).cpu().numpy())


class Interpreter:
    """The fitted ensemble plus what it belongs to: class names and the generator it was fitted for."""

    def __init__(self, cfg: InterpreterConfig, class_names: list[str], generator_id: str) -> None:
        if len(class_names) != cfg.n_classes:
            raise ValueError(f"{len(class_names)} class names for {cfg.n_classes} classes")
        self.cfg = cfg
        self.class_names = list(class_names)
        self.generator_id = generator_id
        self.model = EnsembleMLP(cfg)
        self.report: FitReport | None = None

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def to(self, device: str | torch.device) -> "Interpreter":
        """Move the ensemble to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
            seed: int = 0, device: str | torch.device | None = None) -> FitReport:
        """Fit on sampled pixels: features float [K, d] (fp16 is fine), targets int [K], weights float [K].

        ``device``: where to train (default: the features' device); the ensemble stays there. The
        initialisation and the mini-batches come from CPU generators, so every device draws the same."""
        cfg = self.cfg
        if features.shape[1] != cfg.in_dim:
            raise ValueError(f"features have {features.shape[1]} dims, the interpreter expects {cfg.in_dim}")
        dev = torch.device(device) if device is not None else features.device
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = EnsembleMLP(cfg).to(dev).train()
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        k = features.shape[0]
        features = features.to(dev)
        w = torch.ones(k, device=dev) if weights is None else weights.float().to(dev)
        w = w / w.mean()
        targets = targets.long().to(dev)
        batch = min(cfg.batch, k)
        steps = max(1, math.ceil(cfg.epochs * k / batch))
        t0 = time.time()
        loss_val = float("nan")
        for _ in range(steps):
            idx = torch.randint(0, k, (cfg.members, batch), generator=g).to(dev)   # each member its own batch
            x = features[idx].float()                                          # [E, B, d]
            logits = self.model(x)
            loss = (F.cross_entropy(logits.reshape(-1, cfg.n_classes), targets[idx].reshape(-1), reduction="none")
                    * w[idx].reshape(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_val = loss.item()
        self.model.eval()
        dt = time.time() - t0
        counts = torch.bincount(targets, minlength=cfg.n_classes).tolist()
        self.report = FitReport(dt, steps, k, loss_val, steps * batch * cfg.members / max(dt, 1e-9), counts)
        return self.report

    # -- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_native(self, maps: list[torch.Tensor], out_size: int) -> Prediction:
        """Predict from per-layer maps at their native resolutions ([N, c_l, r_l, r_l], channels in feature
        order), without materialising the [N, d, H, W] feature tensor.

        The first layer is linear and bilinear upsampling is linear, so W₁·up(f) = up(W₁·f): each map is
        projected at its own resolution to E·h₁ channels, the projections are summed per resolution and
        upsampled once per resolution. Same result as :meth:`predict` up to float rounding.

        One image at a time, channels first: the largest tensor ([E·h₁, H·W], 21 MB at 64 px) stays in
        cache and every layer is a contiguous batched matmul — 2–3× faster than whole batches."""
        cfg = self.cfg
        e, h1 = cfg.members, cfg.hidden[0]
        if sum(m.shape[1] for m in maps) != cfg.in_dim:
            raise ValueError(f"maps hold {sum(m.shape[1] for m in maps)} channels, the interpreter expects {cfg.in_dim}")
        dev = maps[0].device
        self.to(dev)
        w0 = self.model.weights[0].permute(0, 2, 1).reshape(e * h1, cfg.in_dim)          # [E·h1, d]
        b0 = self.model.biases[0].reshape(e, h1, 1)
        later = [self._folded_layer(i) for i in range(1, len(self.model.weights))]
        later = [(w.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()) for w, b in later]  # [E,c',c],[E,c',1]
        coarse = sorted({m.shape[-1] for m in maps} - {out_size})
        # Bilinear upsampling is separable and linear: up(P) = U·P·Uᵀ with U [out, r]. Along x one GEMM per
        # resolution; along y ONE GEMM over all resolutions stacked, which also sums them.
        ups = {r: upsample_matrix(r, out_size).to(dev) for r in coarse}
        u_cat = torch.cat([ups[r] for r in coarse], dim=1) if coarse else None   # [H, Σr]
        logits = []
        for j in range(maps[0].shape[0]):
            by_res: dict[int, torch.Tensor] = {}
            offset = 0
            for m in maps:
                c, r = m.shape[1], m.shape[-1]
                part = w0[:, offset:offset + c] @ m[j].float().reshape(c, r * r)          # [E·h1, r·r]
                by_res[r] = part if r not in by_res else by_res[r].add_(part)
                offset += c
            h = by_res.pop(out_size, None)
            if coarse:
                cols = [(by_res[r].reshape(e * h1 * r, r) @ ups[r].t()).reshape(e * h1, r, out_size)
                        for r in coarse]
                up = torch.matmul(u_cat, torch.cat(cols, dim=1)).reshape(e * h1, out_size * out_size)
                h = up if h is None else h.add_(up)
            h = h.reshape(e, h1, -1).add_(b0).clamp_min_(0)
            for i, (weight, bias) in enumerate(later):
                if i > 0:
                    h = h.clamp_min_(0)
                h = torch.baddbmm(bias, weight, h)                                      # [E, c', H·W]
            logits.append(h)
        return self._summarise(torch.stack(logits, dim=2), out_size, out_size)     # [E, C, N, H·W]

    def _folded_layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's weights [E, c, c'] and bias [E, 1, c'] with the preceding eval-mode BatchNorm folded in:
        BN(x)·W + b = x·(s⊙W) + (t·W + b), s = γ/√(var+ε), t = β − mean·s."""
        bn, w, b = self.model.norms[i - 1], self.model.weights[i], self.model.biases[i]
        e, c, _ = w.shape
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        shift = (bn.bias - bn.running_mean * scale).reshape(e, 1, c)
        return scale.reshape(e, c, 1) * w, torch.baddbmm(b, shift, w)

    def _summarise(self, logits: torch.Tensor, hgt: int, wid: int) -> Prediction:
        return summarise_members(logits, hgt, wid)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> Prediction:
        """features [N, d, H, W] (any float dtype) → :class:`Prediction`."""
        n, d, h, w = features.shape
        self.to(features.device)
        self.model.eval()
        logits = self.model(features.permute(0, 2, 3, 1).reshape(-1, d).float())       # [E, N·H·W, C]
        return self._summarise(logits.permute(0, 2, 1).reshape(logits.shape[0], -1, n, h * w), h, w)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write config, class names, generator id, weights (CPU tensors), ``meta`` and the fit report atomically."""
        return save_checkpoint(path, "interpreter", {
            "config": asdict(self.cfg), "class_names": self.class_names, "generator_id": self.generator_id,
            "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()}, "meta": meta or {},
            "report": asdict(self.report) if self.report else None})

    @classmethod
    def load(cls, path: str | Path, generator_id: str | None = None) -> "Interpreter":
        """Load (eval mode); if ``generator_id`` is given, refuse an interpreter fitted for another generator."""
        data = load_checkpoint(path, "interpreter", generator_id)
        config = {k: v for k, v in data["config"].items() if k not in _RETIRED_CONFIG_KEYS}
        interp = cls(InterpreterConfig(**config), data["class_names"], data["generator_id"])
        interp.model.load_state_dict(data["state_dict"])
        interp.model.eval()
        if data.get("report"):
            interp.report = FitReport(**data["report"])
        return interp
