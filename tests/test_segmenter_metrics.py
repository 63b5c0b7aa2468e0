import json

import numpy as np
import pytest

from ls_backend.cli import main
from model.domain import render_batch
from model.domain.dataset import read_labeled_folder, write_domain_dataset
from model.generator.checkpoints import save_generator
from model.metrics import frechet_distance, iou_per_class, mean_iou
from model.segmenter import embed, load_segmenter, predict, save_segmenter, train_segmenter


def test_iou_known_values():
    t = np.array([[0, 0, 1, 1]])
    p = np.array([[0, 1, 1, 1]])
    iou = iou_per_class(p, t, 3)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(2 / 3) and np.isnan(iou[2])
    assert mean_iou(p, t, 3) == pytest.approx((0.5 + 2 / 3) / 2)
    assert mean_iou(t, t, 3) == 1.0


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4))
    assert frechet_distance(a, b) < 0.02
    assert frechet_distance(a, b + 1.0) == pytest.approx(4.0, abs=0.1)          # mean shift
    assert frechet_distance(a, 2 * b) == pytest.approx(4 * (2 - 1) ** 2, abs=0.2)  # scale: tr((σa-σb)²)


def test_unet_learns_and_round_trips(tmp_path):
    images, labels = render_batch(8, seed=0, size=32)
    res = train_segmenter(images, labels, 10, steps=100, batch=4, base=4, lr=5e-3)
    first = res.model
    pred = predict(first, images)
    assert pred.shape == labels.shape
    assert (pred == labels).mean() > 0.6          # background + face + torso learned on the training set
    path = save_segmenter(first, tmp_path / "u.pt")
    again = load_segmenter(path)
    assert np.array_equal(predict(again, images), pred)
    assert embed(again, images).shape == (8, 4 + 4 * 16)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        train_segmenter(images, labels, 3, steps=1)


def test_eval_gan_cli(tmp_path, tiny_G, capsys):
    real = tmp_path / "real"
    write_domain_dataset(real, 40, seed=0, size=32)
    assert main(["train-segmenter", "--data", str(real), "--n", "20", "--test", str(real), "--steps", "10",
                 "--batch", "4", "--base", "4", "--out", str(tmp_path / "eval.pt")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The reported mIoU is the saved U-Net's on the test folder, and the classes it names are the folder's.
    test_images, test_labels, classes = read_labeled_folder(real)
    unet = load_segmenter(tmp_path / "eval.pt")
    assert summary["n_train"] == 20 and summary["n_test"] == 40 and list(summary["iou_per_class"]) == classes
    assert summary["miou"] == pytest.approx(100 * mean_iou(predict(unet, test_images), test_labels, len(classes)),
                                            abs=0.01)
    run = tmp_path / "run"
    save_generator(tiny_G, run / "snapshots" / "G_ema-kimg00001.0.pt")
    assert main(["eval-gan", "--run", str(run), "--real", str(real), "--evaluator", str(tmp_path / "eval.pt"),
                 "--n", "20"]) == 0
    report = json.loads((run / "fd.json").read_text())
    assert report["snapshots"][0]["kimg"] == 1.0
    assert report["snapshots"][0]["fd"] > report["floor"]   # an untrained generator is far from real images
