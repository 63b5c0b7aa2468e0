"""Image I/O shared by training, sampling and the dataset writers (PIL + numpy, no torchvision)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_PIXELS = 40_000_000  # refuse decompression bombs well before PIL's own limit


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` or its ``images/`` subfolder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    if (folder / "images").is_dir():
        folder = folder / "images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    return files


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read an image as uint8 [H, W, 3]; centre-crop to square and resize to ``size`` if given.

    Raises ValueError for unreadable files or images above :data:`MAX_PIXELS`."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{path}: {im.width}x{im.height} pixels exceeds the {MAX_PIXELS:,} pixel limit")
            im = im.convert("RGB")
            if size is not None and (im.width != size or im.height != size):
                s = min(im.width, im.height)
                left, top = (im.width - s) // 2, (im.height - s) // 2
                im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def load_image_folder(folder: str | Path, size: int, limit: int | None = None) -> torch.Tensor:
    """All readable images in ``folder`` as uint8 [N, 3, size, size]; unreadable ones are skipped and logged."""
    files = list_images(folder)[:limit]
    arrays, bad = [], []
    for p in files:
        try:
            arrays.append(read_rgb(p, size))
        except ValueError as e:
            bad.append(str(e))
    if bad:
        log.warning("skipped %d unreadable images, first: %s", len(bad), bad[0])
    if not arrays:
        raise ValueError(f"none of the {len(files)} files in {str(folder)!r} could be read as an image")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def png_data_uri(image: np.ndarray) -> str:
    """uint8 [H, W, 3] → a ``data:image/png;base64,…`` URI (how small images travel inside tasks)."""
    import base64
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Float image batch [N, C, H, W] in [-1, 1] → uint8 [N, H, W, C]."""
    x = ((img.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, path: str | Path, cols: int = 8, scale: int = 1) -> Path:
    """Tile uint8 images [N, H, W, C] into one PNG, ``cols`` per row, upscaled ×``scale`` (nearest)."""
    n, h, w, c = images.shape
    rows = (n + cols - 1) // cols
    grid = np.full((rows * h, cols * w, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = images[i]
    im = Image.fromarray(grid.squeeze(-1) if c == 1 else grid)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path
