"""The dock's run folders: a finished or stopped run reopened from its checkpoint (its map, curves, candidates,
settings and posteriors, without training), and continued from it (Resume run)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from .actions import show_final_map, show_saved_config
from .runner import open_in_worker, resume_in_worker

__all__ = ["RunFolderMixin"]


class RunFolderMixin:
    """The :class:`~.widget.ReconstructionWidget`'s run-folder actions (they use its form, layers and worker)."""

    def open_run(self, folder: str | Path | None = None) -> None:
        """Show a finished or stopped run folder from its checkpoint, without training: its map, curves, the
        watched particles' candidates, its settings in the form; then posteriors and Resume run."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open a run folder", self.outdir.text().strip())
            if not folder:
                return
        folder = Path(folder)
        if self.worker is not None:
            show_error("a run is in progress: stop it before opening another")
            return
        if not (folder / "checkpoint.pt").is_file():
            self._pending_posterior = False
            show_error(f"{folder}: no checkpoint.pt here; a run folder holds one from its first epoch on")
            return
        self.outdir.setText(str(folder))
        self.status.set_state("reading", f"reading {folder.name}/checkpoint.pt …")
        job = create_worker(open_in_worker, folder, _ignore_errors=True)
        job.returned.connect(self._on_opened)
        job.errored.connect(lambda exc: (show_error(f"{folder}: cannot open the run: {exc}"),
                                         self.status.set_state("failed", f"cannot open {folder}: {exc}")))
        self._open_job = job
        job.start()

    def _on_opened(self, result) -> None:
        self.info, snap = result
        self.run_dir, self.last_snapshot = self.info.run_dir, snap
        show_saved_config(self.form, self.run_dir)
        self.results.clear()
        self.pacer.last = 0.0  # shown now, whatever the pace
        self._on_snapshot(snap)
        if (self.run_dir / "map.mrc").is_file():
            show_final_map(self.results, self.plots, self.run_dir)
        done = " (done: raise Epochs to continue it)" if self.info.epoch >= self.info.epochs else ""
        self.status.set_state("opened", f"epoch {self.info.epoch} of {self.info.epochs}{done} · {self.run_dir}")
        self.progress.setValue(int(1000 * self.info.epoch / max(1, self.info.epochs)))
        self._revalidate()
        if self._pending_posterior:
            self._pending_posterior = False
            self.show_posterior()

    def resume_run(self) -> None:
        """Continue the run folder's run from its checkpoint up to the Epochs field's value (with the automatic
        switch, the run's end moves with the switch: Epochs counts as the run's own setting does)."""
        from napari.utils.notifications import show_error

        folder = Path(self.outdir.text().strip())
        if self.worker is not None or not (folder / "checkpoint.pt").is_file():
            show_error(f"{folder}: no checkpoint.pt to resume from")
            return
        self.run_dir = folder
        epochs = self.form.value("epochs")
        self._launch(resume_in_worker, (folder, self._control, epochs), f"resuming {folder.name} …")

