"""What a run leaves in its folder: the map, the poses as a RELION 3.1 STAR, the config."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.mrc import write_mrc
from ..data.star import write_particle_star
from ..physics.so3 import matrix_to_euler_relion

__all__ = ["write_config", "write_outputs"]


def write_config(run_dir: Path, config_dict: dict) -> Path:
    """``config.json``: the configuration with version, time and command line."""
    path = run_dir / "config.json"
    record = {
        "version": __version__,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "config": config_dict,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def write_outputs(run, run_dir: Path) -> dict[str, Path]:
    """Write ``map.mrc`` and ``poses.star`` for a :class:`~napari_semiamort.run.Reconstruction`."""
    data = run.data
    out = {"map": write_mrc(run_dir / "map.mrc", run.volume_map(), data.pixel_size)}
    rot, tilt, psi = matrix_to_euler_relion(run.poses.to(torch.float64))
    angles = torch.rad2deg(torch.stack([rot, tilt, psi], -1)).numpy()
    n = len(data)
    shifts = np.zeros((n, 2)) if run.shifts is None else run.shifts.numpy() * data.pixel_size
    # Absolute stack paths: RELION resolves image names against its working directory.
    base = Path(data.star_path).parent if run.config.datadir is None else Path(run.config.datadir)
    names = []
    for name in data.image_names:
        idx, fname = name.split("@", 1)
        p = Path(fname)
        names.append(f"{idx}@{p if p.is_absolute() else (base / p).resolve()}")
    ctf = data.ctf_columns or {
        "rlnDefocusU": np.zeros(n), "rlnDefocusV": np.zeros(n), "rlnDefocusAngle": np.zeros(n),
        "rlnVoltage": np.full(n, 300.0), "rlnSphericalAberration": np.full(n, 2.7),
        "rlnAmplitudeContrast": np.full(n, 0.1), "rlnPhaseShift": np.zeros(n), "rlnCtfBfactor": np.zeros(n),
    }
    out["poses"] = write_particle_star(run_dir / "poses.star", names, angles, shifts, ctf, data.pixel_size, data.box)
    return out
