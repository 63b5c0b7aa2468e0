"""The shipped default assets (trained on the embedded domain): generator, encoder, interpreter.

They live in ``model/generator/shipped/``; every loader takes an explicit path that wins over the
shipped file, so a user's own checkpoint plugs in everywhere.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import generator_id, load_generator
from .stylegan2 import Generator

DEFAULT_DIR = Path(__file__).with_name("shipped")
DEFAULT_CHECKPOINT = DEFAULT_DIR / "generator.pt"
DEFAULT_ENCODER = DEFAULT_DIR / "encoder.pt"
DEFAULT_INTERPRETER = DEFAULT_DIR / "interpreter.pt"
DEFAULT_DISCRIMINATOR = DEFAULT_DIR / "discriminator.pt"
DEFAULT_FGBG = DEFAULT_DIR / "fgbg.pt"


def load_default_or(path: str | Path | None = None) -> Generator:
    """Load ``path`` if given, else the shipped default generator (eval mode, no grad)."""
    if path:
        return load_generator(path)
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the shipped default generator is missing at {DEFAULT_CHECKPOINT}; "
                                "reinstall the package or pass --generator PATH")
    return load_generator(DEFAULT_CHECKPOINT)


def load_encoder_for(G: Generator, path: str | Path | None = None):
    """The encoder at ``path``, else the shipped one if it belongs to G, else None (invert from w_avg)."""
    from ..inversion import LatentEncoder

    if path:
        return LatentEncoder.load(path, generator_id=generator_id(G))
    if DEFAULT_ENCODER.is_file():
        enc = LatentEncoder.load(DEFAULT_ENCODER)
        if enc.generator_id == generator_id(G):
            return enc
    return None


def load_interpreter_for(G: Generator, path: str | Path | None = None):
    """The interpreter at ``path`` (refused if fitted for another generator), else the shipped one."""
    from ..interpreter import Interpreter

    if path:
        return Interpreter.load(path, generator_id=generator_id(G))
    if not DEFAULT_INTERPRETER.is_file():
        raise FileNotFoundError(f"no interpreter given and none shipped at {DEFAULT_INTERPRETER}; "
                                "fit one with `dgan fit --data LABELED_DIR --out interp.pt`")
    return Interpreter.load(DEFAULT_INTERPRETER, generator_id=generator_id(G))


def load_discriminator_for(G: Generator, path: str | Path | None = None):
    """The discriminator at ``path``, else the shipped one if it was trained with G, else None."""
    from .discriminator import load_discriminator

    if path:
        return load_discriminator(path, generator_id=generator_id(G))
    if DEFAULT_DISCRIMINATOR.is_file():
        try:
            return load_discriminator(DEFAULT_DISCRIMINATOR, generator_id=generator_id(G))
        except ValueError:
            return None
    return None


def load_fgbg_for(G: Generator, path: str | Path | None = None):
    """The Labels4Free alpha-net at ``path`` (refused if trained for another generator), else the shipped one
    if it was trained for G, else None (no zero-label foreground for this generator until one is trained)."""
    from ..fgbg import FgBg

    if path:
        return FgBg.load(path, generator_id=generator_id(G))
    if DEFAULT_FGBG.is_file():
        fgbg = FgBg.load(DEFAULT_FGBG)
        if fgbg.generator_id == generator_id(G):
            return fgbg
    return None
