"""PolygonLabels projects: masks → polygons (parts, holes, simplification) → masks, config parsing, polygon
annotations rasterized into the label maps a fit trains on, polygon predictions, and bad polygons refused."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from ls_backend.backend import Backend
from ls_backend.brush import LabelConfigError, mask_to_results, parse_label_config, results_to_mask, validate_results
from ls_backend.config import Settings
from ls_backend.polygons import PolygonError, mask_rings, polygon_tolerance, rasterize_rings, result_ring
from model.generator.checkpoints import generator_id, save_generator
from model.images import png_data_uri, to_uint8

from .conftest import tiny_generator

POLY = """<View>
  <Image name="img" value="$picture"/>
  <PolygonLabels name="outline" toName="img" strokeWidth="2">
    <Label value="Eye"/><Label value="Face"/><Label value="Mouth"/>
  </PolygonLabels>
</View>"""

BOTH = """<View>
  <Image name="img" value="$picture"/>
  <BrushLabels name="paint" toName="img"><Label value="Face"/><Label value="Eye"/></BrushLabels>
  <PolygonLabels name="outline" toName="img"><Label value="Eye"/><Label value="Mouth"/></PolygonLabels>
</View>"""


def shapes() -> np.ndarray:
    """A class map with holes, islands in holes, several parts, diagonal touches and 1-pixel specks."""
    m = np.zeros((40, 48), np.uint8)
    yy, xx = np.mgrid[:40, :48]
    r2 = (yy - 15) ** 2 + (xx - 15) ** 2
    m[(r2 <= 144) & (r2 > 36)] = 2              # Face: a ring (one hole)
    m[(yy - 15) ** 2 + (xx - 15) ** 2 <= 4] = 1  # Eye: an island inside the ring's hole
    m[3:6, 35:45] = 1                             # Eye: a second, separate part
    m[30:38, 30:46] = 3                           # Mouth: a block with two holes, one of them a single pixel
    m[32:35, 33:37] = 0
    m[35, 42] = 0
    m[20, 40] = 3                                 # Mouth: a 1-pixel speck
    m[25, 40] = m[26, 41] = m[27, 42] = 3         # Mouth: pixels touching only at corners (8-connected)
    m[0, 0] = m[39, 47] = 1                       # specks on the image corners
    return m


def winding_inside(ring: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixel centres inside ``ring`` by the nonzero winding rule (how a canvas fills a path by default)."""
    py, px = np.mgrid[:h, :w] + 0.5
    wn = np.zeros((h, w), int)
    p, q = ring, np.roll(ring, -1, axis=0)
    for (x0, y0), (x1, y1) in zip(p, q):
        cross = (x1 - x0) * (py - y0) - (px - x0) * (y1 - y0)
        wn += ((y0 <= py) & (y1 > py) & (cross > 0)).astype(int)
        wn -= ((y0 > py) & (y1 <= py) & (cross < 0)).astype(int)
    return wn != 0


@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_mask_polygons_mask_is_exact_with_parts_and_holes(tolerance):
    m = shapes()
    h, w = m.shape
    for cid, parts in ((1, 4), (2, 1), (3, 3)):
        rings = mask_rings(m == cid, tolerance)
        assert len(rings) == parts                                     # one ring per 8-connected part
        assert np.array_equal(rasterize_rings(rings, h, w), m == cid)
        for ring in rings:                                             # holes are holes for a canvas too
            assert np.array_equal(winding_inside(ring, h, w), rasterize_rings([ring], h, w))
    face = mask_rings(m == 2, tolerance)[0]
    assert not rasterize_rings([face], h, w)[15, 15]                   # the ring's hole stays empty


def test_random_blobs_round_trip_at_the_default_tolerance():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(8, 40, size=2)
        m = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 1.5) > 0.5
        assert np.array_equal(rasterize_rings(mask_rings(m, polygon_tolerance(None)), h, w), m)


def test_simplification_follows_the_tolerance():
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 80 ** 2
    exact, coarse = mask_rings(disc, 0.0)[0], mask_rings(disc, 2.0)[0]
    assert len(coarse) < len(exact) / 4
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(rasterize_rings([coarse], 200, 200), disc) > 0.98
    # every vertex of the coarse outline lies on the exact one, within the tolerance of its segments
    assert cv2.pointPolygonTest(exact.astype(np.float32), tuple(map(float, coarse[0])), True) == 0


