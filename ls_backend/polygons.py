"""Label Studio ``<PolygonLabels>`` results ⇄ class masks.

Coordinates: Label Studio stores a polygon's points in percent of the image, ``x`` of
``original_width`` and ``y`` of ``original_height``; ``x = 100 · X / W`` where ``X`` is a continuous
pixel coordinate (0 = the left edge of the first pixel, W = the right edge of the last), as in its
own COCO converter.

Rasterizing (annotations → label maps, :func:`rasterize_rings`): a pixel belongs to a polygon when its
centre ``(j + 0.5, i + 0.5)`` lies inside it by the even-odd rule, half-open (a centre exactly on an
edge counts where the polygon's interior lies to its right or below, so two polygons sharing an edge
never both take a pixel). This is a scanline fill in numpy rather than ``cv2.fillPoly``: fillPoly also
fills every pixel an edge passes through, which grows a polygon drawn along pixel edges by up to a
pixel all round (13 % of the pixels of random blobs came back wrong with it).

Tracing (masks → polygons, :func:`mask_rings`): ``cv2.findContours`` (RETR_CCOMP: outer borders and
their holes) runs on a grid of twice the resolution plus one that holds pixel corners, edge midpoints and
centres, with each pixel's closed square set; so contours run along pixel edges (the "crack" boundary),
not through boundary pixel centres, and rasterizing them back by the centre rule gives the mask exactly.
Each ring is then simplified by Douglas–Peucker (``cv2.approxPolyDP``) to ``DGAN_POLYGON_TOLERANCE``
pixels (default 0.5; 0 keeps every corner). Every pixel centre is at least 0.5 px from a pixel-edge
outline, so up to 0.5 px the simplified polygons still rasterize back to the mask exactly (IoU 1.0 on
the default domain, ``dgan bench polygons``), with about a fifth fewer points; above it they smooth
the staircase and lose thin parts (0.75 px: mean IoU 0.93 at 64 px, 0.97 at 256 px).

Label Studio polygons are single rings, so every hole is joined to its outer ring by a zero-width cut
(there to the hole and back along the same segment), with the hole running the other way round: the
cut adds nothing under the even-odd rule or the nonzero rule (the canvas default), so the hole stays a
hole when Label Studio draws the polygon and when anything rasterizes it. One result per connected
part (8-connected: parts touching at a corner are one polygon); a part inside another's hole is its own result.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import cv2
import numpy as np

DEFAULT_TOLERANCE = 0.5          # pixels of Douglas–Peucker simplification
TOLERANCE_ENV = "DGAN_POLYGON_TOLERANCE"
POINT_DECIMALS = 4               # percent; 1e-4 % of a 10,000 px side is 0.01 px
RANGE_SLACK = 0.01               # percent beyond 0–100 accepted (and clipped) as rounding, not an error


class PolygonError(ValueError):
    """A polygon result cannot be used (the message says which one, what was wrong, and what to do)."""


def polygon_tolerance(value: str | float | None = None) -> float:
    """The simplification tolerance in pixels: ``value``, else ``$DGAN_POLYGON_TOLERANCE``, else 0.5.

    Raises ValueError for anything that is not a finite number from 0 to 10."""
    raw = os.environ.get(TOLERANCE_ENV) if value is None else value
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return DEFAULT_TOLERANCE
    try:
        tol = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{TOLERANCE_ENV}={raw!r} is not a number; give the polygon simplification tolerance in "
                         f"pixels, e.g. 0.5 (0 keeps every corner of the pixel outline)") from None
    if not math.isfinite(tol) or not 0 <= tol <= 10:
        raise ValueError(f"{TOLERANCE_ENV}={raw!r} is out of range; give a tolerance from 0 to 10 pixels "
                         f"(default {DEFAULT_TOLERANCE})")
    return tol


# -- masks → rings ------------------------------------------------------------------------------------

def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _join_hole(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``ring`` with ``hole`` spliced in by a zero-width cut between their two closest vertices."""
    d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    around = np.concatenate([hole[j:], hole[:j + 1]])          # the hole from vertex j back to j
    return np.concatenate([ring[:i + 1], around, ring[i:]])


