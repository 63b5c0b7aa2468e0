"""Per-pixel generator features for DatasetGAN, read by forward hooks in one generator pass.

Every synthesis block contributes its conv layers' outputs (two maps per block, one for the 4×4
block), each brought to the output resolution by bilinear interpolation (half-pixel centres) and
concatenated along channels. The feature dimension is derived from the generator, never kept by hand.

Two ways to read them:
- :meth:`FeatureExtractor.full` — all pixels, [N, D, H, W] (float16 by default, for storage);
- :meth:`FeatureExtractor.at_pixels` — only chosen pixels, bilinearly sampled from the native-resolution
  maps (identical values to upsampling first), so memory grows with the number of pixels, not H·W·D.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from .generator.stylegan2 import Generator


class FeatureExtractor:
    """Hooks a generator's synthesis layers; one forward pass yields the image and its feature maps."""

    def __init__(self, G: Generator) -> None:
        self.G = G
        self.layers = list(G.feature_layers())
        self.names = [name for name, _ in self.layers]
        self.channels = [layer.weight.shape[0] for _, layer in self.layers]
        self.dim = sum(self.channels)
        self.resolution = G.cfg.resolution

    @contextmanager
    def _hooked(self) -> Iterator[list[torch.Tensor]]:
        """Within the block, the maps of this thread's forward passes of G. The hooks sit on the shared
        generator, so a pass another thread runs meanwhile (a server's concurrent request) must not land here."""
        maps: list[torch.Tensor] = []
        owner = threading.get_ident()

        def keep(_m, _i, out: torch.Tensor) -> None:
            if threading.get_ident() == owner:
                maps.append(out)

        handles = [layer.register_forward_hook(keep) for _, layer in self.layers]
        try:
            yield maps
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def native(self, ws: torch.Tensor, noise_mode: str = "const") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """ws [N, num_ws, w_dim] (or [N, w_dim]) → (image float32 [N, 3, H, W], per-layer maps at their own
        resolution, float32 [N, C_l, r_l, r_l])."""
        with self._hooked() as maps:
            img = self.G.synthesis(ws, noise_mode=noise_mode)
        return img, list(maps)

    @torch.no_grad()
    def full(self, ws: torch.Tensor, noise_mode: str = "const",
             dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (image float32 [N, 3, H, W] in ≈[-1, 1], features ``dtype`` [N, D, H, W])."""
        img, maps = self.native(ws, noise_mode)
        size = (self.resolution, self.resolution)
        feats = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) if m.shape[-1] != size[0]
                           else m for m in maps], dim=1)
        return img, feats.to(dtype)

    @staticmethod
    def sample_maps(maps: list[torch.Tensor], index: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                    out_size: int) -> torch.Tensor:
        """Features of pixels (index[k], ys[k], xs[k]) of the out_size² image: float32 [K, D].

        Bilinear sampling at pixel centres equals F.interpolate(bilinear, align_corners=False) then indexing."""
        cols = []
        for m in maps:
            r = m.shape[-1]
            if r == out_size:
                cols.append(m[index, :, ys, xs])
                continue
            # Source coordinate of an output pixel centre (half-pixel convention), clamped like interpolate.
            sy = ((ys.float() + 0.5) * r / out_size - 0.5).clamp(min=0)
            sx = ((xs.float() + 0.5) * r / out_size - 0.5).clamp(min=0)
            y0, x0 = sy.floor().long().clamp(max=r - 1), sx.floor().long().clamp(max=r - 1)
            y1, x1 = (y0 + 1).clamp(max=r - 1), (x0 + 1).clamp(max=r - 1)
            wy, wx = (sy - y0).unsqueeze(1), (sx - x0).unsqueeze(1)
            top = m[index, :, y0, x0] * (1 - wx) + m[index, :, y0, x1] * wx
            bottom = m[index, :, y1, x0] * (1 - wx) + m[index, :, y1, x1] * wx
            cols.append(top * (1 - wy) + bottom * wy)
        return torch.cat(cols, dim=1)

    @torch.no_grad()
    def at_pixels(self, ws: torch.Tensor, index: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                  noise_mode: str = "const") -> tuple[torch.Tensor, torch.Tensor]:
        """→ (image float32 [N, 3, H, W], features float32 [K, D] of the K chosen pixels)."""
        img, maps = self.native(ws, noise_mode)
        return img, self.sample_maps(maps, index, ys, xs, self.resolution)