def test_tolerance_setting(monkeypatch):
    monkeypatch.delenv("DGAN_POLYGON_TOLERANCE", raising=False)
    assert polygon_tolerance() == 0.5
    monkeypatch.setenv("DGAN_POLYGON_TOLERANCE", "1.5")
    assert polygon_tolerance() == 1.5 and polygon_tolerance(0) == 0.0
    for bad in ("half", "-1", "nan", "50"):
        monkeypatch.setenv("DGAN_POLYGON_TOLERANCE", bad)
        with pytest.raises(ValueError, match="DGAN_POLYGON_TOLERANCE"):
            polygon_tolerance()


def test_parse_polygon_configs():
    lm = parse_label_config(POLY)
    assert (lm.from_name, lm.polygon_name, lm.to_name, lm.image_key) == ("", "outline", "img", "picture")
    assert lm.class_names == ["background", "Eye", "Face", "Mouth"] and lm.polygon_labels == ("Eye", "Face", "Mouth")
    both = parse_label_config(BOTH)
    assert (both.from_name, both.polygon_name) == ("paint", "outline")
    assert both.class_names == ["background", "Face", "Eye", "Mouth"]       # brush labels, then polygon-only ones
    assert both.brush_label_set == ("Face", "Eye")
    with pytest.raises(LabelConfigError, match="no <BrushLabels> or <PolygonLabels>"):
        parse_label_config('<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>')
    with pytest.raises(LabelConfigError, match="<PolygonLabels name='p'> has no <Label"):
        parse_label_config('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i"/></View>')
    with pytest.raises(LabelConfigError, match="not bound to an <Image>"):
        parse_label_config('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="x">'
                           '<Label value="A"/></PolygonLabels></View>')
    # a PolygonLabels on another image than the BrushLabels is not this project's polygon control
    other = parse_label_config('<View><Image name="i" value="$a"/><Image name="j" value="$b"/>'
                               '<BrushLabels name="b" toName="i"><Label value="A"/></BrushLabels>'
                               '<PolygonLabels name="p" toName="j"><Label value="B"/></PolygonLabels></View>')
    assert (other.from_name, other.polygon_name, other.labels) == ("b", "", ("A",))


def test_predicted_mask_becomes_polygons_that_rasterize_back():
    lm = parse_label_config(POLY)
    m = shapes()
    results = mask_to_results(m, lm)
    validate_results(results, lm)
    assert {r["type"] for r in results} == {"polygonlabels"}
    assert sorted(r["value"]["polygonlabels"][0] for r in results) == ["Eye"] * 4 + ["Face"] + ["Mouth"] * 3
    for r in results:
        assert (r["from_name"], r["to_name"], r["original_width"], r["original_height"]) == ("outline", "img", 48, 40)
        pts = np.asarray(r["value"]["points"])
        assert pts.shape[1] == 2 and len(pts) >= 3 and pts.min() >= 0 and pts.max() <= 100
    assert np.array_equal(results_to_mask(results, lm), m)


def test_both_controls_get_brush_and_polygon_results():
    lm = parse_label_config(BOTH)
    m = np.zeros((16, 16), np.uint8)
    m[2:8, 2:8], m[10:14, 3:6], m[9:15, 9:15] = 1, 2, 3         # Face (brush only), Eye (both), Mouth (polygon only)
    results = mask_to_results(m, lm)
    validate_results(results, lm)
    kinds = sorted((r["type"], (r["value"].get("brushlabels") or r["value"].get("polygonlabels"))[0]) for r in results)
    assert kinds == [("brushlabels", "Eye"), ("brushlabels", "Face"), ("polygonlabels", "Eye"),
                     ("polygonlabels", "Mouth")]
    assert np.array_equal(results_to_mask(results, lm), m)


