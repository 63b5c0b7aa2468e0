"""model.checkpoint: the one atomic save and checked load behind every checkpoint kind."""

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.features import FeatureExtractor
from model.generator.checkpoints import generator_id
from model.generator.default import (load_default_or, load_discriminator_for, load_encoder_for,
                                     load_interpreter_for)


def test_round_trip_adds_format_and_version_and_checks_identity(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "enc.pt", "encoder",
                           {"generator_id": "abc", "state_dict": {"w": torch.arange(3.0)}})
    data = load_checkpoint(path, "encoder", generator_id="abc")
    assert data["format"] == "dgan-encoder" and data["version"] == 1
    assert torch.equal(data["state_dict"]["w"], torch.arange(3.0))
    with pytest.raises(CheckpointError, match=r"enc.pt is an inversion encoder trained for generator abc, not for "
                                              r"the loaded generator xyz\. Train one for this generator"):
        load_checkpoint(path, "encoder", generator_id="xyz")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["enc.pt"]     # no temporary file left behind


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = save_checkpoint(tmp_path / "i.pt", "interpreter", {"generator_id": "g", "n": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, "interpreter", {"generator_id": "g", "n": lambda: 2})   # cannot be pickled
    assert load_checkpoint(path, "interpreter")["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["i.pt"]


def test_wrong_files_get_messages_that_say_what_they_are_and_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.pt does not exist; expected a DatasetGAN interpreter "
                                              r"\(dgan-interpreter\)\. Fit one"):
        load_checkpoint(tmp_path / "nope.pt", "interpreter")
    torch.save({"model": {"fc.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a checkpoint written by dgan, but a GAN discriminator"):
        load_checkpoint(tmp_path / "other.pt", "discriminator")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read as a weights-only torch file"):
        load_checkpoint(tmp_path / "text.pt", "encoder")
    torch.save({"format": "dgan-encoder", "version": 2}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 2, newer than this dgan reads"):
        load_checkpoint(tmp_path / "new.pt", "encoder")
    torch.save({"format": "dgan-encoder"}, tmp_path / "anon.pt")
    with pytest.raises(CheckpointError, match="does not record which generator it belongs to"):
        load_checkpoint(tmp_path / "anon.pt", "encoder", generator_id="g")
    with pytest.raises(ValueError, match="must not set 'format'"):
        save_checkpoint(tmp_path / "x.pt", "encoder", {"format": "mine"})
    with pytest.raises(ValueError, match="unknown checkpoint kind 'vae'"):
        save_checkpoint(tmp_path / "x.pt", "vae", {})


def test_files_written_with_the_old_gen_id_key_still_load(tmp_path):
    torch.save({"format": "dgan-discriminator", "gen_id": "abc", "config": {}}, tmp_path / "old.pt")
    data = load_checkpoint(tmp_path / "old.pt", "discriminator", generator_id="abc")
    assert data["generator_id"] == "abc" and "gen_id" not in data and data["version"] == 1


def test_the_shipped_checkpoints_load_and_belong_to_the_shipped_generator():
    G = load_default_or()
    enc, interp, D = load_encoder_for(G), load_interpreter_for(G), load_discriminator_for(G)
    assert enc is not None and D is not None                          # None would mean "another generator's"
    assert enc.generator_id == interp.generator_id == generator_id(G)
    assert interp.cfg.in_dim == FeatureExtractor(G).dim and len(interp.class_names) == interp.cfg.n_classes == 10
