"""Fetch a task's image safely: only Label Studio's media paths, data URIs, or allowed local folders.

Anything else (another host, another Label Studio path such as its API, a path outside the allowed
roots) is refused before any request is made, with the same message whether or not it exists.
Redirects are followed by hand and checked the same way (a presigned storage redirect leaves Label
Studio without its token). Decoding refuses decompression bombs and files that are not images; a
request can also cap the pixels of all the images it decodes (:func:`pixel_budget`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import numpy as np
import requests
from PIL import Image

if TYPE_CHECKING:
    from .config import Settings

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 5


class ImageFetchError(ValueError):
    """The task's image could not be fetched or decoded; the message says which and why."""


class PixelBudgetExceeded(Exception):
    """The images of one request add up to more pixels than its budget. Not a ValueError on purpose:
    it ends the whole request (413), where a bad image only fails its own task."""


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0


_budget: ContextVar[_Budget | None] = ContextVar("dgan_pixel_budget", default=None)


@contextmanager
def pixel_budget(limit: int) -> Iterator[None]:
    """Within this block (one request), :func:`decode_image` refuses to decode images once their pixels
    add up to more than ``limit``, raising :class:`PixelBudgetExceeded` before decoding the one over it."""
    token = _budget.set(_Budget(limit))
    try:
        yield
    finally:
        _budget.reset(token)


def _charge(pixels: int, source: str) -> None:
    budget = _budget.get()
    if budget is None:
        return
    if budget.used + pixels > budget.limit:
        raise PixelBudgetExceeded(
            f"{source} would bring this request's images to {budget.used + pixels:,} pixels, over the limit of "
            f"{budget.limit:,} per request (DGAN_MAX_REQUEST_PIXELS); send fewer or smaller images per request")
    budget.used += pixels