def _polygon(points, label="Face", name="outline", size=(10, 20), rid="p1") -> dict:
    return {"id": rid, "from_name": name, "to_name": "img", "type": "polygonlabels", "original_width": size[1],
            "original_height": size[0], "image_rotation": 0,
            "value": {"points": points, "polygonlabels": [label], "closed": True}}


def test_polygon_annotation_rasterizes_into_the_label_map():
    lm = parse_label_config(BOTH)
    # On a 10 × 20 image: a rectangle over pixels x 5..14, y 2..7 (Face is class 1 here, Eye 2, Mouth 3) ...
    rect = _polygon([[25, 20], [75, 20], [75, 80], [25, 80]], "Eye", rid="r")
    # ... a triangle of Mouth painted over it (later results paint over earlier ones) ...
    tri = _polygon([[50, 0], [100, 0], [100, 100]], "Mouth", rid="t")
    # ... and a brush stroke of Face under both.
    brush = mask_to_results(np.pad(np.ones((10, 3), np.uint8), ((0, 0), (0, 17))), lm)[0]
    expected = np.zeros((10, 20), np.uint8)
    expected[:, :3] = 1
    expected[2:8, 5:15] = 2
    yy, xx = np.mgrid[:10, :20] + 0.5
    expected[yy <= xx - 10] = 3        # on or below the line from (10, 0) to (20, 10): a centre on a left edge is in
    assert np.array_equal(results_to_mask([brush, rect, tri], lm), expected)
    # without a brush result the image size comes from the caller (the image), else from the polygons
    assert results_to_mask([rect], lm, 20, 40).shape == (20, 40)
    assert results_to_mask([rect], lm)[2:8, 5:15].all()
    # a polygon drawn with a hole joined by a zero-width cut rasterizes with the hole
    ring = mask_rings(np.pad(np.ones((6, 6), bool), 2) & ~np.pad(np.ones((2, 2), bool), 4), 0.5)[0]
    holed = _polygon((ring / (10, 10) * 100).tolist(), "Eye", size=(10, 10))
    got = results_to_mask([holed], lm)
    assert got[2:8, 2:8].sum() == 2 * 32 and not got[4:6, 4:6].any()


def test_bad_polygons_are_refused_or_skipped_clearly(caplog):
    lm = parse_label_config(POLY)
    with pytest.raises(LabelConfigError, match="'Nose' is not in the project's PolygonLabels"):
        results_to_mask([_polygon([[0, 0], [50, 0], [50, 50]], "Nose")], lm)
    with pytest.raises(PolygonError, match=r"point at \(104 %, 50 %\), outside the image"):
        results_to_mask([_polygon([[0, 0], [104, 50], [50, 50]])], lm)
    with pytest.raises(PolygonError, match="malformed points"):
        results_to_mask([_polygon([[0, 0], [10], [50, 50]])], lm)
    with caplog.at_level(logging.WARNING, logger="ls_backend.brush"):
        mask = results_to_mask([_polygon([[0, 0], [50, 50]])], lm, 10, 20)
    assert not mask.any() and "2 point(s), a polygon needs at least 3" in caplog.text
    # rounding just past the edge is clipped, not refused
    assert results_to_mask([_polygon([[-0.001, 0], [100.004, 0], [100, 100.001], [0, 100]])], lm).all()
    # results aimed at another control or with an unknown label never leave the backend
    with pytest.raises(LabelConfigError, match="result targets 'paint'"):
        validate_results([_polygon([[0, 0], [50, 0], [50, 50]], name="paint")], lm)
    with pytest.raises(PolygonError, match="needs at least 3"):
        validate_results([_polygon([[0, 0], [50, 0]])], lm)
    with pytest.raises(PolygonError, match="1 point"):
        result_ring({"value": {"points": [[1, 2]]}}, 10, 10)


TRAIN_CONFIG = ('<View><Image name="image" value="$image"/><PolygonLabels name="outline" toName="image">'
                '<Label value="dark"/><Label value="bright"/></PolygonLabels></View>')


class PolygonProject:
    """Label Studio's answers for one polygon project, as the client returns them."""

    def __init__(self, annotated):
        self.annotated = annotated

    def label_config(self, project):
        return TRAIN_CONFIG

    def annotated_tasks(self, project):
        return self.annotated

    def auth_headers(self):
        return {}


