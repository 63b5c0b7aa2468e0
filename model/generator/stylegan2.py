"""StyleGAN2 generator in pure PyTorch, written top to bottom in dependency order.

Mapping (z → w), truncation, modulated convolutions with demodulation, noise inputs and ToRGB skip
connections. The modulated convolution is always computed in the "modulate activations" form
(scale input channels by the style, one shared convolution for the whole batch, scale output
channels by the demodulation coefficients): mathematically identical to the per-sample grouped
convolution and much faster on CPUs.

Two resampling conventions are supported by :class:`GeneratorConfig.upsample`:
- ``"fir"`` (the default): transposed 3×3 convolution + [1,3,3,1] FIR blur, and FIR upsampling of
  the skip image — the convention of both published StyleGAN2 codebases (needed to load their
  checkpoints exactly), and measured the faster of the two on CPUs;
- ``"bilinear"``: bilinear ×2 then a 3×3 convolution, bilinear skip upsampling.

Every :class:`SynthesisLayer` is its own module, so forward hooks on
:meth:`Generator.feature_layers` give per-layer feature maps (used by ``model.features``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import fir_filter, upsample2d_bilinear, upsample2d_fir

NOISE_MODES = ("const", "random", "none")
UPSAMPLE_MODES = ("bilinear", "fir")


def default_channels(resolution: int, base: int = 1024, cmax: int = 128) -> dict[int, int]:
    """Channel table {resolution: width} = min(base // res, cmax) for 4 .. resolution.

    The default at 64 px is the slim table our shipped generator uses (measured on 2 CPU cores:
    ~0.64 s per D+G step at batch 16, ~90k training images/hour):

        res:    4    8   16   32   64
        width: 128  128  64   32   16
    """
    return {4 * 2 ** i: min(base // (4 * 2 ** i), cmax) for i in range(int(math.log2(resolution)) - 1)}


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator; saved inside every checkpoint."""

    resolution: int = 64                     # output size (power of two, 8 .. 1024)
    z_dim: int = 128                         # input latent size
    w_dim: int = 128                         # intermediate latent size
    mapping_layers: int = 4                  # fully connected layers in the mapping network
    mapping_lr: float = 0.01                 # learning-rate multiplier of the mapping network
    channels: dict[int, int] = field(default_factory=lambda: default_channels(64))  # {res: width}
    img_channels: int = 3                    # RGB
    upsample: str = "fir"                    # "fir" (NVlabs / rosinality; measured fastest here) or "bilinear"
    conv_clamp: float | None = None          # clamp activations to ±value (NVlabs ADA uses 256)
    w_avg_beta: float = 0.995                # moving-average decay of the mean w while training

    def __post_init__(self) -> None:
        self.channels = {int(k): int(v) for k, v in self.channels.items()}
        log2 = math.log2(self.resolution)
        if self.resolution < 8 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two >= 8, got {self.resolution}")
        missing = [r for r in self.block_resolutions if r not in self.channels]
        if missing:
            raise ValueError(f"channel table {self.channels} has no width for resolutions {missing}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")

    @property
    def block_resolutions(self) -> list[int]:
        return [4 * 2 ** i for i in range(int(math.log2(self.resolution)) - 1)]

    @property
    def num_ws(self) -> int:
        """Number of w slots (W+ length): two per block, the ToRGB of a block shares the next conv0's."""
        return 2 * len(self.block_resolutions)

    def to_dict(self) -> dict:
        return asdict(self)


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalised learning rate: y = x (W·lr/√in)ᵀ + b·lr, optional lrelu·√2."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: str = "linear") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return F.leaky_relu(x.matmul(w.t()) + b, 0.2) * math.sqrt(2)


class MappingNetwork(nn.Module):
    """z [N, z_dim] → w [N, w_dim]; keeps the running mean ``w_avg`` used for truncation."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.num_layers = cfg.mapping_layers
        self.w_avg_beta = cfg.w_avg_beta
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", EqualizedLinear(dims[i], dims[i + 1], lr_multiplier=cfg.mapping_lr,
                                                    activation="lrelu"))
        self.register_buffer("w_avg", torch.zeros([cfg.w_dim]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.training:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        return x

    def truncate(self, ws: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """Pull ws [N, L, w_dim] towards w_avg: w_avg + psi (w − w_avg) on the first ``cutoff`` slots."""
        if psi == 1.0:
            return ws
        if cutoff is None:
            return self.w_avg.lerp(ws, psi)
        ws = ws.clone()
        ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], psi)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally ×2 upsampling) + noise + bias + lrelu·√2 (+ clamp).

    Input [N, in, r/up, r/up] → output [N, out, r, r] float32."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool,
                 upsample: str, conv_clamp: float | None) -> None:
        super().__init__()
        self.up = up
        self.upsample = upsample
        self.conv_clamp = conv_clamp
        self.resolution = resolution
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)                                            # [N, in]
        x = x * styles[:, :, None, None]
        if not self.up:
            x = F.conv2d(x, self.weight, padding=1)
        elif self.upsample == "fir":
            # Transposed conv, then the FIR blur; "pad 1 then valid 4×4" is conv2d(padding=1).
            x = F.conv_transpose2d(x, self.weight.transpose(0, 1), stride=2)
            c = x.shape[1]
            x = F.conv2d(x, (self.resample_filter * 4.0)[None, None].expand(c, 1, -1, -1), padding=1, groups=c)
        else:
            x = F.conv2d(upsample2d_bilinear(x), self.weight, padding=1)
        # Demodulation: 1/‖W·s‖ per (sample, output channel), from squared weights and styles.
        dcoefs = (styles.square().matmul(self.weight.square().sum(dim=[2, 3]).t()) + 1e-8).rsqrt()
        if noise is None and noise_mode == "const":
            noise = self.noise_const
        elif noise is None and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
        elif noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        # x·d + noise·strength + bias, then lrelu·√2 — with the √2 gain folded in (lrelu is
        # positively homogeneous), two passes over the activations instead of six.
        gain = math.sqrt(2)
        shift = (self.bias * gain)[None, :, None, None]
        if noise is not None:
            shift = shift + noise * (self.noise_strength * gain)
        x = F.leaky_relu(torch.addcmul(shift, x, (dcoefs * gain)[:, :, None, None]), 0.2)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class ToRGBLayer(nn.Module):
    """Modulated 1×1 convolution to RGB, no demodulation: [N, in, r, r] → [N, 3, r, r]."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = F.conv2d(x * styles[:, :, None, None], self.weight) + self.bias[None, :, None, None]
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (const |) conv0 (×2 up) → conv1 → ToRGB added to the upsampled skip image."""

    def __init__(self, cfg: GeneratorConfig, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.upsample = cfg.upsample
        out_ch = cfg.channels[resolution]
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
            self.num_conv = 1
        else:
            in_ch = cfg.channels[resolution // 2]
            self.conv0 = SynthesisLayer(in_ch, out_ch, cfg.w_dim, resolution, True, cfg.upsample, cfg.conv_clamp)
            self.num_conv = 2
        self.conv1 = SynthesisLayer(out_ch, out_ch, cfg.w_dim, resolution, False, cfg.upsample, cfg.conv_clamp)
        self.torgb = ToRGBLayer(out_ch, cfg.img_channels, cfg.w_dim, cfg.conv_clamp)
        self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.resolution == 4 else [self.conv0, self.conv1]

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str, noise: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """ws: [N, num_conv + 1, w_dim]; noise: one entry (or None) per conv layer."""
        if self.resolution == 4:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers()):
            x = layer(x, ws[:, i], noise_mode, noise[i])
        y = self.torgb(x, ws[:, self.num_conv])
        if img is not None:
            img = upsample2d_fir(img, self.resample_filter) if self.upsample == "fir" else upsample2d_bilinear(img)
            y = img + y
        return x, y


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] → image float32 [N, C, res, res], roughly in [-1, 1] (not clamped)."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_resolutions = cfg.block_resolutions
        for res in self.block_resolutions:
            setattr(self, f"b{res}", SynthesisBlock(cfg, res))

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const",
                noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.cfg.num_ws, -1)
        if ws.shape[1:] != (self.cfg.num_ws, self.cfg.w_dim):
            raise ValueError(f"ws must be [N, {self.cfg.num_ws}, {self.cfg.w_dim}], got {list(ws.shape)}")
        n_layers = sum(b.num_conv for b in self.blocks())
        if noise is not None and len(noise) != n_layers:
            raise ValueError(f"noise must list {n_layers} tensors (one per conv layer), got {len(noise)}")
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_noise = noise[w_idx:w_idx + block.num_conv] if noise is not None else [None] * block.num_conv
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode, block_noise)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: z [N, z_dim] → image float32 [N, C, res, res] (≈ [-1, 1])."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    def map(self, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """z [N, z_dim] → ws [N, num_ws, w_dim], truncated towards w_avg by ``psi``."""
        w = self.mapping(z)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.mapping.truncate(ws, psi, cutoff)

    def forward(self, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.map(z, psi, cutoff), noise_mode=noise_mode)

    def feature_layers(self) -> Iterator[tuple[str, SynthesisLayer]]:
        """(name, layer) for every synthesis conv layer in forward order, e.g. ("b8.conv0", ...)."""
        for block in self.synthesis.blocks():
            for layer in block.layers():
                yield f"b{block.resolution}.{'conv0' if layer is getattr(block, 'conv0', None) else 'conv1'}", layer

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, psi: float = 1.0, batch_size: int = 32,
               noise_mode: str = "const") -> torch.Tensor:
        """n images for seeds drawn from ``seed``: float32 [n, C, res, res] in [-1, 1] (clamped)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.cfg.z_dim, generator=g).to(self.mapping.w_avg.device)   # the same z on any device
        out = [self(z[i:i + batch_size], psi=psi, noise_mode=noise_mode) for i in range(0, n, batch_size)]
        return torch.cat(out).clamp(-1, 1)
