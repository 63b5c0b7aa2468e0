"""Shared fixtures: tiny seeded generators (32 px, ~0.1M parameters) that run in milliseconds."""

from __future__ import annotations

import pytest
import torch

from model.generator.stylegan2 import Generator, GeneratorConfig

TINY = dict(resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channels={4: 32, 8: 32, 16: 16, 32: 8})


def tiny_generator(seed: int = 0, **overrides) -> Generator:
    """A randomly initialised 32 px generator with non-zero biases and noise strengths."""
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or (name.endswith(".bias") and "affine" not in name):
                p.normal_(0, 0.3)
    return G.eval().requires_grad_(False)


@pytest.fixture
def tiny_G() -> Generator:
    return tiny_generator()
