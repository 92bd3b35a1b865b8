"""A map's pseudo-symmetry, by a self-rotation search: the rotations ``S`` (by 360°/n about an axis through the box
centre) and translations ``t`` under which the map matches itself, ``V(Sᵀu + t) ≈ V(u)``.

A pseudo-symmetric complex (a hexameric ring with an asymmetric partner, as RuvAB 7PBL) gives each image several
views that explain it almost equally well, ``R`` and ``R S^k``; a run that holds some images in the mates' views
builds a map more symmetric than the particle, which in turn holds them there (realistic 7PBL: 35 % of the good
images more than 20° off, 468 of those 60° about the ring's axis). Letting each pose compete with its mates
(:func:`~..run.polish.relax_to_mates`, RELION 4's symmetry relaxation with the group measured rather than
given) breaks that loop.

The search works on a small copy of the map whose shells are whitened: the low-resolution envelope of any
compact particle matches itself under most rotations (correlations 0.85–0.95 for asymmetric 3KPR when only
low-passed), the whitened detail does not. On the realistic panel's maps and truths the best element of the
asymmetric molecules (3KPR, 30S, 80S, DHODH) read 0.36–0.46 and of the symmetric or pseudo-symmetric ones 0.65–0.92
(2CG9's C2, 7PBL's pseudo-6, CCT's D8, the vault chain's 2-fold).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..physics.healpix import healpix_directions
from ..physics.slicing import sample_volume
from ..physics.so3 import exp_so3

__all__ = ["SymmetryElement", "axis_rotation", "mate_poses", "mates", "pseudo_symmetry", "self_rotation"]

SEARCH_BOX = 32  # the map is Fourier-cropped to this box for the search
DETAIL_SHELLS = 6.4  # the whitened shells' Gaussian window (σ, in shells): a fifth of the cropped box
DROP_SHELLS = 1  # shells 0..this left out: the particle's envelope


class SymmetryElement(NamedTuple):
    order: int  # n: the rotation is by 360°/n
    axis: np.ndarray  # (3,) unit axis (x, y, z)
    correlation: float  # of the whitened map with itself so moved
    translation: np.ndarray  # (3,) t (voxels of the map, x y z): V(Sᵀu + t) ≈ V(u)

    @property
    def rotation(self) -> torch.Tensor:
        return axis_rotation(self.axis, 2 * math.pi / self.order)


def axis_rotation(axis, angle: float) -> torch.Tensor:
    """The rotation `(3, 3)` float64 by ``angle`` (radians) about ``axis`` (x, y, z), right-handed."""
    a = torch.as_tensor(np.asarray(axis, np.float64))
    return exp_so3(a / a.norm() * angle)


def _detail(volume: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The map Fourier-cropped to at most :data:`SEARCH_BOX`, each shell whitened and weighted by a Gaussian of
    :data:`DETAIL_SHELLS`, the envelope's shells dropped; and the crop's voxel size in the map's voxels."""
    size = volume.shape[-1]
    box = min(size, SEARCH_BOX) // 2 * 2
    f = torch.fft.fftshift(torch.fft.fftn(volume.detach().cpu().to(torch.float64)))
    lo = size // 2 - box // 2
    f = f[lo : lo + box, lo : lo + box, lo : lo + box]
    k = torch.arange(box, dtype=torch.float64) - box // 2
    r = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).sqrt()
    shell = r.round().long().reshape(-1)
    power = torch.zeros(int(shell.max()) + 1, dtype=torch.float64).index_add_(0, shell, f.abs().reshape(-1) ** 2)
    count = torch.bincount(shell, minlength=len(power)).to(torch.float64)
    rms = (power / count.clamp_min(1)).sqrt().clamp_min(1e-30)[shell].reshape(f.shape)
    f = f / rms * torch.exp(-(r**2) / (2 * DETAIL_SHELLS**2)) * (r > DROP_SHELLS + 0.5)
    return torch.fft.ifftn(torch.fft.ifftshift(f)).real, size / box