def test_polygon_annotations_train_and_predictions_are_polygons(tmp_path, monkeypatch):
    """A fit reads polygon annotations as label maps (the stored training masks are their rasterization),
    and /predict's entries for a polygon project are polygons that rasterize back to the model's labels."""
    from model.synthesis import latents_for_seeds

    monkeypatch.delenv("DGAN_POLYGON_TOLERANCE", raising=False)
    G = tiny_generator()
    gen = save_generator(G, tmp_path / "g.pt")
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k",
                                  "MODEL_DIR": str(tmp_path / "m"), "DGAN_GENERATOR": str(gen)})
    backend = Backend(settings)
    seeds = [3, 4]
    ws = latents_for_seeds(G, seeds)
    images = to_uint8(G.synthesis(ws))
    gid = generator_id(G)
    size = images.shape[1]
    tasks = [{"id": 1 + i, "data": {"image": png_data_uri(im), "dgan_seed": s, "dgan_generator_id": gid}}
             for i, (im, s) in enumerate(zip(images, seeds))]
    annotations = [
        {"id": 10, "result": [_polygon([[0, 0], [50, 0], [50, 100], [0, 100]], "dark", size=(size, size)),
                              _polygon([[50, 0], [100, 0], [100, 100], [50, 100]], "bright", size=(size, size))]},
        {"id": 11, "result": [_polygon([[10, 10], [90, 10], [50, 90]], "bright", size=(size, size))]},
    ]
    backend.__dict__["client"] = PolygonProject(list(zip(tasks, annotations)))
    meta = backend.fit(5)
    assert meta["n_images"] == 2 and meta["labels"] == ["dark", "bright"]
    with np.load(backend.store.training_data_path(5, meta["version"])) as data:
        masks = data["masks"]
    expected = np.zeros((2, size, size), np.uint8)
    expected[0, :, : size // 2], expected[0, :, size // 2:] = 1, 2
    yy, xx = np.mgrid[:size, :size] + 0.5
    lo, hi, top, bottom = 0.1 * size, 0.9 * size, 0.1 * size, 0.9 * size
    # the triangle (10 %, 10 %), (90 %, 10 %), (50 %, 90 %): inside its two slanted edges, below the top one
    inside = (yy >= top) & (yy < bottom) & (np.abs(xx - size / 2) < (hi - lo) / 2 * (bottom - yy) / (bottom - top))
    expected[1][inside] = 2
    assert np.array_equal(masks[0], expected[0])
    assert np.abs(masks[1].astype(int) - expected[1]).sum() <= 2 * size * 0.05    # a few pixels on the slanted edges
    assert np.array_equal(masks[1], results_to_mask(annotations[1]["result"], parse_label_config(TRAIN_CONFIG),
                                                    size, size))

    entries, leftover = backend.predict(5, tasks, TRAIN_CONFIG)
    assert not leftover and {e["model_version"] for e in entries} == {"dgan-v1"}
    lm = parse_label_config(TRAIN_CONFIG)
    _, interp = backend.interpreter(5)
    labels = backend.pipeline.label(interp, ws)[1].labels
    for entry, want in zip(entries, labels):
        assert entry["result"] and {r["type"] for r in entry["result"]} == {"polygonlabels"}
        assert np.array_equal(results_to_mask(entry["result"], lm, size, size), want)


def test_polygon_bench_reports_iou_per_class(monkeypatch):
    from ls_backend.bench_polygons import bench_polygons
    from ls_backend.cli import build_parser

    monkeypatch.delenv("DGAN_POLYGON_TOLERANCE", raising=False)
    assert build_parser().parse_args(["bench", "polygons", "--json"]).what == "polygons"
    report = bench_polygons(n=6, large=0, sweep=(1.0,))
    default, coarse = report["64px"]["default"], report["64px"]["sweep"][0]
    assert default["tolerance_px"] == 0.5 and default["mean_iou"] == 1.0 and set(default["per_class_iou"]) >= {"face"}
    assert coarse["tolerance_px"] == 1.0 and coarse["mean_iou"] < 1.0
    assert coarse["points_per_polygon"] < default["points_per_polygon"]
