"""Density maps from atomic models (PDB / mmCIF, optionally gzip'd), read with gemmi."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["density_from_atoms", "read_atoms"]

# Gaussian width of one atom's density, Å: a B-factor of 8π²σ² ≈ 114 Å², typical of cryo-EM maps.
ATOM_SIGMA_IN_ANGSTROMS = 1.2


def read_atoms(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates `(n, 3)` (x, y, z in Å) and atomic numbers `(n,)` of the first model of a structure."""
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such atomic model file")
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with its own message
        raise ValueError(f"{path}: not a readable PDB/mmCIF file ({exc})") from exc
    if len(st) == 0:
        raise ValueError(f"{path}: the file holds no model")
    xyz, z = [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                xyz.append(atom.pos.tolist())
                z.append(atom.element.atomic_number)
    if not xyz:
        raise ValueError(f"{path}: the first model holds no atoms")
    return np.asarray(xyz, dtype=np.float64), np.asarray(z, dtype=np.float64)


def _box_integrated_gaussian(centres: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Per-axis voxel integrals `(n, size)` of unit Gaussians centred at ``centres`` `(n,)` (voxel units)."""
    edges = torch.arange(size + 1, dtype=torch.float64) - 0.5  # voxel i spans [i − ½, i + ½]
    cdf = 0.5 * (1 + torch.erf((edges[None, :] - centres[:, None]) / (sigma * np.sqrt(2.0))))
    return cdf[:, 1:] - cdf[:, :-1]


def density_from_atoms(
    xyz: np.ndarray,
    atomic_numbers: np.ndarray,
    size: int,
    pixel_size: float,
    sigma_in_angstroms: float = ATOM_SIGMA_IN_ANGSTROMS,
    chunk: int = 4096,
) -> torch.Tensor:
    """Map `(size³)` ``[z, y, x]``: atoms as Gaussians weighted by Z, centre of mass at voxel ``size // 2``.

    Each Gaussian is integrated over the voxel (separable erf), which keeps a narrow atom from aliasing.
    """
    xyz = torch.as_tensor(xyz, dtype=torch.float64)
    w = torch.as_tensor(atomic_numbers, dtype=torch.float64)
    com = (xyz * w[:, None]).sum(0) / w.sum()
    pos = (xyz - com) / pixel_size + size // 2  # voxel coordinates (x, y, z)
    sigma = sigma_in_angstroms / pixel_size
    vol = torch.zeros(size, size, size, dtype=torch.float64)
    for s in range(0, pos.shape[0], chunk):
        p, ww = pos[s : s + chunk], w[s : s + chunk]
        gx = _box_integrated_gaussian(p[:, 0], size, sigma)
        gy = _box_integrated_gaussian(p[:, 1], size, sigma)
        gz = _box_integrated_gaussian(p[:, 2], size, sigma) * ww[:, None]
        vol += torch.einsum("az,ay,ax->zyx", gz, gy, gx)
    return vol.to(torch.float32)
