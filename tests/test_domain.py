import json

import numpy as np
from PIL import Image

from ls_backend.cli import main
from model.domain import CLASSES, render_batch, render_sample


def test_render_is_deterministic_and_seed_dependent():
    a_img, a_lab = render_sample(seed=3, index=5)
    b_img, b_lab = render_sample(seed=3, index=5)
    c_img, _ = render_sample(seed=4, index=5)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8 and a_lab.shape == (64, 64)


def test_classes_small_parts_and_nesting():
    images, labels = render_batch(200, seed=0)
    assert len(CLASSES) >= 9 and labels.max() < len(CLASSES)
    area = np.array([(labels == c).mean() for c in range(len(CLASSES))])
    assert (area > 0).all(), "every class appears"
    assert (area[1:] <= 0.02).sum() >= 3, f"several small classes (<=2% area): {dict(zip(CLASSES, area))}"
    # Pupils are nested in eyes: the 4-neighbours of pupil pixels are pupil or eye (almost always).
    pupil = labels == CLASSES.index("pupil")
    neigh = np.zeros_like(pupil)
    neigh[:, 1:] |= pupil[:, :-1]
    neigh[:, :-1] |= pupil[:, 1:]
    neigh[:, :, 1:] |= pupil[:, :, :-1]
    neigh[:, :, :-1] |= pupil[:, :, 1:]
    ring = neigh & ~pupil
    eye_frac = np.isin(labels[ring], [CLASSES.index("eye"), CLASSES.index("eyebrow")]).mean()
    assert eye_frac > 0.8, eye_frac
    # Real variation: face centres move and images differ in colour.
    face = labels == CLASSES.index("face")
    cy = [np.argwhere(f)[:, 0].mean() for f in face if f.any()]
    assert np.std(cy) > 2.0
    assert images.reshape(200, -1).mean(1).std() > 5


def test_shifted_variant_differs():
    a, la = render_batch(50, seed=0)
    b, lb = render_batch(50, seed=0, variant="shifted")
    skin = CLASSES.index("face")
    ca = a[la == skin].mean(0)
    cb = b[lb == skin].mean(0)
    assert np.abs(ca - cb).max() > 20, (ca, cb)


def test_cli_render(tmp_path):
    assert main(["domain", "render", "--n", "8", "--seed", "0", "--size", "64", "--out", str(tmp_path), "--quiet"]) == 0
    meta = json.loads((tmp_path / "labels.json").read_text())
    assert meta["classes"] == list(CLASSES)
    images = sorted((tmp_path / "images").glob("*.png"))
    labels = sorted((tmp_path / "labels").glob("*.png"))
    assert len(images) == len(labels) == 8
    lab = Image.open(labels[0])
    assert lab.mode == "P"
    arr = np.asarray(lab)
    _, expected = render_sample(0, 0, 64)
    assert np.array_equal(arr, expected)
