"""SemanticGAN's label synthesis branch on a frozen StyleGAN2 generator.

Beside every synthesis block the branch has a small convolutional head (3×3 conv → LeakyReLU → 1×1
conv to C logits) reading that block's conv outputs; the heads' logits are combined like the ToRGB
skips — the running sum is bilinearly upsampled ×2 and the next block's logits added — so each pixel's
label sees spatial context that DatasetGAN's per-pixel MLP cannot. An ensemble of ``members``
independent branches gives the same uncertainty as the interpreter (Jensen–Shannon divergence across
members; :func:`model.interpreter.summarise_members`).

Training (:func:`fit_label_branch`), the generator frozen:
- cross-entropy (1/√frequency class weights) on the labeled latents — exact for generated images,
  inverted for real ones — with horizontal flips of features and masks;
- SemanticGAN's adversarial term: a patch discriminator on (image, label map) pairs takes the labeled
  pairs (one-hot scaled to ±1) as real and (generator image of a fresh latent, the branch's softmax
  scaled to ±1) as fake, hinge loss; the image enters detached, so the discriminator shapes only the
  labels, and the unlabeled samples shape the labels too.

``LabelBranch.predict_native(maps, out_size)`` has the interpreter's signature, so labelling latents
and synthesis work with either label source. Fitting runs on the generator's device, prediction on the
maps' device (the branch moves there); checkpoints hold CPU tensors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .device import module_device
from .features import FeatureExtractor
from .generator.checkpoints import generator_id as _generator_id
from .generator.stylegan2 import Generator
from .interpreter import Prediction, summarise_members
from .segmenter import class_weights


@dataclass
class LabelBranchConfig:
    n_classes: int
    channels: dict[int, int] = field(default_factory=dict)   # {resolution: feature channels there}
    hidden: int = 32
    members: int = 3
    steps: int = 600
    batch: int = 8
    lr: float = 2e-3
    adv_weight: float = 0.05        # weight of the adversarial term in the branch's loss (0: CE only)
    adv_start: int = 100            # cross-entropy alone for the first steps
    d_base: int = 32

    def __post_init__(self) -> None:
        self.channels = {int(r): int(c) for r, c in self.channels.items()}


class _Heads(nn.Module):
    """One member: a head per resolution, logits summed coarse to fine with bilinear ×2 upsampling."""

    def __init__(self, cfg: LabelBranchConfig) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({
            str(r): nn.Sequential(nn.Conv2d(c, cfg.hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(cfg.hidden, cfg.n_classes, 1))
            for r, c in sorted(cfg.channels.items())})

    def forward(self, grouped: list[torch.Tensor]) -> torch.Tensor:
        """grouped: per resolution (ascending) float32 [N, C_r, r, r] → logits [N, classes, R, R]."""
        out = None
        for x in grouped:
            h = self.heads[str(x.shape[-1])](x)
            out = h if out is None else F.interpolate(out, size=h.shape[-2:], mode="bilinear",
                                                      align_corners=False) + h
        return out


def group_by_resolution(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer feature maps (as :meth:`FeatureExtractor.native` gives them) → one tensor per
    resolution, ascending, the layers of a resolution concatenated along channels."""
    by_res: dict[int, list[torch.Tensor]] = {}
    for m in maps:
        by_res.setdefault(m.shape[-1], []).append(m)
    return [torch.cat(by_res[r], dim=1) for r in sorted(by_res)]


class LabelBranch:
    """The fitted branch ensemble plus what it belongs to: class names and its generator."""

    def __init__(self, cfg: LabelBranchConfig, class_names: list[str], generator_id: str) -> None:
        if len(class_names) != cfg.n_classes:
            raise ValueError(f"{len(class_names)} class names for {cfg.n_classes} classes")
        self.cfg, self.class_names, self.generator_id = cfg, list(class_names), generator_id
        self.members = nn.ModuleList(_Heads(cfg) for _ in range(cfg.members))
        self.meta: dict = {}

    @property
    def device(self) -> torch.device:
        return module_device(self.members)

    def to(self, device: str | torch.device) -> "LabelBranch":
        """Move the branches to ``device`` (in place); returns self."""
        self.members.to(device)
        return self

    def member_logits(self, grouped: list[torch.Tensor]) -> torch.Tensor:
        """→ logits float32 [E, N, C, R, R]."""
        return torch.stack([m(grouped) for m in self.members])

    @torch.no_grad()
    def predict_native(self, maps: list[torch.Tensor], out_size: int) -> Prediction:
        """Per-layer maps of N images → :class:`Prediction` at out_size² (the interpreter's interface)."""
        self.to(maps[0].device)
        self.members.eval()
        logits = self.member_logits(group_by_resolution(maps))                       # [E, N, C, R, R]
        if logits.shape[-1] != out_size:
            e, n, c = logits.shape[:3]
            logits = F.interpolate(logits.flatten(0, 1), size=(out_size, out_size), mode="bilinear",
                                   align_corners=False).reshape(e, n, c, out_size, out_size)
        e, n, c = logits.shape[:3]
        return summarise_members(logits.permute(0, 2, 1, 3, 4).reshape(e, c, n, -1), out_size, out_size)

    def save(self, path, meta: dict | None = None):
        return save_checkpoint(path, "label-branch", {
            "config": asdict(self.cfg), "class_names": self.class_names, "generator_id": self.generator_id,
            "state_dict": {k: v.cpu() for k, v in self.members.state_dict().items()},
            "meta": {**self.meta, **(meta or {})}})

    @classmethod
    def load(cls, path, generator_id: str | None = None) -> "LabelBranch":
        data = load_checkpoint(path, "label-branch", generator_id)
        branch = cls(LabelBranchConfig(**data["config"]), data["class_names"], data["generator_id"])
        branch.members.load_state_dict(data["state_dict"])
        branch.members.eval()
        branch.meta = data.get("meta") or {}
        return branch


