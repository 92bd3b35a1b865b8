"""What particle inputs must satisfy before a run trusts them: paths that lead to a file, a plausible pixel
size, CTF values in physical ranges, images that carry information.

Each check names the file (and the row or column) and the problem in one line. Where one particle is bad and the
rest are fine the particle is skipped and listed (:class:`~.dataset.ParticleDataset`); where a value that holds
for a whole data set is bad (an optics value, a pixel size, or most of the rows) the input is refused.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ABSURD_PIXEL_VALUE",
    "DEFOCUS_RANGE",
    "IMAGE_PROBLEMS",
    "PIXEL_SIZE_RANGE",
    "VOLTAGE_RANGE",
    "check_file",
    "check_pixel_size",
    "ctf_rows_to_skip",
    "image_problems",
]

# Å per pixel. Super-resolution counting cameras give ~0.3 Å; a box of 64 over a 1,000 Å virus ~16 Å. Below
# 0.1 the value is most likely in nm, above 100 no particle image is meant.
PIXEL_SIZE_RANGE = (0.1, 100.0)
# Å. Data are taken at 0.3 to 5 µm underfocus; RELION's and cryoSPARC's defocus is in Å.
DEFOCUS_RANGE = (1_000.0, 100_000.0)
# kV: every transmission microscope used for cryo-EM runs within this range.
VOLTAGE_RANGE = (60.0, 400.0)
# |pixel| beyond this: no detector or processing step writes such values, and the normalisation's sums of
# squares over a box (up to 1024² pixels) would overflow float32 (1e15² · 1024² ≈ 1e36 < 3.4e38).
ABSURD_PIXEL_VALUE = 1e15
# image_problems' codes (0: usable) → the reason the log gives
IMAGE_PROBLEMS = {1: "hold NaN or Inf", 2: f"hold values beyond ±{ABSURD_PIXEL_VALUE:.0e}",
                  3: "are constant (zero variance)"}


def check_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a readable file; else FileNotFoundError (absent) or ValueError (a symbolic-link loop,
    a folder), naming ``what`` it should have been (``"STAR file"``, ``"particle stack"``)."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path}: a loop of symbolic links (it leads back to itself), not a {what}") from exc
        raise FileNotFoundError(f"{path}: no such {what}") from exc
    if not path.is_file():
        raise ValueError(f"{path}: a folder, not a {what}") if path.is_dir() else \
            ValueError(f"{path}: not a regular file, not a {what}")
    return path


def check_pixel_size(value: float, where: str) -> float:
    """``value`` (Å) as a float when it is positive, finite and plausible; else a ValueError naming ``where`` the
    value came from (``"p.star: rlnImagePixelSize"``)."""
    value = float(value)
    lo, hi = PIXEL_SIZE_RANGE
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: pixel size {value:g} Å is not a positive number; give it with --pixel-size")
    if value < lo:
        raise ValueError(f"{where}: pixel size {value:g} Å is below {lo:g} Å (in nm? 1 nm = 10 Å); "
                         "give it in Å with --pixel-size")
    if value > hi:
        raise ValueError(f"{where}: pixel size {value:g} Å is above {hi:g} Å, not that of particle images; "
                         "give it with --pixel-size")
    return value


def _rows(index: np.ndarray, shown: int = 5) -> str:
    """``"row 3"``, ``"rows 3, 9, 12"`` or ``"rows 3, 9, … (64 in all)"`` for 0-based indices."""
    text = ", ".join(str(int(i) + 1) for i in index[:shown])
    more = f", … ({len(index)} in all)" if len(index) > shown else ""
    return f"row {text}" if len(index) == 1 else f"rows {text}{more}"


def _micrometres(values: np.ndarray) -> bool:
    """Defocus values that would be in range in µm (1.5 for 15,000 Å)."""
    lo, hi = DEFOCUS_RANGE
    v = np.abs(values[np.isfinite(values)]) * 1e4
    return v.size > 0 and bool(((v >= lo) & (v <= hi)).all())


# CTF fields that hold for a whole optics group: a bad one is refused, whatever the number of rows.
# name → (low, high, unit, requirement)
_OPTICS_LIMITS = {
    "rlnVoltage": (*VOLTAGE_RANGE, " kV", f"the voltage must lie in {VOLTAGE_RANGE[0]:g}–{VOLTAGE_RANGE[1]:g} kV"),
    "rlnSphericalAberration": (-math.inf, math.inf, " mm", "Cs must be a finite number (mm)"),
    "rlnAmplitudeContrast": (0.0, 1.0, "", "the amplitude contrast must lie in [0, 1]"),
}
# Per-particle CTF fields: a bad row is skipped (unless most rows are bad).
_ROW_LIMITS = {
    "rlnDefocusU": (*DEFOCUS_RANGE, " Å", "defocus must lie in 1,000–100,000 Å"),
    "rlnDefocusV": (*DEFOCUS_RANGE, " Å", "defocus must lie in 1,000–100,000 Å"),
    "rlnDefocusAngle": (-math.inf, math.inf, "°", "the astigmatism angle must be a finite number"),
    "rlnPhaseShift": (-math.inf, math.inf, "°", "the phase shift must be a finite number"),
    "rlnCtfBfactor": (-math.inf, math.inf, " Å²", "the B-factor must be a finite number"),
}


def _outside(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return ~np.isfinite(values) | (values < lo) | (values > hi)


def ctf_rows_to_skip(source: Path | str, ctf: dict[str, np.ndarray]) -> dict[int, str]:
    """The rows (0-based) whose per-particle CTF values are unusable, each with the reason.

    Raises ValueError, naming ``source``, the field, the first rows and the fix, when an optics value (voltage,
    Cs, amplitude contrast) is bad in any row, or when more than half of the rows are bad (a systematic error:
    defocus in µm, a column holding something else).
    """
    n = len(next(iter(ctf.values())))
    for name, (lo, hi, unit, need) in _OPTICS_LIMITS.items():
        values = np.asarray(ctf[name], dtype=np.float64)
        bad = np.flatnonzero(_outside(values, lo, hi))
        if bad.size:
            raise ValueError(f"{source}: {name} is {values[bad[0]]:g}{unit} in {_rows(bad)}: {need}")
    reasons: dict[int, str] = {}
    for name, (lo, hi, unit, need) in _ROW_LIMITS.items():
        values = np.asarray(ctf[name], dtype=np.float64)
        bad = np.flatnonzero(_outside(values, lo, hi))
        if 2 * bad.size > n:
            hint = ("; these look like µm: RELION's and cryoSPARC's defocus is in Å (1.5 µm = 15,000 Å)"
                    if unit == " Å" and _micrometres(values[bad]) else "")
            raise ValueError(f"{source}: {name} is {values[bad[0]]:g}{unit} in {_rows(bad)} of {n}: {need}{hint}")
        for i in bad.tolist():
            um = " (in µm? defocus is in Å)" if unit == " Å" and _micrometres(values[i : i + 1]) else ""
            reasons.setdefault(i, f"{name} {values[i]:g}{unit}{um}")
    if 2 * len(reasons) > n:
        rows = np.array(sorted(reasons))
        raise ValueError(f"{source}: the CTF values of {_rows(rows)} of {n} are unusable "
                         f"(row {rows[0] + 1}: {reasons[int(rows[0])]})")
    return reasons


def image_problems(images: torch.Tensor) -> torch.Tensor:
    """Per image `(B, L, L)`, `(B,)` int64: 0 usable, else the :data:`IMAGE_PROBLEMS` code (1 NaN/Inf, 2 values
    beyond ±:data:`ABSURD_PIXEL_VALUE`, 3 constant)."""
    flat = images.flatten(1)
    finite = torch.isfinite(flat).all(1)
    safe = torch.where(finite[:, None], flat, torch.zeros((), dtype=flat.dtype))
    absurd = (safe.abs() > ABSURD_PIXEL_VALUE).any(1)
    constant = safe.amax(1) == safe.amin(1)
    code = torch.zeros(len(flat), dtype=torch.int64)
    code = torch.where(constant, torch.full_like(code, 3), code)
    code = torch.where(absurd, torch.full_like(code, 2), code)
    return torch.where(~finite, torch.ones_like(code), code)
