"""Resampling primitives shared by the StyleGAN2 variants (pure PyTorch, CPU and GPU).

``upfirdn2d`` follows the definition used by both StyleGAN2 families: zero-insertion upsampling,
padding, then a 2-D FIR filter. Filters are stored normalised (sum 1); the caller passes the gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fir_filter(taps: tuple[float, ...] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable FIR filter as a normalised 2-D tensor: float32 [k, k], entries sum to 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1), convolve with the 2-D filter ``f`` times ``gain``.

    x: float [N, C, H, W]; f: float [kh, kw] (symmetric filters need no flip, but the flip is kept so
    that asymmetric filters behave as true convolution). Returns [N, C, H*up + y0 + y1 - kh + 1, ...]."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, list(pad))
    weight = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, groups=c)


def upsample2d_fir(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """×2 upsampling with a 4-tap FIR filter, as both StyleGAN2 codebases do for the skip image.

    x: [N, C, H, W] → [N, C, 2H, 2W]. Equals ``upfirdn2d(x, f, up=2, pad=(2, 1, 2, 1), gain=4)`` for a
    4-tap filter, computed as a grouped transposed convolution (no zero-inserted copy)."""
    if f.shape != (4, 4):
        kw = f.shape[-1]
        p0, p1 = (kw + 1) // 2, (kw - 2) // 2
        return upfirdn2d(x, f, up=2, pad=(p0, p1, p0, p1), gain=4.0)
    c = x.shape[1]
    weight = (f * 4.0).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, 4, 4)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)


def upsample2d_bilinear(x: torch.Tensor) -> torch.Tensor:
    """×2 bilinear upsampling (half-pixel centres): [N, C, H, W] → [N, C, 2H, 2W]."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
