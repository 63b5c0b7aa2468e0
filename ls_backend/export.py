"""Lossless segmentation exports: COCO (compressed RLE via pycocotools) and Pascal VOC.

Label Studio cannot export brush masks losslessly (its BRUSH_TO_COCO turns masks into polygons, loses
holes and specks, skips data-URI tasks). Here every mask is written pixel-exact (a project's polygon
annotations and predictions are rasterized first, as a fit reads them: :func:`ls_backend.brush.results_to_mask`):
- COCO: ``images/`` + ``annotations.json``; one annotation per (image, class) region with RLE
  ``segmentation`` (holes kept), ``area`` = pixel count, ``bbox`` [x, y, w, h]; categories in
  label-config order, ids 1..K.
- VOC: ``JPEGImages/``, ``SegmentationClass/`` (palette PNG, pixel = class index, VOC colours),
  ``ImageSets/Segmentation/{train,val}.txt``, ``labelmap.txt``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .client import LabelStudioClient
    from .config import Settings

FORMATS = ("coco", "voc")


@dataclass
class Record:
    """One exported image: its name (no extension), RGB pixels and class mask (0 = background)."""

    name: str
    image: np.ndarray        # uint8 [H, W, 3]
    mask: np.ndarray         # uint8 [H, W], values in [0, len(classes)]
    meta: dict


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (bit-interleaved), entry i = colour of class i."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def write_coco(records: Iterable[Record], classes: list[str], out: str | Path) -> dict:
    """classes: foreground names in label-config order (category id = index + 1)."""
    from pycocotools import mask as mask_utils

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        h, w = rec.mask.shape
        file_name = f"{rec.name}.png"
        Image.fromarray(rec.image).save(out / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": int(w), "height": int(h), **rec.meta})
        for cid in np.unique(rec.mask):
            if cid == 0:
                continue
            if cid > len(classes):
                raise ValueError(f"{rec.name}: class id {int(cid)} has no category among {classes}")
            rle = mask_utils.encode(np.asfortranarray((rec.mask == cid).astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(cid),
                "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")},
                "area": int((rec.mask == cid).sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    coco = {"info": {"description": "exported by dgan (lossless RLE brush masks)"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name, "supercategory": "part"} for i, name in enumerate(classes)]}
    (out / "annotations.json").write_text(json.dumps(coco))
    return {"format": "coco", "out": str(out), "images": len(images), "annotations": len(annotations)}


def write_voc(records: Iterable[Record], classes: list[str], out: str | Path, val_fraction: float = 0.1) -> dict:
    out = Path(out)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    flat = [c for rgb in palette for c in rgb]
    names = []
    for rec in records:
        Image.fromarray(rec.image).save(out / "JPEGImages" / f"{rec.name}.jpg", quality=95)
        seg = Image.fromarray(rec.mask.astype(np.uint8), mode="P")
        seg.putpalette(flat)
        seg.save(out / "SegmentationClass" / f"{rec.name}.png")
        names.append(rec.name)
    n_val = int(round(len(names) * val_fraction)) if len(names) > 1 else 0
    val = set(sorted(names)[::max(1, len(names) // max(n_val, 1))][:n_val]) if n_val else set()
    (out / "ImageSets/Segmentation/train.txt").write_text("".join(f"{n}\n" for n in names if n not in val))
    (out / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in names if n in val))
    lines = ["# label:color_rgb:parts:actions"] + [f"{name}:{r},{g},{b}::" for name, (r, g, b)
                                                    in zip(["background", *classes], palette)]
    (out / "labelmap.txt").write_text("\n".join(lines) + "\n")
    return {"format": "voc", "out": str(out), "images": len(names), "val": len(val)}


def write(records: Iterable[Record], classes: list[str], out: str | Path, fmt: str) -> dict:
    """Write the dataset to ``out`` atomically: into a hidden sibling folder first, renamed to ``out`` only
    once complete, so an interrupted export leaves no half-written ``out`` (a rerun just works)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose a new folder for the export (nothing was overwritten)")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new folder (nothing was overwritten)")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise ValueError(f"cannot write the export into {parent} ({e.strerror or e}); choose a folder you can "
                         "write to (nothing was written)") from e
    try:
        summary = write_coco(records, classes, tmp) if fmt == "coco" else write_voc(records, classes, tmp)
        tmp.chmod(0o755)                 # mkdtemp makes it private; the export is an ordinary folder
        if out.is_dir():
            out.rmdir()                  # empty (checked above); raises if something appeared meanwhile
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out": str(out)}


# -- sources ------------------------------------------------------------------------------------


def synthesis_records(folder: str | Path) -> tuple[list[str], Iterator[Record]]:
    """(foreground class names, records) of a `dgan synthesize` folder (or a domain dataset folder)."""
    from model.domain.dataset import read_label_png

    folder = Path(folder)
    meta_path = folder / "labels.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder} is not a dataset folder: labels.json is missing")
    classes = json.loads(meta_path.read_text())["classes"][1:]
    manifest = folder / "manifest.jsonl"
    if manifest.exists():
        entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    else:
        entries = [{"image": f"images/{p.name}", "label": f"labels/{p.name}"} for p in
                   sorted((folder / "labels").glob("*.png"))]

    def gen() -> Iterator[Record]:
        for e in entries:
            img = np.asarray(Image.open(folder / e["image"]).convert("RGB"))
            mask = read_label_png(folder / e["label"])
            meta = {k: e[k] for k in ("seed", "uncertainty") if k in e}
            yield Record(Path(e["image"]).stem, img, mask, meta)

    return classes, gen()


def project_records(client: LabelStudioClient, project: int, settings: Settings,
                    include_predictions: bool = False) -> tuple[list[str], Iterator[Record]]:
    """(label-config class names, records) of a Label Studio project's tasks, read with ``client``; images
    are fetched from Label Studio as ``settings`` allow (no generator is needed).

    Each task contributes its latest non-cancelled annotation (reviewed data); with
    ``include_predictions``, tasks without an annotation contribute their latest prediction."""
    from .brush import parse_label_config, results_to_mask
    from .fetch import fetch_task_image

    label_map = parse_label_config(client.label_config(project))

    def gen() -> Iterator[Record]:
        # Only annotated tasks unless predictions are wanted too (a pushed project has thousands of others).
        for task in client.iter_tasks(project, only_annotated=not include_predictions):
            anns = [a for a in (task.get("annotations") or []) if not a.get("was_cancelled")]
            source, chosen = "annotation", None
            if anns:
                chosen = max(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
            elif include_predictions and task.get("predictions"):
                source = "prediction"
                chosen = max(task["predictions"], key=lambda p: p.get("id", 0))
            if chosen is None:
                continue
            image, _ = fetch_task_image(task, label_map.image_key, settings, client.auth_headers())
            h, w = image.shape[:2]
            mask = results_to_mask(chosen.get("result") or [], label_map, h, w)
            if mask.shape != (h, w):
                raise ValueError(f"task {task['id']}: mask {mask.shape} does not match image {h}x{w}")
            yield Record(f"task-{task['id']}", image, mask, {"task_id": task["id"], "source": source})

    return list(label_map.labels), gen()
