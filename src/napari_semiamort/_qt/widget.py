"""The dock widget: Data, Training and Run, driving the engine's run iterator in a thread worker.

The widget never does maths: it builds a :class:`~napari_semiamort.run.ReconstructionConfig`, runs the
:class:`~napari_semiamort.run.Reconstruction` iterator in a napari ``thread_worker`` (one yield per
training step, so pause and stop act within a step), and on the Qt main thread only moves the snapshots'
arrays into layers: the volume (3D, scaled in Å), the watched particles' candidates with the winning head
framed, and the curves in a plots dock.
"""

from __future__ import annotations

import datetime
import gc
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..run.config import ReconstructionConfig

__all__ = ["ReconstructionWidget"]

VOLUME, CANDIDATES, WINNERS = "semiamort volume", "semiamort candidates", "semiamort winners"
SPHERE, SPHERE_POINTS = "semiamort posterior", "semiamort posterior poses"


def available_devices() -> list[str]:
    """``auto``, every CUDA device, MPS when present, and the CPU."""
    import torch

    devices = ["auto"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices + ["cpu"]


class _Control:
    """What the main thread tells the worker (a plain object: the worker never touches the widget)."""

    def __init__(self):
        self.stop = False
        self.posterior: int | None = None  # the particle whose posterior the worker computes
        self.posterior_live = True  # refresh it (at most every 2 s: ~0.1 s each at box 64 on a CPU), or once


def _train(config: ReconstructionConfig, run_dir: Path, control: _Control):
    """The worker's generator: builds the run (reading the data off the GUI thread), yields it, then one
    snapshot per step; on stop, error or the end, writes the outputs reached (partial results kept)."""
    from ..run.loop import Reconstruction
    from ..run.outputs import write_config, write_outputs

    run_dir.mkdir(parents=True, exist_ok=True)
    run = Reconstruction(config, run_dir=run_dir)
    write_config(run_dir, config.to_dict())
    yield run
    last_posterior = 0.0
    try:
        for snap in run:
            yield snap
            if control.stop:
                break
            due = time.perf_counter() - last_posterior >= 2.0 or not control.posterior_live
            if control.posterior is not None and snap.volume is not None and due:
                last_posterior = time.perf_counter()
                index = control.posterior
                if not control.posterior_live:
                    control.posterior = None
                yield _posterior(run, index)
    finally:
        write_outputs(run, run_dir)
    return str(run_dir)


def _posterior(run, index: int):
    from ..run.posterior import pose_posterior

    return pose_posterior(run, index)


def _posterior_from_checkpoint(run_dir: Path, index: int):
    """For a run that is not in memory: read its checkpoint (in a worker), then the posterior."""
    from ..run.loop import Reconstruction

    run = Reconstruction.resume(run_dir)
    return run, _posterior(run, index)


def _spin(lo, hi, value, step=1, decimals=None, special=None):
    box = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


class ReconstructionWidget(QWidget):
    """Plugins → napari-semiamort → Ab-initio reconstruction."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.run = None
        self.run_dir: Path | None = None
        self._control = _Control()
        self._started = 0.0
        self._last_volume_push = 0.0
        self._volume: np.ndarray | None = None
        self._volume_px: float | None = None  # its voxel size (Å)
        self._auto_contrast: tuple | None = None
        self._plots = None
        self._failure = ""
        # steps between full snapshots (volume, candidates); the volume layer is updated at most twice a second
        self.snapshot_every = 10
        d = ReconstructionConfig()

        # ---- Data
        self.path = QLineEdit()
        self.path.setPlaceholderText("particles: .star, .cs or .mrcs")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(browse)
        self.pixel_size = _spin(0, 100, 0, 0.1, decimals=4, special="from the file")
        self.box = _spin(0, 1024, 0, 2, special="as extracted")
        self.box.setToolTip("infer the poses on images downsampled to this box (faster); the exported map is "
                            "still made at the images' own box from the final poses")
        self.use_ctf = QCheckBox("model the CTF")
        self.use_ctf.setChecked(True)
        self.halves = QCheckBox("half maps and FSC")
        self.mask_diameter = _spin(0, 100_000, 0, 10, decimals=1, special="none")
        self.mask_diameter.setToolTip("soft circular mask on the images: the particle's diameter + ~10 % (Å)")
        self.shifts = QCheckBox("estimate shifts (off-centre particles)")
        self.shifts.setToolTip("search each image's shift in stage 1 and refine it in stage 2; the map is kept "
                               "centred. Needed unless the particles were re-centred (e.g. re-extracted after "
                               "a refinement)")
        self.shift_search = _spin(0, 64, d.shift_search, special="none: regressed by the heads")
        self.shift_search.setToolTip("the shifts stage 1 tries: ± this many pixels in steps of 1 (cost grows "
                                     "with its square)")
        self.shift_search.setEnabled(False)
        self.shifts.toggled.connect(self.shift_search.setEnabled)
        self.reference = QLineEdit()
        self.reference.setPlaceholderText("optional: ground-truth map (simulated data)")
        data = QFormLayout()
        data.addRow("Particles", row)
        data.addRow("Pixel size (Å)", self.pixel_size)
        data.addRow("Downsample to box", self.box)
        data.addRow("", self.use_ctf)
        data.addRow("", self.halves)
        data.addRow("Mask diameter (Å)", self.mask_diameter)
        data.addRow("", self.shifts)
        data.addRow("Shift search (± px)", self.shift_search)
        data.addRow("Reference", self.reference)

        # ---- Training
        self.heads = _spin(1, 512, d.heads)
        self.encoder_lr = _spin(1e-6, 1.0, d.encoder_lr, 1e-4, decimals=6)
        self.volume_lr = _spin(1e-6, 1.0, d.volume_lr, 1e-3, decimals=6)
        self.pose_lr = _spin(1e-6, 1.0, d.pose_lr, 1e-3, decimals=6)
        self.switch_epoch = _spin(0, 10_000, d.switch_epoch)
        self.epochs = _spin(1, 10_000, d.epochs)
        self.batch_size = _spin(2, 4096, d.batch_size)
        self.stage2_batch_size = _spin(0, 4096, d.stage2_batch_size or 0, special="as stage 1")
        self.stage2_batch_size.setToolTip("images per step in stage 2; 256 is faster on a GPU, and each image "
                                          "still gets its pose steps every epoch")
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.seed = _spin(0, 2**31 - 1, d.seed)
        self.watch = QLineEdit(" ".join(str(i) for i in d.watch))
        self.watch.setToolTip("particle indices (0-based) whose candidates are shown; or pick one in the "
                              "particle layer and press 'Watch shown particle'")
        self.watch.editingFinished.connect(self._apply_watch)
        watch_row = QHBoxLayout()
        watch_row.addWidget(self.watch)
        pick = QPushButton("Watch shown particle")
        pick.clicked.connect(self.watch_shown_particle)
        watch_row.addWidget(pick)
        train = QFormLayout()
        train.addRow("Heads (M)", self.heads)
        train.addRow("Encoder lr", self.encoder_lr)
        train.addRow("Volume lr", self.volume_lr)
        train.addRow("Pose lr", self.pose_lr)
        train.addRow("Switch epoch", self.switch_epoch)
        train.addRow("Epochs", self.epochs)
        train.addRow("Batch size", self.batch_size)
        train.addRow("Stage-2 batch", self.stage2_batch_size)
        train.addRow("Device", self.device)
        train.addRow("Seed", self.seed)
        train.addRow("Watch", watch_row)

        # ---- Run
        self.outdir = QLineEdit()
        self.outdir.setPlaceholderText("run folder (default: beside the particles)")
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.stop_button = QPushButton("Stop")
        self.export_button = QPushButton("Export to ChimeraX")
        self.start_button.clicked.connect(self.start)
        self.pause_button.toggled.connect(self._toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.export_button.clicked.connect(self.export_chimerax)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        run = QFormLayout()
        run.addRow("Run folder", self.outdir)
        run.addRow(buttons)
        run.addRow(self.progress)
        run.addRow(self.status)
        run.addRow(self.export_button)

        # ---- Posterior
        self.posterior_particle = _spin(0, 10**9, 0)
        self.posterior_live = QCheckBox("refresh at each snapshot")
        self.posterior_live.setChecked(True)
        show = QPushButton("Show posterior")
        show.clicked.connect(self.show_posterior)
        post_row = QHBoxLayout()
        post_row.addWidget(self.posterior_particle)
        post_row.addWidget(show)
        posterior = QFormLayout()
        posterior.addRow("Particle", post_row)
        posterior.addRow("", self.posterior_live)

        layout = QVBoxLayout(self)
        for title, form in (("Data", data), ("Training", train), ("Run", run), ("Pose posterior", posterior)):
            group = QGroupBox(title)
            group.setLayout(form)
            layout.addWidget(group)
        layout.addStretch(1)
        self._set_running(False)

        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        for layer in self.viewer.layers:
            self._on_layer_inserted(type("E", (), {"value": layer})())
        # Closing the widget (or the viewer) stops the worker: capture plain objects, not ``self``.
        self._worker_holder: list = [None]
        control, holder = self._control, self._worker_holder
        self.destroyed.connect(lambda *_: _shutdown(control, holder))

    # ------------------------------------------------------------------ data
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Particles", "", "Particles (*.star *.cs *.mrcs *.mrc)")
        if path:
            self.path.setText(path)

    def _on_layer_inserted(self, event) -> None:
        meta = getattr(event.value, "metadata", {}) or {}
        if meta.get("semiamort_kind") == "particles":
            if not self.path.text():
                self.path.setText(meta["source"])
            # a double click in the particle gallery watches the particle shown
            event.value.mouse_double_click_callbacks.append(lambda layer, ev: self.watch_shown_particle())
        if meta.get("semiamort_kind") == "reference" and not self.reference.text():
            self.reference.setText(meta["source"])

    def watch_shown_particle(self) -> None:
        """Add the particle shown in the particle layer (the slider's position) to the watched ones."""
        idx = int(self.viewer.dims.current_step[0])
        ids = self._watch_ids()
        if idx not in ids:
            self.watch.setText(" ".join(str(i) for i in [*ids, idx]))
            self._apply_watch()

    def _watch_ids(self) -> list[int]:
        try:
            return [int(x) for x in self.watch.text().replace(",", " ").split()]
        except ValueError:
            return []

    def _apply_watch(self) -> None:
        if self.run is not None:  # read by the worker at its next full snapshot
            self.run.config.watch = self._watch_ids()

    def config(self) -> ReconstructionConfig:
        """The configuration the widgets describe (validated)."""
        path = self.path.text().strip()
        if not path:
            raise ValueError("choose a particle file (.star, .cs or .mrcs) first")
        cfg = ReconstructionConfig(particles=str(Path(path).resolve()))
        cfg.pixel_size = self.pixel_size.value() or None
        cfg.box = self.box.value() or None
        cfg.use_ctf = self.use_ctf.isChecked()
        cfg.halves = self.halves.isChecked()
        cfg.mask_diameter = self.mask_diameter.value() or None
        cfg.estimate_shifts = self.shifts.isChecked()
        cfg.shift_search = self.shift_search.value()
        cfg.reference_map = self.reference.text().strip() or None
        cfg.heads = self.heads.value()
        cfg.encoder_lr, cfg.volume_lr, cfg.pose_lr = (
            self.encoder_lr.value(), self.volume_lr.value(), self.pose_lr.value())
        cfg.switch_epoch, cfg.epochs, cfg.batch_size = (
            self.switch_epoch.value(), self.epochs.value(), self.batch_size.value())
        cfg.stage2_batch_size = self.stage2_batch_size.value() or None
        cfg.device = self.device.currentText()
        cfg.seed = self.seed.value()
        cfg.watch = self._watch_ids()
        cfg.snapshot_every = self.snapshot_every
        if cfg.device in ("auto", "cpu"):
            # leave one core to the Qt main thread: with every core computing, the UI stalls for 100s of ms
            cfg.threads = max(1, (os.cpu_count() or 2) - 1)
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ run control
    def start(self) -> None:
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        try:
            cfg = self.config()
        except (ValueError, FileNotFoundError) as exc:
            show_error(str(exc))
            return
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.outdir.text().strip()
        self.run_dir = Path(out) if out else Path(cfg.particles).parent / f"semiamort-run-{stamp}"
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            show_error(f"{self.run_dir}: exists and is not empty; choose another run folder")
            return
        control = self._control
        control.stop = False
        self._failure = ""
        self.run = None
        self._volume = None
        self.plots.clear()
        # errors are ours to show (_on_error), not to re-raise in the Qt event loop
        self.worker = create_worker(_train, cfg, self.run_dir, control, _start_thread=False, _ignore_errors=True)
        self._worker_holder[0] = self.worker
        self.worker.yielded.connect(self._on_yield)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self._started = time.perf_counter()
        self.status.setText(f"reading {Path(cfg.particles).name} …")
        self._set_running(True)
        self.worker.start()

    def _toggle_pause(self, paused: bool) -> None:
        if self.worker is None:
            return
        if paused:
            self.worker.pause()
            self.pause_button.setText("Resume")
            self.status.setText(self.status.text() + " · paused")
        else:
            self.worker.resume()
            self.pause_button.setText("Pause")

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
        self.status.setText(self.status.text() + " · stopping")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        if not running:
            self.pause_button.setChecked(False)
            self.pause_button.setText("Pause")

    # ------------------------------------------------------------------ results in, on the main thread
    @property
    def plots(self):
        if self._plots is None:
            from .plots import PlotsWidget

            self._plots = PlotsWidget(self.viewer)
            self.viewer.window.add_dock_widget(self._plots, name="semiamort plots", area="bottom")
        return self._plots

    def _on_yield(self, item) -> None:
        from ..run.posterior import PosePosterior
        from ..run.snapshot import Snapshot

        if isinstance(item, PosePosterior):
            self._show_posterior(item)
            return
        if not isinstance(item, Snapshot):  # the run, built in the worker
            # Full garbage collections of napari's and torch's many long-lived objects took up to 300 ms
            # (measured, benchmarks/ui_latency.py), stalling the event loop: the objects alive now are
            # moved out of the collector's scans.
            gc.freeze()
            self.run = item
            d = item.data
            self.status.setText(f"{len(d)} particles, box {item.size}, {d.pixel_size:.3f} Å/px on {item.device}")
            return
        snap = item
        self.progress.setValue(int(1000 * snap.progress))
        elapsed = time.perf_counter() - self._started
        eta = elapsed / max(snap.progress, 1e-9) - elapsed
        restart = f"restart {snap.restart + 1} · " if snap.restart is not None else ""
        self.status.setText(f"{restart}epoch {snap.epoch + 1}/{snap.epochs} · {snap.stage} · "
                            f"{snap.images_per_second:.0f} img/s · ETA {_duration(eta)}")
        now = time.perf_counter()
        # layers are updated at most twice a second (and at every epoch end): the GUI thread stays free
        # Each update is its own event-loop turn (QTimer.singleShot): the loop answers between them.
        if snap.volume is not None and (snap.epoch_end or now - self._last_volume_push > 0.5):
            self._last_volume_push = now
            self._show_volume(snap.volume, snap.epoch_end)
            if snap.watched:
                QTimer.singleShot(0, lambda w=snap.watched: self._show_candidates(w))
        if snap.epoch_end and self.run is not None:
            QTimer.singleShot(0, lambda m=snap.metrics, h=list(self.run.history): self._show_curves(h, m))

    def _show_curves(self, history: list[dict], metrics: dict) -> None:
        self.plots.set_history(history)
        curve = metrics.get("fsc_curve")
        if curve is not None:
            size, px = self.run.size, self.run.data.pixel_size
            self.plots.set_fsc("vs reference", np.arange(len(curve)) / (size * px), np.asarray(curve))

    def _show_volume(self, volume: np.ndarray, epoch_end: bool, pixel_size: float | None = None) -> None:
        """Show ``volume`` in the volume layer, scaled in Å: the decoder's map at the run's pixel size while
        training, the final map.mrc at its own (the images' box, when the run downsampled them)."""
        self._volume = volume
        px = self.run.data.pixel_size if pixel_size is None else pixel_size
        self._volume_px = px
        lo, hi = float(volume.min()), float(volume.max())
        limits = (lo, hi if hi > lo else lo + 1e-6)
        if VOLUME not in self.viewer.layers:
            layer = self.viewer.add_image(volume, name=VOLUME, scale=(px,) * 3, rendering="mip",
                                          colormap="gray", contrast_limits=limits)
            self._auto_contrast = tuple(layer.contrast_limits)
            self.viewer.dims.ndisplay = 3
            return
        layer = self.viewer.layers[VOLUME]
        user_set = self._auto_contrast is not None and tuple(layer.contrast_limits) != self._auto_contrast
        layer.data = volume
        if tuple(layer.scale) != (px,) * 3:
            layer.scale = (px,) * 3
        if epoch_end and not user_set:  # follow the map's range unless the user has set the limits
            layer.contrast_limits = limits
            self._auto_contrast = tuple(layer.contrast_limits)

    def _show_candidates(self, watched) -> None:
        from ..plugin.layers import candidate_montage

        montage, frame, labels = candidate_montage(watched)
        px = self.run.data.pixel_size
        offset = (0.0, (self.run.size + 8) * px)  # beside the volume
        if CANDIDATES not in self.viewer.layers:
            self.viewer.add_image(montage, name=CANDIDATES, scale=(px, px), translate=offset, colormap="gray",
                                  contrast_limits=(-3, 3))
        else:
            self.viewer.layers[CANDIDATES].data = montage
        if WINNERS not in self.viewer.layers:  # an image, not shapes: it also shows while the view is 3D
            self.viewer.add_image(frame, name=WINNERS, scale=(px, px), translate=offset, colormap="red",
                                  blending="additive", contrast_limits=(0, 1))
        else:
            self.viewer.layers[WINNERS].data = frame
        self.viewer.layers[CANDIDATES].metadata["rows"] = labels

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        where = f"; results reached so far are in {self.run_dir}" if self.run is not None else ""
        show_error(f"Reconstruction failed: {exc}{where}")
        self._failure = f"failed: {exc}"
        self.status.setText(self._failure)

    def _on_finished(self) -> None:
        self.worker = None
        self._worker_holder[0] = None
        self._set_running(False)
        done = self.run is not None and self.run.epoch >= self.run.config.epochs
        if self._failure:
            self.status.setText(self._failure)
        else:
            self.status.setText(("finished" if done else "stopped") + f" · results in {self.run_dir}")
        if self.run is not None and self.run_dir is not None and (self.run_dir / "map.mrc").is_file():
            from ..data.mrc import read_map

            volume, voxel = read_map(self.run_dir / "map.mrc")
            self._show_volume(volume, epoch_end=True, pixel_size=voxel)
            fsc_csv = self.run_dir / "fsc.csv"
            if fsc_csv.is_file():
                table = np.genfromtxt(fsc_csv, delimiter=",", names=True)
                if "fsc_halves" in table.dtype.names:
                    self.plots.set_fsc("half maps", table["frequency_per_angstrom"], table["fsc_halves"])

    # ------------------------------------------------------------------ pose posterior
    def show_posterior(self) -> None:
        """The chosen particle's posterior: refreshed by the running worker, else computed once (from the run
        in memory, or from the run folder's checkpoint) in a worker of its own."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        index = self.posterior_particle.value()
        if self.worker is not None:  # the worker computes it at its next full snapshot (and then every 2 s)
            self._control.posterior_live = self.posterior_live.isChecked()
            self._control.posterior = index
            return
        if self.run is not None:
            job = create_worker(_posterior, self.run, index, _ignore_errors=True)
            job.returned.connect(self._show_posterior)
        else:
            out = Path(self.outdir.text().strip())
            if not (out / "checkpoint.pt").is_file():
                show_error("no run to question: start one, or give a run folder with a checkpoint")
                return
            job = create_worker(_posterior_from_checkpoint, out, index, _ignore_errors=True)
            job.returned.connect(self._posterior_with_run)
        job.errored.connect(lambda exc: show_error(f"Posterior failed: {exc}"))
        self._posterior_job = job
        job.start()

    def _posterior_with_run(self, result) -> None:
        self.run, post = result
        self.run_dir = Path(self.outdir.text().strip())
        self._show_posterior(post)

    def _show_posterior(self, post) -> None:
        """A sphere coloured by the log posterior, beside the volume, with the heads' candidates (labelled, the
        winner red), the run's pose (green), the truth (yellow) and the path (blue) as points."""
        from ..plugin.layers import posterior_sphere, sphere_mesh, to_world

        if not hasattr(self, "_sphere"):
            self._sphere = sphere_mesh()
        verts, faces = self._sphere
        px, size = self.run.data.pixel_size, self.run.size
        radius = 0.45 * size * px
        centre = np.array([size * px / 2, size * px / 2, -0.7 * size * px])  # (z, y, x): left of the volume
        values = posterior_sphere(post, verts)
        surface = (to_world(verts, centre, radius), faces, values)
        if SPHERE not in self.viewer.layers:
            self.viewer.add_surface(surface, name=SPHERE, colormap="magma")
        else:
            self.viewer.layers[SPHERE].data = surface
        self.viewer.layers[SPHERE].contrast_limits = (float(values.min()), float(values.max()) + 1e-9)
        self.viewer.layers[SPHERE].metadata["particle"] = post.index
        m = len(post.candidates)
        dirs = [post.candidates, post.current[None]]
        labels = [str(h + 1) for h in range(m)] + ["pose"]
        colors = ["#ff5a36" if h == post.winner else "#e0e0e0" for h in range(m)] + ["#00e676"]
        if post.truth is not None:
            dirs.append(post.truth[None])
            labels.append("truth")
            colors.append("#ffd600")
        if len(post.path):
            dirs.append(post.path)
            labels += [""] * len(post.path)
            colors += ["#4fc3f7"] * len(post.path)
        coords = to_world(np.concatenate(dirs), centre, radius * 1.04)
        features = {"label": labels}
        if SPHERE_POINTS not in self.viewer.layers:
            self.viewer.add_points(coords, name=SPHERE_POINTS, features=features, face_color=colors, size=0.06 * radius,
                                   text={"string": "{label}", "size": 6, "color": "white"}, ndim=3)
        else:
            layer = self.viewer.layers[SPHERE_POINTS]
            layer.data = coords
            layer.features = features
            layer.face_color = colors
        self.plots.set_posterior(post)

    # ------------------------------------------------------------------ export
    def export_chimerax(self) -> Path | None:
        """Write the map (and half maps when the run made them) and a ChimeraX script; offer to open it."""
        from napari.utils.notifications import show_error, show_info

        from ..data.mrc import write_mrc
        from ..run.outputs import chimerax_script

        if self.run_dir is None or self.run is None:
            show_error("no run yet: start a reconstruction first")
            return None
        if self.worker is not None and self._volume is not None:  # while running: the last map shown
            write_mrc(self.run_dir / "map.mrc", self._volume, self._volume_px)
        script = chimerax_script(self.run_dir, force=True)  # the run folder's own script
        exe = shutil.which("chimerax") or shutil.which("ChimeraX")
        if exe is not None:
            answer = QMessageBox.question(self, "ChimeraX", f"Open {script.name} in ChimeraX?")
            if answer == QMessageBox.StandardButton.Yes:
                subprocess.Popen([exe, str(script)])
        else:
            show_info(f"ChimeraX script written: {script} (open it from ChimeraX: File > Open)")
        return script


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _shutdown(control: _Control, holder: list) -> None:
    """The widget is gone: stop the worker after its current step (it then writes its outputs)."""
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