def _moved(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``W(u) = V(A u)`` of a map ``[z, y, x]``, ``u`` in voxels about ``L // 2`` (trilinear; zero outside)."""
    g = torch.arange(v.shape[-1], dtype=torch.float64) - v.shape[-1] // 2
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    return sample_volume(v[None], torch.stack([x, y, z], -1) @ a.T)[0]


def _correlation(v: torch.Tensor, s: torch.Tensor, reach: float) -> tuple[float, torch.Tensor]:
    """The best normalised correlation of ``V(u)`` with ``V(Sᵀu + t)`` over ``|t| ≤ reach`` voxels, and that ``t``
    `(3,)` (x, y, z). ``V(u + d) ≈ W(u) = V(Sᵀu)`` at the cross-correlation's peak ``d``, so ``t = −Sᵀd``."""
    a = s.T
    w = _moved(v, a)
    size = v.shape[-1]
    c = torch.fft.ifftn(torch.fft.fftn(v) * torch.fft.fftn(w).conj()).real / (v.norm() * w.norm()).clamp_min(1e-30)
    d = torch.fft.fftfreq(size, 1.0 / size, dtype=torch.float64)
    dz, dy, dx = torch.meshgrid(d, d, d, indexing="ij")
    c = torch.where(dx**2 + dy**2 + dz**2 <= reach**2 + 1e-9, c, torch.full_like(c, -2.0))
    i = int(c.argmax())
    shift = torch.stack([dx.reshape(-1)[i], dy.reshape(-1)[i], dz.reshape(-1)[i]])
    return float(c.reshape(-1)[i]), -(a @ shift)


def _refine(v: torch.Tensor, order: int, axis: np.ndarray, reach: float) -> tuple[float, np.ndarray, torch.Tensor]:
    """The axis moved in steps of 0.1, 0.05, 0.025 (of its unit vector) while the correlation rises."""
    best = (*_correlation(v, axis_rotation(axis, 2 * math.pi / order), reach), axis)
    for step in (0.1, 0.05, 0.025):
        better = True
        while better:
            better = False
            for move in np.concatenate([np.eye(3), -np.eye(3)]) * step:
                b = best[2] + move
                b = b / np.linalg.norm(b)
                c, t = _correlation(v, axis_rotation(b, 2 * math.pi / order), reach)
                if c > best[0] + 1e-4:
                    best, better = (c, t, b), True
    return best[0], best[2], best[1]


def self_rotation(volume: torch.Tensor, orders=range(2, 9), reach: float = 0.0, nside: int = 4,
                  refine: int = 2) -> list[SymmetryElement]:
    """Every rotation by 360°/n (``orders``) about the HEALPix(``nside``) axes of one hemisphere, scored by the
    whitened map's correlation with itself so moved (and translated by up to ``reach`` voxels), best first; the
    best one and the best whose axis lies more than 30° from it refined (``refine`` 2; 1: the best only)."""
    v, scale = _detail(volume)
    return _search(v, scale, orders, reach / scale, nside, refine)


def _search(v: torch.Tensor, scale: float, orders, reach: float, nside: int, refine: int) -> list[SymmetryElement]:
    rows = []
    for n in orders:
        for a in healpix_directions(nside):
            if a[2] >= 0:
                c, t = _correlation(v, axis_rotation(a, 2 * math.pi / n), reach)
                rows.append(SymmetryElement(n, np.asarray(a, np.float64), c, (t * scale).numpy()))
    rows.sort(key=lambda e: -e.correlation)
    chosen = [rows[0]]
    other = next((e for e in rows if abs(float(e.axis @ rows[0].axis)) < _COS30), None)
    if refine > 1 and other is not None:
        chosen.append(other)
    for e in chosen[:refine]:
        c, axis, t = _refine(v, e.order, e.axis, reach)
        rows.append(SymmetryElement(e.order, axis, c, (t * scale).numpy()))
    rows.sort(key=lambda e: -e.correlation)
    return rows


_COS30, _COS10 = math.cos(math.radians(30)), math.cos(math.radians(10))


def pseudo_symmetry(volume: torch.Tensor, threshold: float,
                    reach: float = 0.0) -> tuple[list[SymmetryElement], SymmetryElement]:
    """The map's symmetry elements whose correlation reaches ``threshold`` (up to two, their axes more than 30°
    apart: a dihedral complex's n-fold and two-fold), and the best element found whatever its correlation.

    About one axis, rotations by 360°/n for several n match at once (a six-fold ring's 60°, 120° and 180°; and
    exactly symmetric maps tie them): an element's order is the largest of those above ``threshold`` about its
    axis that divides, or is a multiple of, its own (7PBL's 60° read 0.80, its 51° and 72° 0.63 and 0.55 : the
    group is C6, not the dense one all of those would generate); its translation is measured again at that order.
    """
    v, scale = _detail(volume)
    rows = _search(v, scale, range(2, 9), reach / scale, 4, 2)
    above = [e for e in rows if e.correlation >= threshold]
    chosen: list[SymmetryElement] = []
    for e in above:
        if len(chosen) == 2:
            break
        if any(abs(float(e.axis @ o.axis)) >= _COS30 for o in chosen):
            continue
        order = max(f.order for f in above if abs(float(f.axis @ e.axis)) >= _COS10
                    and (f.order % e.order == 0 or e.order % f.order == 0))
        c, t = _correlation(v, axis_rotation(e.axis, 2 * math.pi / order), reach / scale)
        chosen.append(SymmetryElement(order, e.axis, max(c, e.correlation), (t * scale).numpy()))
    return chosen, rows[0]


def mates(elements: list[SymmetryElement], limit: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """The group the elements generate (closed under products up to ``limit`` members, members within 10° taken
    as one), without the identity: rotations ``S`` `(G, 3, 3)` and translations ``t`` `(G, 3)` (float64), each with
    ``V(Sᵀu + t) ≈ V(u)``. The composition of ``(S₁, t₁)`` then ``(S₂, t₂)`` maps ``u`` to
    ``S₂ᵀ(S₁ᵀu + t₁) + t₂``: the rotation ``S₁ S₂``, the translation ``S₂ᵀ t₁ + t₂``."""
    eye = torch.eye(3, dtype=torch.float64)
    members = [(eye, torch.zeros(3, dtype=torch.float64))]
    gens = [(e.rotation, torch.as_tensor(e.translation, dtype=torch.float64)) for e in elements]
    frontier = list(members)
    while frontier and len(members) < limit:
        grown = []
        for s1, t1 in frontier:
            for s2, t2 in gens:
                s = s1 @ s2
                if len(members) < limit and all(float(((s.T @ m).trace() - 1) / 2) < _COS10 for m, _ in members):
                    members.append((s, s2.T @ t1 + t2))
                    grown.append(members[-1])
        frontier = grown
    if len(members) == 1:
        return torch.zeros(0, 3, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64)
    return torch.stack([m for m, _ in members[1:]]), torch.stack([t for _, t in members[1:]])


def mate_poses(rotations: torch.Tensor, shifts: torch.Tensor | None, ops: torch.Tensor,
               translations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each pose's mates under the map's symmetry ``(S, t)`` (:func:`mates`): rotations `(B, G, 3, 3)` ``R S`` and
    shifts `(B, G, 2)` ``s + (R S t)_xy`` (pixels). The map ``V(u) = V(Sᵀu + t)`` projects at ``(R, s)`` exactly as at
    those: ``∫ V(Rᵀx) dz = ∫ V((RS)ᵀ(x + RS t)) dz``, the image moved by ``(RS t)_xy``."""
    ops = ops.to(rotations.device, rotations.dtype)
    rot = rotations[:, None] @ ops[None]
    if shifts is None:
        return rot, None
    moved = (rot @ translations.to(rotations.device, rotations.dtype)[None, :, :, None])[..., :2, 0]
    return rot, shifts[:, None] + moved.to(shifts.dtype)
