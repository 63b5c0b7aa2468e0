"""GAN training on a folder of images: checkpoints, resume, grids, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ls_backend.cli import main
from model.domain.dataset import write_domain_dataset
from model.generator.checkpoints import load_generator
from model.generator.train import TrainConfig, Trainer, train_gan
from model.images import load_image_folder

from .conftest import TINY


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("domain")
    write_domain_dataset(out, 12, seed=0, size=32)
    return out


def _cfg(folder, out, kimg):
    return TrainConfig(data=str(folder), out=str(out), batch=4, total_kimg=kimg, r1_interval=2,
                       pl_weight=1.0, pl_interval=2, augment=("translation", "color", "cutout"),
                       generator=dict(TINY), discriminator={"channels": {4: 16, 8: 16, 16: 16, 32: 8}})


def test_train_checkpoint_and_resume(folder, tmp_path):
    tr = train_gan(_cfg(folder, tmp_path, 0.016), show_progress=False)
    assert tr.step == 4
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and np.isfinite(log[-1]["loss_D"]) and "r1" in log[-1] and "pl" in log[-1]
    assert list(tmp_path.glob("grid-kimg*.png")) and list((tmp_path / "snapshots").glob("*.pt"))
    G1 = load_generator(tmp_path / "generator.pt")
    z = torch.randn(2, 32)
    assert torch.equal(G1(z), tr.G_ema(z))                 # generator.pt is the EMA generator

    # Resume continues the counters and changes the weights; the architecture comes from the checkpoint.
    cfg = _cfg(folder, tmp_path, 0.032)
    cfg.generator = {}
    tr2 = train_gan(cfg, resume=True, show_progress=False)
    assert tr2.step == 8 and tr2.nimg == 32
    G2 = load_generator(tmp_path / "generator.pt")
    assert not torch.equal(G1(z), G2(z))


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume given but"):
        Trainer(TrainConfig(out=str(tmp_path), generator=dict(TINY)), resume=True)


def test_image_folder_skips_corrupt_and_refuses_empty(tmp_path, caplog):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    data = load_image_folder(tmp_path, 16)
    assert data.shape == (1, 3, 16, 16) and data.dtype == torch.uint8
    assert "skipped 1 unreadable" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(empty, 16)
    assert main(["train-gan", "--data", str(empty), "--out", str(tmp_path / "run")]) == 2


def test_time_limit_stops_and_checkpoints(folder, tmp_path):
    cfg = _cfg(folder, tmp_path, 100.0)
    cfg.time_limit_minutes = 0.0          # one step, then stop as if the session's time were up
    tr = train_gan(cfg, show_progress=False)
    assert tr.step == 1 and tr.nimg == 4
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and np.isfinite(log[-1]["loss_G"])
    # The checkpoint written at the stop resumes exactly where it stopped.
    resumed = Trainer(_cfg(folder, tmp_path, 100.0), resume=True)
    assert (resumed.step, resumed.nimg) == (1, 4)
    z = torch.randn(2, 32)
    assert torch.equal(resumed.G_ema(z), tr.G_ema(z)) and torch.equal(resumed.G(z), tr.G(z))


def test_resume_reads_a_state_written_before_checkpoints_had_a_format(folder, tmp_path):
    tr = train_gan(_cfg(folder, tmp_path, 0.004), show_progress=False)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["format"], state["version"]
    torch.save(state, tmp_path / "state.pt")
    resumed = Trainer(_cfg(folder, tmp_path, 0.004), resume=True)
    z = torch.randn(2, 32)
    assert resumed.step == tr.step == 1 and torch.equal(resumed.G_ema(z), tr.G_ema(z))


def test_cuda_device_refused_clearly_without_cuda(folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _cfg(folder, tmp_path, 0.016)
    cfg.device = "cuda"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Trainer(cfg)
