"""The dock widget: Data, Training, Advanced, Run and the pose posterior, driving a run in a thread worker.

The widget never does maths and never touches the engine: its form (:mod:`.form`, made from the run's table of
fields) gives a :class:`~napari_semiamort.run.ReconstructionConfig`; the Qt-free session
(:mod:`napari_semiamort.run.session`) runs it in a napari ``thread_worker`` (one yield per training step, so
pause and stop act within a step) and answers with a run info, snapshots and posteriors; on the Qt main thread
the widget only moves their arrays into layers (:mod:`.layers`): the volume (3D, scaled in Å), the watched
particles' candidates with the best framed, the posterior sphere, and the curves in a plots dock.
"""

from __future__ import annotations

import datetime
import gc
import time
from pathlib import Path

from magicgui.widgets import PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..run.config import ReconstructionConfig
from ..run.fields import ADVANCED, DATA, TRAINING, dock_wording
from ..run.session import Control, RunInfo
from ..run.snapshot import Snapshot
from ..run.verdict import verdict_lines
from .actions import export_chimerax, show_curves, show_final_map
from .form import ConfigForm
from .layers import CANDIDATES, SPHERE, SPHERE_POINTS, VOLUME, WINNERS, ResultLayers
from .reopen import RunFolderMixin
from .runner import default_run_dir, finished, run_in_worker, shutdown
from .status import RunStatus
from .view import FramePacer

__all__ = ["CANDIDATES", "SPHERE", "SPHERE_POINTS", "VOLUME", "WINNERS", "ReconstructionWidget"]


def _group(title: str, content: QWidget | QFormLayout) -> QGroupBox:
    """A titled box around a widget (a form section) or a layout."""
    group = QGroupBox(title)
    if isinstance(content, QWidget):
        layout = QVBoxLayout(group)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(content)
    else:
        group.setLayout(content)
    return group


