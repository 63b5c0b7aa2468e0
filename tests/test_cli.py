import json

from PIL import Image

from ls_backend.cli import main
from model.generator.checkpoints import save_generator


def test_sample_and_bench_with_a_given_generator(tmp_path, tiny_G, capsys):
    g = save_generator(tiny_G, tmp_path / "g.pt")
    assert main(["sample", "--n", "16", "--seed", "0", "--generator", str(g), "--out", str(tmp_path / "grid.png"),
                 "--scale", "1"]) == 0
    assert Image.open(tmp_path / "grid.png").size == (8 * 32, 2 * 32)
    capsys.readouterr()
    assert main(["bench", "generator", "--json", "--generator", str(g), "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("images_per_s_b1", "images_per_s_b16", "gflops_b16", "matmul_peak_gflops", "ratio"):
        assert result[key] > 0, key
    assert abs(result["ratio"] - result["gflops_b16"] / result["matmul_peak_gflops"]) < 0.01


def test_sample_with_missing_generator_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", "--generator", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "g.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fit_cli_matches_inverting_and_fitting_by_hand(tmp_path, tiny_G, capsys):
    """`dgan fit` through Pipeline gives the interpreter that inverting + fit_from_latents give by hand."""
    import numpy as np
    import torch

    from model.domain.dataset import read_labeled_folder, write_domain_dataset
    from model.interpreter import Interpreter, InterpreterConfig
    from model.inversion import images_to_tensor, invert
    from model.labeling import fit_from_latents, label_latents

    g = save_generator(tiny_G, tmp_path / "g.pt")
    write_domain_dataset(tmp_path / "real", 4, seed=0, size=32)
    assert main(["fit", "--data", str(tmp_path / "real"), "--n", "4", "--generator", str(g), "--steps", "2",
                 "--members", "2", "--seed", "3", "--out", str(tmp_path / "interp.pt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 4 and out["out"] == str(tmp_path / "interp.pt") and out["pixels"] > 0
    images, labels, classes = read_labeled_folder(tmp_path / "real")
    inv = invert(tiny_G, images_to_tensor(images), encoder=None, steps=2)
    by_hand = fit_from_latents(tiny_G, inv.ws, labels, classes, InterpreterConfig(in_dim=0, n_classes=len(classes),
                                                                                  members=2), seed=3)
    fitted = Interpreter.load(tmp_path / "interp.pt")
    assert out["inversion_psnr_db"] == round(float(inv.psnr_db.mean()), 2)
    ws = tiny_G.map(torch.randn(3, tiny_G.cfg.z_dim))
    assert np.array_equal(label_latents(tiny_G, fitted, ws)[1].probs, label_latents(tiny_G, by_hand, ws)[1].probs)

    capsys.readouterr()
    assert main(["preview", "--out", str(tmp_path / "pv"), "--n", "8", "--generator", str(g),
                 "--interpreter", str(tmp_path / "interp.pt")]) == 0
    assert "synthesis-labels.png" in capsys.readouterr().out
    # 8 × (image, overlay, label map), 6 panels a row, each 32 px at scale 3
    assert Image.open(tmp_path / "pv" / "synthesis-labels.png").size == (6 * 32 * 3, 4 * 32 * 3)


def test_bench_push_is_registered_beside_the_model_benches(capsys):
    assert main(["bench", "push"]) == 2
    assert "dgan bench push needs --project ID" in capsys.readouterr().err


def test_bench_run_takes_keyword_arguments():
    import pytest

    from model import bench

    with pytest.raises(ValueError, match="unknown benchmark 'nope'; choose one of generator, interpreter"):
        bench.run("nope", generator=None)
