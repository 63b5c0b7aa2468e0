"""Generator checkpoints: our own format, NVlabs ``.pkl`` and rosinality ``.pt``.

Our format (``.pt``, read with ``weights_only=True``)::

    {"format": "dgan-generator", "version": 1, "config": GeneratorConfig.to_dict(),
     "state_dict": {...}, "meta": {...}}

written and checked by ``model.checkpoint`` like every other checkpoint kind.

NVlabs stylegan2-ada-pytorch / stylegan3 pickles embed source code and run arbitrary globals when
unpickled. :func:`read_nvlabs_pickle` reads them with a restricted unpickler that knows only the
handful of globals such a pickle needs (tensor rebuilding, ``OrderedDict``, ``EasyDict`` and the
persistence hook, stubbed so that no embedded code runs); anything else is refused. Convert once
with ``dgan convert in.pkl out.pt`` and load the weights-only result afterwards.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, check_checkpoint, save_checkpoint
from .stylegan2 import Generator, GeneratorConfig

SUPPORTED = ("our .pt (dgan-generator)", "NVlabs stylegan2-ada-pytorch/stylegan3 .pkl (StyleGAN2 configs)",
             "rosinality stylegan2-pytorch .pt (with 'g_ema')")


# ----------------------------------------------------------------------------------------------
# Our own format


def save_generator(G: Generator, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``G`` (config + state dict) atomically to ``path``."""
    return save_checkpoint(path, "generator", {
        "config": G.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()},
        "meta": meta or {}})


def generator_from_state(config: dict, state_dict: dict[str, torch.Tensor]) -> Generator:
    """Build a Generator in eval mode from a config dict and our state dict (strict)."""
    G = Generator(GeneratorConfig(**config))
    missing, unexpected = G.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"state dict does not match the config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return G.eval().requires_grad_(False)