def _square_corners(c: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A closed grid contour [N, 2] (x, y) with every diagonal step replaced by two axis-aligned ones
    through the grid point between them that is set (border following cuts a concave pixel corner
    diagonally, 0.35 px from a pixel centre; going round it keeps the outline on pixel edges, at least
    0.5 px from every centre, so any tolerance below 0.5 px cannot move a centre across it)."""
    step = np.roll(c, -1, axis=0) - c
    diagonal = (np.abs(step) == 1).all(axis=1)
    if not diagonal.any():
        return c
    via_x = c[diagonal] + step[diagonal] * (1, 0)                # move along x first
    via_y = c[diagonal] + step[diagonal] * (0, 1)
    use_x = grid[via_x[:, 1], via_x[:, 0]] > 0
    via = np.where(use_x[:, None], via_x, via_y)
    out = np.empty((len(c) + len(via), 2), c.dtype)
    at = np.arange(len(c)) + np.concatenate([[0], np.cumsum(diagonal)[:-1]])   # where each point lands
    out[at] = c
    out[at[diagonal] + 1] = via
    return out


def _drop_collinear(c: np.ndarray) -> np.ndarray:
    """The corners of a closed axis-aligned contour (points where the direction changes)."""
    step = np.roll(c, -1, axis=0) - c
    turn = (step != np.roll(step, 1, axis=0)).any(axis=1)
    return c[turn] if turn.sum() >= 3 else c


def mask_rings(mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> list[np.ndarray]:
    """Boolean mask [H, W] → one closed ring per connected part, float [N, 2] of (x, y) continuous pixel
    coordinates (last point not repeated), holes joined in by zero-width cuts; simplified to ``tolerance``
    pixels. Rasterized back with :func:`rasterize_rings` at tolerance 0 it is ``mask`` exactly."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    if not mask.any():
        return []
    grid = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)        # (2i+1, 2j+1) is pixel (i, j)'s centre
    grid[1::2, 1::2] = mask
    grid = cv2.dilate(grid, np.ones((3, 3), np.uint8))        # + its corners and edge midpoints
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hierarchy = hierarchy[0]
    eps = 2 * tolerance                                       # grid units are half pixels

    def ring(k: int) -> np.ndarray:
        c = _square_corners(contours[k][:, 0, :], grid)
        simple = cv2.approxPolyDP(c[:, None, :], eps, True)[:, 0, :] if eps > 0 else c
        if len(simple) < 3:              # a part smaller than the tolerance keeps its pixel outline
            simple = c
        return _drop_collinear(simple).astype(np.float64) / 2.0

    rings = []
    for k, (_, _, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        outer = ring(k)
        if _signed_area(outer) < 0:
            outer = outer[::-1]
        while child != -1:
            hole = ring(child)
            if len(hole) >= 3:
                outer = _join_hole(outer, hole if _signed_area(hole) < 0 else hole[::-1])
            child = hierarchy[child][0]
        rings.append(outer)
    return rings


# -- rings → masks ------------------------------------------------------------------------------------

def rasterize_rings(rings: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Closed rings of (x, y) continuous pixel coordinates → boolean mask [height, width]: pixel (i, j) is
    set when its centre (j + 0.5, i + 0.5) is inside by the even-odd rule over all rings together."""
    xs, ys, rows = [], [], []
    for r in rings:
        p = np.asarray(r, np.float64).reshape(-1, 2)
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        lo, hi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
        # rows whose centre y satisfies lo <= y < hi (half-open: a vertex on a row counts once)
        first = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
        last = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)   # exclusive
        n = last - first
        keep = n > 0
        if not keep.any():
            continue
        p, q, first, n = p[keep], q[keep], first[keep], n[keep]
        edge = np.repeat(np.arange(len(p)), n)
        row = first[edge] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        y = row + 0.5
        (x0, y0), (x1, y1) = p[edge].T, q[edge].T
        xs.append(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
        rows.append(row)
    out = np.zeros((height, width + 1), np.int32)
    if rows:
        row, x = np.concatenate(rows), np.concatenate(xs)
        order = np.lexsort((x, row))
        row, x = row[order], x[order]                       # every row has an even count of crossings
        start = np.clip(np.ceil(x[0::2] - 0.5), 0, width).astype(np.int64)   # first pixel with centre ≥ x_in
        stop = np.clip(np.ceil(x[1::2] - 0.5), 0, width).astype(np.int64)    # first pixel with centre ≥ x_out
        np.add.at(out, (row[0::2], start), 1)
        np.add.at(out, (row[0::2], stop), -1)
    return np.cumsum(out, axis=1)[:, :width] > 0


# -- Label Studio results -----------------------------------------------------------------------------

def polygon_results(mask: np.ndarray, from_name: str, to_name: str, labels: dict[int, str],
                    tolerance: float | None = None) -> list[dict]:
    """Class mask uint8 [H, W] → ``polygonlabels`` results: one per connected part of each class in
    ``labels`` (class id → label; other classes are left out), points in percent of the image."""
    tol = polygon_tolerance(tolerance)
    h, w = mask.shape
    results = []
    for cid in np.unique(mask):
        label = labels.get(int(cid))
        if label is None:
            continue
        for ring in mask_rings(mask == cid, tol):
            pts = np.round(ring / (w, h) * 100.0, POINT_DECIMALS)
            results.append({"from_name": from_name, "to_name": to_name, "type": "polygonlabels",
                            "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                            "value": {"points": pts.tolist(), "closed": True, "polygonlabels": [label]}})
    return results


def result_ring(result: dict, height: int, width: int) -> np.ndarray:
    """A ``polygonlabels`` result's points → float [N, 2] continuous pixel coordinates in an image of
    ``height`` × ``width``. Raises :class:`PolygonError` for malformed points, fewer than 3 of them, or a
    point outside the image (beyond a rounding slack of 0.01 %, which is clipped)."""
    rid = result.get("id")
    label = (result.get("value") or {}).get("polygonlabels")
    what = f"polygon result {rid!r} ({label})" if rid is not None else f"a polygon result ({label})"
    points = (result.get("value") or {}).get("points")
    try:
        pts = np.asarray(points, np.float64)
    except (TypeError, ValueError):
        pts = None
    if pts is None or pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise PolygonError(f"{what} has malformed points {str(points)[:80]!r}; Label Studio writes "
                           "value.points as [[x%, y%], …]")
    if len(pts) < 3:
        raise PolygonError(f"{what} has {len(pts)} point(s); a polygon needs at least 3: redraw it in Label Studio")
    bad = (pts < -RANGE_SLACK) | (pts > 100 + RANGE_SLACK)
    if bad.any():
        x, y = pts[np.nonzero(bad.any(axis=1))[0][0]]
        raise PolygonError(f"{what} has a point at ({x:g} %, {y:g} %), outside the image (0–100 %); "
                           "move it inside the image in Label Studio")
    return np.clip(pts, 0.0, 100.0) / 100.0 * (width, height)

