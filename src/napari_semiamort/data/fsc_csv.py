"""FSC curves as CSV: one row per Fourier shell, one column per curve (``fsc.csv`` of a run, ``semiamort fsc
--csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = ["write_fsc_csv"]


def write_fsc_csv(path: str | Path, curves: dict[str, np.ndarray], size: int, pixel_size: float,
                  force: bool = True) -> Path:
    """Write ``curves`` (name → FSC per shell `(size // 2 + 1,)`) of maps of box ``size`` at ``pixel_size``
    Å/px to ``path``: columns ``shell,frequency_per_angstrom,resolution_angstrom,fsc_<name>…``
    (resolution ``inf`` at shell 0)."""
    shells = np.arange(size // 2 + 1)
    for name, c in curves.items():
        if len(c) != len(shells):
            raise ValueError(f"FSC curve {name!r}: {len(c)} shells, but a box of {size} has {len(shells)}")
    freq = shells / (size * pixel_size)
    with np.errstate(divide="ignore"):
        res = np.where(shells > 0, 1.0 / np.maximum(freq, 1e-12), np.inf)
    header = "shell,frequency_per_angstrom,resolution_angstrom," + ",".join(f"fsc_{k}" for k in curves)
    rows = [header] + [
        ",".join([str(s), f"{freq[s]:.6f}", f"{res[s]:.3f}"] + [f"{c[s]:.5f}" for c in curves.values()])
        for s in shells
    ]
    with atomic_path(path, force=force) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return Path(path)
