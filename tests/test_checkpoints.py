"""Checkpoint readers: NVlabs pickles (structure as their persistence module writes it), rosinality
variants, refusal of foreign code and unknown formats."""

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ls_backend.cli import main
from model.generator.checkpoints import CheckpointError, from_rosinality_state_dict, load_generator

from .test_parity import NV, ROS

pytestmark = pytest.mark.skipif(not NV.is_dir(), reason="parity fixtures not found")


def _fake_nvlabs_modules():
    """Modules named as in stylegan2-ada-pytorch, holding only what its pickles reference by name."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called by our reader
        raise AssertionError("the restricted unpickler must not call the pickled function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = EasyDict
    mods = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    return mods, _reconstruct_persistent_obj, EasyDict


def _write_nvlabs_pickle(path):
    """Pickle the fixture generator the way NVlabs' persistence does: each network reduces to
    ``_reconstruct_persistent_obj(dict(type, version, module_src, class_name, state=__dict__))``."""
    mods, reconstruct, EasyDict = _fake_nvlabs_modules()
    sys.modules.update(mods)
    try:
        class Persistent(torch.nn.Module):
            class_name = "training.networks.Module"

            def __reduce__(self):
                meta = dict(type="class", version=6, module_src="import os  # source code rides along",
                            class_name=self.class_name, state=dict(self.__dict__))
                return reconstruct, (meta,), None

        sd = torch.load(NV / "state_dict.pt", weights_only=True)
        kinds = dict(line.split("\t")[::2] for line in (NV / "keys.txt").read_text().splitlines())
        root = Persistent()
        root.class_name = "training.networks.Generator"
        root._init_args = []
        root._init_kwargs = EasyDict(json.loads((NV / "init_kwargs.json").read_text()))
        for key, value in sd.items():
            *path_parts, leaf = key.split(".")
            mod = root
            for part in path_parts:
                if part not in mod._modules:
                    mod.add_module(part, Persistent())
                mod = mod._modules[part]
            if kinds[key] == "param":
                mod.register_parameter(leaf, torch.nn.Parameter(value.clone()))
            else:
                mod.register_buffer(leaf, value.clone())
        # numpy arrays and scalars ride along in real snapshots (augment_pipe state): they must load.
        snapshot = dict(G=root, D=None, G_ema=root, augment_pipe=None,
                        training_set_kwargs=EasyDict(path="ffhq.zip", resolution=32, probs=np.arange(4.0),
                                                     p=np.float32(0.5)))
        with open(path, "wb") as f:
            pickle.dump(snapshot, f)
    finally:
        for name in mods:
            sys.modules.pop(name, None)


def test_nvlabs_pickle_converts_with_identical_outputs(tmp_path):
    pkl = tmp_path / "network-snapshot.pkl"
    _write_nvlabs_pickle(pkl)
    assert "torch_utils.persistence" not in sys.modules
    out = tmp_path / "converted.pt"
    assert main(["convert", str(pkl), str(out)]) == 0
    G = load_generator(out)
    assert G.cfg.conv_clamp == 256 and G.cfg.upsample == "fir"
    case = next(c for c in torch.load(NV / "cases.pt", weights_only=True)["cases"] if c["name"] == "G_psi0.7_const")
    with torch.no_grad():
        img = G(case["z"], psi=0.7, noise_mode="const")
    torch.testing.assert_close(img, case["expected_img"], atol=1e-5, rtol=0)


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned-by-pickle",)


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": _Evil()}))
    with pytest.raises(CheckpointError, match="refusing to unpickle global (posix|os|nt).system"):
        load_generator(pkl)
    assert not (tmp_path / "pwned-by-pickle").exists()


# Pickles an attacker would write: each names a global whose import or call runs code. The first is the
# one that ran numpy's f2py command-line tool when any module starting with "numpy" was accepted.
ATTACKS = {
    "numpy.f2py.__main__": b"cnumpy.f2py.__main__\nscalar\n.",
    "numpy.testing": b"cnumpy.testing\n_reconstruct\n.",
    "numpy-lookalike": b"cnumpyevil\nndarray\n.",
    "os.system": b"cos\nsystem\n(S'touch pwned'\ntR.",
    "builtins.eval": b"cbuiltins\neval\n(S'1'\ntR.",
    "builtins.getattr": b"cbuiltins\ngetattr\n.",
    "torch.load": b"ctorch\nload\n.",
    "torch.storage.pickle": b"ctorch.storage\npickle\n.",
    "subprocess.Popen (protocol 4)": pickle.dumps(subprocess.Popen, protocol=4),
    "_codecs.encode with another codec": b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_pickles_are_refused_without_importing_anything(tmp_path, name):
    pkl = tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(ATTACKS[name])
    before = set(sys.modules)
    with pytest.raises(CheckpointError, match="refusing"):
        load_generator(pkl)
    assert set(sys.modules) - before == set()


def test_the_f2py_pickle_runs_nothing_in_a_fresh_interpreter(tmp_path):
    """The probe's attack, through `dgan convert`, in a fresh process that never imported f2py."""
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(ATTACKS["numpy.f2py.__main__"])      # the old prefix rule imported it: f2py's CLI ran
    code = ("import sys; from ls_backend.cli import main; rc = main(['convert', sys.argv[1], sys.argv[2]]); "
            "print(rc, 'numpy.f2py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(pkl), str(tmp_path / "out.pt")], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert "refusing to unpickle global numpy.f2py.__main__.scalar" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out.pt").exists()


