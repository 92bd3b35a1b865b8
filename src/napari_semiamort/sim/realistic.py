"""What makes simulated particles look like real ones: CTF parameters drawn from a real data set's table,
noise whose power falls with frequency, a B-factor envelope on the signal, a per-image scale, and junk
(empty ice, or another molecule).

Every draw comes from a NumPy generator of its own (seeded from the simulation's seed), so that switching
these options on leaves the poses, shifts and noise of a plain simulation with the same seed as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["JUNK_KINDS", "NOISE_FLOOR", "draw_ctf_rows", "falling_noise", "read_ctf_table", "realistic_rng"]

JUNK_KINDS = ("ice", "other")
# The noise power spectrum: NOISE_FLOOR + exp(−B k²/4), the floor being the flat part (shot noise through
# the detector) under the falling part (the low-frequency structure of ice and carbon, and the detector's
# MTF), with B = --noise-falloff.
NOISE_FLOOR = 0.1
_RELION_CTF = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast", "rlnPhaseShift")


def realistic_rng(seed: int) -> np.random.Generator:
    """The generator of the realistic options' draws for a simulation's ``seed`` (apart from its own)."""
    return np.random.default_rng([int(seed), 18])


def read_ctf_table(path: str | Path) -> dict[str, np.ndarray]:
    """Per-particle CTF parameters (RELION names, `(N,)` float64) of a real data set: a cryoDRGN ``ctf.pkl``,
    a RELION particle STAR or a cryoSPARC ``.cs`` (its passthrough file found beside it when needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CTF table")
    name = path.name.lower()
    if name.endswith(".pkl"):
        from ..data.cryodrgn import read_ctf_pkl

        ctf = read_ctf_pkl(path)[0]
    elif name.endswith(".star"):
        from ..data.star import read_star

        ctf = read_star(path, require_stacks=False).ctf
    elif name.endswith(".cs"):
        from ..data.cryosparc import read_cs

        ctf = read_cs(path, require_stacks=False).ctf
    else:
        raise ValueError(f"{path}: a CTF table is a cryoDRGN ctf.pkl, a RELION .star or a cryoSPARC .cs")
    if ctf is None:
        raise ValueError(f"{path}: holds no complete set of CTF parameters")
    table = {k: np.asarray(ctf[k], dtype=np.float64) for k in _RELION_CTF}
    bad = ~np.all([np.isfinite(v) for v in table.values()], axis=0)
    if bad.all():
        raise ValueError(f"{path}: every row's CTF parameters hold NaN or Inf")
    return {k: v[~bad] for k, v in table.items()}


def draw_ctf_rows(table: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` particles' CTF parameters, rows of ``table`` drawn uniformly with replacement."""
    rows = rng.integers(0, len(table["rlnDefocusU"]), n)
    return {k: v[rows] for k, v in table.items()}


def falling_noise(white: torch.Tensor, pixel_size: float, falloff: float) -> torch.Tensor:
    """Noise images `(B, L, L)` whose power spectrum is ``NOISE_FLOOR + exp(−falloff k²/4)`` (k in 1/Å), made
    from ``white`` noise of the same shape and with its variance (the spectrum's mean is 1)."""
    size = white.shape[-1]
    k = torch.fft.fftfreq(size, d=pixel_size, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    power = NOISE_FLOOR + torch.exp(-falloff * k2 / 4)
    amplitude = (power / power.mean()).sqrt()
    return torch.fft.ifft2(torch.fft.fft2(white.to(torch.float64)) * amplitude).real.to(white.dtype)
