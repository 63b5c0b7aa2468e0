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
