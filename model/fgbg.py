"""Labels4Free: a foreground/background split of a frozen generator, learned with zero labels.

A small **alpha-net** reads the generator's own synthesis features (the two conv outputs per block,
from 8×8 up to full resolution) and paints an opacity map α ∈ [0, 1]. A **background pass** of the
same generator — the same latent with the 4×4 stage zeroed (the output of its conv, so no object
layout ever reaches the finer blocks) — draws an object-free background. The composite
``α · G(w) + (1 − α) · G_bg(w)`` is judged by a discriminator trained jointly against real images
(by default fresh samples of the generator itself: a user's checkpoint needs no dataset); α can only
fool it by keeping the object and letting the background show everywhere else. Two regularisers make
α a mask: a binarisation term ``mean min(α, 1 − α)``, and coverage terms (α covers at least
``min_fg`` of the image and, with ``w_bg`` > 0, leaves at least ``phi_bg`` of it to the background).
Only the alpha-net (with an EMA copy, what is saved) and the discriminator train; the generator is
frozen. Architecture and losses follow Abdal et al., ICCV 2021 (``../shared/methods-facts.md`` §2).

The check the method relies on — does the 4×4-zeroed pass draw no object? — was made on the shipped
generator (8 samples, both variants: the 4×4 conv's output × 0 and the constant input × 0): it draws
flat, object-free backgrounds in each sample's own background hue, without the domain's lighting gradient
or clutter, with a faint frame at the border; no face, hair or torso survives. So the frozen-G split is
used as published (no trainable background generator). ``dgan fgbg grid --with-background`` shows the pass
next to the images. :func:`background` is that pass for any generator.

Latents are W+ float32 [N, num_ws, w_dim]; alpha maps float32 [N, 1, R, R] (or [N, R, R] out of
:meth:`FgBg.alpha`) in [0, 1]; images float32 [N, 3, R, R] in ≈[-1, 1].
Training is resumable: :func:`train_fgbg` writes its whole state every ``save_every`` steps and keeps
it after the last step, so a later run with more ``steps`` continues where the last one ended.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .features import FeatureExtractor
from .generator.checkpoints import generator_id
from .generator.discriminator import Discriminator, DiscriminatorConfig
from .generator.stylegan2 import Generator

# Settings that may change between a run and its resumption (the schedule, not the models or losses).
RESUMABLE_CHANGES = ("steps", "save_every")


@dataclass
class FgBgConfig:
    """Alpha-net architecture, the two passes and the training recipe (defaults: Labels4Free, fitted to 64 px)."""

    from_res: int = 8              # the alpha-net reads the synthesis features from this resolution up
    map_channels: int = 3          # each feature map → this many channels (1×1 conv); a resolution's pair → 2×
    psi: float = 1.0               # truncation of the foreground pass (the background pass never truncates)
    batch: int = 8
    steps: int = 2000
    lr: float = 2e-4               # Adam (β 0, 0.99) for the alpha-net and the discriminator
    d_lr: float = 2e-4
    r1_gamma: float = 10.0         # R1 on real images every r1_interval steps
    r1_interval: int = 16
    w_sat: float = 1.0             # weight of the non-saturating adversarial term
    m: float = 1.2                 # weight of binarisation + minimum foreground coverage
    min_fg: float = 0.25           # α must cover at least this fraction of the image (relu(min_fg − mean α))
    # relu(phi_bg − (1 − mean α)): the background keeps at least phi_bg of the pixels (mean over the batch).
    # Labels4Free's default weight is 0 with targets tuned per dataset; without it α drifts towards 1 here
    # (composites of a generator's own images are real): fg IoU 0.86 → 0.69 within 300 steps. phi_bg: the
    # embedded domain's mean background area (68 %); set your domain's typical share for another generator.
    w_bg: float = 2.0
    phi_bg: float = 0.68
    ema: float = 0.99              # EMA decay of the saved alpha-net, per step
    d_init: str = "random"         # "random" or "pretrained" (the discriminator trained with the generator)
    real: str = "generator"        # "generator": fresh generator samples are the real images; "images": a folder
    threshold: float = 0.5         # α above this is foreground in a mask
    save_every: int = 100

    def __post_init__(self) -> None:
        if self.d_init not in ("random", "pretrained"):
            raise ValueError(f"d_init must be 'random' or 'pretrained', got {self.d_init!r}")
        if self.real not in ("generator", "images"):
            raise ValueError(f"real must be 'generator' or 'images', got {self.real!r}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def to_dict(self) -> dict:
        return asdict(self)


def read_layers(G: Generator, from_res: int = 8) -> list[tuple[str, int]]:
    """(feature layer name, channels) the alpha-net reads: both convs of every block from ``from_res`` up."""
    fx = FeatureExtractor(G)
    out = [(n, c) for n, c in zip(fx.names, fx.channels) if int(n.split(".")[0][1:]) >= from_res]
    if len(out) < 2 or len(out) % 2:
        raise ValueError(f"the alpha-net reads two conv layers per block from {from_res} px up; generator "
                         f"{G.cfg.resolution} px offers {[n for n, _ in out]}: choose from_res between 8 and "
                         f"{G.cfg.resolution}")
    return out


class AlphaNet(nn.Module):
    """Synthesis feature maps → α float32 [N, 1, R, R] in [0, 1] (Labels4Free's ``bg_extractor``).

    Each map (coarse to fine, two per resolution) → 1×1 conv to ``k`` channels; a resolution's pair is
    concatenated (2k); going finer, the running map is upsampled ×2 (bicubic), concatenated with the next
    pair (4k) and fused by a 1×1 conv back to 2k with LeakyReLU 0.2; a last 1×1 conv and a sigmoid give α."""

    def __init__(self, channels: list[int], k: int = 3) -> None:
        super().__init__()
        if len(channels) < 2 or len(channels) % 2:
            raise ValueError(f"the alpha-net reads pairs of maps (two per resolution), got {len(channels)} maps")
        self.channels = list(channels)
        self.reads = nn.ModuleList(nn.Conv2d(c, k, 1) for c in channels)
        self.fuse = nn.ModuleList(nn.Conv2d(4 * k, 2 * k, 1) for _ in range(len(channels) // 2 - 1))
        self.head = nn.Conv2d(2 * k, 1, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """maps: float32 [N, C_i, r_i, r_i], two per resolution, coarse to fine (r doubling)."""
        if len(maps) != len(self.reads):
            raise ValueError(f"the alpha-net reads {len(self.reads)} maps, got {len(maps)}")
        run = None
        for i in range(0, len(maps), 2):
            pair = torch.cat([self.reads[i](maps[i]), self.reads[i + 1](maps[i + 1])], dim=1)
            if run is None:
                run = pair
                continue
            run = F.interpolate(run, scale_factor=2, mode="bicubic", align_corners=False)
            run = F.leaky_relu(self.fuse[i // 2 - 1](torch.cat([run, pair], dim=1)), 0.2)
        return torch.sigmoid(self.head(run))


@contextmanager
def _zero_coarse(G: Generator) -> Iterator[None]:
    """Within the block, G's 4×4 stage outputs zeros (its conv's output × 0): the background pass."""
    handle = G.synthesis.b4.conv1.register_forward_hook(lambda _m, _i, out: out * 0)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def background(G: Generator, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
    """The object-free background of each latent: ws [N, num_ws, w_dim] → float32 [N, 3, R, R] in ≈[-1, 1]."""
    with _zero_coarse(G):
        return G.synthesis(ws, noise_mode=noise_mode)


def _read(fx: FeatureExtractor, ws: torch.Tensor, n_read: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the image float32 [N, 3, R, R], the last ``n_read`` synthesis feature maps, coarse to fine) of ws."""
    img, maps = fx.native(ws)
    return img, maps[len(maps) - n_read:]


