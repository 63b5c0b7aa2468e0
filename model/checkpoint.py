"""One atomic save and one checked load for every checkpoint dgan writes.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (readable with
``torch.load(weights_only=True)``, so loading one never runs code)::

    {"format": "dgan-<kind>", "version": 1,
     "generator_id": "dd79dfa1b0369251",   # the generator it belongs to (every kind fitted to one)
     "config": {...}, "state_dict": {...}, "meta": {...}, ...}

:func:`save_checkpoint` writes it atomically (a temporary file in the same folder, flushed to disk,
then renamed over the target), so a reader never sees half a file and a crash leaves the previous
version in place. :func:`load_checkpoint` reads it and makes the one format and identity check, with a
message that names the file, what it holds, what was expected and what to do.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT_PREFIX = "dgan-"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit; the message says why and what to do."""


@dataclass(frozen=True)
class Kind:
    what: str        # what such a file holds, for messages ("an inversion encoder")
    made: str        # how it relates to its generator ("trained for")
    remedy: str      # what the user can do when the file is wrong or missing


KINDS: dict[str, Kind] = {
    "generator": Kind("a StyleGAN2 generator", "made for",
                      "convert yours with `dgan convert` or train one with `dgan train-gan`"),
    "encoder": Kind("an inversion encoder", "trained for",
                    "train one for this generator with `dgan train-encoder --generator G.pt --out enc.pt`"),
    "interpreter": Kind("a DatasetGAN interpreter", "fitted for", "fit one for this generator with "
                        "`dgan fit --generator G.pt --data LABELED_DIR --out interp.pt`"),
    "discriminator": Kind("a GAN discriminator", "trained with",
                          "use the discriminator.pt that `dgan train-gan` wrote beside this generator, or none"),
    "unet": Kind("a segmentation U-Net", "trained for", "train one with `dgan train-segmenter --out unet.pt`"),
    "label-branch": Kind("a SemanticGAN label branch", "fitted for",
                         "fit one for this generator (Pipeline.fit_label_branch) on labeled latents"),
    "refiner": Kind("a SimGAN refiner", "trained for the samples of",
                    "train one for this generator with `dgan refine train --real FOLDER --out refiner.pt`"),
    "refiner-state": Kind("a refiner training state", "made for",
                          "delete it to start the refiner's training afresh"),
    "fgbg": Kind("a Labels4Free alpha-net (foreground/background split)", "trained for",
                 "train one for this generator with `dgan train-fgbg --generator G.pt --out fgbg.pt`"),
    "fgbg-state": Kind("an alpha-net training state", "made for",
                       "delete it to start the alpha-net's training afresh"),
    "train-state": Kind("a GAN training state", "made for",
                        "point --out at the run folder that holds it, or start without --resume"),
}

# Keys renamed since files were first written: old name → current name (applied on load).
_RENAMED_KEYS = {"gen_id": "generator_id"}
# Kinds whose early files carried no "format" key, recognised by a key they always had.
_UNMARKED = {"train-state": "train_config"}


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return KINDS[kind]


def save_checkpoint(path: str | Path, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as a checkpoint of ``kind`` to ``path`` atomically and return ``path``.

    ``"format"`` and ``"version"`` are added; the payload must not set them. Tensors are saved as they
    are (move them to the CPU first). The parent folder is created if needed."""
    _kind(kind)
    if "format" in payload or "version" in payload:
        raise ValueError("the payload must not set 'format' or 'version'; save_checkpoint adds them")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT_PREFIX + kind, "version": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, kind: str, generator_id: str | None = None) -> dict[str, Any]:
    """Read the checkpoint of ``kind`` at ``path`` (CPU tensors, weights only) and return its dict.

    Raises :class:`CheckpointError` if the file is missing, unreadable, of another kind, from a newer
    dgan, or — when ``generator_id`` is given — made for another generator."""
    spec = _kind(kind)
    path = Path(path)
    expected = FORMAT_PREFIX + kind
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected {spec.what} ({expected}). {_cap(spec.remedy)}.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise CheckpointError(f"{path} cannot be read as a weights-only torch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); expected {spec.what} written "
                              f"by dgan ({expected}). {_cap(spec.remedy)}.") from e
    return check_checkpoint(data, path, kind, generator_id)


def check_checkpoint(data: Any, path: str | Path, kind: str, generator_id: str | None = None) -> dict[str, Any]:
    """The format and identity check of :func:`load_checkpoint` on an already loaded object.

    Returns the dict with renamed keys brought up to date and ``"format"``/``"version"`` filled in."""
    spec = _kind(kind)
    expected = FORMAT_PREFIX + kind
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not {spec.what} written by dgan "
                              f"({expected}). {_cap(spec.remedy)}.")
    data = {_RENAMED_KEYS.get(k, k): v for k, v in data.items()}
    if "format" not in data and kind in _UNMARKED and _UNMARKED[kind] in data:
        data["format"] = expected
    found = data.get("format")
    if found != expected:
        other = found[len(FORMAT_PREFIX):] if isinstance(found, str) and found.startswith(FORMAT_PREFIX) else None
        holds = (f"holds {KINDS[other].what} ({found})" if other in KINDS else
                 f"has format {found!r}" if found is not None else "is not a checkpoint written by dgan")
        raise CheckpointError(f"{path} {holds}, but {spec.what} ({expected}) was expected. {_cap(spec.remedy)}.")
    version = data.setdefault("version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} is {spec.what} in format version {version}, newer than this dgan reads "
                              f"(version {FORMAT_VERSION}); upgrade dgan to load it.")
    if generator_id is not None and data.get("generator_id") != generator_id:
        made_for = data.get("generator_id")
        if made_for is None:
            raise CheckpointError(f"{path} is {spec.what} that does not record which generator it belongs to, "
                                  f"so it cannot be checked against generator {generator_id}. {_cap(spec.remedy)}.")
        raise CheckpointError(f"{path} is {spec.what} {spec.made} generator {made_for}, not for the loaded "
                              f"generator {generator_id}. {_cap(spec.remedy)}.")
    return data


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
