"""Where the maths runs: the torch devices this machine has, and the CPU threads torch may use.

The one module that chooses a device. :func:`set_cpu_threads` changes a process-wide setting: only the
programs (the CLI's commands, the plugin's dock) call it, never the library.
"""

from __future__ import annotations

import torch

__all__ = ["available_devices", "select_device", "set_cpu_threads"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """``auto``, every CUDA device, MPS when present, and the CPU."""
    devices = ["auto"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices + ["cpu"]


def select_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: not a device torch knows (auto, cpu, cuda, cuda:N or mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here")
    return dev


def set_cpu_threads(threads: int | None) -> None:
    """Let torch use ``threads`` intra-op threads on the CPU (None: leave torch's default). Process-wide."""
    if threads:
        torch.set_num_threads(int(threads))
