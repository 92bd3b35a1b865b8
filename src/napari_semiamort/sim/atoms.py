"""Density maps from atomic models (PDB / mmCIF, optionally gzip'd), read with gemmi."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["chain_symmetry", "density_from_atoms", "read_atoms"]

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


def _kabsch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The rotation ``R`` and translation ``t`` carrying points ``a`` `(n, 3)` onto ``b`` (``b ≈ R a + t``)
    by least squares, and the RMSD left (Å)."""
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = cb - r @ ca
    return r, t, float(np.sqrt(((a @ r.T + t - b) ** 2).sum(1).mean()))


def _chain_traces(path: str | Path) -> list[dict[str, tuple[str, np.ndarray]]]:
    """Each chain of the first model: its residues with a Cα (or P) atom, by residue number: (name, position)."""
    import gemmi

    st = gemmi.read_structure(str(path))
    out = []
    for chain in st[0]:
        trace = {}
        for res in chain:
            atom = res.find_atom("CA", "*") or res.find_atom("P", "*")
            if atom is not None:
                trace[f"{res.seqid.num}{res.seqid.icode}".strip()] = (res.name, np.array(atom.pos.tolist()))
        if len(trace) >= 3:
            out.append(trace)
    return out


def _common(a: dict, b: dict) -> list[str] | None:
    """The residues two traces share, if they are copies of one sequence (≥ 95 % of them named alike)."""
    common = sorted(set(a) & set(b))
    if len(common) < 3 or sum(a[k][0] == b[k][0] for k in common) < 0.95 * len(common):
        return None
    return common


def _rmsd(a: dict, b: dict) -> float:
    """RMSD (Å) of two copies of a sequence as they stand (inf for different sequences)."""
    common = _common(a, b)
    if common is None:
        return float("inf")
    return float(np.sqrt(np.mean([((a[k][1] - b[k][1]) ** 2).sum() for k in common])))


def chain_symmetry(path: str | Path, rmsd_max: float = 4.0) -> np.ndarray:
    """The model's point group from its chains `(n, 3, 3)`, identity first: the rotations (about the centre)
    that carry the first chain onto another copy of its sequence and, with it, every chain onto a copy of its
    own within ``rmsd_max`` Å (Cα / P traces). An asymmetric model gives the identity alone; pseudo-symmetric
    subunits (RuvAB's, CCT's paralogues) differ in sequence and are not counted. Copies related by NCS in a
    crystal give rotations a degree or two from the ideal ones, and copies 3 Å apart (5EIL's C3: 117° and 123°,
    2.7–3.5 Å): the default tolerance counts them, since at the panel's 5 Å pixels their images are one.

    In the frame of :func:`density_from_atoms`' maps (x, y, z about the centre of mass), and so of poses: the
    images of a pose ``R`` and of ``R s`` are the same for each ``s``."""
    chains = _chain_traces(path)
    if not chains:
        raise ValueError(f"{path}: no chain with Cα or P atoms")
    first = chains[0]
    ops = [np.eye(3)]
    for trace in chains[1:]:
        common = _common(first, trace)
        if common is None:
            continue
        r, t, rmsd = _kabsch(np.stack([first[k][1] for k in common]), np.stack([trace[k][1] for k in common]))
        if rmsd > rmsd_max:
            continue
        moved = [{k: (n, r @ x + t) for k, (n, x) in tr.items()} for tr in chains]
        whole = all(min(_rmsd(m, tr) for tr in chains) <= rmsd_max for m in moved)
        if whole and not any(np.allclose(r, o, atol=1e-3) for o in ops):
            ops.append(r)
    return np.stack(ops)
