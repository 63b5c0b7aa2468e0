"""DGAN_DEVICE: one resolver (cpu, cuda, cuda:N, auto; clear errors), honoured by the pipeline, the service
settings and the commands; checkpoints written from any device hold CPU tensors. The CUDA test runs only
where torch sees a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import model.device as device_mod
from ls_backend.cli import main
from ls_backend.config import ConfigError, Settings
from model.device import DeviceError, resolve_device
from model.interpreter import Interpreter
from model.pipeline import Pipeline, SegmenterRecipe
from model.segmenter import Segmenter

from .conftest import tiny_generator

CLASSES = ["background", "square", "dot"]
BASE_ENV = {"LABEL_STUDIO_URL": "http://localhost:8080", "LABEL_STUDIO_API_KEY": "x"}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_device_count", lambda: 2)


# -- the resolver ------------------------------------------------------------------------------------
def test_default_is_the_cpu_and_the_variable_is_read(monkeypatch, no_gpu):
    monkeypatch.delenv("DGAN_DEVICE", raising=False)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device(None, {"DGAN_DEVICE": ""}) == torch.device("cpu")
    assert resolve_device(None, {"DGAN_DEVICE": " CPU "}) == torch.device("cpu")
    monkeypatch.setenv("DGAN_DEVICE", "auto")
    assert resolve_device() == torch.device("cpu")          # auto without a GPU: the CPU, no error
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_and_cuda_take_the_gpu_when_there_is_one(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(None, {"DGAN_DEVICE": "cuda"}) == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"GPU 2, but torch sees 2 \(cuda:0 … cuda:1\)"):
        resolve_device("cuda:2")


def test_an_explicit_device_wins_over_the_variable(monkeypatch, no_gpu):
    monkeypatch.setenv("DGAN_DEVICE", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="DGAN_DEVICE='cuda'"):
        resolve_device()


def test_cuda_without_a_gpu_says_what_was_asked_what_was_found_and_what_to_do(no_gpu):
    with pytest.raises(DeviceError) as e:
        resolve_device(None, {"DGAN_DEVICE": "cuda"})
    msg = str(e.value)
    assert "DGAN_DEVICE='cuda' asks for a GPU" in msg                    # what was asked
    assert f"torch {torch.__version__}" in msg and "sees no CUDA device" in msg   # what was found
    assert "nvidia-smi" in msg and "DGAN_DEVICE=cpu" in msg                # what to do
    with pytest.raises(DeviceError, match="--device='cuda:0' asks for a GPU"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:", "mps", "cpu,cuda"])
def test_a_malformed_device_is_refused_with_the_choices(value, no_gpu):
    with pytest.raises(DeviceError, match=r"is not a device dgan runs on: use cpu, cuda, cuda:N .* or auto") as e:
        resolve_device(None, {"DGAN_DEVICE": value})
    assert repr(value) in str(e.value)


# -- the service settings and the commands ------------------------------------------------------------
def test_settings_resolve_the_device_and_report_a_wrong_one_with_the_rest(no_gpu):
    assert Settings.from_env({**BASE_ENV}).device == "cpu"
    assert Settings.from_env({**BASE_ENV, "DGAN_DEVICE": "auto"}).device == "cpu"
    with pytest.raises(ConfigError) as e:
        Settings.from_env({**BASE_ENV, "DGAN_DEVICE": "cuda", "DGAN_SEGMENTER": "fast"})
    assert "DGAN_DEVICE='cuda' asks for a GPU" in str(e.value) and "DGAN_SEGMENTER" in str(e.value)


def test_settings_device_reaches_the_pipeline(monkeypatch, tmp_path, no_gpu):
    from ls_backend.backend import Backend
    from model.generator import default

    monkeypatch.setattr(default, "load_default_or", lambda path=None: tiny_generator())
    monkeypatch.setattr(default, "load_encoder_for", lambda G, path=None: None)
    settings = Settings.from_env({**BASE_ENV, "DGAN_DEVICE": "auto", "MODEL_DIR": str(tmp_path)})
    assert Backend(settings).pipeline.device == torch.device("cpu")


@pytest.mark.parametrize("argv", [["fit", "--data", "nowhere", "--out", "x.pt"],
                                  ["synthesize", "--n", "1", "--out", "x"],
                                  ["train-encoder"], ["bench", "generator"], ["sample"]])
def test_commands_that_run_a_model_refuse_a_wrong_device_in_one_line(argv, capsys, monkeypatch, no_gpu):
    monkeypatch.delenv("DGAN_DEVICE", raising=False)
    assert main([*argv, "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dgan {argv[0]}: error: --device='gpu' is not a device") and err.count("\n") == 1
    monkeypatch.setenv("DGAN_DEVICE", "cuda")       # the variable is their default
    assert main(argv) == 2
    assert "DGAN_DEVICE='cuda' asks for a GPU" in capsys.readouterr().err


def test_service_commands_take_the_device_option(monkeypatch, capsys, no_gpu):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://localhost:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x")
    monkeypatch.setenv("DGAN_DEVICE", "cpu")
    for argv in (["serve"], ["worker"], ["push", "--project", "1", "--n", "5"]):
        assert main([*argv, "--device", "cuda"]) == 2        # refused at start, before Redis is asked
        err = capsys.readouterr().err
        assert err.startswith(f"dgan {argv[0]}: error: --device='cuda' asks for a GPU"), err
    monkeypatch.setenv("DGAN_DEVICE", "cuda")                # without the option: the variable, same check
    assert main(["worker"]) == 2
    assert "DGAN_DEVICE='cuda' asks for a GPU" in capsys.readouterr().err


# -- the pipeline on the device the variable names -----------------------------------------------------
def _layout_masks(n: int, size: int = 32) -> np.ndarray:
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 8:24, 8:24] = 1
    masks[:, 12:16, 12:16] = 2
    return masks


def _end_to_end(pipe: Pipeline, tmp_path) -> dict:
    """Fit on seed latents with a fixed layout, label, invert, synthesize, train a quick segmenter and
    round-trip the checkpoints; returns what the device tests compare."""
    ws = pipe.seed_latents(list(range(8)))
    assert ws.device.type == "cpu" and ws.shape == (8, pipe.G.num_ws, pipe.G.cfg.w_dim)
    masks = _layout_masks(8)
    interp = pipe.fit(ws, masks, CLASSES, members=3, epochs=6)
    images, pred = pipe.label(interp, ws)
    assert images.dtype == np.uint8 and isinstance(pred.labels, np.ndarray) and isinstance(pred.score, np.ndarray)
    accuracy = float((pred.labels == masks).mean())
    inv_ws, psnr = pipe.invert(images[:2], steps=2)
    assert inv_ws.device.type == "cpu" and np.isfinite(psnr).all()
    samples = pipe.synthesize([100, 101], interp)
    assert samples[0].ws.shape == (pipe.G.num_ws, pipe.G.cfg.w_dim) and samples[0].labels.dtype == np.uint8
    recipe = SegmenterRecipe(teacher_steps=12, student_steps=4, pool=4, batch=4, base=4, lr=1e-2)
    seg = pipe.train_segmenter(images, masks, CLASSES, recipe)
    seg_pred = seg.label(images)
    by_seg = pipe.synthesize([100, 101], segmenter=seg)
    # Checkpoints hold CPU tensors whatever the device (loadable anywhere without map_location).
    for path in (interp.save(tmp_path / "interp.pt"), seg.save(tmp_path / "seg.pt")):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert {t.device.type for t in state.values()} == {"cpu"}
    again = Interpreter.load(tmp_path / "interp.pt", generator_id=pipe.generator_id)
    assert np.array_equal(pipe.label(again, ws)[1].labels, pred.labels)
    seg_again = Segmenter.load(tmp_path / "seg.pt", generator_id=pipe.generator_id).to(pipe.device)
    assert np.array_equal(seg_again.label(images).labels, seg_pred.labels)
    return {"accuracy": accuracy, "labels": pred.labels, "seg_labels": seg_pred.labels, "images": images,
            "by_seg": by_seg}


def test_a_pipeline_on_the_cpu_by_the_variable_runs_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setenv("DGAN_DEVICE", "cpu")
    pipe = Pipeline(tiny_generator(), None, inversion_steps=2)
    assert pipe.device == torch.device("cpu") and next(pipe.G.parameters()).device.type == "cpu"
    out = _end_to_end(pipe, tmp_path)
    assert out["accuracy"] > 0.9, out["accuracy"]          # a fixed layout is learned


def test_pipeline_load_refuses_a_wrong_device_before_reading_checkpoints(monkeypatch, no_gpu):
    monkeypatch.setenv("DGAN_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="DGAN_DEVICE='cuda'"):
        Pipeline.load("/nonexistent/generator.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_label_and_segmenter_on_cuda_match_the_cpu(tmp_path):
    gpu = Pipeline(tiny_generator(), None, inversion_steps=2, device="cuda")
    assert next(gpu.G.parameters()).device.type == "cuda"
    out = _end_to_end(gpu, tmp_path / "gpu")
    cpu = _end_to_end(Pipeline(tiny_generator(), None, inversion_steps=2, device="cpu"), tmp_path / "cpu")
    assert out["accuracy"] > 0.9, out["accuracy"]
    # Same seeds, same batches (CPU generators): the devices agree up to float rounding.
    diff = np.abs(out["images"].astype(int) - cpu["images"].astype(int))     # TF32 convolutions on the GPU
    assert diff.mean() < 1 and diff.max() <= 8
    assert (out["labels"] == cpu["labels"]).mean() > 0.95
    assert (out["seg_labels"] == cpu["seg_labels"]).mean() > 0.8
    # A model trained on the GPU loads on the CPU.
    cpu_pipe = Pipeline(tiny_generator(), None, inversion_steps=2, device="cpu")
    moved = Interpreter.load(tmp_path / "gpu" / "interp.pt")
    assert (cpu_pipe.label(moved, cpu_pipe.seed_latents(list(range(8))))[1].labels == out["labels"]).mean() > 0.95
