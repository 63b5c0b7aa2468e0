"""The pipeline object on tiny seeded models: segmenter training and serving, synthesis by either label
source, cross-validation with per-class figures, certainty, the augmentation's label preservation."""

import math

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.domain import render_batch
from model.metrics import iou_per_class
from model.pipeline import Pipeline, SegmenterRecipe, certainty
from model.segmenter import IGNORE, Segmenter, augment, class_weights, cutmix, pseudo_labels

from .conftest import tiny_generator

CLASSES = ["background", "torso", "head"]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(tiny_generator(), None, inversion_steps=2)


def test_segmenter_learns_the_labeled_images_and_labels_generated_ones(pipe, tmp_path):
    images, parts = render_batch(12, seed=0, size=32)
    masks = np.where(parts == 0, 0, np.where(parts == 9, 1, 2)).astype(np.uint8)   # background, torso, head
    # 100 + 100 steps: every region above 0.7 IoU for seeds 0-2; 50 + 20 left torso at 0.05-0.47 on
    # some CPUs (the student had not converged), too close to the 0.5 bar
    recipe = SegmenterRecipe(teacher_steps=100, student_steps=100, pool=8, batch=6, base=8, lr=5e-3)
    seg = pipe.train_segmenter(images, masks, CLASSES, recipe, seed=0)
    pred = seg.label(images)
    iou = iou_per_class(pred.labels, masks, 3)
    assert iou.min() > 0.5, iou                         # all three regions learned
    assert seg.meta["n_real"] == 12 and seg.meta["recipe"]["pool"] == 8 and seg.meta["student_seconds"] > 0
    # Uncertainty: entropy of the probabilities, in [0, log C]; the image score is the mean of its top 10 %.
    ent = -(pred.probs * np.log(np.clip(pred.probs, 1e-12, None))).sum(1)
    assert np.allclose(pred.uncertainty, ent, atol=1e-5)
    top = np.sort(ent.reshape(12, -1), axis=1)[:, -round(0.1 * 32 * 32):].mean(1)
    assert np.allclose(pred.score, top, atol=1e-5)
    # Round trip, and identity: a segmenter of another generator is refused.
    path = seg.save(tmp_path / "seg.pt")
    again = Segmenter.load(path, generator_id=pipe.generator_id)
    assert again.class_names == CLASSES and np.array_equal(again.label(images).labels, pred.labels)
    with pytest.raises(CheckpointError, match="another generator|generator"):
        Segmenter.load(path, generator_id="0123456789abcdef")
    # Synthesis labelled by the segmenter: the same labels as labelling the same generated images directly.
    samples = pipe.synthesize([5, 6, 7], segmenter=seg)
    direct = seg.label(pipe.sample_images([5, 6, 7]))
    assert [s.seed for s in samples] == [5, 6, 7]
    assert np.array_equal(np.stack([s.labels for s in samples]), direct.labels)
    assert np.allclose([s.uncertainty for s in samples], direct.score)


def test_synthesis_needs_a_label_source(pipe):
    with pytest.raises(ValueError, match="interpreter or a segmenter"):
        pipe.synthesize([1, 2])


def test_cross_validation_reports_every_class_it_saw(pipe):
    ws = pipe.seed_latents(list(range(8)))
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    masks[:, 12:16, 12:16] = 2
    cv = pipe.cross_validate(ws, masks, ["background", "square", "dot"], folds=4)
    assert set(cv.per_class) == {"background", "square", "dot"} and cv.folds == 4
    assert cv.miou == pytest.approx(np.mean(list(cv.per_class.values())), abs=0.01)
    assert cv.per_class["background"] > 50        # a fixed layout is learned across folds


def test_certainty_is_one_minus_normalised_uncertainty():
    assert certainty(0.0, 10) == 1.0
    assert certainty(math.log(10) / 4, 10) == pytest.approx(0.75)
    assert certainty(5.0, 10) == 0.0                # clipped: more than log C is no certainty at all
    assert Pipeline.certainty(math.log(3) / 2, 3) == pytest.approx(0.5)


def test_augmentation_moves_image_and_labels_together():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(6, 16, 16, dtype=torch.long)
    y[:, 4:8, 2:6] = 1
    x = torch.where(y[:, None] == 1, 1.0, -1.0).expand(6, 3, 16, 16).clone()
    xa, ya = augment(x, y, g, shift_px=3, jitter=0.0)
    assert torch.equal(xa[:, 0] > 0, ya == 1)           # flips and shifts applied to both alike
    assert not torch.equal(ya, y)                         # something moved
    xc, yc = cutmix(xa, ya, g)
    assert torch.equal(xc[:, 0] > 0, yc == 1)
    xj, _ = augment(x, y, g, shift_px=0, jitter=0.5)
    assert xj.min() >= -1 and xj.max() <= 1 and not torch.allclose(xj, x)


def test_class_weights_favour_rare_classes_and_ignore_marked_pixels():
    y = torch.zeros(1, 10, 10, dtype=torch.long)
    y[0, 0, :4] = 1                                        # 4 % of the pixels
    y[0, 9, :] = IGNORE
    w = class_weights(y, 3)
    freq = torch.tensor([86 / 90, 4 / 90, 0.0])
    assert w[1] / w[0] == pytest.approx(math.sqrt(86 / 4), rel=1e-4)
    assert float((w[:2] * freq[:2]).sum()) == pytest.approx(1.0, rel=1e-4)
    assert w[2] == w.max()                                 # an unseen class is not silenced
    assert class_weights(y, 3, "none") is None


