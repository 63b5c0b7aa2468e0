"""Which device the models run on: ``DGAN_DEVICE`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``), resolved in one place.

Every command that runs a model (``dgan serve``, ``dgan worker``, ``fit``, ``push``, ``synthesize``,
``train-gan``, ``train-encoder``, the benches) and :class:`~model.pipeline.Pipeline` ask
:func:`resolve_device`; a ``--device`` flag, when a command has one, wins over the variable.

- ``cpu`` (the default): reproducible, and what every figure in the README was measured on;
- ``cuda`` / ``cuda:N``: the GPU, or a clear error when torch sees none (never a silent fall-back: a
  deployment that asked for a GPU and runs on the CPU would be 10–100× slower without saying why);
- ``auto``: the first GPU when torch sees one, else the CPU.

Checkpoints are written from CPU tensors and read with ``map_location="cpu"``, so a model trained on one
device loads on any other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENV_VAR = "DGAN_DEVICE"
DEFAULT = "cpu"
CHOICES = ("cpu", "cuda", "cuda:N", "auto")


class DeviceError(ValueError):
    """The requested device is malformed or not present; the message says which, what was found and what to do."""


def resolve_device(requested: "str | torch.device | None" = None, env: dict[str, str] | None = None) -> "torch.device":
    """The torch device to run models on.

    ``requested``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``; None (or ``""``)
    reads ``DGAN_DEVICE`` from ``env`` (default: ``os.environ``), and ``cpu`` when that is unset too.
    Raises :class:`DeviceError` for anything else, and for a CUDA device torch cannot see."""
    import torch

    if isinstance(requested, torch.device):
        requested = str(requested)
    source = "--device"
    if requested is None or not str(requested).strip():
        requested = (os.environ if env is None else env).get(ENV_VAR) or DEFAULT
        source = ENV_VAR
    text = str(requested).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if text != "auto" and (kind != "cuda" or (":" in text and not index.isdigit())):
        raise DeviceError(f"{source}={requested!r} is not a device dgan runs on: use cpu, cuda, cuda:N (a GPU's "
                          "index) or auto (cuda when torch sees a GPU, else cpu)")
    gpus = cuda_device_count()
    if text == "auto":
        return torch.device("cuda" if gpus else "cpu")
    if not gpus:
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(f"{source}={requested!r} asks for a GPU, but torch {torch.__version__} ({build}) sees no "
                          "CUDA device. Check that the GPU is visible (nvidia-smi; `--gpus all` for a container) "
                          "and that torch is a CUDA build, or set DGAN_DEVICE=cpu (or auto: the GPU when there is "
                          "one, else the CPU)")
    if index and int(index) >= gpus:
        raise DeviceError(f"{source}={requested!r} asks for GPU {index}, but torch sees {gpus} "
                          f"(cuda:0{f' … cuda:{gpus - 1}' if gpus > 1 else ''}); pick one of those or set cuda")
    return torch.device(text)


def cuda_device_count() -> int:
    """GPUs torch can use: ``torch.cuda.is_available()``'s answer as a count, asked through NVML where it
    answers, so that resolving a device in a process that forks later (gunicorn's master) leaves CUDA
    usable in its children; 0 for a CPU-only torch."""
    import torch

    return torch.cuda.device_count()


def module_device(module: "torch.nn.Module") -> "torch.device":
    """The device of a module's first parameter or buffer (the CPU for one that has neither)."""
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: "torch.device") -> None:
    """Wait for the device's queued work (timings on a GPU); a no-op on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
