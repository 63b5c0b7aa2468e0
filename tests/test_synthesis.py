import json

import numpy as np
import pytest
import torch

from model.domain.dataset import read_label_png
from model.interpreter import Interpreter, InterpreterConfig
from model.labeling import label_latents
from model.features import FeatureExtractor
from model.generator.checkpoints import generator_id
from model.synthesis import generate_chunk, keep_most_certain, latents_for_seeds, write_synthetic_dataset


@pytest.fixture
def interp(tiny_G):
    torch.manual_seed(0)
    it = Interpreter(InterpreterConfig(in_dim=FeatureExtractor(tiny_G).dim, n_classes=3, members=3),
                     ["background", "a", "b"], generator_id(tiny_G))
    return it


def test_seeds_are_independent_of_batching(tiny_G, interp):
    a = generate_chunk(tiny_G, interp, [5, 6, 7], batch=2)
    b = generate_chunk(tiny_G, interp, [7], batch=1)
    assert np.array_equal(a[2].image, b[0].image) and np.array_equal(a[2].labels, b[0].labels)
    torch.testing.assert_close(latents_for_seeds(tiny_G, [7])[0], torch.from_numpy(a[2].ws))
    _, pred = label_latents(tiny_G, interp, torch.from_numpy(a[2].ws)[None])
    assert np.array_equal(pred.labels[0], a[2].labels)


def test_filter_drops_the_most_uncertain(tiny_G, interp):
    samples = generate_chunk(tiny_G, interp, list(range(20)))
    kept = keep_most_certain(samples, 0.25)
    assert len(kept) == 15
    assert max(s.uncertainty for s in kept) <= min(s.uncertainty for s in samples if s not in kept)


def test_dataset_folder_and_resume(tmp_path, tiny_G, interp):
    summary = write_synthetic_dataset(tiny_G, interp, tmp_path, n=20, seed=100, filter_frac=0.1, chunk=10)
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert summary["kept_total"] == len(lines) == 18
    # Each chunk of 10 drops its one most uncertain sample; what is written is what the seed generates.
    fresh = {s.seed: s for s in generate_chunk(tiny_G, interp, list(range(100, 120)))}
    for start in (100, 110):
        kept = {x["seed"] for x in lines if start <= x["seed"] < start + 10}
        dropped = set(range(start, start + 10)) - kept
        assert dropped == {max(range(start, start + 10), key=lambda sd: fresh[sd].uncertainty)}
    for x in lines:
        assert x["uncertainty"] == pytest.approx(fresh[x["seed"]].uncertainty, abs=1e-6)
    assert np.array_equal(read_label_png(tmp_path / lines[0]["label"]), fresh[lines[0]["seed"]].labels)
    z = np.load(tmp_path / lines[0]["latent"])
    assert z["ws"].shape == (9, tiny_G.num_ws, 32) and lines[0]["seed"] in z["seeds"]
    # Simulate a crash after the first chunk: drop the second chunk's record, then resume.
    chunks = (tmp_path / "chunks.jsonl").read_text().splitlines()
    (tmp_path / "chunks.jsonl").write_text(chunks[0] + "\n")
    again = write_synthetic_dataset(tiny_G, interp, tmp_path, n=20, seed=100, filter_frac=0.1, chunk=10)
    assert again["generated_now"] == 10
    seeds = [json.loads(x)["seed"] for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert sorted(seeds) == sorted(x["seed"] for x in lines) and len(set(seeds)) == len(seeds)
    with pytest.raises(ValueError, match="other settings"):
        write_synthetic_dataset(tiny_G, interp, tmp_path, n=30, seed=100, filter_frac=0.1, chunk=10)