@dataclass
class FgBg:
    """A trained alpha-net (the EMA copy) and the generator it reads."""

    net: AlphaNet
    cfg: FgBgConfig
    generator_id: str | None = None
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def alpha(self, G: Generator, ws: torch.Tensor, batch: int = 64) -> np.ndarray:
        """W+ latents [N, num_ws, w_dim] (any device) → α float32 [N, R, R] in [0, 1] (numpy, CPU)."""
        device = G.mapping.w_avg.device
        self.net.to(device).eval()
        fx = FeatureExtractor(G)
        out = [self.net(_read(fx, ws[i:i + batch].to(device), len(self.net.reads))[1])[:, 0].cpu()
               for i in range(0, len(ws), batch)]
        return torch.cat(out).numpy() if out else np.zeros((0, G.cfg.resolution, G.cfg.resolution), np.float32)

    def mask(self, alpha: np.ndarray) -> np.ndarray:
        """α float32 [N, R, R] → foreground mask bool [N, R, R] (α > the configured threshold)."""
        return alpha > self.cfg.threshold

    @staticmethod
    def uncertainty(alpha: np.ndarray) -> np.ndarray:
        """Per-image uncertainty float64 [N] in [0, 1]: the mean binary entropy (bits) of the top 10 % pixels."""
        a = np.clip(alpha.reshape(len(alpha), -1).astype(np.float64), 1e-6, 1 - 1e-6)
        h = -(a * np.log2(a) + (1 - a) * np.log2(1 - a))
        k = max(1, h.shape[1] // 10)
        return np.sort(h, axis=1)[:, -k:].mean(1)

    def to(self, device: str | torch.device) -> "FgBg":
        self.net.to(device)
        return self

    def save(self, path: str | Path) -> Path:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        return save_checkpoint(path, "fgbg", {"config": self.cfg.to_dict(), "channels": self.net.channels,
                                              "state_dict": state, "generator_id": self.generator_id,
                                              "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path, generator_id: str | None = None) -> "FgBg":
        data = load_checkpoint(path, "fgbg", generator_id)
        cfg = FgBgConfig(**data["config"])
        net = AlphaNet(data["channels"], cfg.map_channels)
        net.load_state_dict(data["state_dict"])
        return cls(net.eval().requires_grad_(False), cfg, data.get("generator_id"), data.get("meta") or {})


# -- losses -------------------------------------------------------------------------------------------
def mask_terms(alpha: torch.Tensor, cfg: FgBgConfig) -> dict[str, torch.Tensor]:
    """The regularisers of α [N, 1, R, R]: binarisation mean min(α, 1 − α), minimum foreground coverage
    relu(min_fg − mean α) and minimum background share relu(phi_bg − (1 − mean α)) (scalars)."""
    mean = alpha.mean()
    return {"binarization": torch.minimum(alpha, 1 - alpha).mean(), "min_fg": F.relu(cfg.min_fg - mean),
            "bg_share": F.relu(cfg.phi_bg - (1 - mean))}


def alpha_loss(alpha: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, D: nn.Module,
               cfg: FgBgConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Labels4Free's α loss: w_sat · nonsat(D(composite)) + m · (binarisation + min_fg) + w_bg · bg_share."""
    comp = alpha * fg + (1 - alpha) * bg
    adv = F.softplus(-D(comp)).mean()
    t = mask_terms(alpha, cfg)
    loss = cfg.w_sat * adv + cfg.m * (t["binarization"] + t["min_fg"]) + cfg.w_bg * t["bg_share"]
    return loss, {"adversarial": adv.item(), **{k: v.item() for k, v in t.items()}, "mean_alpha": alpha.mean().item()}


# -- training ------------------------------------------------------------------------------------------
def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RESUMABLE_CHANGES}


class _Trainer:
    """The networks, optimisers and random stream of one training run (saved whole, resumed exactly)."""

    def __init__(self, G: Generator, cfg: FgBgConfig, real: torch.Tensor | None, seed: int,
                 D_init: Discriminator | None, device: torch.device) -> None:
        self.G, self.cfg, self.device = G, cfg, device
        self.fx = FeatureExtractor(G)
        self.layers = read_layers(G, cfg.from_res)
        torch.manual_seed(seed)
        self.alpha = AlphaNet([c for _, c in self.layers], cfg.map_channels).to(device)
        self.alpha_ema = copy.deepcopy(self.alpha).eval().requires_grad_(False)
        res = G.cfg.resolution
        self.D = Discriminator(DiscriminatorConfig(resolution=res, channels=dict(G.cfg.channels))).to(device)
        if D_init is not None:
            self.D.load_state_dict(D_init.state_dict())
        self.D.train().requires_grad_(True)
        self.opt_a = torch.optim.Adam(self.alpha.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99))
        self.g = torch.Generator().manual_seed(seed)
        self.real = real
        self.step = 0

    def _latents(self, n: int, psi: float) -> torch.Tensor:
        z = torch.randn(n, self.G.cfg.z_dim, generator=self.g).to(self.device)
        with torch.no_grad():
            return self.G.map(z, psi=psi)

    def _real_batch(self) -> torch.Tensor:
        n = self.cfg.batch
        if self.real is None:
            with torch.no_grad():
                x = self.G.synthesis(self._latents(n, 1.0), noise_mode="const")
        else:
            idx = torch.randint(0, len(self.real), (n,), generator=self.g)
            x = self.real[idx].to(self.device).float() / 127.5 - 1
        flip = (torch.rand(n, generator=self.g) < 0.5).to(self.device)
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def batch(self) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(foreground images, the maps the alpha-net reads, backgrounds) of a fresh latent batch."""
        cfg = self.cfg
        z = torch.randn(cfg.batch, self.G.cfg.z_dim, generator=self.g).to(self.device)
        with torch.no_grad():
            ws = self.G.map(z, psi=cfg.psi)
            fg, maps = _read(self.fx, ws, len(self.layers))
            bg = background(self.G, self.G.map(z) if cfg.psi != 1.0 else ws)
        return fg, maps, bg

    def d_step(self, comp: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        real = self._real_batch()
        loss = F.softplus(self.D(comp.detach())).mean() + F.softplus(-self.D(real)).mean()
        out = {"discriminator": loss.item()}
        if cfg.r1_gamma > 0 and self.step % cfg.r1_interval == 0:
            r = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(r).sum(), r, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            loss = loss + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            out["r1"] = r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return out

    def a_step(self, fg: torch.Tensor, maps: list[torch.Tensor], bg: torch.Tensor) -> dict[str, float]:
        self.D.requires_grad_(False)
        loss, parts = alpha_loss(self.alpha(maps), fg, bg, self.D, self.cfg)
        self.opt_a.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_a.step()
        self.D.requires_grad_(True)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.alpha_ema.parameters()), [p.detach() for p in self.alpha.parameters()],
                                 1.0 - self.cfg.ema)
        return {"alpha_loss": loss.item(), **parts}

    def one_step(self) -> dict[str, float]:
        fg, maps, bg = self.batch()
        with torch.no_grad():
            a = self.alpha(maps)
        losses = self.d_step(a * fg + (1 - a) * bg)
        losses.update(self.a_step(fg, maps, bg))
        self.step += 1
        return losses

    def state(self, seconds: float, generator_id_: str, history: list[dict]) -> dict:
        return {"config": self.cfg.to_dict(), "generator_id": generator_id_, "step": self.step, "seconds": seconds,
                "history": history,
                "channels": self.alpha.channels, "alpha": _cpu(self.alpha.state_dict()),
                "alpha_ema": _cpu(self.alpha_ema.state_dict()), "discriminator": _cpu(self.D.state_dict()),
                "opt_alpha": _cpu(self.opt_a.state_dict()), "opt_discriminator": _cpu(self.opt_d.state_dict()),
                "rng": self.g.get_state()}

    def load_state(self, st: dict) -> None:
        self.alpha.load_state_dict(st["alpha"])
        self.alpha_ema.load_state_dict(st["alpha_ema"])
        self.D.load_state_dict(st["discriminator"])
        self.opt_a.load_state_dict(st["opt_alpha"])
        self.opt_d.load_state_dict(st["opt_discriminator"])
        self.g.set_state(st["rng"])
        self.step = int(st["step"])


def train_fgbg(G: Generator, cfg: FgBgConfig | None = None, real: np.ndarray | None = None, seed: int = 0,
               state_path: str | Path | None = None, D_init: Discriminator | None = None,
               log: Callable[[str], None] = lambda _m: None) -> FgBg:
    """Train an alpha-net for the frozen generator ``G`` (on G's device) and return its EMA copy.

    ``real``: uint8 [M, R, R, 3] real images for the discriminator when ``cfg.real == "images"`` (else
    fresh samples of G at ψ = 1 are the real images). ``D_init``: the discriminator to start from when
    ``cfg.d_init == "pretrained"``. ``state_path``: where the whole training state is written every
    ``cfg.save_every`` steps and after the last one; a run finding it resumes from it (the same
    configuration but ``steps``/``save_every``, which may change: more steps continue training). Ctrl-C
    stops at once; the state of the last saved step is kept, so up to ``save_every`` steps are redone on
    resuming. ``meta`` of the result records steps, seconds and the last losses."""
    cfg = cfg or FgBgConfig()
    G = G.eval().requires_grad_(False)
    device = G.mapping.w_avg.device
    gid = generator_id(G)
    real_t = None
    if cfg.real == "images":
        if real is None or len(real) == 0:
            raise ValueError("cfg.real is 'images' but no real images were given; pass a folder of images of the "
                             "generator's domain, or train with real='generator' (its own samples)")
        res = G.cfg.resolution
        if real.ndim != 4 or real.shape[1:] != (res, res, 3) or real.dtype != np.uint8:
            raise ValueError(f"real images must be uint8 [M, {res}, {res}, 3], got {real.dtype} {tuple(real.shape)}")
        real_t = torch.from_numpy(np.ascontiguousarray(real)).permute(0, 3, 1, 2)
    if cfg.d_init == "pretrained" and D_init is None:
        raise ValueError("cfg.d_init is 'pretrained' but no discriminator was given; pass the discriminator "
                         "trained with this generator, or use d_init='random'")
    tr = _Trainer(G, cfg, real_t, seed, D_init if cfg.d_init == "pretrained" else None, device)
    seconds = 0.0
    history: list[dict] = []
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        try:
            st = load_checkpoint(state_path, "fgbg-state", gid)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (delete {state_path} to start the alpha-net's training afresh)") from e
        saved, given = _comparable(st["config"]), _comparable(cfg.to_dict())
        if saved != given:
            diff = ", ".join(f"{k} {saved.get(k)!r} there, {given.get(k)!r} here"
                             for k in sorted(saved.keys() | given.keys()) if saved.get(k) != given.get(k))
            raise ValueError(f"{state_path} holds an alpha-net training with another configuration ({diff}); "
                             "delete it to start afresh or pass the same settings to resume (only "
                             f"{', '.join(RESUMABLE_CHANGES)} may change)")
        tr.load_state(st)
        seconds = float(st["seconds"])
        history = list(st.get("history") or [])
        log(f"resuming alpha-net training at step {tr.step}/{cfg.steps}")
    losses: dict[str, float] = {}
    t0 = time.time()

    def save_state() -> None:
        nonlocal seconds, t0
        seconds += time.time() - t0
        t0 = time.time()
        if state_path is not None:
            save_checkpoint(state_path, "fgbg-state", tr.state(seconds, gid, history))

    try:
        while tr.step < cfg.steps:
            losses = tr.one_step()
            if tr.step % cfg.save_every == 0 or tr.step == cfg.steps:
                history.append({"step": tr.step, **{k: round(v, 4) for k, v in losses.items()}})
                save_state()
                log(f"alpha-net step {tr.step}/{cfg.steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
                    + f" ({seconds:.0f} s)")
    except KeyboardInterrupt:
        if state_path is not None:
            log(f"stopped at step {tr.step}; the state of the last saved step is in {state_path} (run again "
                "to resume from it)")
        raise
    seconds += time.time() - t0
    meta = {"steps": tr.step, "seconds": round(seconds, 1), "final_losses": {k: round(v, 4) for k, v in losses.items()},
            "history": history}
    return FgBg(copy.deepcopy(tr.alpha_ema).cpu().eval(), cfg, gid, meta)
