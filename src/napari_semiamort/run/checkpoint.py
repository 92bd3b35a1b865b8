"""Checkpoints: a run's whole state in ``RUN_DIR/checkpoint.pt``, read back to resume (or to question the run)
without scanning the images again.

**Written so that a crash loses at most the work since the last one.** The bytes go to a temporary file beside
it, are flushed to the disk (``fsync``), and only then does the file take the name ``checkpoint.pt``; the one it
replaces is kept as ``checkpoint.prev.pt``. A run killed at any moment (SIGKILL, a power cut, a full disk) leaves
a complete ``checkpoint.pt``, or a complete ``checkpoint.prev.pt`` to fall back on: :func:`load_checkpoint` takes
the newest that reads and says so when it is not the newest. Checkpoints are taken at every epoch's end, the
restarts' epochs included (with the restarts' record: a resumed run ends the selection as the uninterrupted one),
every :data:`CHECKPOINT_SECONDS` between two steps of a long epoch (with where the epoch stands,
:class:`~.progress.EpochProgress`: a resumed run goes on from that step as the uninterrupted one), and when the
run is stopped (Ctrl-C, SIGTERM, the dock's Stop) between two steps.

**Read without running code.** A checkpoint holds tensors and plain data only (numbers, strings, lists, dicts):
it is read with ``torch.load(weights_only=True)``, which builds nothing else, so a crafted ``checkpoint.pt``
cannot run code. Checkpoints of earlier versions also held numpy arrays (the scan's record): those, and nothing
else, are allowed when such a file is read. A file holding any other Python object is refused, naming it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.atomic import atomic_path
from .config import ReconstructionConfig
from .passes import pose_table
from .progress import EpochProgress
from .state import Modes, RunState

__all__ = ["CHECKPOINT", "CHECKPOINT_SECONDS", "PREVIOUS", "DamagedCheckpoint", "UnsafeCheckpoint", "append_metrics",
           "checkpoint_due", "checkpoint_state", "load_checkpoint", "read_checkpoint", "restore_resume",
           "restore_state", "run_state", "save_checkpoint", "settle"]

log = logging.getLogger("napari_semiamort")

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the one before, until a newer one is complete (and after, to fall back on)
# Between two checkpoints inside a long epoch, at most (a step boundary after this long): the work a crash loses.
# Each costs one write of the state (at box 256, ~0.5 GB: about a second on a local disk).
CHECKPOINT_SECONDS = 600.0
FORMAT = 2  # 2: tensors and plain data only (weights_only); 1 (no "format"): numpy arrays too


class UnsafeCheckpoint(ValueError):
    """A checkpoint that holds Python objects a checkpoint of ours never holds: not loaded."""


class DamagedCheckpoint(ValueError):
    """A checkpoint file that is truncated, empty or not a checkpoint at all."""


# ---------------------------------------------------------------- writing
def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """``state`` to ``RUN_DIR/checkpoint.pt``: written whole and flushed to the disk under a temporary name, then
    renamed; the checkpoint it replaces becomes ``checkpoint.prev.pt`` (the one before that is removed first, so
    that the folder never holds more than two checkpoints' bytes). A complete checkpoint is on the disk at every
    moment: ``checkpoint.pt``, or between the two renames ``checkpoint.prev.pt``."""
    run_dir = Path(run_dir)
    path, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    for stray in run_dir.glob(f".{CHECKPOINT}.*.tmp"):  # the temporary file of a write a kill interrupted
        stray.unlink(missing_ok=True)
    have = path.is_file()
    if have:
        prev.unlink(missing_ok=True)
    with atomic_path(path) as tmp:  # a full disk: an OSError naming checkpoint.pt, the temporary file removed
        with open(tmp, "wb") as fh:
            torch.save(_plain({"version": __version__, "format": FORMAT, **state}), fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes on the disk before the name points at them
        if have:
            os.replace(path, prev)
    if not have:  # a previous run's (a folder reused with --force) must not pass for this one's
        prev.unlink(missing_ok=True)
    _fsync_dir(run_dir)  # the renames on the disk too
    return path


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # folders cannot be opened for fsync on Windows (renames are journalled there)
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(obj):
    """``obj`` as tensors and plain data only (what ``weights_only`` reads): numpy arrays as tensors, numpy
    numbers as Python's, paths as strings. Tensors are not copied."""
    if isinstance(obj, dict):
        out = obj.__class__((k, _plain(v)) for k, v in obj.items())  # an OrderedDict stays one (module states)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def checkpoint_due(saved_at: float) -> bool:
    """Whether a checkpoint is due between two steps, the last having been saved at ``saved_at``
    (``time.monotonic()``)."""
    return time.monotonic() - saved_at >= CHECKPOINT_SECONDS


def append_metrics(run_dir: Path, metrics: dict) -> None:
    """An epoch's line in ``RUN_DIR/metrics.jsonl`` (the folder made at the first)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(metrics) + "\n")


# ---------------------------------------------------------------- reading
def _numpy_globals() -> list:
    """What the checkpoints of earlier versions held besides tensors and plain data: numpy arrays (the scan's
    record), under numpy 2's names and numpy 1's."""
    core = getattr(np, "_core", None) or np.core
    found = [np.ndarray, np.dtype, bytes, *{type(np.dtype(t)) for t in (bool, np.int8, np.int32, np.int64,
                                                                          np.float32, np.float64)}]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, name)
        found += [(fn, f"numpy._core.multiarray.{name}"), (fn, f"numpy.core.multiarray.{name}")]
    return found


def _global_names(entries: list) -> set[str]:
    return {e[1] if isinstance(e, tuple) else f"{e.__module__}.{e.__qualname__}" for e in entries}


def read_checkpoint(path: str | Path) -> dict:
    """The state in the checkpoint file ``path``, read without building anything but tensors and plain data
    (and, from earlier versions' files, numpy arrays). :class:`UnsafeCheckpoint` for a file holding other Python
    objects; :class:`DamagedCheckpoint` for one that is truncated or not a checkpoint."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # other objects than tensors: which?
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise DamagedCheckpoint(_reason(exc)) from None
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):  # torch < 2.5
        raise UnsafeCheckpoint(f"{path}: not loaded: it holds Python objects besides tensors (an earlier version's "
                               f"checkpoint, or another program's); torch 2.5 or later reads the former safely")
    try:
        found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # read, not run
    except Exception as exc:  # noqa: BLE001 - whatever the scan of a broken file raises
        raise DamagedCheckpoint(_reason(exc)) from None
    foreign = sorted(found - _global_names(_numpy_globals()))
    if foreign:
        raise UnsafeCheckpoint(
            f"{path}: not loaded: it holds Python objects a napari-semiamort checkpoint never holds "
            f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}), and loading them could run code; "
            f"was it written by another program?")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):  # an earlier version's: numpy arrays too
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise DamagedCheckpoint(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n")[0].split(". ")[0] or type(exc).__name__
    return "empty or truncated" if isinstance(exc, EOFError) else text


def _newest(run_dir: Path) -> tuple[dict, Path]:
    """The newest checkpoint of ``run_dir`` that reads whole, and its path (a line in the log when it is not the
    newest)."""
    files = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.is_file()]
    if not files:
        raise FileNotFoundError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")
    problems = []
    for path in files:
        try:
            state = read_checkpoint(path)
        except DamagedCheckpoint as exc:
            problems.append(f"{path.name} is incomplete or damaged ({exc})")
            continue
        if problems:
            log.warning(f"{run_dir}: {problems[0]}: using {path.name} (written after epoch {state['epoch']})")
        return state, path
    raise DamagedCheckpoint(f"{run_dir}: no checkpoint reads whole: {'; '.join(problems)}")


