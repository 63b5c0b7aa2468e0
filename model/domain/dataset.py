"""Labeled dataset folders: ``images/*.png``, ``labels/*.png`` (palette PNG, pixel = class id), ``labels.json``.

The same layout is written by ``dgan domain render`` and ``dgan synthesize`` and read by training
and evaluation code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .render import CLASSES, LABEL_COLORS, render_sample


def palette_bytes(colors: Iterable[tuple[int, int, int]]) -> list[int]:
    """A 768-entry PIL palette with ``colors`` first and black after."""
    flat = [c for rgb in colors for c in rgb]
    return flat + [0] * (768 - len(flat))


def save_label_png(labels: np.ndarray, path: str | Path, colors=LABEL_COLORS) -> None:
    """uint8 class map [H, W] → palette PNG (pixel value = class id, colours for viewing)."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(palette_bytes(colors))
    im.save(path)


def read_label_png(path: str | Path) -> np.ndarray:
    """Palette (or greyscale) label PNG → uint8 class map [H, W]."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: label PNGs must be palette or greyscale images, got mode {im.mode}")
        return np.asarray(im, dtype=np.uint8).copy()


def write_labels_json(out: str | Path, classes=CLASSES, colors=LABEL_COLORS, **extra) -> Path:
    path = Path(out) / "labels.json"
    path.write_text(json.dumps({"classes": list(classes), "colors": [list(c) for c in colors], **extra}, indent=2))
    return path


def write_domain_dataset(out: str | Path, n: int, seed: int = 0, size: int = 64, variant: str = "default",
                         start: int = 0, progress: bool = False) -> Path:
    """Render samples ``start .. start+n-1`` into ``out`` (images, palette label PNGs, labels.json)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    write_labels_json(out, seed=seed, size=size, variant=variant)
    indices: Iterable[int] = range(start, start + n)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, unit="img", desc="render")
    for i in indices:
        img, lab = render_sample(seed, i, size, variant)
        Image.fromarray(img).save(out / "images" / f"{i:06d}.png")
        save_label_png(lab, out / "labels" / f"{i:06d}.png")
    return out


def read_labeled_folder(folder: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, H, W, 3], labels uint8 [N, H, W], class names) of a labeled dataset folder."""
    folder = Path(folder)
    meta = json.loads((folder / "labels.json").read_text())
    names = sorted(p.name for p in (folder / "labels").glob("*.png"))[:limit]
    if not names:
        raise FileNotFoundError(f"no label PNGs in {folder / 'labels'}")
    images = np.stack([np.asarray(Image.open(folder / "images" / n).convert("RGB")) for n in names])
    labels = np.stack([read_label_png(folder / "labels" / n) for n in names])
    return images, labels, list(meta["classes"])
