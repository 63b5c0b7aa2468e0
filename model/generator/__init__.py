"""StyleGAN2 generator (pure PyTorch), checkpoint readers and GAN training."""

from .checkpoints import CheckpointError, convert, load_generator, save_generator
from .stylegan2 import Generator, GeneratorConfig

__all__ = ["CheckpointError", "Generator", "GeneratorConfig", "convert", "load_generator", "save_generator"]