def load_checkpoint(run_dir: str | Path, **overrides) -> tuple[dict, ReconstructionConfig]:
    """The state saved in ``RUN_DIR/checkpoint.pt`` (or the previous checkpoint where that one is incomplete)
    and its configuration with ``overrides`` applied."""
    state, path = _newest(Path(run_dir))
    state["file"] = path.name  # the newest, or the previous where the newest is damaged
    if isinstance(state.get("data"), dict):  # the scan's record, as the dataset keeps it
        state["data"] = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state["data"].items()}
    saved = state["config"]
    if "stage1" not in saved:  # written before stage 1 had a choice (and the grid became the default): heads
        saved = {**saved, "stage1": "heads"}
    if "polish_epochs" not in saved:  # written before stage 2 ended with the polish: the run as it was planned
        saved = {**saved, "polish_epochs": 0}
    if "relax_symmetry" not in saved:  # written before the polish relaxed poses to their symmetry mates: without
        saved = {**saved, "relax_symmetry": 0.0}
    config = ReconstructionConfig.from_dict({**saved, **overrides})
    return state, config


# ---------------------------------------------------------------- the run's state
def run_state(run) -> dict:
    """The state of ``run`` (a :class:`~napari_semiamort.run.Reconstruction`): what a restart's choice keeps and
    :func:`restore_state` loads."""
    st = run.state
    return {
        "config": run.config.to_dict(), "epoch": st.epoch, "step": run.step_count,
        **run.stage1.state_dict(),
        "volume": run.model.volume.state_dict(), "opt_volume": run.opt_volume.state_dict(),
        "noise": run.model.noise.state_dict(), "junk": st.junk, "modes": st.modes and st.modes._asdict(),
        "poses": st.poses, "winners": st.winners, "shifts": st.shifts, "previous_poses": st.previous_poses,
        "table": None if st.table is None else st.table.state_dict(), "switched_at": st.switched_at,
        "history": st.history, "paths": st.paths, "trial": run.trial, "data": run.data.scan_state()}


