"""Labels4Free's alpha-net and background pass on a tiny seeded generator (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.fgbg import AlphaNet, FgBg, FgBgConfig, _Trainer, alpha_loss, background, read_layers, train_fgbg
from model.fgbg_eval import foreground_scores
from model.generator.checkpoints import generator_id
from model.pipeline import Pipeline

from .conftest import tiny_generator

FAST = dict(batch=4, save_every=2, r1_interval=2)


def _fgbg(G, seed: int = 0) -> FgBg:
    torch.manual_seed(seed)
    cfg = FgBgConfig()
    return FgBg(AlphaNet([c for _, c in read_layers(G, cfg.from_res)], cfg.map_channels), cfg, generator_id(G))


def _ws(G, n: int = 3, seed: int = 0) -> torch.Tensor:
    return G.map(torch.randn(n, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed)))


def test_alpha_is_an_opacity_map_of_the_image_size():
    G = tiny_generator()
    model = _fgbg(G)
    alpha = model.alpha(G, _ws(G, 5))
    assert alpha.shape == (5, 32, 32) and alpha.dtype == np.float32
    assert alpha.min() >= 0 and alpha.max() <= 1 and alpha.std() > 0
    assert model.mask(alpha).dtype == bool
    unc = FgBg.uncertainty(alpha)
    assert unc.shape == (5,) and ((unc >= 0) & (unc <= 1)).all()
    assert FgBg.uncertainty(np.zeros((1, 4, 4)))[0] < 1e-3 and FgBg.uncertainty(np.full((1, 4, 4), 0.5))[0] > 0.99
    # the alpha-net reads both convs of each block from 8 px up: 3 blocks → 6 maps
    assert [n for n, _ in read_layers(G)] == ["b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1", "b32.conv0",
                                               "b32.conv1"]
    with pytest.raises(ValueError, match="from_res between 8 and 32"):
        read_layers(G, 64)


def test_background_pass_sees_nothing_of_the_coarse_layout():
    G = tiny_generator()
    ws = _ws(G)
    bg = background(G, ws)
    assert bg.shape == (3, 3, 32, 32)
    assert not torch.allclose(bg, G.synthesis(ws))
    # what the 4×4 stage holds (the constant input) no longer reaches the image; the hook is removed after
    with torch.no_grad():
        G.synthesis.b4.const.mul_(-3)
    assert torch.allclose(background(G, ws), bg)
    assert not G.synthesis.b4.conv1._forward_hooks


def test_alpha_steps_change_the_weights_and_lower_the_alpha_loss_on_a_fixed_batch():
    G = tiny_generator()
    cfg = FgBgConfig(lr=1e-2, **FAST)
    tr = _Trainer(G, cfg, None, 0, None, torch.device("cpu"))
    fg, maps, bg = tr.batch()
    before = [p.detach().clone() for p in tr.alpha.parameters()]
    loss0, _ = alpha_loss(tr.alpha(maps), fg, bg, tr.D, cfg)
    for _ in range(30):
        parts = tr.a_step(fg, maps, bg)
    loss1, _ = alpha_loss(tr.alpha(maps), fg, bg, tr.D, cfg)
    assert loss1.item() < loss0.item() - 0.05, (loss0.item(), loss1.item())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.alpha.parameters()))
    assert {"alpha_loss", "adversarial", "binarization", "min_fg", "bg_share", "mean_alpha"} <= set(parts)
    # the EMA copy follows, slowly
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.alpha_ema.parameters()))


def test_training_resumes_to_the_same_state_and_refuses_another_setup(tmp_path):
    G = tiny_generator()
    whole = train_fgbg(G, FgBgConfig(steps=4, **FAST), seed=1)
    state = tmp_path / "fgbg.state"
    first = train_fgbg(G, FgBgConfig(steps=2, **FAST), seed=1, state_path=state)
    assert state.exists() and first.meta["steps"] == 2
    resumed = train_fgbg(G, FgBgConfig(steps=4, **FAST), seed=1, state_path=state)
    assert resumed.meta["steps"] == 4 and [h["step"] for h in resumed.meta["history"]] == [2, 4]
    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert resumed.meta["final_losses"] == whole.meta["final_losses"]
    assert any(not torch.equal(v, first.net.state_dict()[k]) for k, v in resumed.net.state_dict().items())
    with pytest.raises(ValueError, match=r"another configuration \(batch 4 there, 2 here\)"):
        train_fgbg(G, FgBgConfig(steps=6, **{**FAST, "batch": 2}), seed=1, state_path=state)
    with pytest.raises(CheckpointError, match="delete .*fgbg.state"):
        train_fgbg(tiny_generator(seed=5), FgBgConfig(steps=6, **FAST), seed=1, state_path=state)


def test_save_load_and_generator_check(tmp_path):
    G = tiny_generator()
    model = train_fgbg(G, FgBgConfig(steps=2, **FAST))
    path = model.save(tmp_path / "fgbg.pt")
    back = FgBg.load(path, generator_id=generator_id(G))
    ws = _ws(G)
    assert np.array_equal(back.alpha(G, ws), model.alpha(G, ws))
    with pytest.raises(CheckpointError, match="dgan train-fgbg"):
        FgBg.load(path, generator_id=generator_id(tiny_generator(seed=5)))
    with pytest.raises(ValueError, match="no real images were given"):
        train_fgbg(G, FgBgConfig(steps=1, real="images", **FAST))
    with pytest.raises(ValueError, match="d_init"):
        FgBgConfig(d_init="imagenet")


def test_real_images_from_a_folder_train_the_discriminator():
    G = tiny_generator()
    real = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    model = train_fgbg(G, FgBgConfig(steps=2, real="images", **FAST), real=real)
    assert model.meta["steps"] == 2
    with pytest.raises(ValueError, match=r"uint8 \[M, 32, 32, 3\]"):
        train_fgbg(G, FgBgConfig(steps=2, real="images", **FAST), real=real[:, :16, :16])


def test_pipeline_foreground_labels_paint_the_class_where_alpha_is_high():
    G = tiny_generator()
    pipe = Pipeline(G, device="cpu")
    model = _fgbg(G)
    ws = _ws(G, 4)
    alpha = pipe.foreground(model, ws)
    labels, cert = pipe.foreground_labels(model, ws, 3)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 3}
    assert np.array_equal(labels == 3, alpha > model.cfg.threshold)
    assert cert.shape == (4,) and ((cert >= 0) & (cert <= 1)).all()
    with pytest.raises(ValueError, match="class_id must be in 1..255"):
        pipe.foreground_labels(model, ws, 0)


def test_foreground_scores():
    truth = np.zeros((2, 4, 4), bool)
    truth[:, :2] = True
    perfect = foreground_scores(truth, truth)
    assert perfect["fg_iou"] == perfect["bg_iou"] == perfect["miou"] == 1.0
    everything = foreground_scores(np.ones_like(truth), truth)
    assert everything["fg_iou"] == 0.5 and everything["bg_iou"] == 0.0 and everything["recall"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        foreground_scores(truth[:1], truth)


def test_cli_trains_resumably_draws_the_grid_and_benches(tmp_path, capsys):
    import json

    from PIL import Image

    from ls_backend.cli import main
    from model.generator.checkpoints import save_generator

    g = str(save_generator(tiny_generator(), tmp_path / "g.pt"))
    out = tmp_path / "fgbg.pt"
    assert main(["train-fgbg", "--generator", g, "--steps", "2", "--batch", "4"]) == 2     # --out is required
    assert "give --out FILE" in capsys.readouterr().err
    assert main(["train-fgbg", "--generator", g, "--out", str(out), "--steps", "2", "--batch", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert (tmp_path / "fgbg.pt.state").exists()                                            # kept: more steps resume it
    assert main(["train-fgbg", "--generator", g, "--out", str(out), "--steps", "3", "--batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "resuming alpha-net training at step 2/3" in text and json.loads(text.strip().splitlines()[-1])["steps"] == 3
    png = tmp_path / "grid.png"
    assert main(["fgbg", "grid", "--generator", g, "--fgbg", str(out), "--out", str(png), "--n", "3", "--scale", "1",
                 "--real-domain", "--with-background"]) == 0
    assert Image.open(png).size == (3 * 32, 8 * 32)
    capsys.readouterr()
    assert main(["bench", "fgbg", "--quick", "--json", "--generator", g, "--fgbg", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_test"] == 100 and 0 <= res["fg_iou"] <= 1 and res["samples"]["ground_truth"] is None
    assert 0.2 < res["trivial"]["all_foreground_fg_iou"] < 0.45       # the domain's foreground is about a third
