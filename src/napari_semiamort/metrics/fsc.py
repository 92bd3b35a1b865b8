"""Fourier shell correlation and the resolution where it crosses a threshold."""

from __future__ import annotations

import numpy as np
import torch

from ..physics.fourier import fft_centered, radial_frequency_index_3d

__all__ = ["fsc", "masked_fsc", "resolution_at", "soft_sphere_mask"]


def fsc(map1: torch.Tensor, map2: torch.Tensor) -> np.ndarray:
    """FSC per shell `(L // 2 + 1,)` (shell ``s`` = ``s / L`` cycles per voxel) of two maps `(L, L, L)`."""
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {tuple(map1.shape)} vs {tuple(map2.shape)}")
    size = map1.shape[-1]
    f1 = fft_centered(torch.as_tensor(map1, dtype=torch.float64), 3)
    f2 = fft_centered(torch.as_tensor(map2, dtype=torch.float64), 3)
    shells = radial_frequency_index_3d(size).flatten()
    n = size // 2 + 1
    keep = shells < n
    shells = shells[keep]
    f1, f2 = f1.flatten()[keep], f2.flatten()[keep]
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, shells, (f1 * f2.conj()).real)
    p1 = torch.zeros(n, dtype=torch.float64).index_add_(0, shells, f1.abs() ** 2)
    p2 = torch.zeros(n, dtype=torch.float64).index_add_(0, shells, f2.abs() ** 2)
    return (num / torch.sqrt(p1 * p2).clamp_min(1e-30)).numpy()


def soft_sphere_mask(size: int, radius: float, edge: float = 5.0, centre: torch.Tensor | None = None) -> torch.Tensor:
    """`(L, L, L)` mask about the box centre (or ``centre`` `(3,)`, (x, y, z) voxels from it): 1 within ``radius``
    voxels, a raised cosine to 0 over ``edge`` voxels (RELION's default soft edge is 5 pixels)."""
    k = torch.arange(size, dtype=torch.float64) - size // 2
    x, y, z = (k, k, k) if centre is None else (k - float(c) for c in centre)
    r = torch.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
    t = ((r - radius) / max(edge, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def masked_fsc(map1: torch.Tensor, map2: torch.Tensor, radius: float, edge: float = 5.0) -> np.ndarray:
    """The FSC of both maps within the same soft spherical mask (radius and edge in voxels): what is
    reported for a particle, without the solvent's noise (a solvent-flattened map, as RELION's initial
    model writes, would otherwise win for flattening alone)."""
    m = soft_sphere_mask(map1.shape[-1], radius, edge)
    return fsc(torch.as_tensor(map1, dtype=torch.float64) * m, torch.as_tensor(map2, dtype=torch.float64) * m)


def resolution_at(curve: np.ndarray, size: int, pixel_size: float, threshold: float) -> float:
    """Resolution in Å where ``curve`` first falls below ``threshold`` (linear interpolation in shells).

    Returns Nyquist (``2 × pixel_size``) when it never does.
    """
    for s in range(1, len(curve)):
        if curve[s] < threshold:
            c0, c1 = curve[s - 1], curve[s]
            if c0 <= threshold:  # below from the start (an inverted or unrelated map): the box length
                return float(size * pixel_size / max(s - 1, 1))
            frac = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
            shell = s - 1 + frac
            return float(size * pixel_size / max(shell, 1e-6))
    return 2.0 * pixel_size