def checkpoint_state(run) -> dict:
    """What a checkpoint of ``run`` holds: its state, and where it stands: the restarts' record while they run,
    the epoch in progress (between two steps), the size of ``metrics.jsonl`` then, the random generator's state."""
    metrics = run.run_dir / "metrics.jsonl"
    return {**run_state(run), "restarts": None if run.trial is None else run.restarts.state_dict(),
            "progress": None if run.progress is None else run.progress.state_dict(),
            "metrics_bytes": metrics.stat().st_size if metrics.is_file() else 0, "rng": torch.get_rng_state()}


def restore_state(run, state: dict) -> None:
    """Load a checkpoint's ``state`` into ``run`` (a :class:`~napari_semiamort.run.Reconstruction` built blank)."""
    run.step_count = state["step"]
    run.stage1.load_state_dict(state)
    run.model.volume.load_state_dict(state["volume"])
    run.opt_volume.load_state_dict(state["opt_volume"])
    run.model.noise.load_state_dict(state["noise"])
    table = None
    if state["table"] is not None:
        table = pose_table(run.config, run.size, state["poses"].to(run.device))
        table.load_state_dict({k: v.to(run.device) for k, v in state["table"].items()})
    # checkpoints before the switch rule recorded its epoch: the fixed rule's
    switched = state.get("switched_at", run.schedule.switch.planned if table is not None else None)
    run.state = RunState(
        poses=state["poses"], winners=state.get("winners", torch.zeros(len(run.data), dtype=torch.long)),
        shifts=state["shifts"], previous_poses=state["previous_poses"], table=table, switched_at=switched,
        epoch=state["epoch"], history=list(state["history"]),
        paths={int(k): list(v) for k, v in state.get("paths", {}).items()}, junk=state.get("junk"),
        modes=Modes.from_dict(state.get("modes")))
    if state["shifts"] is None:  # not estimated, or no longer: dropped at the switch (centred particles)
        run.stage1.stop_shifts()
    run.restarts.resumed(run.state.history)


def restore_resume(run, state: dict) -> None:
    """Where a checkpoint's run stood, into ``run`` (its state restored): the restart being trained and the
    restarts' record, the epoch in progress, the random generator. Checkpoints of earlier versions were taken
    at epoch ends after the restarts only: none of it."""
    if state.get("restarts") is not None:
        run.trial = state["trial"]
        run.restarts.load_state_dict(state["restarts"])
    if state.get("progress") is not None:
        run.progress = EpochProgress.from_dict(state["progress"], run.device)
        run.reference = run.progress.reference  # a polish epoch's map, which its steps score against
        log.info(f"the checkpoint was taken {run.progress.done} steps into epoch {run.progress.epoch + 1}"
                 + ("" if run.trial is None else f" of restart {run.trial + 1}"))
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    run.resumed = {"file": state["file"], "metrics_bytes": state.get("metrics_bytes")}


def settle(run) -> None:
    """A resumed ``run``, before it trains on: ``metrics.jsonl`` back to its size at the checkpoint (the lines of
    the epochs after it, trained before a crash and trained again now, would come twice), and a damaged newest
    checkpoint replaced by the previous one the run resumed from (the next checkpoint keeps that one as the
    previous). Resuming alone changes nothing in the folder: ``inspect`` and the dock's Open run resume too."""
    found, run.resumed = run.resumed, None
    if run.progress is not None:  # the epoch's time: from now on, added to the time it took before the stop
        run.progress.started = time.perf_counter()
    if found["file"] == PREVIOUS:
        os.replace(run.run_dir / PREVIOUS, run.run_dir / CHECKPOINT)
    path, size = run.run_dir / "metrics.jsonl", found["metrics_bytes"]
    if size is not None and path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
