"""The shipped default generator (trained on the embedded domain; see model/generator/default/)."""

from __future__ import annotations

from pathlib import Path

from .checkpoints import load_generator
from .stylegan2 import Generator

DEFAULT_DIR = Path(__file__).with_name("shipped")
DEFAULT_CHECKPOINT = DEFAULT_DIR / "generator.pt"


def load_default_or(path: str | Path | None = None) -> Generator:
    """Load ``path`` if given, else the shipped default generator (eval mode, no grad)."""
    if path:
        return load_generator(path)
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the shipped default generator is missing at {DEFAULT_CHECKPOINT}; "
                                "reinstall the package or pass --generator PATH")
    return load_generator(DEFAULT_CHECKPOINT)