def generator_id(G: Generator) -> str:
    """Stable identity of a generator's weights (sha256 prefix over config and tensors)."""
    h = hashlib.sha256(repr(sorted(G.cfg.to_dict().items())).encode())
    for k, v in sorted(G.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# NVlabs (stylegan2-ada-pytorch / stylegan3) state dicts and pickles


def _nvlabs_tables(sd: dict[str, torch.Tensor]) -> tuple[dict[int, int], int]:
    res_list = sorted({int(m.group(1)) for k in sd if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    channels = {r: sd[f"synthesis.b{r}.conv1.weight"].shape[0] for r in res_list}
    return channels, max(res_list)


def from_nvlabs_state_dict(sd: dict[str, torch.Tensor], init_kwargs: dict | None = None) -> Generator:
    """NVlabs ``Generator.state_dict()`` (+ its ``init_kwargs``) → our Generator, identical outputs.

    Widths and sizes are read from tensor shapes; ``conv_clamp`` and the mapping learning rate come
    from ``init_kwargs`` when given (NVlabs defaults otherwise)."""
    kw = dict(init_kwargs or {})
    if kw.get("c_dim", 0):
        raise CheckpointError(f"conditional generators (c_dim={kw['c_dim']}) are not supported; "
                              "use an unconditional StyleGAN2 checkpoint")
    syn_kw, map_kw = dict(kw.get("synthesis_kwargs", {})), dict(kw.get("mapping_kwargs", {}))
    if syn_kw.get("architecture", "skip") != "skip":
        raise CheckpointError(f"synthesis architecture {syn_kw['architecture']!r} is not supported; "
                              "only StyleGAN2 'skip' generators (the NVlabs default) can be loaded")
    if any(k.startswith("synthesis.input.") or ".affine." in k and "L" in k.split(".")[1] for k in sd):
        raise CheckpointError("this is a StyleGAN3 (alias-free) generator; only StyleGAN2 configs are supported")
    if "synthesis.b4.const" not in sd:
        raise CheckpointError("not a StyleGAN2 generator state dict: 'synthesis.b4.const' is missing")
    channels, resolution = _nvlabs_tables(sd)
    n_map = len([k for k in sd if re.fullmatch(r"mapping\.fc\d+\.weight", k)])
    cfg = GeneratorConfig(
        resolution=resolution,
        z_dim=sd["mapping.fc0.weight"].shape[1],
        w_dim=sd["synthesis.b4.conv1.affine.weight"].shape[1],
        mapping_layers=n_map,
        mapping_lr=float(map_kw.get("lr_multiplier", 0.01)),
        channels=channels,
        img_channels=sd[f"synthesis.b{resolution}.torgb.weight"].shape[0],
        upsample="fir",
        conv_clamp=syn_kw.get("conv_clamp"),
    )
    ours = {k: v for k, v in sd.items() if not k.endswith("resample_filter")}
    return generator_from_state(cfg.to_dict(), ours)


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class _PersistentStub:
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` becomes: data, no code."""

    def __init__(self, meta: dict) -> None:
        self.class_name = meta.get("class_name")
        self.state = meta.get("state") or {}

    def __setstate__(self, state: dict) -> None:  # pragma: no cover - persistence never calls it
        self.state = state


def _load_storage_weights_only(b: bytes) -> Any:
    return torch.load(io.BytesIO(b), weights_only=True)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 numpy pickles use it (array bytes as latin-1 text), nothing else:
    other encodings would make the codec machinery import modules."""
    if encoding != "latin1" or not isinstance(text, str):
        raise CheckpointError(f"refusing _codecs.encode(…, {encoding!r}) in a pickle: only latin1 text is read")
    return text.encode("latin1")


# numpy's own callables, taken from live objects (no import by name): arrays rebuild through
# ``_reconstruct``, scalars through ``scalar``; numpy 1 and 2 spell the module differently.
_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NP_SCALAR = np.float32(0).__reduce__()[0]
_TORCH_STORAGES = ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                   "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage")


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows only what an NVlabs network pickle needs: exact (module, name) pairs, each mapped to an
    object this process already holds, so that reading a pickle never imports a module. Every other
    global is refused — whatever its module's name starts with."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch.storage", "_load_from_bytes"): _load_storage_weights_only,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        **{("torch", name): getattr(torch, name) for name in _TORCH_STORAGES},
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _PersistentStub,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        # numpy arrays and scalars appear in augment_pipe state
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
        ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
        ("_codecs", "encode"): _codecs_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except (KeyError, TypeError):
            pass
        raise CheckpointError(f"refusing to unpickle global {str(module)[:80]}.{str(name)[:80]}: only NVlabs network "
                              "pickles (tensors, OrderedDict, EasyDict, persistence records, numpy arrays) are read; "
                              "this file contains other code. Convert trusted checkpoints with their own code.")


def _flatten_module_state(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Walk a stubbed module tree (``_parameters``, ``_buffers``, ``_modules``) into a state dict."""
    state = obj.state if isinstance(obj, _PersistentStub) else getattr(obj, "__dict__", {})
    out: dict[str, torch.Tensor] = {}
    non_persistent = set(state.get("_non_persistent_buffers_set", ()))
    for name, t in (state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t.detach()
    for name, t in (state.get("_buffers") or {}).items():
        if t is not None and name not in non_persistent:
            out[prefix + name] = t.detach()
    for name, sub in (state.get("_modules") or {}).items():
        if sub is not None:
            out.update(_flatten_module_state(sub, f"{prefix}{name}."))
    return out


def read_nvlabs_pickle(path: str | Path, key: str = "G_ema") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, init_kwargs) of network ``key`` in an NVlabs pickle, without running its code."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways inside pickle
        raise CheckpointError(f"{path}: not a readable NVlabs network pickle ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}); the file may be truncated or not a pickle. "
                              f"Supported formats: {'; '.join(SUPPORTED)}") from e
    if not isinstance(data, dict) or key not in data:
        found = list(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected an NVlabs snapshot dict with {key!r}, found {found}")
    net = data[key]
    if not isinstance(net, _PersistentStub):
        raise CheckpointError(f"{path}: {key!r} is not an NVlabs persistent network")
    init_kwargs = dict(net.state.get("_init_kwargs") or {})
    return _flatten_module_state(net), init_kwargs


# ----------------------------------------------------------------------------------------------
# rosinality stylegan2-pytorch


def from_rosinality_state_dict(sd: dict[str, torch.Tensor], latent_avg: torch.Tensor | None = None) -> Generator:
    """rosinality ``g_ema`` state dict → our Generator (architecture inferred from tensor shapes).

    ``latent_avg`` becomes ``w_avg`` (truncation centre); without it, w_avg is estimated from 10,000 z."""
    if "input.input" not in sd or "conv1.conv.weight" not in sd:
        raise CheckpointError("not a rosinality StyleGAN2 generator: 'input.input' / 'conv1.conv.weight' missing")
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    n_up = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    resolution = 4 * 2 ** n_up
    channels = {4: sd["conv1.conv.weight"].shape[1]}
    for j in range(n_up):
        channels[8 * 2 ** j] = sd[f"convs.{2 * j}.conv.weight"].shape[1]
    cfg = GeneratorConfig(resolution=resolution, z_dim=sd["style.1.weight"].shape[1],
                          w_dim=sd["style.1.weight"].shape[0], mapping_layers=n_mlp, mapping_lr=0.01,
                          channels=channels, img_channels=sd["to_rgb1.conv.weight"].shape[1],
                          upsample="fir", conv_clamp=None)
    ours: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        ours[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        ours[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]

    def conv(src: str, dst: str, noise_idx: int) -> None:
        ours[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        ours[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        ours[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        ours[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape([])
        ours[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        ours[f"{dst}.noise_const"] = sd[f"noises.noise_{noise_idx}"][0, 0]

    def torgb(src: str, dst: str) -> None:
        ours[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        ours[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        ours[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        ours[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)

    ours["synthesis.b4.const"] = sd["input.input"][0]
    conv("conv1", "synthesis.b4.conv1", 0)
    torgb("to_rgb1", "synthesis.b4.torgb")
    for j in range(n_up):
        res = 8 * 2 ** j
        conv(f"convs.{2 * j}", f"synthesis.b{res}.conv0", 2 * j + 1)
        conv(f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", 2 * j + 2)
        torgb(f"to_rgbs.{j}", f"synthesis.b{res}.torgb")
    estimate = latent_avg is None
    ours["mapping.w_avg"] = torch.zeros(cfg.w_dim) if estimate else latent_avg.reshape(-1)
    G = generator_from_state(cfg.to_dict(), ours)
    if estimate:
        with torch.no_grad():
            G.mapping.w_avg.copy_(G.mapping(torch.randn(10_000, cfg.z_dim,
                                                        generator=torch.Generator().manual_seed(0))).mean(0))
    return G


# ----------------------------------------------------------------------------------------------
# One entry point


def load_generator(path: str | Path) -> Generator:
    """Load any supported checkpoint as our Generator (eval mode, no grad).

    Our ``.pt`` and rosinality ``.pt`` load with ``weights_only=True``; NVlabs ``.pkl`` through the
    restricted unpickler. Anything else raises :class:`CheckpointError` naming the supported formats."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"generator checkpoint {str(path)!r} does not exist")
    if path.suffix == ".pkl":
        sd, init_kwargs = read_nvlabs_pickle(path)
        return from_nvlabs_state_dict(sd, init_kwargs)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise CheckpointError(f"{path}: cannot read as a weights-only torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}). Supported formats: {'; '.join(SUPPORTED)}. "
                              "rosinality checkpoints holding an argparse.Namespace: re-save them with "
                              "args as a dict, or pass only the 'g_ema' state dict.") from e
    if isinstance(data, dict) and "format" in data:      # ours: refuses other dgan kinds by name
        data = check_checkpoint(data, path, "generator")
        return generator_from_state(data["config"], data["state_dict"])
    if isinstance(data, dict) and "g_ema" in data:
        return from_rosinality_state_dict(data["g_ema"], data.get("latent_avg"))
    if isinstance(data, dict) and "input.input" in data:
        return from_rosinality_state_dict(data)
    if isinstance(data, dict) and "synthesis.b4.const" in data:
        return from_nvlabs_state_dict(data)
    raise CheckpointError(f"{path}: unknown checkpoint layout (top-level keys "
                          f"{list(data)[:8] if isinstance(data, dict) else type(data).__name__}). "
                          f"Supported formats: {'; '.join(SUPPORTED)}")


def convert(src: str | Path, dst: str | Path) -> Path:
    """Convert any supported checkpoint to our weights-only format."""
    G = load_generator(src)
    return save_generator(G, dst, meta={"converted_from": str(src)})


def num_params(G: torch.nn.Module) -> int:
    return sum(p.numel() for p in G.parameters())