def decode_image(data: bytes, max_pixels: int, source: str = "image") -> np.ndarray:
    """Bytes → RGB uint8 [H, W, 3]; refuses non-images and images above ``max_pixels``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise ImageFetchError(f"{source}: {im.width}x{im.height} = {im.width * im.height:,} pixels exceeds "
                                      f"the limit of {max_pixels:,} (DGAN_MAX_IMAGE_PIXELS)")
            _charge(im.width * im.height, source)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImageFetchError:
        raise
    except (OSError, Image.DecompressionBombError, ValueError) as e:
        raise ImageFetchError(f"{source}: not a readable image ({type(e).__name__}: {e})") from e


def fetch_task_image(task: dict, image_key: str, settings: Settings,
                     headers: dict[str, str]) -> tuple[np.ndarray, bytes]:
    """A Label Studio task's image: (RGB uint8 [H, W, 3], its raw bytes), read from ``task["data"][image_key]``
    as far as ``settings`` allow (Label Studio's media paths, data URIs, allowed roots; the pixel limit).
    ``headers``: Label Studio's Authorization header (``LabelStudioClient.auth_headers()``)."""
    data = task.get("data") or {}
    if image_key not in data:
        raise ValueError(f"task {task.get('id')} has no data field {image_key!r} "
                         f"(the Image tag reads ${image_key}); fields: {sorted(data)}")
    raw = fetch_image_bytes(data[image_key], settings.label_studio_url, headers, settings.allowed_roots)
    return decode_image(raw, settings.max_image_pixels, f"task {task.get('id')}"), raw


# Label Studio 1.23.2's media paths (relative to its base URL), the only ones fetched with its token:
# uploads, Local Storage files, the uploaded-storage download, and the cloud-storage resolve/presign
# endpoints (which proxy or redirect to a presigned URL). Its API and pages are never fetched.
MEDIA_PATHS = (re.compile(r"/data/upload/[^?#]+"), re.compile(r"/data/local-files/?"),
               re.compile(r"/storage-data/uploaded/?"), re.compile(r"/(tasks|projects)/\d+/(resolve|presign)/?"))
STORAGE_REDIRECTING = re.compile(r"/(tasks|projects)/\d+/(resolve|presign)/?")
MEDIA_HELP = ("/data/upload/…, /data/local-files/?d=…, /storage-data/uploaded/?filepath=…, "
              "/tasks|projects/<id>/resolve|presign/?fileuri=…")


def _under(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path == r or r in path.parents for r in roots)


def _media_path(path: str, base: str) -> str | None:
    """``path`` relative to Label Studio's base path when it is one of its media paths, else None.
    Dot segments, backslashes, empty segments and encoded separators are refused outright."""
    decoded = unquote(path)
    segments = decoded.split("/")
    if ("\\" in decoded or "\x00" in decoded or any(s in (".", "..") for s in segments)
            or "//" in decoded or "%2f" in path.lower() or "%5c" in path.lower()):
        return None
    if base:
        if not decoded.startswith(base + "/"):
            return None
        decoded = decoded[len(base):]
    return decoded if any(p.fullmatch(decoded) for p in MEDIA_PATHS) else None


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
    base = ls.path.rstrip("/")
    is_ls_media = parsed.scheme == "" and not parsed.netloc and _media_path(base + parsed.path, base) is not None
    if parsed.scheme == "file" or (parsed.scheme == "" and not parsed.netloc and not is_ls_media):
        path = Path(unquote(parsed.path))
        if not allowed_roots or not _under(path, allowed_roots):
            raise ImageFetchError(f"local image {str(path)!r} is outside the allowed folders "
                                  f"{[str(r) for r in allowed_roots]} (DGAN_ALLOWED_ROOTS); Label Studio images "
                                  f"are fetched only from its media paths ({MEDIA_HELP})")
        try:
            return path.read_bytes()
        except OSError as e:
            raise ImageFetchError(f"cannot read {path}: {e}") from e
    full = urljoin(ls_url + "/", url.lstrip("/")) if not parsed.netloc else url
    target = urlparse(full)
    if (target.scheme, target.netloc) != (ls.scheme, ls.netloc):
        raise ImageFetchError(f"image URL host {target.netloc!r} is not the Label Studio host {ls.netloc!r}; the "
                              "backend fetches images only from Label Studio, data URIs or DGAN_ALLOWED_ROOTS")
    media = _media_path(target.path, base)
    if media is None:
        raise ImageFetchError(f"image URL path {target.path!r} is not one of Label Studio's media paths "
                              f"({MEDIA_HELP}); the backend fetches nothing else from Label Studio")
    if media.startswith("/data/local-files") and allowed_roots:
        rel = parse_qs(target.query).get("d", [""])[0]
        for root in allowed_roots:
            candidate = root / rel
            if rel and candidate.is_file() and _under(candidate, allowed_roots):
                return candidate.read_bytes()
    return _download(full, ls_url, base, headers, timeout, may_leave=bool(STORAGE_REDIRECTING.fullmatch(media)))


def _download(url: str, ls_url: str, base: str, headers: dict[str, str], timeout: float, may_leave: bool) -> bytes:
    """GET with redirects followed by hand: within Label Studio only to media paths (with the token),
    elsewhere only from a storage resolve/presign path (a presigned URL, without the token)."""
    ls = urlparse(ls_url)
    what = urlparse(url).path
    try:
        for _ in range(MAX_REDIRECTS + 1):
            here = urlparse(url)
            on_ls = (here.scheme, here.netloc) == (ls.scheme, ls.netloc)
            with requests.get(url, headers=headers if on_ls else {}, timeout=timeout, stream=True,
                              allow_redirects=False) as resp:
                if resp.is_redirect:
                    nxt = urljoin(url, resp.headers.get("Location", ""))
                    there = urlparse(nxt)
                    if (there.scheme, there.netloc) == (ls.scheme, ls.netloc):
                        if _media_path(there.path, base) is None:
                            raise ImageFetchError(f"Label Studio redirected the image {what} to {there.path!r}, "
                                                  "which is not one of its media paths; not followed")
                    elif not may_leave or there.scheme not in ("http", "https"):
                        raise ImageFetchError(f"Label Studio redirected the image {what} to another host "
                                              f"({there.netloc!r}); only storage resolve/presign paths may")
                    url = nxt
                    continue
                if resp.status_code in (401, 403):
                    raise ImageFetchError(f"Label Studio refused the image {what} ({resp.status_code}); check "
                                          "LABEL_STUDIO_API_KEY")
                if resp.status_code != 200:
                    raise ImageFetchError(f"Label Studio answered {resp.status_code} for the image {what}")
                chunks, size = [], 0
                for chunk in resp.iter_content(1 << 16):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise ImageFetchError(f"image {what} is larger than {MAX_DOWNLOAD_BYTES >> 20} MB")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise ImageFetchError(f"the image {what} redirected more than {MAX_REDIRECTS} times")
    except requests.RequestException as e:
        raise ImageFetchError(f"cannot reach Label Studio at {ls_url} for {what}: {e}") from e
