import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.features import FeatureExtractor
from model.generator.checkpoints import generator_id
from model.checkpoint import CheckpointError
from model.interpreter import Interpreter, InterpreterConfig, balanced_pixel_sample
from model.labeling import fit_from_latents, label_latents

from .conftest import tiny_generator


def test_feature_dim_from_generator_and_sampling_matches_full(tiny_G):
    fx = FeatureExtractor(tiny_G)
    assert fx.dim == 32 + 32 + 32 + 16 + 16 + 8 + 8
    ws = tiny_G.map(torch.randn(3, 32))
    img, full = fx.full(ws, dtype=torch.float32)
    assert img.shape == (3, 3, 32, 32) and full.shape == (3, fx.dim, 32, 32)
    torch.testing.assert_close(img, tiny_G.synthesis(ws))           # hooks do not change the image
    idx = torch.tensor([0, 1, 2, 2, 0])
    ys, xs = torch.tensor([0, 5, 31, 16, 7]), torch.tensor([0, 31, 3, 16, 30])
    _, sampled = fx.at_pixels(ws, idx, ys, xs)
    torch.testing.assert_close(sampled, full[idx, :, ys, xs], atol=1e-5, rtol=1e-5)
    assert fx.full(ws)[1].dtype == torch.float16


def test_balanced_sample_bounds_memory_and_keeps_rare_classes():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, :4, :4] = 1          # 16 rare pixels
    labels[1, 10:, :] = 2          # 704 common pixels
    idx, w = balanced_pixel_sample(labels, per_class=100, n_classes=3)
    kept = labels.reshape(-1)[idx]
    assert (kept == 1).sum() == 16 and (kept == 2).sum() == 100 and (kept == 0).sum() == 100
    # weights restore the natural frequencies
    assert float(w[kept == 2].sum()) == pytest.approx(704)
    with pytest.raises(ValueError, match="outside the 2 classes"):
        balanced_pixel_sample(labels, 10, 2)


def _brightness_masks(G, ws):
    img = G.synthesis(ws)
    gray = img.mean(1)
    q = torch.quantile(gray.reshape(-1), torch.tensor([0.33, 0.66]))
    return (gray > q[0]).long() + (gray > q[1]).long()


def test_fit_predict_uncertainty_and_save_load(tmp_path, tiny_G):
    torch.manual_seed(0)
    ws = tiny_G.map(torch.randn(8, 32))
    masks = _brightness_masks(tiny_G, ws)
    cfg = InterpreterConfig(in_dim=0, n_classes=3, members=4, epochs=30, batch=512, per_class=3000)
    interp = fit_from_latents(tiny_G, ws, masks.numpy().astype(np.uint8), ["dark", "mid", "bright"], cfg)
    # The pixel sample is capped per class: 3,000 of each class (or all of a class with fewer).
    counts = np.bincount(masks.reshape(-1).numpy(), minlength=3)
    assert interp.report.class_pixels == np.minimum(counts, 3000).tolist()
    _, pred = label_latents(tiny_G, interp, ws)
    acc = (torch.from_numpy(pred.labels).long() == masks).float().mean().item()
    assert acc > 0.8, acc
    assert pred.probs.shape == (8, 3, 32, 32) and np.allclose(pred.probs.sum(1), 1, atol=1e-4)
    top = np.sort(pred.uncertainty.reshape(8, -1), axis=1)[:, -round(0.1 * 32 * 32):]
    np.testing.assert_allclose(pred.score, top.mean(1), rtol=1e-5)   # image score: mean of the top-10 % pixels
    assert np.log(3) >= pred.uncertainty.max()                       # JS is bounded by log C
    # Uncertainty is higher where the classes meet (near thresholds) than deep inside a class.
    edges = (F.max_pool2d(masks[:, None].float(), 3, 1, 1) != -F.max_pool2d(-masks[:, None].float(), 3, 1, 1))[:, 0]
    assert pred.uncertainty[edges.numpy()].mean() > pred.uncertainty[~edges.numpy()].mean()

    path = interp.save(tmp_path / "interp.pt")
    again = Interpreter.load(path, generator_id=generator_id(tiny_G))
    _, pred2 = label_latents(tiny_G, again, ws)
    assert np.array_equal(pred2.labels, pred.labels)
    other = generator_id(tiny_generator(seed=5))
    with pytest.raises(CheckpointError, match=f"interpreter fitted for generator {generator_id(tiny_G)}, not for "
                                              f"the loaded generator {other}.*dgan fit"):
        Interpreter.load(path, generator_id=other)


