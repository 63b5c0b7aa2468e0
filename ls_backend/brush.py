"""Label Studio brush and polygon results ⇄ class masks, and the label map read from a project's label config.

A project labels with a ``<BrushLabels>``, a ``<PolygonLabels>``, or both, bound to one ``<Image>``.
Class ids: 0 is background, 1..K are the brush labels in config order, then the polygon labels the
brush does not have. Masks travel as Label Studio's brush RLE (:mod:`ls_backend.rle`: byte-identical to
label-studio-sdk's codec, several times faster) and as polygons traced from them
(:mod:`ls_backend.polygons`); polygon annotations are rasterized into the same class masks.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from .polygons import polygon_results, rasterize_rings, result_ring
from .rle import decode_mask, encode_classes, encode_classes_batch

log = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """The project's label config cannot be used by this backend (the message says why and what to do)."""


@dataclass(frozen=True)
class LabelMap:
    """The project's BrushLabels and/or PolygonLabels control, the Image they are bound to, and the
    classes (class id = index in ``labels`` + 1).

    ``LabelMap(from_name, to_name, image_key, labels)`` is a brush-only project; a polygon-only project
    has ``from_name == ""`` and ``polygon_name`` set."""

    from_name: str           # the <BrushLabels> name; "" when the config has only a <PolygonLabels>
    to_name: str
    image_key: str           # task data key of the image, e.g. "image" for value="$image"
    labels: tuple[str, ...]  # every class label: the brush labels, then polygon labels the brush lacks
    polygon_name: str = ""   # the <PolygonLabels> bound to the same <Image>; "" when there is none
    polygon_labels: tuple[str, ...] = ()
    brush_labels: tuple[str, ...] | None = None   # the <BrushLabels> labels; None: all of ``labels``

    @property
    def class_names(self) -> list[str]:
        return ["background", *self.labels]

    @property
    def brush_label_set(self) -> tuple[str, ...]:
        """The labels the <BrushLabels> offers (none without one)."""
        if not self.from_name:
            return ()
        return self.labels if self.brush_labels is None else self.brush_labels

    def class_id(self, label: str, control: str = "BrushLabels") -> int:
        """Class id of ``label`` as a label of ``control`` ("BrushLabels" or "PolygonLabels")."""
        offered = self.polygon_labels if control == "PolygonLabels" else self.brush_label_set
        if label not in offered:
            raise LabelConfigError(f"label {label!r} is not in the project's {control} {list(offered)}; "
                                   "add it to the label config or fix the annotation")
        return self.labels.index(label) + 1


CONTROLS = ("BrushLabels", "PolygonLabels")


def _control_labels(control: ET.Element) -> tuple[str, ...]:
    labels = tuple(el.get("value") for el in control if el.tag == "Label" and el.get("value"))
    if not labels:
        raise LabelConfigError(f"<{control.tag} name={control.get('name')!r}> has no <Label value=…> children")
    if "background" in labels:
        raise LabelConfigError("'background' is reserved for unlabeled pixels; rename that label")
    return labels


def parse_label_config(xml: str) -> LabelMap:
    """The first ``<BrushLabels>`` and the first ``<PolygonLabels>`` bound to the ``<Image>`` that the first
    of them (in config order) is bound to; other brush/polygon controls are ignored."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"the label config is not valid XML ({e})") from e
    images = {el.get("name"): el for el in root.iter() if el.tag == "Image"}
    controls = [el for el in root.iter() if el.tag in CONTROLS]
    if not controls:
        tags = sorted({el.tag for el in root.iter()})
        raise LabelConfigError(f"the label config has no <BrushLabels> or <PolygonLabels> (it has {', '.join(tags)}); "
                               "this backend segments images: add <BrushLabels name=… toName=…> or "
                               "<PolygonLabels name=… toName=…> bound to an <Image>")
    bound = [c for c in controls if c.get("toName", "") in images]
    if not bound:
        raise LabelConfigError(f"the <BrushLabels>/<PolygonLabels> controls are not bound to an <Image>: toName "
                               f"{[c.get('toName') for c in controls]} vs images {list(images)}")
    target = bound[0].get("toName", "")
    value = images[target].get("value", "")
    if not value.startswith("$"):
        raise LabelConfigError(f"<Image name={target!r}> has value={value!r}; expected a task field like $image")
    brush = next((c for c in bound if c.tag == "BrushLabels" and c.get("toName") == target), None)
    poly = next((c for c in bound if c.tag == "PolygonLabels" and c.get("toName") == target), None)
    brush_labels = _control_labels(brush) if brush is not None else ()
    poly_labels = _control_labels(poly) if poly is not None else ()
    labels = brush_labels + tuple(label for label in poly_labels if label not in brush_labels)
    return LabelMap(brush.get("name", "") if brush is not None else "", target, value[1:], labels,
                    poly.get("name", "") if poly is not None else "", poly_labels, brush_labels)


def _ours(r: object, label_map: LabelMap) -> str | None:
    """"brush" / "polygon" when ``r`` is a result of the project's BrushLabels / PolygonLabels, else None."""
    if not isinstance(r, dict):
        return None
    if r.get("type") == "brushlabels" and label_map.from_name and r.get("from_name") == label_map.from_name:
        return "brush"
    if r.get("type") == "polygonlabels" and label_map.polygon_name and r.get("from_name") == label_map.polygon_name:
        return "polygon"
    return None


