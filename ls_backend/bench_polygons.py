"""`dgan bench polygons`: how faithfully polygon predictions carry the masks they are traced from.

Masks: exact label maps of the default domain (:func:`model.domain.render.render_batch`), standing in
for predicted masks (a prediction is a label map of the same kind). Each goes through the path a
PolygonLabels project's predictions take — :func:`ls_backend.brush.mask_to_results` (trace, simplify to
the tolerance, join holes, percent coordinates rounded as sent) — and back through the path polygon
annotations take into a fit (:func:`ls_backend.brush.results_to_mask`'s rasterization). IoU per class
is pooled over all masks (intersections and unions summed, as PASCAL VOC), the mean is over the
foreground classes (background gets no polygon).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _round_trip(labels: np.ndarray, tolerance: float) -> dict[str, Any]:
    from model.domain import CLASSES

    from .brush import LabelMap, mask_to_results
    from .polygons import rasterize_rings, result_ring

    names = tuple(CLASSES[1:])
    label_map = LabelMap("", "image", "image", names, "outline", names, ())
    n_cls = len(CLASSES)
    inter, union = np.zeros(n_cls), np.zeros(n_cls)
    polygons = points = 0
    agree = 0
    trace_s = 0.0
    for m in labels:
        h, w = m.shape
        t = time.perf_counter()
        results = mask_to_results(m, label_map, tolerance)
        trace_s += time.perf_counter() - t
        polygons += len(results)
        points += sum(len(r["value"]["points"]) for r in results)
        back = np.zeros_like(m)
        for c in range(1, n_cls):
            rings = [result_ring(r, h, w) for r in results if r["value"]["polygonlabels"][0] == CLASSES[c]]
            got = rasterize_rings(rings, h, w)
            want = m == c
            back[got] = c
            inter[c] += (got & want).sum()
            union[c] += (got | want).sum()
        agree += int((back == m).sum())
    present = union[1:] > 0
    iou = inter[1:][present] / union[1:][present]
    return {"tolerance_px": tolerance,
            "per_class_iou": {c: round(float(v), 4) for c, v in zip(np.array(CLASSES[1:])[present], iou)},
            "mean_iou": round(float(iou.mean()), 4), "min_class_iou": round(float(iou.min()), 4),
            "label_map_pixel_agreement": round(agree / labels.size, 5),
            "polygons_per_mask": round(polygons / len(labels), 2),
            "points_per_polygon": round(points / max(polygons, 1), 1),
            "trace_ms_per_mask": round(1000 * trace_s / len(labels), 2)}


def bench_polygons(n: int = 200, size: int = 64, seed: int = 1, sweep: tuple[float, ...] = (0.0, 0.75, 1.0, 2.0),
                   large: int = 256) -> dict[str, Any]:
    """The round trip at the default tolerance (``DGAN_POLYGON_TOLERANCE``, else 0.5 px) over ``n`` masks of
    ``size`` px and at the other tolerances of ``sweep``; the same over n/4 masks of ``large`` px."""
    from model.domain.render import render_batch

    from .polygons import TOLERANCE_ENV, polygon_tolerance

    tol = polygon_tolerance()
    others = [t for t in sweep if t != tol]
    report: dict[str, Any] = {"tolerance_env": TOLERANCE_ENV}
    for px, count in ((size, n), (large, max(n // 4, 1))):
        if not px:
            continue
        _, labels = render_batch(count, seed=seed, size=px)
        report[f"{px}px"] = {"masks": f"{count} default-domain label maps, {px} px, seed {seed}",
                             "default": _round_trip(labels, tol), "sweep": [_round_trip(labels, t) for t in others]}
    return report