class ReconstructionWidget(RunFolderMixin, QWidget):
    """Plugins → napari-semiamort → Ab-initio reconstruction."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.info: RunInfo | None = None  # the run's, once its data are read (or read from a checkpoint)
        self.last_snapshot: Snapshot | None = None
        self.run_dir: Path | None = None
        self.results = ResultLayers(napari_viewer)
        self._control = Control()
        self._started = 0.0
        self.pacer = FramePacer(self)  # the live layers change no faster than frames draw
        self._unshown_end: Snapshot | None = None  # the last epoch end whose curves are not drawn yet
        self._pending_posterior = False  # a posterior asked for before the run folder was open
        self._plots = None
        self._failure = ""

        pick = PushButton(text="Watch shown particle")
        pick.changed.connect(lambda *_: self.watch_shown_particle())
        self.form = ConfigForm(beside={"watch": [pick]})
        self.form["watch"].native.editingFinished.connect(self._apply_watch)
        advanced = QCollapsible("Advanced")
        advanced.addWidget(self.form.sections[ADVANCED])
        layout = QVBoxLayout(self)
        layout.addWidget(_group("Data", self.form.sections[DATA]))
        layout.addWidget(_group("Training", self.form.sections[TRAINING]))
        layout.addWidget(advanced)
        layout.addWidget(_group("Run", self._run_section()))
        layout.addWidget(_group("Pose posterior", self._posterior_section()))
        layout.addStretch(1)
        self._set_running(False)
        for widget in self.form.widgets.values():  # every change of a field: Start enabled, or why not
            widget.changed.connect(self._revalidate)
        self._revalidate()

        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        for layer in self.viewer.layers:
            self._on_layer_inserted(type("E", (), {"value": layer})())
        # Closing the widget (or the viewer) stops the worker: capture plain objects, not ``self``.
        self._worker_holder: list = [None]
        control, holder = self._control, self._worker_holder
        self.destroyed.connect(lambda *_: shutdown(control, holder))

    def _run_section(self) -> QFormLayout:
        self.outdir = QLineEdit()
        self.outdir.setPlaceholderText("run folder (default: beside the particles)")
        self.outdir.textChanged.connect(lambda *_: self._revalidate())
        open_button = QPushButton("Open run…")
        open_button.setToolTip("show a finished or stopped run folder's map, curves, candidates and posteriors")
        open_button.clicked.connect(lambda: self.open_run())
        folder = QHBoxLayout()
        folder.addWidget(self.outdir, 1)
        folder.addWidget(open_button)
        self.start_button, self.pause_button = QPushButton("Start"), QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.stop_button, self.resume_button = QPushButton("Stop"), QPushButton("Resume run")
        self.resume_button.setToolTip("continue the run folder's run from its checkpoint, up to Epochs")
        self.start_button.clicked.connect(self.start)
        self.pause_button.toggled.connect(self._toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume_run)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button, self.resume_button):
            buttons.addWidget(b)
        self.reason = QLabel("")  # why Start is disabled
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet("color: #ef5350")
        self.status = RunStatus()
        # whether the run worked: stage 1's verdict at the switch, the run's at its end (run/verdict.py)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        frame, export = QPushButton("Frame map"), QPushButton("Export to ChimeraX")
        frame.setToolTip("centre the 3D view on the map and the posterior sphere (Home does the same in 3D)")
        frame.clicked.connect(lambda: self.results.scene.frame())
        export.clicked.connect(self.export_chimerax)
        tail = QHBoxLayout()
        tail.addWidget(frame)
        tail.addWidget(export)
        form = QFormLayout()
        form.addRow("Run folder", folder)
        for row in (buttons, self.reason, self.status.row, self.status.line, self.verdict, tail):
            form.addRow(row)
        return form

    @property
    def progress(self):
        return self.status.progress

    def _posterior_section(self) -> QFormLayout:
        self.posterior_particle = QSpinBox()
        self.posterior_particle.setRange(0, 10**9)
        self.posterior_live = QCheckBox("refresh at each snapshot")
        self.posterior_live.setChecked(True)
        show = QPushButton("Show posterior")
        show.clicked.connect(self.show_posterior)
        row = QHBoxLayout()
        row.addWidget(self.posterior_particle)
        row.addWidget(show)
        form = QFormLayout()
        form.addRow("Particle", row)
        form.addRow("", self.posterior_live)
        return form

    # ------------------------------------------------------------------ the form
    def config(self) -> ReconstructionConfig:
        """The configuration the form describes (validated)."""
        return self.form.config()

    def _on_layer_inserted(self, event) -> None:
        meta = getattr(event.value, "metadata", {}) or {}
        if meta.get("semiamort_kind") == "particles":
            if not self.form.value("particles"):
                self.form.set_value("particles", meta["source"])
            # a double click in the particle gallery watches the particle shown
            event.value.mouse_double_click_callbacks.append(lambda layer, ev: self.watch_shown_particle())
        if meta.get("semiamort_kind") == "reference" and not self.form.value("reference_map"):
            self.form.set_value("reference_map", meta["source"])

    def watch_shown_particle(self) -> None:
        """Add the particle shown in the particle layer (the slider's position) to the watched ones."""
        idx = int(self.viewer.dims.current_step[0])
        ids = self.form.value("watch")
        if idx not in ids:
            self.form.set_value("watch", [*ids, idx])
            self._apply_watch()

    def _apply_watch(self) -> None:
        if self.worker is not None:  # the worker applies it between steps: the next full snapshot shows it
            self._control.set_watch(self.form.value("watch"))

    # ------------------------------------------------------------------ run control
    def _revalidate(self, *_) -> str:
        """Enable Start where the fields describe a run, else disable it with the reason beside it (returned)."""
        if self.worker is not None:
            return ""
        try:
            self.config()
            reason = ""
        except (ValueError, FileNotFoundError) as exc:
            reason = dock_wording(str(exc))
        self.start_button.setEnabled(not reason)
        self.start_button.setToolTip(reason or "start a reconstruction of the particles")
        self.reason.setText(reason)
        folder = self.outdir.text().strip()
        self.resume_button.setEnabled(bool(folder) and (Path(folder) / "checkpoint.pt").is_file())
        return reason

    def start(self) -> None:
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        reason = self._revalidate()
        if reason:
            show_error(reason)
            return
        cfg = self.config()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.outdir.text().strip()
        self.run_dir = Path(out) if out else default_run_dir(cfg.particles, stamp)
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            show_error(f"{self.run_dir}: exists and is not empty; choose another run folder (or Resume run)")
            return
        self._launch(run_in_worker, (cfg, self.run_dir, self._control), f"reading {Path(cfg.particles).name} …")

    def _launch(self, function, args: tuple, line: str) -> None:
        from napari.qt.threading import create_worker

        self._control.reset()
        self._failure = ""
        self.info, self.last_snapshot = None, None
        self.results.clear()
        self.plots.clear()
        self.verdict.setText("")
        # errors are ours to show (_on_error), not to re-raise in the Qt event loop
        self.worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True)
        self._worker_holder[0] = self.worker
        self.worker.yielded.connect(self._on_yield)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self._started = time.perf_counter()
        self.status.begin(line)
        self._set_running(True)
        self.worker.start()

    def _toggle_pause(self, paused: bool) -> None:
        if self.worker is None:
            return
        if paused:
            self.worker.pause()
            self.pause_button.setText("Resume")
            self.status.set_state("paused")
        else:
            self.worker.resume()
            self.pause_button.setText("Pause")
            self.status.set_state("running")

    def pause(self) -> None:
        self.pause_button.setChecked(True)

    def resume(self) -> None:
        self.pause_button.setChecked(False)

    def stop(self) -> None:
        """Stop after the step in progress; the worker then writes the map and poses reached."""
        if self.worker is None:
            return
        self._control.stop = True
        if self.pause_button.isChecked():
            self.worker.resume()  # a paused worker must run on to see the stop
        self.status.set_state("stopping")

    def _set_running(self, running: bool) -> None:
        self.pacer.live(running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        if running:
            self.start_button.setEnabled(False)
            self.resume_button.setEnabled(False)
        else:
            self.pause_button.setChecked(False)
            self.pause_button.setText("Pause")
            self._revalidate()

    # ------------------------------------------------------------------ results in, on the main thread
    @property
    def plots(self):
        if self._plots is None:
            from .plots import PlotsWidget

            self._plots = PlotsWidget(self.viewer)
            self.viewer.window.add_dock_widget(self._plots, name="semiamort plots", area="bottom")
        return self._plots

    def _on_yield(self, item) -> None:
        if isinstance(item, Snapshot):
            self._on_snapshot(item)
        elif isinstance(item, RunInfo):  # the data are read: training starts
            # Full garbage collections of napari's and torch's many long-lived objects took up to 300 ms
            # (measured, benchmarks/ui_latency.py), stalling the event loop: the objects alive now are
            # moved out of the collector's scans.
            gc.freeze()
            self.info = item
            self.status.set_state("running", f"{item.n_particles} particles, box {item.box}, "
                                  f"{item.pixel_size:.3f} Å/px on {item.device}")
            self.verdict.setText(item.stage1_band or "")  # until stage 1's verdict: a band widened from the data
        else:  # a pose posterior
            self._show_posterior(item)

    def _on_snapshot(self, snap: Snapshot) -> None:
        self.last_snapshot = snap
        self.status.show_snapshot(snap, time.perf_counter() - self._started)
        if snap.epoch_end:
            self._unshown_end = snap  # its curves wait for the next frame due; the verdict is a label
            self._show_verdict(snap.metrics)
        # the layers and curves change at most twice a second, less often where frames draw slowly (a busy
        # machine, software OpenGL; view.FramePacer): a snapshot not due is dropped, never queued. The map and
        # the candidates change in one turn (one frame of the canvas); the curves, their own widget, in the next.
        if snap.volume is None or not self.pacer.due():
            return
        end, self._unshown_end = self._unshown_end, None
        self.results.show_volume(snap.volume, snap.pixel_size, end is not None)
        if snap.watched:
            self.results.show_candidates(snap.watched, snap.box, snap.pixel_size)
        if end is not None:
            QTimer.singleShot(0, lambda: show_curves(self.plots, end))

    def _show_verdict(self, metrics: dict) -> None:
        """The verdict a snapshot's metrics hold, with a warning where the run failed or is doubtful."""
        from napari.utils.notifications import show_warning

        for line, warn in verdict_lines(metrics):
            line = dock_wording(line)  # its advice names the dock's fields, not the CLI's flags
            self.verdict.setText(line)
            if warn:
                show_warning(line)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        where = f"; results reached so far are in {self.run_dir}" if self.info is not None else ""
        self._failure = dock_wording(str(exc))
        show_error(f"Reconstruction failed: {self._failure}{where}")
        self.status.end("failed", self._failure)

    def _on_finished(self) -> None:
        self.worker = None
        self._worker_holder[0] = None
        self._set_running(False)
        state = "failed" if self._failure else "finished" if finished(self.last_snapshot) else "stopped"
        self.status.end(state, self._failure or f"results in {self.run_dir}")
        if self._unshown_end is not None:  # the last epoch's curves, whatever the pace
            show_curves(self.plots, self._unshown_end)
        if self.info is not None and self.run_dir is not None and (self.run_dir / "map.mrc").is_file():
            show_final_map(self.results, self.plots, self.run_dir)

    # ------------------------------------------------------------------ pose posterior
    def show_posterior(self) -> None:
        """The chosen particle's posterior: refreshed by the running worker, else computed once from the run in
        memory; with none, the run folder is opened first (its map and curves too, :meth:`open_run`)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        index = self.posterior_particle.value()
        if self.worker is not None:  # the worker computes it at its next full snapshot (and then every 2 s)
            self._control.ask_posterior(index, live=self.posterior_live.isChecked())
            return
        if self.info is None or self.info.handle is None:
            self._pending_posterior = True  # asked again once the run folder is open
            self.open_run(Path(self.outdir.text().strip()))
            return
        job = create_worker(self.info.handle.posterior, index, _ignore_errors=True)
        job.returned.connect(self._show_posterior)
        job.errored.connect(lambda exc: show_error(f"Posterior failed: {exc}"))
        self._posterior_job = job
        job.start()

    def _show_posterior(self, post) -> None:
        self.results.show_posterior(post, self.info.box, self.info.pixel_size)
        self.plots.set_posterior(post)

    # ------------------------------------------------------------------ export
    def export_chimerax(self) -> Path | None:
        """Write the map (and half maps when the run made them) and a ChimeraX script; offer to open it."""
        from napari.utils.notifications import show_error

        if self.run_dir is None or self.info is None:
            show_error("no run yet: start a reconstruction (or open a run folder) first")
            return None
        return export_chimerax(self, self.run_dir, self.results, self.worker is not None)