def _size(r: dict, kind: str) -> tuple[int, int]:
    try:
        return int(r["original_height"]), int(r["original_width"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a {kind} result lacks a valid original_height/original_width ({e!r}); "
                         f"Label Studio writes both on every {kind} result") from e


def results_to_mask(results: list[dict], label_map: LabelMap, height: int | None = None,
                    width: int | None = None) -> np.ndarray:
    """Brush and polygon results of one annotation → class mask uint8 [H, W] (later results paint over
    earlier ones; polygons are rasterized by pixel centres, even-odd: :func:`ls_backend.polygons.rasterize_rings`).

    The size is the brush results' size, else ``height`` × ``width`` (the image), else the polygons'
    ``original_height/original_width``. Results of other controls are ignored, and so are results with no
    label and polygons of fewer than 3 points (logged). A label not in its control raises
    LabelConfigError; a polygon point outside the image or malformed points raise
    :class:`~ls_backend.polygons.PolygonError` (a ValueError); so does a missing size."""
    ours = [(r, kind) for r in results if (kind := _ours(r, label_map))]
    brush_sizes = [_size(r, "brush") for r, kind in ours if kind == "brush"]
    if brush_sizes:
        height, width = brush_sizes[0]
    elif (height is None or width is None) and ours:
        height, width = _size(ours[0][0], "polygon")
    if height is None or width is None:
        controls = " or ".join(repr(n) for n in (label_map.from_name, label_map.polygon_name) if n)
        raise ValueError(f"the annotation has no brush or polygon results for {controls} and the image size is unknown")
    mask = np.zeros((height, width), np.uint8)
    for r, kind in ours:
        value = r.get("value") or {}
        if kind == "brush":
            h, w = _size(r, "brush")
            names = value.get("brushlabels") or []
            if not names:
                continue
            cid = label_map.class_id(names[0])
            if value.get("format", "rle") != "rle" or "rle" not in value:
                raise ValueError(f"brush result {r.get('id')!r} is not RLE-encoded; only format 'rle' is supported")
            if (h, w) != (height, width):
                raise ValueError(f"brush results of one annotation disagree on the image size: "
                                 f"{h}x{w} vs {height}x{width}")
            mask[decode_mask(value["rle"], h, w)] = cid
        else:
            names = value.get("polygonlabels") or []
            if not names:
                continue
            cid = label_map.class_id(names[0], "PolygonLabels")
            points = value.get("points")
            if isinstance(points, list) and len(points) < 3:
                log.warning("polygon result %r (%s) skipped: %d point(s), a polygon needs at least 3",
                            r.get("id"), names[0], len(points))
                continue
            mask[rasterize_rings([result_ring(r, height, width)], height, width)] = cid
    return mask


def mask_to_results(mask: np.ndarray, label_map: LabelMap, tolerance: float | None = None) -> list[dict]:
    """Class mask uint8 [H, W] → results for every class present (background skipped): one brush result
    per class of the BrushLabels, then one polygon result per connected part of each class of the
    PolygonLabels, traced and simplified to ``tolerance`` pixels (None: ``DGAN_POLYGON_TOLERANCE``, 0.5).
    A project with both controls gets both for the labels they share."""
    return masks_to_results([mask], label_map, tolerance)[0]


def masks_to_results(masks: list[np.ndarray] | np.ndarray, label_map: LabelMap,
                     tolerance: float | None = None) -> list[list[dict]]:
    """Class masks (uint8 [H, W] each) → :func:`mask_to_results` of each. Masks of one size have their brushes
    encoded in one vectorised pass (``encode_classes_batch``), several times faster than one by one."""
    present_of = []
    for mask in masks:
        if mask.ndim != 2:
            raise ValueError(f"a class mask is 2-D [H, W], got shape {list(mask.shape)}")
        present = [int(c) for c in np.unique(mask) if c != 0]
        for cid in present:
            if cid > len(label_map.labels):
                raise ValueError(f"class id {cid} has no label in the project's labels {list(label_map.labels)}")
        present_of.append(present)
    brush = set(label_map.brush_label_set)
    brush_ids = [[cid for cid in present if label_map.labels[cid - 1] in brush] for present in present_of]
    shapes = {m.shape for m in masks}
    if len(shapes) == 1:
        rles = encode_classes_batch(np.stack(masks), brush_ids)
    else:
        rles = [encode_classes(m, ids) for m, ids in zip(masks, brush_ids)]
    out = []
    for mask, present, rle_of in zip(masks, present_of, rles):
        h, w = mask.shape
        results = [{"from_name": label_map.from_name, "to_name": label_map.to_name, "type": "brushlabels",
                    "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                    "value": {"format": "rle", "rle": rle, "brushlabels": [label_map.labels[cid - 1]]}}
                   for cid, rle in rle_of.items()]
        if label_map.polygon_name:
            wanted = {cid: label_map.labels[cid - 1] for cid in present
                      if label_map.labels[cid - 1] in label_map.polygon_labels}
            results += polygon_results(mask, label_map.polygon_name, label_map.to_name, wanted, tolerance)
        out.append(results)
    return out


def validate_results(results: list[dict], label_map: LabelMap) -> None:
    """Refuse results Label Studio would accept silently but show wrongly (it validates nothing on import):
    a control or image the project does not have, a label its control does not offer, a bad polygon."""
    for r in results:
        kind = _ours(r, label_map)
        if kind is None or r.get("to_name") != label_map.to_name:
            controls = [f"{n!r}→{label_map.to_name!r}" for n in (label_map.from_name, label_map.polygon_name) if n]
            raise LabelConfigError(f"result targets {r.get('from_name')!r}→{r.get('to_name')!r} "
                                   f"({r.get('type')}), the project uses {', '.join(controls)}")
        value = r.get("value") or {}
        if kind == "brush":
            for name in value.get("brushlabels", []):
                label_map.class_id(name)
        else:
            for name in value.get("polygonlabels", []):
                label_map.class_id(name, "PolygonLabels")
            h, w = _size(r, "polygon")
            result_ring(r, h, w)