def test_native_resolution_prediction_equals_full_features(tiny_G):
    fx = FeatureExtractor(tiny_G)
    interp = Interpreter(InterpreterConfig(in_dim=fx.dim, n_classes=4, members=3), list("abcd"), "g")
    with torch.no_grad():   # non-trivial BN statistics
        for norm in interp.model.norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2)
    ws = tiny_G.map(torch.randn(2, 32))
    _, full = fx.full(ws, dtype=torch.float32)
    _, maps = fx.native(ws)
    a, b = interp.predict(full), interp.predict_native(maps, 32)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    np.testing.assert_allclose(a.uncertainty, b.uncertainty, atol=1e-5)
    assert (a.labels == b.labels).mean() > 0.999


def test_natural_weighting_restores_class_frequencies_balanced_does_not():
    with pytest.raises(ValueError, match="class_weighting must be"):
        InterpreterConfig(in_dim=8, n_classes=3, class_weighting="inverse")
    # Two overlapping feature clouds, the second class 10 % of the pixels, sampled 200 per class.
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(1, 40, 50, dtype=torch.long)
    labels[0, :4] = 1
    x = torch.randn(2000, 2, generator=g) + labels.reshape(-1, 1).float() * 1.5
    idx, w = balanced_pixel_sample(labels, per_class=200, n_classes=2, generator=g)
    grid = torch.linspace(-1, 2.5, 64)
    probe = torch.stack(torch.meshgrid(grid, grid, indexing="ij"))[None]       # features [1, 2, 64, 64]
    share = {}
    for mode, weights in (("balanced", None), ("natural", w)):
        interp = Interpreter(InterpreterConfig(in_dim=2, n_classes=2, members=4, epochs=30, batch=128,
                                               class_weighting=mode), ["a", "b"], "g")
        interp.fit(x[idx], labels.reshape(-1)[idx], weights)
        share[mode] = float((interp.predict(probe).labels == 1).mean())
    # Balanced: the boundary halfway between the clouds (the probe is symmetric about it). Natural: the
    # 9:1 prior moves it towards the rare class, which then wins far less of the probe.
    assert abs(share["balanced"] - 0.5) < 0.1 and share["natural"] < share["balanced"] - 0.1, share


def test_class_weighting_changes_the_fit_only_when_the_sample_is_capped(tiny_G):
    ws = tiny_G.map(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, 10:20, 10:20] = 1
    masks[:, 14:16, 14:16] = 2                       # a rare class: 4 of 1,024 pixels

    def labels(mode: str, per_class: int) -> np.ndarray:
        cfg = InterpreterConfig(in_dim=0, n_classes=3, members=2, epochs=2, per_class=per_class, class_weighting=mode)
        return label_latents(tiny_G, fit_from_latents(tiny_G, ws, masks, ["bg", "a", "b"], cfg), ws)[1].labels

    assert np.array_equal(labels("balanced", 2048), labels("natural", 2048))   # every pixel kept: weights all 1
    assert not np.array_equal(labels("balanced", 8), labels("natural", 8))


def test_feature_maps_are_not_mixed_with_another_threads_pass(tiny_G):
    """The hooks sit on a generator a server's threads share: a pass run by another thread while this one
    reads its maps (a concurrent request's inversion, say) must not land among them."""
    import threading

    fx = FeatureExtractor(tiny_G)
    ws = tiny_G.map(torch.randn(2, tiny_G.cfg.z_dim, generator=torch.Generator().manual_seed(0)))
    with fx._hooked() as maps:
        other = threading.Thread(target=lambda: tiny_G.synthesis(ws[:1], noise_mode="const"))
        other.start()
        other.join()
        assert maps == []
        tiny_G.synthesis(ws, noise_mode="const")
    assert len(maps) == len(fx.layers) and all(m.shape[0] == 2 for m in maps)
