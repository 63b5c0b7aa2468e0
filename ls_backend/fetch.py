"""Fetch a task's image safely: only from Label Studio itself, data URIs, or allowed local folders.

Anything else (another host, a path outside the allowed roots) is refused before any request is
made. Decoding refuses decompression bombs and files that are not images.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import numpy as np
import requests
from PIL import Image

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class ImageFetchError(ValueError):
    """The task's image could not be fetched or decoded; the message says which and why."""


def decode_image(data: bytes, max_pixels: int, source: str = "image") -> np.ndarray:
    """Bytes → RGB uint8 [H, W, 3]; refuses non-images and images above ``max_pixels``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise ImageFetchError(f"{source}: {im.width}x{im.height} = {im.width * im.height:,} pixels exceeds "
                                      f"the limit of {max_pixels:,} (DGAN_MAX_IMAGE_PIXELS)")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImageFetchError:
        raise
    except (OSError, Image.DecompressionBombError, ValueError) as e:
        raise ImageFetchError(f"{source}: not a readable image ({type(e).__name__}: {e})") from e


# Paths Label Studio itself serves (uploads, local files, cloud-storage proxy/presign, API): joined to
# LABEL_STUDIO_URL. Any other bare path is a local file and must lie under DGAN_ALLOWED_ROOTS.
LABEL_STUDIO_PATHS = ("/data/", "/tasks/", "/api/", "/storage-data/", "/projects/")


def _under(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path == r or r in path.parents for r in roots)


def fetch_image_bytes(url: str, ls_url: str, headers: dict[str, str], allowed_roots: list[Path],
                      timeout: float = 30.0) -> bytes:
    """The raw bytes behind a task's image value (see module doc for what is allowed)."""
    if not isinstance(url, str) or not url:
        raise ImageFetchError(f"the task's image value is {url!r}, expected a URL or data URI")
    if url.startswith("data:"):
        try:
            header, payload = url.split(",", 1)
            return base64.b64decode(payload) if ";base64" in header else unquote(payload).encode("latin-1")
        except (ValueError, binascii.Error) as e:
            raise ImageFetchError(f"malformed data URI ({e})") from e
    parsed = urlparse(url)
    ls = urlparse(ls_url)
    if parsed.scheme == "file" or (parsed.scheme == "" and not parsed.netloc
                                    and not parsed.path.startswith(LABEL_STUDIO_PATHS)):
        path = Path(unquote(parsed.path))
        if not allowed_roots or not _under(path, allowed_roots):
            raise ImageFetchError(f"local image {str(path)!r} is outside the allowed folders "
                                  f"{[str(r) for r in allowed_roots]} (DGAN_ALLOWED_ROOTS)")
        try:
            return path.read_bytes()
        except OSError as e:
            raise ImageFetchError(f"cannot read {path}: {e}") from e
    full = urljoin(ls_url + "/", url.lstrip("/")) if not parsed.netloc else url
    target = urlparse(full)
    if (target.scheme, target.netloc) != (ls.scheme, ls.netloc):
        raise ImageFetchError(f"image URL host {target.netloc!r} is not the Label Studio host {ls.netloc!r}; the "
                              "backend fetches images only from Label Studio, data URIs or DGAN_ALLOWED_ROOTS")
    if target.path.startswith("/data/local-files") and allowed_roots:
        rel = parse_qs(target.query).get("d", [""])[0]
        for root in allowed_roots:
            candidate = root / rel
            if rel and candidate.is_file() and _under(candidate, allowed_roots):
                return candidate.read_bytes()
    try:
        with requests.get(full, headers=headers, timeout=timeout, stream=True) as resp:
            if resp.status_code in (401, 403):
                raise ImageFetchError(f"Label Studio refused the image {target.path} ({resp.status_code}); check "
                                      "LABEL_STUDIO_API_KEY")
            if resp.status_code != 200:
                raise ImageFetchError(f"Label Studio answered {resp.status_code} for the image {target.path}")
            chunks, size = [], 0
            for chunk in resp.iter_content(1 << 16):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise ImageFetchError(f"image {target.path} is larger than {MAX_DOWNLOAD_BYTES >> 20} MB")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as e:
        raise ImageFetchError(f"cannot reach Label Studio at {ls_url} for {target.path}: {e}") from e