def test_pseudo_labels_ignore_doubtful_pixels():
    probs = np.zeros((1, 2, 1, 2), np.float32)
    probs[0, :, 0, 0] = [0.9, 0.1]
    probs[0, :, 0, 1] = [0.4, 0.6]
    assert pseudo_labels(probs, 0.7).tolist() == [[[0, IGNORE]]]
    assert pseudo_labels(probs).tolist() == [[[0, 1]]]


def test_label_branch_learns_a_layout_and_labels_like_the_interpreter_interface(pipe, tmp_path):
    from model.label_branch import LabelBranch, LabelBranchConfig

    ws = pipe.seed_latents(list(range(6)))
    masks = np.zeros((6, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    masks[:, 12:16, 12:16] = 2
    cfg = LabelBranchConfig(n_classes=3, steps=60, batch=4, hidden=8, members=2, adv_start=30, d_base=8, lr=1e-2)
    branch = pipe.fit_label_branch(ws, masks, ["background", "square", "dot"], pipe.sample_images(list(range(6))),
                                   cfg)
    images, pred = pipe.label(branch, ws)
    assert images.shape == (6, 32, 32, 3) and pred.probs.shape == (6, 3, 32, 32)
    assert iou_per_class(pred.labels, masks, 3).min() > 0.5            # the layout is learned, dot included
    assert branch.meta["final_adv"] != 0.0                              # the adversarial term took part
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-5) and (pred.uncertainty >= 0).all()
    path = branch.save(tmp_path / "branch.pt")
    again = LabelBranch.load(path, generator_id=pipe.generator_id)
    assert np.array_equal(pipe.label(again, ws)[1].labels, pred.labels)
    samples = pipe.synthesize([0, 1], branch)                          # synthesis takes it like an interpreter
    assert np.array_equal(samples[0].labels, pred.labels[0])


def test_label_source_cross_validation_and_loading_either_kind(pipe, tmp_path):
    from model.label_branch import LabelBranch, LabelBranchConfig
    from model.pipeline import fit_label_source, load_label_source

    ws = pipe.seed_latents(list(range(8)))
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    classes = ["background", "square"]
    cv = pipe.cross_validate(ws, masks, classes, folds=2, source="label-branch", branch_steps=20)
    assert set(cv.per_class) == set(classes) and cv.folds == 2
    with pytest.raises(ValueError, match="label source must be one of"):
        pipe.cross_validate(ws, masks, classes, source="mlp")
    interp = fit_label_source(pipe, "interpreter", ws, masks, classes)
    interp.save(tmp_path / "i.pt")
    assert type(load_label_source(tmp_path / "i.pt", pipe.generator_id)).__name__ == "Interpreter"
    tiny = LabelBranchConfig(n_classes=2, steps=2, members=1, hidden=4, adv_weight=0)
    pipe.fit_label_branch(ws, masks, classes, cfg=tiny).save(tmp_path / "b.pt")
    assert isinstance(load_label_source(tmp_path / "b.pt", pipe.generator_id), LabelBranch)


def test_segmenter_measures_drift_and_learns_from_refined_samples_when_the_project_drifted(pipe, tmp_path):
    images, parts = render_batch(12, seed=0, size=32)
    masks = np.where(parts == 0, 0, np.where(parts == 9, 1, 2)).astype(np.uint8)
    same = pipe.sample_images(list(range(1000, 1024)))
    drifted = 255 - render_batch(24, seed=5, size=32, variant="shifted")[0]
    quick = dict(teacher_steps=30, student_steps=10, pool=48, batch=4, base=4, lr=1e-2, refiner_steps=10)
    seg = pipe.train_segmenter(images, masks, CLASSES, SegmenterRecipe(**quick), unlabeled=same)
    assert not seg.meta["drift"]["drifted"] and seg.refiner is None and "refiner" not in seg.meta
    assert seg.meta["student_steps"] == 10
    seg = pipe.train_segmenter(images, masks, CLASSES, SegmenterRecipe(**quick), unlabeled=drifted,
                               refiner_state=tmp_path / "r.state")
    d = seg.meta["drift"]
    assert d["drifted"] and d["ratio"] > 3 and d["n"] == 24
    assert seg.refiner is not None and seg.meta["refiner"]["steps"] == 10 and seg.meta["refiner"]["n_real"] == 24
    assert not (tmp_path / "r.state").exists()          # a finished training leaves no state behind
    assert seg.meta["student_steps"] == 20                # twice the samples (pool + refined copy): twice the steps
    never = pipe.train_segmenter(images, masks, CLASSES, SegmenterRecipe(**quick, refine="never"), unlabeled=drifted)
    assert never.refiner is None and "drift" not in never.meta
    with pytest.raises(ValueError, match="refine must be"):
        SegmenterRecipe(refine="sometimes")
    with pytest.raises(ValueError, match="refined_student_steps must be above 0"):
        SegmenterRecipe(refined_student_steps=0)


def test_inversion_through_a_refiner_finds_drifted_images_better(pipe):
    from model.refiner import Refiner, RefinerConfig, RefinerNet

    net = RefinerNet(RefinerConfig(channels=4, blocks=1))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([1.2, -0.8, 0.6]))          # a strong, known recolouring
    refiner = Refiner(net.eval())
    drifted = refiner.refine(pipe.sample_images([11, 12, 13, 14]))
    _, plain = pipe.invert(drifted, steps=40)
    _, through = pipe.invert(drifted, steps=40, refiner=refiner)
    assert through.mean() > plain.mean() + 2, (through, plain)       # dB