def test_truncated_or_foreign_pkl_is_a_one_line_error(tmp_path, capsys):
    good = tmp_path / "good.pkl"
    _write_nvlabs_pickle(good)
    data = good.read_bytes()
    cases = {"truncated.pkl": data[: len(data) // 2], "empty.pkl": b"", "text.pkl": b"hello, not a pickle\n",
             "zip.pkl": b"PK\x03\x04" + os.urandom(64)}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert main(["convert", str(tmp_path / name), str(tmp_path / "out.pt")]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a readable NVlabs network pickle" in err, (name, err)
    assert not (tmp_path / "out.pt").exists()


def test_unknown_formats_name_the_supported_ones(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="Supported formats: .*NVlabs.*rosinality"):
        load_generator(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout.*Supported formats"):
        load_generator(other)
    assert main(["convert", str(other), str(tmp_path / "x.pt")]) == 2
    assert "Supported formats" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "missing.pt")


def test_rosinality_variants(tmp_path):
    ckpt = torch.load(ROS / "ckpt.pt", weights_only=True)
    full = load_generator(ROS / "ckpt.pt")
    bare = tmp_path / "g_ema_only.pt"
    torch.save(ckpt["g_ema"], bare)
    G = load_generator(bare)   # no latent_avg: estimated from the mapping network
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(G(z), full(z))
        assert torch.allclose(G.mapping.w_avg, full.mapping.w_avg, atol=1.0) and not torch.equal(
            G.mapping.w_avg, full.mapping.w_avg)
    torch.save({"g_ema": ckpt["g_ema"], "args": {"size": 32}}, tmp_path / "train.pt")
    assert load_generator(tmp_path / "train.pt").cfg.resolution == 32
    with pytest.raises(CheckpointError, match="not a rosinality"):
        from_rosinality_state_dict({"style.1.weight": torch.zeros(2, 2)})


def test_conditional_and_stylegan3_refused():
    from model.generator.checkpoints import from_nvlabs_state_dict

    sd = torch.load(NV / "state_dict.pt", weights_only=True)
    with pytest.raises(CheckpointError, match="conditional"):
        from_nvlabs_state_dict(sd, {"c_dim": 10})
    with pytest.raises(CheckpointError, match="architecture 'resnet'"):
        from_nvlabs_state_dict(sd, {"synthesis_kwargs": {"architecture": "resnet"}})
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        from_nvlabs_state_dict({"synthesis.input.weight": torch.zeros(1), "mapping.fc0.weight": torch.zeros(1)})
