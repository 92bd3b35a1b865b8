"""The dock's side of the worker: what runs in the napari thread worker, the status line, and the shutdown
when the dock goes away. The protocol itself (control, run info, snapshots, posteriors) is the Qt-free
:mod:`napari_semiamort.run.session`."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from ..run.config import ReconstructionConfig
from ..run.session import Control

__all__ = ["default_run_dir", "duration", "finished", "interface_threads", "open_in_worker", "resume_in_worker",
           "run_in_worker", "shutdown", "status_line"]


def interface_threads() -> int:
    """The CPU threads the dock gives torch: the cores free of other work (affinity, cgroup quota, the load;
    :func:`~napari_semiamort.devices.auto_threads`) but one, left to the Qt main thread (with every core
    computing, the UI stalls for 100s of ms)."""
    from ..devices import auto_threads

    return auto_threads(reserve=1)


def default_run_dir(particles: str | Path, stamp: str) -> Path:
    """Where a run goes when the dock's run folder is empty: beside the particles, unless they are the demo's
    (in the cache folder, which is no place for results) or their folder cannot be written; then in
    ``~/semiamort-runs``."""
    from ..plugin.sample import demo_root

    folder = Path(particles).resolve().parent
    if folder.is_relative_to(demo_root().resolve()) or not os.access(folder, os.W_OK):
        folder = Path.home() / "semiamort-runs"
    return folder / f"semiamort-run-{stamp}"


def run_in_worker(config: ReconstructionConfig, run_dir: Path, control: Control):
    """The worker's generator: the session's :func:`~napari_semiamort.run.session.train`, after setting the CPU
    threads (a process-wide setting, the program's to choose; set in the worker thread, where torch computes)."""
    from ..devices import set_cpu_threads
    from ..run.session import train

    set_cpu_threads(config.threads)
    yield_to_the_interface()
    return (yield from train(config, run_dir, control))


WORKER_NICENESS = 5  # the worker's threads against the interface's (Linux: per thread)


def yield_to_the_interface() -> None:
    """Lower the calling worker thread's scheduling priority by :data:`WORKER_NICENESS` (the threads it starts,
    the image loader's, inherit it): where the cores are contended, the Qt main thread and the renderer draw
    first. Linux only, where a thread's niceness is its own (elsewhere it would lower the whole program)."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)
    except OSError:
        pass


def resume_in_worker(run_dir: Path, control: Control, epochs: int | None):
    """The worker's generator for a run continued from its folder's checkpoint, with the dock's CPU threads."""
    from ..devices import set_cpu_threads
    from ..run.session import resume

    set_cpu_threads(interface_threads())
    yield_to_the_interface()
    return (yield from resume(run_dir, control, epochs))


def open_in_worker(run_dir: Path):
    """A run folder read from its checkpoint (:func:`~napari_semiamort.run.session.open_run`), off the GUI
    thread: its run info and last snapshot."""
    from ..devices import set_cpu_threads
    from ..run.session import open_run

    set_cpu_threads(interface_threads())
    return open_run(run_dir)


def status_line(snap, elapsed: float, progress: float | None = None) -> str:
    """Restart, epoch, stage, speed and the time left, from a snapshot and the seconds since the start (the time
    left from ``progress``, the run's fraction done as shown, default the snapshot's)."""
    progress = snap.progress if progress is None else progress
    eta = elapsed / max(progress, 1e-9) - elapsed
    restart = f"restart {snap.restart + 1} · " if snap.restart is not None else ""
    return (f"{restart}epoch {snap.epoch + 1}/{snap.epochs} · {snap.stage} · "
            f"{snap.images_per_second:.0f} img/s · ETA {duration(eta)}")


def finished(snap) -> bool:
    """Whether the run behind this last snapshot reached its last epoch."""
    return snap is not None and snap.epoch_end and snap.restart is None and snap.epoch + 1 >= snap.epochs


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def shutdown(control: Control, holder: list) -> None:
    """The dock is gone: stop the worker after its current step (it then writes its outputs)."""
    control.stop = True
    worker = holder[0]
    if worker is not None:
        try:
            worker.yielded.disconnect()
            worker.finished.disconnect()
            worker.errored.disconnect()
        except (TypeError, RuntimeError):
            pass
        if getattr(worker, "is_paused", False):
            worker.resume()
