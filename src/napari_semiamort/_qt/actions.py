"""The dock's one-shot actions on a run folder, on the Qt main thread: its final map and FSC shown, its settings
put back in the form, its map exported to ChimeraX."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..run.fields import FIELDS

__all__ = ["export_chimerax", "show_curves", "show_final_map", "show_saved_config"]


def show_final_map(results, plots, run_dir: Path) -> None:
    """The run's map.mrc at its own voxel size (the images' box), and the half maps' FSC."""
    from ..data.mrc import read_map

    volume, voxel = read_map(run_dir / "map.mrc")
    results.show_volume(volume, voxel, epoch_end=True)
    fsc_csv = run_dir / "fsc.csv"
    if fsc_csv.is_file():
        table = np.genfromtxt(fsc_csv, delimiter=",", names=True)
        if "fsc_halves" in table.dtype.names:
            plots.set_fsc("half maps", table["frequency_per_angstrom"], table["fsc_halves"])


def show_curves(plots, snap) -> None:
    """An epoch end's curves: the metrics' history and the FSC against a reference where the run has one."""
    plots.set_history(list(snap.history))
    curve = snap.metrics.get("fsc_curve")
    if curve is not None:
        frequencies = np.arange(len(curve)) / (snap.box * snap.pixel_size)
        plots.set_fsc("vs reference", frequencies, np.asarray(curve))


def show_saved_config(form, run_dir: Path) -> None:
    """The run folder's settings (its config.json) in the form: Resume run continues that run up to Epochs."""
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return  # a run folder without a readable config.json keeps the form as it is
    names = {f.name for f in FIELDS}
    for name, value in saved.items():
        if name in names and value is not None:
            try:
                form.set_value(name, value)
            except (TypeError, ValueError):
                pass


def export_chimerax(parent, run_dir: Path, results, running: bool) -> Path:
    """Write the map (while running: the last map shown) and the run folder's ChimeraX script; offer to open it
    where ChimeraX is installed. Returns the script."""
    from napari.utils.notifications import show_info
    from qtpy.QtWidgets import QMessageBox

    from ..data.mrc import write_mrc
    from ..run.outputs import chimerax_script

    if running and results.volume is not None:
        write_mrc(run_dir / "map.mrc", results.volume, results.volume_px)
    script = chimerax_script(run_dir, force=True)  # the run folder's own script
    exe = shutil.which("chimerax") or shutil.which("ChimeraX")
    if exe is not None:
        answer = QMessageBox.question(parent, "ChimeraX", f"Open {script.name} in ChimeraX?")
        if answer == QMessageBox.StandardButton.Yes:
            subprocess.Popen([exe, str(script)])
    else:
        show_info(f"ChimeraX script written: {script} (open it from ChimeraX: File > Open)")
    return script