class PairDiscriminator(nn.Module):
    """A patch discriminator on (image, label map) pairs: [N, 3 + C, R, R] in [-1, 1] → logits [N, 1, r, r]
    (4×4 stride-2 convolutions, spectral norm, LeakyReLU 0.2; pix2pixHD-style, one scale)."""

    def __init__(self, in_channels: int, base: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(in_channels, base, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(base, 2 * base, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * base, 4 * base, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * base, 1, 3, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_label_branch(G: Generator, ws: torch.Tensor, masks: torch.Tensor, class_names: list[str],
                     cfg: LabelBranchConfig | None = None, real_images: torch.Tensor | None = None,
                     seed: int = 0) -> LabelBranch:
    """Fit a label branch on latents ws float32 [N, num_ws, w_dim] and masks int [N, R, R] (R = the
    generator's resolution, values in [0, C)). real_images (float32 [N, 3, R, R] in [-1, 1]) are the
    labeled images the discriminator sees as real pairs; default: the generator's images of ws. Runs on
    G's device; random draws come from CPU generators, so every device draws the same batches."""
    fx = FeatureExtractor(G)
    res = G.cfg.resolution
    dev = module_device(G)
    masks = torch.as_tensor(masks).long()
    if masks.shape != (ws.shape[0], res, res):
        raise ValueError(f"masks must be [{ws.shape[0]}, {res}, {res}] to match the latents, got {list(masks.shape)}")
    masks = masks.to(dev)
    with torch.no_grad():
        img, maps = fx.native(ws.to(dev))
    grouped = group_by_resolution(maps)
    channels = {g.shape[-1]: g.shape[1] for g in grouped}
    n_cls = len(class_names)
    base = cfg or LabelBranchConfig(n_classes=n_cls)
    cfg = LabelBranchConfig(**{**asdict(base), "n_classes": n_cls, "channels": channels})
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    branch = LabelBranch(cfg, class_names, _generator_id(G)).to(dev)
    opt = torch.optim.Adam(branch.members.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    weight = class_weights(masks, n_cls, "sqrt")
    real = img if real_images is None else real_images.to(dev)
    D = PairDiscriminator(3 + n_cls, cfg.d_base).to(dev) if cfg.adv_weight > 0 else None
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.99)) if D is not None else None
    t0, loss_ce, loss_adv = time.time(), float("nan"), 0.0
    branch.members.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, ws.shape[0], (min(cfg.batch, ws.shape[0]),), generator=g).to(dev)
        x, y = [m[idx] for m in grouped], masks[idx]
        if torch.rand([], generator=g) < 0.5:
            x, y = [m.flip(-1) for m in x], y.flip(-1)
        logits = branch.member_logits(x)                                              # [E, B, C, R, R]
        loss = sum(F.cross_entropy(lg, y, weight=weight) for lg in logits) / len(logits)
        loss_ce = float(loss.detach())
        if D is not None and step >= cfg.adv_start:
            z = torch.randn(len(idx), G.cfg.z_dim, generator=g).to(dev)
            with torch.no_grad():
                f_img, f_maps = fx.native(G.map(z))
            member = step % cfg.members
            f_prob = branch.members[member](group_by_resolution(f_maps)).softmax(1)
            fake = torch.cat([f_img, f_prob * 2 - 1], 1)
            real_pair = torch.cat([real[idx], F.one_hot(masks[idx], n_cls).permute(0, 3, 1, 2).float() * 2 - 1], 1)
            d_loss = F.relu(1 - D(real_pair)).mean() + F.relu(1 + D(fake.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            adv = -D(fake).mean()
            loss = loss + cfg.adv_weight * adv
            loss_adv = float(adv.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    branch.members.eval()
    branch.meta = {"seconds": round(time.time() - t0, 1), "final_ce": round(loss_ce, 4),
                   "final_adv": round(loss_adv, 4), "n_images": int(ws.shape[0])}
    return branch
