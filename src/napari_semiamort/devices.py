"""Where the maths runs: the torch devices this machine has, and the CPU threads torch may use.

The one module that chooses a device. :func:`set_cpu_threads` changes a process-wide setting: only the
programs (the CLI's commands, the plugin's dock) call it, never the library. Without a number it gives torch
:func:`auto_threads`: the cores this process may really use (:func:`available_cores`: its CPU affinity,
capped by its cgroup's CPU quota) less the load other processes put on them. (That idle OpenMP threads sleep
rather than spin is set earlier, in the package's ``__init__``, before torch loads; docs/performance.md,
"A busy machine".)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["auto_threads", "available_cores", "available_devices", "cgroup_cpu_limit", "select_device",
           "set_cpu_threads"]

_CGROUP = Path("sys", "fs", "cgroup")


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
    """Let torch use ``threads`` intra-op threads on the CPU. Process-wide.

    None (or 0): :func:`auto_threads`, unless the user set ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, which
    torch's own default already follows.
    """
    if threads:
        torch.set_num_threads(int(threads))
    elif not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        torch.set_num_threads(auto_threads())


def auto_threads(reserve: int = 0, root: str | os.PathLike = "/") -> int:
    """Intra-op threads for a run on this machine now: the CPUs other processes leave free, less ``reserve``.

    The rule: ``round(free) - reserve`` (halves round up), within 1 and :func:`available_cores`, where
    ``free`` is the CPUs in this process's affinity less the 1-minute load average's share of them (the load
    times the affinity's fraction of the machine's CPUs: load is counted machine-wide and taken as spread
    evenly). Why: torch's threads meet at a barrier after every parallel operation, so a thread that waits for
    a core holds up all the others, and more threads than free cores buy waiting, not work
    (docs/performance.md, "A busy machine"). On a quiet machine it is every available core, as torch's own
    default (which ignores a cgroup quota and the load). ``reserve``: cores left to other work of this program
    (the dock leaves one to napari's interface). ``root``: where ``/proc`` and ``/sys`` are found (tests).

    The load average follows a change over about a minute, and counts this process's own recent work too.
    """
    cores = available_cores(root)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = 0.0
    affinity = _affinity_cores()
    free = affinity - load * affinity / max(os.cpu_count() or affinity, affinity)
    return max(1, min(cores, math.floor(free + 0.5)) - max(0, int(reserve)))


def available_cores(root: str | os.PathLike = "/") -> int:
    """The CPUs this process may really use: its CPU affinity, capped by its cgroup's CPU quota (rounded up,
    as joblib's loky does: a quota of 1.5 CPUs allows 2 threads) where it has one. ``root``: where ``/proc``
    and ``/sys`` are found (tests)."""
    cores = _affinity_cores()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def _affinity_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: str | os.PathLike = "/") -> float | None:
    """The CPUs this process's cgroup quota allows, or None where it has none.

    cgroup v2: ``cpu.max`` (``"150000 100000"``: 1.5 CPUs; ``"max 100000"``: none); cgroup v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none), in the process's cgroup (from
    ``/proc/self/cgroup``) and each folder above it (a parent's quota binds its children too); the smallest
    wins. Files that are missing, unreadable or garbled are ignored.
    """
    base = Path(root) / _CGROUP
    v2, v1 = _cgroup_paths(Path(root))
    limits = []
    for folder in _folders_up(base, v2):
        fields = (_read(folder / "cpu.max") or "").split()
        if len(fields) == 2:
            limits.append(_quota_cpus(*fields))
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _folders_up(base / mount, v1):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota and period:
                limits.append(_quota_cpus(quota.strip(), period.strip()))
    return min((x for x in limits if x is not None), default=None)


def _cgroup_paths(root: Path) -> tuple[str, str]:
    """The process's cgroup v2 path and its cgroup v1 ``cpu`` controller's path (``/`` where unknown)."""
    v2 = v1 = "/"
    for line in (_read(root / "proc" / "self" / "cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _folders_up(base: Path, path: str) -> Iterator[Path]:
    """``base/path`` and each folder above it, up to ``base`` itself."""
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]
    for i in range(len(parts), -1, -1):
        yield base.joinpath(*parts[:i])


def _quota_cpus(quota: str, period: str) -> float | None:
    """The CPUs ``quota`` µs of CPU time per ``period`` µs allow; None for no quota (max, -1) or a garbled one."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
