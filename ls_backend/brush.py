"""Label Studio brush results ⇄ class masks, and the label map read from a project's label config.

Class ids: 0 is background, 1..K are the labels of the project's ``<BrushLabels>`` in config order.
Masks travel as Label Studio's brush RLE (:mod:`ls_backend.rle`: byte-identical to label-studio-sdk's
codec, several times faster).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from .rle import decode_mask, encode_mask


class LabelConfigError(ValueError):
    """The project's label config cannot be used by this backend (the message says why and what to do)."""


@dataclass(frozen=True)
class LabelMap:
    """The BrushLabels control, the Image it is bound to, and its labels (class id = index + 1)."""

    from_name: str
    to_name: str
    image_key: str           # task data key of the image, e.g. "image" for value="$image"
    labels: tuple[str, ...]

    @property
    def class_names(self) -> list[str]:
        return ["background", *self.labels]

    def class_id(self, label: str) -> int:
        try:
            return self.labels.index(label) + 1
        except ValueError:
            raise LabelConfigError(f"label {label!r} is not in the project's BrushLabels {list(self.labels)}; "
                                   "add it to the label config or fix the annotation") from None


def parse_label_config(xml: str) -> LabelMap:
    """Find the first ``<BrushLabels>`` bound to an ``<Image>`` in a Label Studio label config."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"the label config is not valid XML ({e})") from e
    images = {el.get("name"): el for el in root.iter() if el.tag == "Image"}
    brushes = [el for el in root.iter() if el.tag == "BrushLabels"]
    if not brushes:
        tags = sorted({el.tag for el in root.iter()})
        raise LabelConfigError(f"the label config has no <BrushLabels> (it has {', '.join(tags)}); this backend "
                               "segments images with brush masks: add <BrushLabels name=… toName=…> bound to an <Image>")
    for brush in brushes:
        target = brush.get("toName", "")
        if target in images:
            value = images[target].get("value", "")
            if not value.startswith("$"):
                raise LabelConfigError(f"<Image name={target!r}> has value={value!r}; expected a task field like $image")
            labels = tuple(el.get("value") for el in brush if el.tag == "Label" and el.get("value"))
            if not labels:
                raise LabelConfigError(f"<BrushLabels name={brush.get('name')!r}> has no <Label value=…> children")
            if "background" in labels:
                raise LabelConfigError("'background' is reserved for unlabeled pixels; rename that label")
            return LabelMap(brush.get("name", ""), target, value[1:], labels)
    raise LabelConfigError(f"no <BrushLabels> is bound to an <Image>: toName {[b.get('toName') for b in brushes]} "
                           f"vs images {list(images)}")


def results_to_mask(results: list[dict], label_map: LabelMap, height: int | None = None,
                    width: int | None = None) -> np.ndarray:
    """Brush results of one annotation → class mask uint8 [H, W] (later results paint over earlier ones).

    Results of other controls are ignored; a brush label not in the config raises LabelConfigError.
    Raises ValueError when the annotation has no brush result and no size is given."""
    brush = [r for r in results if isinstance(r, dict) and r.get("type") == "brushlabels"
             and r.get("from_name") == label_map.from_name]
    try:
        sizes = [(int(r["original_height"]), int(r["original_width"])) for r in brush]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a brush result lacks a valid original_height/original_width ({e!r}); "
                         "Label Studio writes both on every brush result") from e
    if brush:
        height, width = sizes[0]
    if height is None or width is None:
        raise ValueError("the annotation has no brush results for "
                         f"{label_map.from_name!r} and the image size is unknown")
    mask = np.zeros((height, width), np.uint8)
    for r, (h, w) in zip(brush, sizes):
        value = r.get("value", {})
        names = value.get("brushlabels") or []
        if not names:
            continue
        cid = label_map.class_id(names[0])
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise ValueError(f"brush result {r.get('id')!r} is not RLE-encoded; only format 'rle' is supported")
        if (h, w) != (height, width):
            raise ValueError(f"brush results of one annotation disagree on the image size: {h}x{w} vs {height}x{width}")
        mask[decode_mask(value["rle"], h, w)] = cid
    return mask


def mask_to_results(mask: np.ndarray, label_map: LabelMap) -> list[dict]:
    """Class mask uint8 [H, W] → one brush result per class present (background skipped)."""
    h, w = mask.shape
    results = []
    for cid in np.unique(mask):
        if cid == 0:
            continue
        if cid > len(label_map.labels):
            raise ValueError(f"class id {int(cid)} has no label in the project's BrushLabels {list(label_map.labels)}")
        rle = encode_mask(mask == cid)
        results.append({"from_name": label_map.from_name, "to_name": label_map.to_name, "type": "brushlabels",
                        "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                        "value": {"format": "rle", "rle": rle, "brushlabels": [label_map.labels[cid - 1]]}})
    return results


def validate_results(results: list[dict], label_map: LabelMap) -> None:
    """Refuse results Label Studio would accept silently but show wrongly (it validates nothing on import)."""
    for r in results:
        if r.get("from_name") != label_map.from_name or r.get("to_name") != label_map.to_name:
            raise LabelConfigError(f"result targets {r.get('from_name')!r}→{r.get('to_name')!r}, the project uses "
                                   f"{label_map.from_name!r}→{label_map.to_name!r}")
        for name in r.get("value", {}).get("brushlabels", []):
            label_map.class_id(name)
