"""The embedded default domain: procedurally drawn cartoon portraits with exact part labels.

Every sample is a pure function of ``(seed, index, size, variant)``: a scene of analytic shapes
(ellipses, rotated boxes, a triangle) is painted back to front. Colours are evaluated on a 2x
supersampled grid and box-filtered (smooth edges, no fine noise); labels are evaluated at the
exact pixel centres, so the label map is the ground truth of what the picture shows, including
occlusion (an occluder or hair in front of a part hides that part's label).

Classes (index: name): see :data:`CLASSES`. ``pupil`` and ``eyebrow`` cover well under 2% of the
image each; ``pupil`` is nested inside ``eye``, ``nose`` sits beside ``mouth``, ``ear`` and ``hair``
touch ``face``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

CLASSES: tuple[str, ...] = (
    "background", "face", "hair", "ear", "eye", "pupil", "eyebrow", "nose", "mouth", "torso",
)
# Label colours (RGB) used for palette PNGs and overlays; index = class id.
LABEL_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 180, 140), (120, 60, 20), (250, 120, 60), (240, 240, 255),
    (30, 60, 200), (250, 230, 40), (220, 40, 120), (200, 0, 0), (40, 170, 80),
)
VARIANTS = ("default", "shifted")
SUPERSAMPLE = 2

Region = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) -> bool mask


@dataclass
class _Layer:
    """One painted shape: where it is, its colour field and its class id."""

    region: Region
    color: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) -> float RGB [..., 3] in [0, 1]
    label: int


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> Region:
    c, s = np.cos(angle), np.sin(angle)

    def region(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - cx, y - cy
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0

    return region


def _box(cx: float, cy: float, hw: float, hh: float, angle: float = 0.0) -> Region:
    c, s = np.cos(angle), np.sin(angle)

    def region(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - cx, y - cy
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (np.abs(u) <= hw) & (np.abs(v) <= hh)

    return region


def _triangle(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float]) -> Region:
    def edge(a, b, x, y):
        return (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])

    def region(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        e0, e1, e2 = edge(p0, p1, x, y), edge(p1, p2, x, y), edge(p2, p0, x, y)
        return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))

    return region


def _shaded(rgb: np.ndarray, cx: float, cy: float, radius: float, light: np.ndarray,
            strength: float, stripes: tuple[float, float, float] | None = None):
    """Colour field: base colour, a smooth directional shading around (cx, cy), optional stripes."""
    rgb = np.asarray(rgb, dtype=np.float32)

    def color(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        shade = 1.0 + strength * ((x - cx) * light[0] + (y - cy) * light[1]) / radius
        if stripes is not None:
            freq, ang, amp = stripes
            shade = shade * (1.0 + amp * np.sin(freq * (x * np.cos(ang) + y * np.sin(ang))))
        return np.clip(shade[..., None] * rgb, 0.0, 1.0)

    return color


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _palette(rng: np.random.Generator, variant: str) -> dict[str, np.ndarray]:
    """Colours of one portrait. The shifted variant uses unnatural skin and inverted contrasts."""
    u = rng.uniform
    if variant == "shifted":
        skin = _hsv(u(0.3, 0.75), u(0.35, 0.6), u(0.55, 0.85))
        hair = _hsv(u(0.0, 1.0), u(0.6, 0.9), u(0.75, 0.95))
        eye = _hsv(u(0.1, 0.2), u(0.5, 0.8), u(0.2, 0.35))
        pupil = _hsv(u(0.0, 1.0), u(0.1, 0.3), u(0.9, 1.0))
    else:
        skin = _hsv(u(0.03, 0.1), u(0.25, 0.6), u(0.55, 0.95))
        hair = _hsv(u(0.0, 0.12), u(0.3, 0.9), u(0.12, 0.7))
        eye = _hsv(u(0.55, 0.65), u(0.0, 0.1), u(0.9, 1.0))
        pupil = _hsv(u(0.0, 1.0), u(0.5, 0.9), u(0.15, 0.45))
    return {
        "skin": skin, "hair": hair, "eye": eye, "pupil": pupil,
        "brow": hair * 0.6,
        "nose": np.clip(skin * np.array([0.85, 0.55, 0.55], np.float32), 0, 1),
        "mouth": _hsv(u(0.95, 1.0) if variant == "default" else u(0.4, 0.6), u(0.6, 0.9), u(0.45, 0.8)),
        "ear": np.clip(skin * 0.9, 0, 1),
        "torso": _hsv(u(0.0, 1.0), u(0.3, 0.9), u(0.3, 0.9)),
    }


def _scene(rng: np.random.Generator, variant: str) -> tuple[list[_Layer], dict]:
    """Sample the shapes of one portrait in normalised image coordinates ([-1, 1], y down)."""
    u = rng.uniform
    pal = _palette(rng, variant)
    light_angle = u(0, 2 * np.pi)
    light = np.array([np.cos(light_angle), np.sin(light_angle)], np.float32)
    shade = 0.25

    # Global pose: the face's frame maps local (a, b) to image coordinates.
    cx, cy = u(-0.2, 0.2), u(-0.15, 0.15)
    scale = u(0.8, 1.1)
    rot = u(-0.4, 0.4)
    cr, sr = np.cos(rot), np.sin(rot)

    def to_img(a: float, b: float) -> tuple[float, float]:
        return cx + scale * (cr * a - sr * b), cy + scale * (sr * a + cr * b)

    def ell(a, b, ra, rb, ang=0.0):
        px, py = to_img(a, b)
        return _ellipse(px, py, ra * scale, rb * scale, rot + ang), (px, py, max(ra, rb) * scale)

    def box(a, b, ha, hb, ang=0.0):
        px, py = to_img(a, b)
        return _box(px, py, ha * scale, hb * scale, rot + ang), (px, py, max(ha, hb) * scale)

    fw, fh = u(0.36, 0.46), u(0.44, 0.54)
    layers: list[_Layer] = []

    def add(shape, rgb, label, stripes=None):
        region, (px, py, rad) = shape
        layers.append(_Layer(region, _shaded(rgb, px, py, rad, light, shade, stripes), label))

    # Torso: a wide ellipse under the head, may have stripes.
    torso_stripes = (u(12, 22), u(0, np.pi), 0.15) if rng.random() < 0.5 else None
    add(ell(0.0, fh + u(0.35, 0.5), u(0.55, 0.8), u(0.35, 0.5)), pal["torso"], 9, torso_stripes)
    # Ears beside the face.
    ear_r = (u(0.08, 0.12), u(0.13, 0.18))
    for side in (-1, 1):
        add(ell(side * (fw - 0.02), u(-0.05, 0.05), *ear_r), pal["ear"], 3)
    # Face.
    add(ell(0.0, 0.0, fw, fh), pal["skin"], 1)
    # Hair: the top of a slightly larger ellipse above a wavy hairline.
    hair_outer = ell(0.0, -0.04, fw + 0.06, fh + 0.06)[0]
    line0, amp, freq, phase = u(-0.38, -0.22) * fh / 0.5, u(0.0, 0.05), u(6, 14), u(0, 2 * np.pi)
    hx, hy = to_img(0.0, 0.0)

    def hair_region(x, y, _outer=hair_outer):
        dx, dy = (x - hx) / scale, (y - hy) / scale
        a, b = cr * dx + sr * dy, -sr * dx + cr * dy
        return _outer(x, y) & (b <= line0 + amp * np.sin(freq * a + phase))

    hair_stripes = (u(18, 30), rot + np.pi / 2 + u(-0.3, 0.3), 0.12)
    layers.append(_Layer(hair_region, _shaded(pal["hair"], hx, hy, fw * scale, light, shade, hair_stripes), 2))
    # Eyes with pupils, eyebrows above.
    ex, ey = u(0.14, 0.2), u(-0.12, -0.03)
    erx, ery = u(0.085, 0.12), u(0.06, 0.085)
    gaze = (u(-0.4, 0.4), u(-0.3, 0.3))
    pr = u(0.5, 0.7) * ery
    brow_h, brow_tilt = u(0.025, 0.04), u(-0.35, 0.35)
    for side in (-1, 1):
        eye_shape = ell(side * ex, ey, erx, ery)
        add(eye_shape, pal["eye"], 4)
        eye_region = eye_shape[0]
        pupil_region, geom = ell(side * ex + gaze[0] * (erx - pr), ey + gaze[1] * (ery - pr), pr, pr)
        layers.append(_Layer(lambda x, y, p=pupil_region, e=eye_region: p(x, y) & e(x, y),
                             _shaded(pal["pupil"], geom[0], geom[1], geom[2], light, shade), 5))
        add(box(side * ex, ey - ery - u(0.05, 0.08), erx * 1.1, brow_h, side * brow_tilt), pal["brow"], 6)
    # Nose (a triangle) and mouth beside it.
    ny, nw, nh = u(0.04, 0.1), u(0.045, 0.07), u(0.08, 0.12)
    tri = _triangle(to_img(0.0, ny - nh / 2), to_img(-nw, ny + nh / 2), to_img(nw, ny + nh / 2))
    npx, npy = to_img(0.0, ny)
    layers.append(_Layer(tri, _shaded(pal["nose"], npx, npy, nh * scale, light, shade), 7))
    mouth_y = ny + nh / 2 + u(0.03, 0.1)
    add(ell(0.0, mouth_y + u(0.03, 0.05), u(0.1, 0.18), u(0.03, 0.06), u(-0.15, 0.15)), pal["mouth"], 8)
    # Partial occlusion: a foreground object that hides whatever it covers (labelled background).
    if rng.random() < 0.3:
        oc = _hsv(u(0, 1), u(0.2, 0.8), u(0.3, 0.9))
        side = rng.choice([-1.0, 1.0])
        shape = (_box(side * u(0.55, 0.8), u(-0.6, 0.6), u(0.15, 0.3), u(0.15, 0.4), u(-0.5, 0.5))
                 if rng.random() < 0.5 else _ellipse(side * u(0.6, 0.85), u(-0.6, 0.6), u(0.15, 0.3), u(0.15, 0.3)))
        layers.append(_Layer(shape, _shaded(oc, 0.0, 0.0, 1.0, light, shade), 0))

    background = {
        "top": _hsv(u(0, 1), u(0.1, 0.5), u(0.5, 0.95)),
        "bottom": _hsv(u(0, 1), u(0.1, 0.5), u(0.3, 0.8)),
        "clutter": [
            (_ellipse(u(-1, 1), u(-1, 1), u(0.08, 0.3), u(0.08, 0.3), u(0, np.pi)) if rng.random() < 0.5
             else _box(u(-1, 1), u(-1, 1), u(0.05, 0.25), u(0.05, 0.25), u(0, np.pi)),
             _hsv(u(0, 1), u(0.2, 0.7), u(0.3, 0.95)))
            for _ in range(int(rng.integers(2, 6)))
        ],
        "gradient": (u(0.0, 0.3), u(0, 2 * np.pi)),
    }
    return layers, background


def _paint(layers: list[_Layer], background: dict, x: np.ndarray, y: np.ndarray,
           with_color: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Paint the scene on coordinate grids ``x``, ``y`` ([H, W] float32).

    Returns (rgb [H, W, 3] float32 in [0, 1] or None, labels [H, W] uint8)."""
    labels = np.zeros(x.shape, np.uint8)
    rgb = None
    if with_color:
        t = ((y + 1) / 2)[..., None]
        rgb = (1 - t) * background["top"] + t * background["bottom"]
        for region, color in background["clutter"]:
            m = region(x, y)
            rgb[m] = color * 0.9
    for layer in layers:
        m = layer.region(x, y)
        labels[m] = layer.label
        if with_color:
            rgb[m] = layer.color(x[m], y[m])
    if with_color:
        g, ang = background["gradient"]
        light = 1.0 + g * (x * np.cos(ang) + y * np.sin(ang))
        rgb = np.clip(rgb * light[..., None], 0.0, 1.0)
    return rgb, labels


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="xy")


def render_sample(seed: int, index: int, size: int = 64, variant: str = "default") -> tuple[np.ndarray, np.ndarray]:
    """Render sample ``index`` of the family seeded by ``seed``.

    Returns (image uint8 [size, size, 3], labels uint8 [size, size] with values in [0, len(CLASSES)))."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown domain variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if size < 16:
        raise ValueError(f"size {size} is too small to draw the parts; use 16 or more (64 is the default)")
    rng = np.random.default_rng([seed, index, VARIANTS.index(variant)])
    layers, background = _scene(rng, variant)
    xs, ys = _grid(size * SUPERSAMPLE)
    rgb, _ = _paint(layers, background, xs, ys)
    rgb = rgb.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    x1, y1 = _grid(size)
    _, labels = _paint(layers, background, x1, y1, with_color=False)
    return np.round(rgb * 255).astype(np.uint8), labels


def render_batch(n: int, seed: int = 0, size: int = 64, variant: str = "default",
                 start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render samples ``start .. start+n-1``: (images uint8 [n, size, size, 3], labels uint8 [n, size, size])."""
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    for i in range(n):
        images[i], labels[i] = render_sample(seed, start + i, size, variant)
    return images, labels
