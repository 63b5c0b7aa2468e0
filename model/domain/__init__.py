"""The embedded default domain (procedural portraits with exact part labels)."""

from .render import CLASSES, LABEL_COLORS, VARIANTS, render_batch, render_sample

__all__ = ["CLASSES", "LABEL_COLORS", "VARIANTS", "render_batch", "render_sample"]
