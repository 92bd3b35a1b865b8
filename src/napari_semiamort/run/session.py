"""A run driven from another thread, without Qt: the protocol between a program (the plugin's dock) and its
worker.

The program builds a :class:`Control` and hands it, with the configuration, to :func:`train` running in a
worker thread. The worker yields a :class:`RunInfo` once the data are read, then one
:class:`~.snapshot.Snapshot` per training step, and a :class:`~.posterior.PosePosterior` whenever the
program asked for one; at the end, on a stop or on an error it writes the outputs reached. The program never
touches the run: it talks to the worker through the :class:`Control` (stop, the watched particles, the
posterior wanted) and, once the worker is done, asks the run's :class:`RunHandle` for more posteriors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import ReconstructionConfig

__all__ = ["Control", "RunHandle", "RunInfo", "describe", "open_run", "posterior_from_checkpoint", "resume", "train"]

POSTERIOR_INTERVAL = 2.0  # s between live posteriors (~0.1 s each at box 64 on a CPU)


class Control:
    """What the program tells the worker: plain state, set from one thread and read by the worker between
    steps (the worker never touches the program's objects)."""

    def __init__(self) -> None:
        self.stop = False
        self.posterior: int | None = None  # the particle whose posterior the worker computes
        self.posterior_live = True  # refresh it (at most every POSTERIOR_INTERVAL s), or compute it once
        self._watch: list[int] | None = None  # a new watch list, not yet applied
        self._lock = threading.Lock()

    def set_watch(self, indices) -> None:
        """Watch these particles from the run's next full snapshot on."""
        with self._lock:
            self._watch = [int(i) for i in indices]

    def take_watch(self) -> list[int] | None:
        """The watch list asked for since the last call (None: no change); the worker applies it."""
        with self._lock:
            ids, self._watch = self._watch, None
        return ids

    def ask_posterior(self, index: int, live: bool = True) -> None:
        """Compute particle ``index``'s posterior at the next full snapshot (and then every few seconds when
        ``live``)."""
        self.posterior_live = live
        self.posterior = int(index)

    def reset(self) -> None:
        """A fresh start: no stop, no posterior, no pending watch list."""
        self.stop = False
        self.posterior = None
        self.posterior_live = True
        self.take_watch()


class RunHandle:
    """A run kept in memory after its worker ended (or read from a checkpoint): opaque to the program, which
    may ask it for posteriors (one at a time, never while the run trains)."""

    def __init__(self, run) -> None:
        self._run = run

    def posterior(self, index: int):
        from .posterior import pose_posterior

        return pose_posterior(self._run, index)

    def snapshot(self):
        """The run's state as its last epoch's end showed it: the decoder's volume, the watched particles'
        candidates (or refined poses), the epoch's metrics and the history (a run read from its checkpoint)."""
        run = self._run
        st = run.state
        metrics = dict(st.history[-1]) if st.history else {}
        stage = run.schedule.stage(max(st.epoch - 1, 0), st.switched_at, st.history[:-1])
        return run._snapshot(stage, float(metrics.get("loss", float("nan"))), 0.0, metrics)


@dataclass(frozen=True)
class RunInfo:
    """What a program shows of a run once its data are read."""

    run_dir: Path | None
    n_particles: int  # images used
    skipped: int  # images skipped (NaN or Inf)
    box: int  # the run's box: the volume's and the candidates' (pixels)
    pixel_size: float  # Å per pixel at that box
    raw_box: int  # the images' own box
    raw_pixel_size: float
    map_box: int  # the box of map.mrc
    inverted: bool  # the images' contrast was inverted
    device: str
    epochs: int
    epoch: int  # epochs already done (a resumed run)
    handle: RunHandle | None = field(default=None, compare=False, repr=False)
    stage1_band: str | None = None  # a line on stage 1's band where the run widened it from the data


def band_line(run) -> str | None:
    """A line on stage 1's band where ``run`` widened it from the images' spectral SNR, else None."""
    if not run.band_from_data:
        return None
    from .schedule import BAND_SNR, default_band_end

    px, default = round(run.stage1_end * run.size / 2), round(default_band_end(run.size) * run.size / 2)
    return (f"stage 1's band: to {px} Fourier px ({run.size * run.data.pixel_size / px:.0f} Å), as far as the "
            f"images' spectral SNR stays ≥ {BAND_SNR} (weak at the default's {default} px)")


def describe(run, run_dir: str | Path | None = None, with_handle: bool = True) -> RunInfo:
    """A run's :class:`RunInfo` (with a :class:`RunHandle` on it unless ``with_handle`` is false)."""
    d = run.data
    return RunInfo(
        run_dir=None if run_dir is None else Path(run_dir), n_particles=len(d), skipped=len(d.skipped),
        box=int(run.size), pixel_size=float(d.pixel_size), raw_box=int(d.raw_box),
        raw_pixel_size=float(d.raw_pixel_size), map_box=int(d.check_box(run.config.output_box)),
        inverted=bool(d.sign < 0), device=str(run.device), epochs=int(run.end_epoch), epoch=int(run.epoch),
        handle=RunHandle(run) if with_handle else None, stage1_band=band_line(run),
    )


def train(config: ReconstructionConfig, run_dir: str | Path, control: Control) -> Iterator:
    """The worker's generator: builds the run (reading the data), yields its :class:`RunInfo`, then one
    snapshot per step and the posteriors asked for; on a stop, an error or the end, writes the outputs
    reached (partial results are kept). Returns the run folder."""
    from .loop import Reconstruction
    from .outputs import write_config

    run_dir = Path(run_dir)
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _locked(run_dir)
    try:
        run = Reconstruction(config, run_dir=run_dir)
    except BaseException:  # a start that failed (unreadable data) leaves no empty run folder behind
        lock.release()
        if made and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    try:
        write_config(run_dir, config.to_dict())
        return (yield from _drive(run, run_dir, control))
    finally:
        lock.release()


def resume(run_dir: str | Path, control: Control, epochs: int | None = None) -> Iterator:
    """The worker's generator for a run continued from ``run_dir``'s checkpoint (``epochs``: its new length),
    as :func:`train`'s."""
    from .loop import Reconstruction
    from .outputs import write_config

    lock = _locked(Path(run_dir))
    try:
        run = Reconstruction.resume(run_dir, **({} if epochs is None else {"epochs": int(epochs)}))
        write_config(Path(run_dir), run.config.to_dict(), resumed=True)
        return (yield from _drive(run, Path(run_dir), control))
    finally:
        lock.release()


def _locked(run_dir: Path):
    """The run folder's lock, taken for this run (:class:`~.folder.RunLock`: a folder where another run is alive
    is refused in one line, a stale lock taken over)."""
    from .folder import RunLock

    lock = RunLock(run_dir, command="napari: the Ab-initio reconstruction dock")
    lock.acquire()
    return lock


def _drive(run, run_dir: Path, control: Control) -> Iterator:
    """Yield ``run``'s :class:`RunInfo`, then its steps; write the outputs reached whatever happens."""
    from .outputs import write_outputs

    yield describe(run, run_dir)
    try:
        yield from _steps(run, control)
    finally:
        write_outputs(run, run_dir)
    return str(run_dir)


def _steps(run, control: Control) -> Iterator:
    """The run's snapshots, with the control applied between steps: stop, the watch list, posteriors."""
    handle = RunHandle(run)
    last_posterior = 0.0
    for snap in run:
        yield snap
        if control.stop:  # between two steps: a checkpoint at this one, which Resume run goes on from
            if run.run_dir is not None:
                run.save_checkpoint()
            return
        ids = control.take_watch()
        if ids is not None:
            run.set_watch(ids)
        due = time.perf_counter() - last_posterior >= POSTERIOR_INTERVAL or not control.posterior_live
        if control.posterior is not None and snap.volume is not None and due:
            last_posterior = time.perf_counter()
            index = control.posterior
            if not control.posterior_live:
                control.posterior = None
            yield handle.posterior(index)


def posterior_from_checkpoint(run_dir: str | Path, index: int):
    """For a run that is not in memory: read its checkpoint, then particle ``index``'s posterior. Returns the
    run's :class:`RunInfo` (its handle answers later posteriors) and the posterior."""
    from .loop import Reconstruction

    run = Reconstruction.resume(run_dir, cache_images=False)  # a few images are read, not all
    info = describe(run, run_dir)
    return info, info.handle.posterior(index)


def open_run(run_dir: str | Path):
    """A finished or stopped run, read from its checkpoint without training (a few images are read): its
    :class:`RunInfo` (the handle answers posteriors) and the snapshot of its last epoch's end."""
    from .loop import Reconstruction

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt here; a run folder holds one from its first epoch on")
    run = Reconstruction.resume(run_dir, cache_images=False)
    info = describe(run, run_dir)
    return info, info.handle.snapshot()
