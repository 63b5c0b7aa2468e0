"""SimGAN refiner and domain drift on tiny images (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.drift import measure_drift
from model.refiner import Refiner, RefinerConfig, RefinerNet, structure, train_refiner
from model.segmenter import TrainingStopped, UNet, UNetConfig, to_input

TINY = dict(channels=8, blocks=1, d_channels=8, batch=8, history=32)


def shapes(n: int, seed: int, color: tuple[int, int, int]) -> np.ndarray:
    """n uint8 16×16 images: a coloured square on grey, at random places."""
    rng = np.random.default_rng(seed)
    out = np.full((n, 16, 16, 3), 110, np.uint8)
    for img in out:
        y, x = rng.integers(2, 9, size=2)
        img[y:y + 6, x:x + 6] = color
    return out


def test_untrained_refiner_is_the_identity():
    imgs = shapes(4, 0, (200, 40, 40))
    imgs[:, 0, 0], imgs[:, 0, 1] = 0, 255            # the extremes survive the tanh-space residual too
    assert np.array_equal(Refiner(RefinerNet(RefinerConfig(**TINY))).refine(imgs), imgs)


def test_structure_ignores_contrast_sign_and_hue_but_not_edges():
    x = to_input(shapes(2, 0, (200, 40, 40)))
    assert torch.allclose(structure(x), structure(-x), atol=1e-5)
    assert structure(x).amax() > 0.05 and structure(x)[..., 0, 0].max() < 1e-2     # edges only where the square is
    moved = torch.roll(x, 3, dims=3)
    assert (structure(moved) - structure(x)).abs().mean() > 0.01


def test_refiner_learns_the_real_colour_and_keeps_the_shapes():
    syn, real = shapes(64, 0, (40, 40, 200)), shapes(64, 1, (200, 40, 40))   # blue squares → red ones
    ref = train_refiner(syn, real, RefinerConfig(steps=150, lr=3e-3, self_reg=5.0, **TINY), seed=0)
    out = ref.refine(syn)
    square = (syn[..., 2] == 200)
    red_before, red_after = syn[..., 0][square].mean(), out[..., 0][square].astype(float).mean()
    assert red_after > red_before + 40, (red_before, red_after)
    # the square stays where it was: its edges in the refined image are where they were
    s_in, s_out = structure(to_input(syn)), structure(to_input(out))
    edges = s_in > 0.1
    assert s_out[edges].mean() > 3 * s_out[~edges].mean()
    assert ref.meta["steps"] == 150 and set(ref.meta["final_losses"]) == {"adversarial", "self_reg", "discriminator"}


def test_stopped_training_resumes_to_the_same_refiner(tmp_path):
    syn, real = shapes(32, 0, (40, 40, 200)), shapes(32, 1, (200, 40, 40))
    cfg = RefinerConfig(steps=60, **TINY)
    whole = train_refiner(syn, real, cfg, seed=3)
    state = tmp_path / "r.state"
    asked = []

    def stop_at_50() -> bool:
        asked.append(1)
        return len(asked) >= 2          # checked at steps 25 and 50
    with pytest.raises(TrainingStopped):
        train_refiner(syn, real, cfg, seed=3, state_path=state, save_every=10, should_stop=stop_at_50)
    assert state.exists()
    resumed = train_refiner(syn, real, cfg, seed=3, state_path=state, save_every=10)
    assert not state.exists()
    for a, b in zip(whole.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(TrainingStopped):
        train_refiner(syn, real, cfg, seed=3, state_path=state, save_every=10, should_stop=lambda: True)
    with pytest.raises(ValueError, match="another configuration"):
        train_refiner(syn, real, RefinerConfig(steps=61, **TINY), seed=3, state_path=state)


def test_refiner_checkpoint_round_trip_and_generator_check(tmp_path):
    ref = Refiner(RefinerNet(RefinerConfig(**TINY)), "gen-a", {"steps": 0})
    with torch.no_grad():
        ref.net.head.bias.fill_(0.1)
    path = ref.save(tmp_path / "ref.pt")
    back = Refiner.load(path, "gen-a")
    imgs = shapes(3, 0, (10, 200, 10))
    assert np.array_equal(back.refine(imgs), ref.refine(imgs)) and back.meta == {"steps": 0}
    with pytest.raises(CheckpointError, match="gen-a"):
        Refiner.load(path, "gen-b")


def test_refiner_rejects_bad_input():
    ref = Refiner(RefinerNet(RefinerConfig(**TINY)))
    with pytest.raises(ValueError, match="uint8 images"):
        ref.refine(np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="0 real"):
        train_refiner(shapes(2, 0, (1, 2, 3)), np.zeros((0, 16, 16, 3), np.uint8))


def test_drift_is_near_its_floor_for_the_same_domain_and_far_for_another():
    torch.manual_seed(0)
    model = UNet(UNetConfig(n_classes=3, base=4)).eval()
    rng = np.random.default_rng(0)
    same = rng.integers(60, 140, size=(96, 16, 16, 3), dtype=np.uint8)
    samples = rng.integers(60, 140, size=(192, 16, 16, 3), dtype=np.uint8)
    other = (255 - rng.integers(0, 80, size=(96, 16, 16, 3))).astype(np.uint8)
    d_same, d_other = measure_drift(model, same, samples), measure_drift(model, other, samples)
    assert d_same.n == 96 and not d_same.drifted and d_same.ratio < 3
    assert d_other.drifted and d_other.ratio > 10 * d_same.ratio
    with pytest.raises(ValueError, match="at least 8"):
        measure_drift(model, same[:4], samples)


def test_refiner_bench_reports_speed_against_the_generator(tmp_path):
    from model import bench
    from model.pipeline import SegmenterRecipe
    from model.generator.checkpoints import save_generator

    from .conftest import tiny_generator

    path = save_generator(tiny_generator(), tmp_path / "g.pt")
    r = bench.run("refiner", generator=str(path), n=16, steps=2)
    assert r["n"] == 16 and r["refine_seconds"] > 0 and r["generator_seconds"] > 0
    assert r["ratio_refine"] > 0 and r["train_step_s"] > 0
    assert r["default_steps"] == SegmenterRecipe().refiner_steps
    assert abs(r["training_seconds_default"] - r["train_step_s"] * r["default_steps"]) <= 0.5 * r["default_steps"] * 1e-3 + 0.1


def _square_labels(images: np.ndarray) -> np.ndarray:
    """Label maps uint8 [N, 16, 16] of :func:`shapes` images: 1 inside the square, 0 on the grey."""
    return (np.abs(images.astype(int) - 110).sum(-1) > 0).astype(np.uint8)


def test_part_colours_invert_a_part_the_plain_refiner_cannot():
    # bright squares → dark ones: the square's edge would vanish half way (luminance 110, the grey's), which
    # the self-regularization forbids; a per-part colour map moves no edge and gets there
    syn, real = shapes(64, 0, (220, 220, 220)), shapes(64, 1, (30, 30, 30))
    from model.segmenter import train_segmenter
    parts = train_segmenter(syn, _square_labels(syn), 2, steps=100, lr=1e-2, seed=0,
                            init=UNet(UNetConfig(n_classes=2, base=4, depth=2))).model
    square = _square_labels(syn) == 1
    cfg = dict(steps=150, lr=3e-3, self_reg=10.0, **TINY)
    plain = train_refiner(syn, real, RefinerConfig(**cfg), seed=0).refine(syn)
    coloured = train_refiner(syn, real, RefinerConfig(part_colours=True, **cfg), seed=0, parts=parts)
    out = coloured.refine(syn)
    lum = lambda imgs, where: imgs.astype(float).mean(-1)[where].mean()
    # the coloured refiner's squares end darker than its grey (the real images' contrast); the plain one's
    # stay brighter than its grey
    assert lum(out, square) + 10 < lum(out, ~square), (lum(out, square), lum(out, ~square))
    assert lum(plain, square) > lum(plain, ~square) + 10, (lum(plain, square), lum(plain, ~square))
    assert coloured.meta["part_colours"] is True


def test_part_colour_refiner_saves_its_part_segmenter(tmp_path):
    syn = shapes(8, 0, (220, 220, 220))
    parts = UNet(UNetConfig(n_classes=2, base=4))
    ref = train_refiner(syn, shapes(8, 1, (30, 30, 30)), RefinerConfig(part_colours=True, steps=5, **TINY),
                        parts=parts)
    back = Refiner.load(ref.save(tmp_path / "r.pt"))
    assert back.net.parts is not None and np.array_equal(back.refine(syn), ref.refine(syn))
    with pytest.raises(ValueError, match="part colours needs the segmenter"):
        RefinerNet(RefinerConfig(part_colours=True))


def test_refine_train_with_a_segmenter_checkpoint_maps_part_colours(tmp_path):
    from model.pipeline import Pipeline
    from model.refine_cli import train_from_images
    from model.segmenter import Segmenter

    pipe = Pipeline.load()
    seg = Segmenter(UNet(UNetConfig(n_classes=3, base=4)), ["background", "face", "hair"], pipe.generator_id)
    seg.save(tmp_path / "seg.pt")
    real = pipe.sample_images(list(range(8)))[..., ::-1].copy()
    summary = train_from_images(real, tmp_path / "r.pt", steps=2, pool=8, parts=tmp_path / "seg.pt")
    back = Refiner.load(tmp_path / "r.pt", pipe.generator_id)
    assert summary["part_colours"] is True and back.net.colour_w.shape == (3, 3, 3)
    assert back.refine(real[:2]).shape == (2, pipe.resolution, pipe.resolution, 3)
    # `dgan train-segmenter --out` records no generator (it learns from labeled images): accepted as parts;
    # a segmenter of another generator is refused with what to do
    from model.segmenter import save_segmenter

    save_segmenter(UNet(UNetConfig(n_classes=3, base=4)), tmp_path / "plain.pt", meta={"classes": ["a", "b", "c"]})
    plain = train_from_images(real, tmp_path / "r2.pt", steps=2, pool=8, parts=tmp_path / "plain.pt")
    assert plain["part_colours"] is True
    Segmenter(UNet(UNetConfig(n_classes=3, base=4)), ["background", "face", "hair"], "0" * 16).save(tmp_path / "o.pt")
    with pytest.raises(ValueError, match="belongs to generator 0000000000000000.*dgan train-segmenter"):
        train_from_images(real, tmp_path / "r3.pt", steps=2, pool=8, parts=tmp_path / "o.pt")
