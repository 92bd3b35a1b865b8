"""One map brought onto another without poses: the rotation (either hand) that aligns their frames.

For comparing a map with a reference when no poses relate them (``semiamort fsc`` without ``--poses``): an
ab-initio map lands in an arbitrary frame, hand and origin. The rotation is found on the maps' Fourier
amplitudes, which a translation leaves unchanged (the rotation function of molecular replacement): a search over
a coarse grid of SO(3) on the low shells, then a local refinement on the shells to near Nyquist. Amplitudes are
centrosymmetric, ``|F(k)| = |F(−k)|``, so they fix the transform only up to the inversion ``−I``: each refined
rotation ``R`` and its mirror image ``−R`` are tried in real space, each at its best integer translation, and the
better kept. The origin is then fitted by :func:`~.alignment.align_translation` (as :func:`~.truth.score_against_truth`
does), so the transform returned holds no translation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fourier import fft_centered, resample_map
from ..physics.healpix import healpix_directions
from ..physics.slicing import sample_volume
from ..physics.so3 import euler_relion_to_matrix, exp_so3, geodesic_distance, log_so3
from .alignment import rotate_map

__all__ = ["MapAlignment", "align_maps"]

COARSE_NSIDE, COARSE_INPLANE = 4, 24  # the coarse grid: 192 directions × 24 in-plane angles, ~15° apart
COARSE_SHELLS = 10  # the coarse search's band (Fourier pixels): a 15° step moves shell 10 by ~2.6 voxels
FINE_FRACTION = 0.9  # the refinement's band, as a fraction of Nyquist (the corners of the box left out) ...
FINE_SHELLS = 40  # ... and at most this many Fourier pixels: a large box's cost capped (0.05° moves shell 40 0.035 px)
HAND_BOX = 64  # the box (Fourier-cropped) the hands are told apart in
CANDIDATES = 3  # the coarse grid's best peaks, more than 20° apart, refined and tried in both hands
STEPS_DEG = (4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625)  # the refinement's steps about each axis


@dataclass(frozen=True)
class MapAlignment:
    """``transform`` T `(3, 3)` float64, orthogonal (det −1 when ``mirrored``): the aligned map is
    ``V(u) = V_in(T u)`` (:func:`~.alignment.rotate_map`). ``correlation``: the normalised cross-correlation of
    the maps so moved, at their best whole-voxel translation (near 1 for maps equal up to a rigid motion)."""

    transform: torch.Tensor
    mirrored: bool
    correlation: float

    @property
    def rotation(self) -> torch.Tensor:
        """The proper rotation R of ``T = R`` (same hand) or ``T = −R`` (mirrored: R, then the inversion)."""
        return -self.transform if self.mirrored else self.transform

    @property
    def angle_deg(self) -> float:
        """The angle (degrees) by which the map's content turns: that of :attr:`rotation`."""
        return float(torch.rad2deg(log_so3(self.rotation).norm()))

    @property
    def axis(self) -> np.ndarray:
        """The unit axis (x, y, z) about which the map's content turns, right-handed, by :attr:`angle_deg`:
        ``V(u) = V_in(R u)`` moves the content at ``p`` to ``Rᵀ p`` (any axis for no turn)."""
        w = -log_so3(self.rotation).numpy()
        n = np.linalg.norm(w)
        return w / n if n > 1e-12 else np.array([0.0, 0.0, 1.0])


def _whitened_amplitudes(volume: torch.Tensor) -> torch.Tensor:
    """``|F|`` `(L, L, L)` (centred) with each shell brought to zero mean and unit variance: the rotation function
    weighs every shell alike, whatever the maps' fall-off (a run's map against a simulated truth)."""
    a = fft_centered(volume.to(torch.float64), 3).abs()
    shell = _radius(volume.shape[-1]).round().long().reshape(-1)
    count = torch.bincount(shell).to(torch.float64).clamp_min(1)
    mean = torch.zeros_like(count).index_add_(0, shell, a.reshape(-1)) / count
    var = torch.zeros_like(count).index_add_(0, shell, a.reshape(-1) ** 2) / count - mean**2
    return ((a.reshape(-1) - mean[shell]) / var.clamp_min(1e-30).sqrt()[shell]).reshape(a.shape)


def _radius(size: int) -> torch.Tensor:
    k = torch.arange(size, dtype=torch.float64) - size // 2
    return (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).sqrt()


def _band(size: int, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The frequencies `(P, 3)` (x, y, z, Fourier pixels) of the half-space ``kz > 0`` with ``1.5 ≤ |k| ≤ hi``, and
    their shells `(P,)`: the amplitudes are centrosymmetric, and shells 0 and 1 are the particle's envelope."""
    k = torch.arange(size, dtype=torch.float64) - size // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    r = _radius(size)
    keep = (r >= 1.5) & (r <= hi) & (kz > 0)
    return torch.stack([kx[keep], ky[keep], kz[keep]], -1), r[keep].round().long()


def _sampled(a1: torch.Tensor, band: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``a1`` at ``R k`` `(B, P)` for rotations `(B, 3, 3)` and the band's frequencies ``k`` (trilinear, in ``a1``'s
    dtype: float32 halves the search's time, far below the amplitudes' own noise)."""
    coords = (band @ rotations.transpose(-1, -2)).to(a1.dtype)
    return sample_volume(a1[None], coords)[0].to(torch.float64)


def _scores(a1: torch.Tensor, a2_band: torch.Tensor, band: torch.Tensor, rotations: torch.Tensor,
            chunk: int = 256) -> torch.Tensor:
    """The correlation `(B,)` of ``a1`` at ``R k`` with ``a2`` at ``k`` (weighted) over the band, for rotations
    `(B, 3, 3)`."""
    return torch.cat([(_sampled(a1, band, r) * a2_band).mean(-1) for r in rotations.split(chunk)])


def _shell_weights(a1: torch.Tensor, a2_band: torch.Tensor, band: torch.Tensor, shells: torch.Tensor,
                   r: torch.Tensor) -> torch.Tensor:
    """Each band frequency's weight `(P,)`: its shell's amplitude correlation at ``r``, 0 where not positive. The
    shells without signal (beyond a map's resolution) would otherwise move the optimum by their noise."""
    product = _sampled(a1, band, r[None])[0] * a2_band
    count = torch.bincount(shells).to(torch.float64).clamp_min(1)
    return (torch.zeros_like(count).index_add_(0, shells, product) / count).clamp_min(0)[shells]


def _coarse_grid() -> torch.Tensor:
    """Rotations `(G, 3, 3)` float64: the HEALPix directions × evenly spaced in-plane angles."""
    d = torch.as_tensor(healpix_directions(COARSE_NSIDE))
    rot, tilt = torch.atan2(d[:, 1], d[:, 0]), torch.acos(d[:, 2].clamp(-1, 1))
    psi = torch.arange(COARSE_INPLANE, dtype=torch.float64) * (2 * math.pi / COARSE_INPLANE)
    return euler_relion_to_matrix(rot[:, None].expand(-1, len(psi)), tilt[:, None].expand(-1, len(psi)),
                                  psi[None].expand(len(d), -1)).reshape(-1, 3, 3)


def _peaks(grid: torch.Tensor, scores: torch.Tensor, count: int, apart_deg: float = 20.0) -> list[torch.Tensor]:
    """The ``count`` best rotations of the grid, each more than ``apart_deg`` from the better ones."""
    chosen: list[torch.Tensor] = []
    for i in torch.argsort(scores, descending=True).tolist():
        if all(float(geodesic_distance(grid[i], c)) > math.radians(apart_deg) for c in chosen):
            chosen.append(grid[i])
            if len(chosen) == count:
                break
    return chosen


def _refine(a1: torch.Tensor, a2_band: torch.Tensor, band: torch.Tensor, shells: torch.Tensor,
            r: torch.Tensor) -> torch.Tensor:
    """Hill-climb ``r`` by turns of :data:`STEPS_DEG` about ±x, ±y, ±z while the correlation rises, each step's
    shells weighted by their correlation where it starts (:func:`_shell_weights`)."""
    eye = torch.eye(3, dtype=torch.float64)
    for step in STEPS_DEG:
        weighted = a2_band * _shell_weights(a1, a2_band, band, shells, r)
        best = float(_scores(a1, weighted, band, r[None])[0])
        moves = exp_so3(torch.cat([eye, -eye]) * math.radians(step))  # (6, 3, 3)
        while True:
            trial = moves @ r
            s = _scores(a1, weighted, band, trial)
            i = int(s.argmax())
            if float(s[i]) <= best:
                break
            best, r = float(s[i]), trial[i]
    return r


def _real_space_match(volume: torch.Tensor, reference: torch.Tensor, transform: torch.Tensor) -> float:
    """The normalised cross-correlation's peak (over whole-voxel translations) of ``V(T u)`` with the reference
    (both Fourier-cropped to :data:`HAND_BOX` at most)."""
    box = min(volume.shape[-1], HAND_BOX)
    volume, reference = resample_map(volume, box), resample_map(reference, box)
    moved = rotate_map(volume, transform).to(torch.float64)
    moved, ref = moved - moved.mean(), reference.to(torch.float64) - reference.to(torch.float64).mean()
    cc = torch.fft.ifftn(torch.fft.fftn(ref) * torch.fft.fftn(moved).conj()).real
    return float(cc.max() / (moved.norm() * ref.norm()).clamp_min(1e-30))


@torch.no_grad()
def align_maps(volume: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> MapAlignment:
    """The orthogonal transform (a rotation about the box centre, or a rotation and the inversion) that brings
    ``volume`` `(L, L, L)` onto ``reference`` (same box), whatever the translation between them.

    Rotate with :func:`~.alignment.rotate_map`, then fit the origin (:func:`~.alignment.align_translation`).
    """
    volume, reference = torch.as_tensor(volume).cpu(), torch.as_tensor(reference).cpu()
    if volume.shape != reference.shape or volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"maps must be cubic and of one box, not {tuple(volume.shape)} and {tuple(reference.shape)}")
    size = volume.shape[-1]
    a1, a2 = _whitened_amplitudes(volume).to(torch.float32), _whitened_amplitudes(reference)
    coarse, _ = _band(size, min(COARSE_SHELLS, FINE_FRACTION * size / 2))
    grid = _coarse_grid()
    scores = _scores(a1, sample_volume(a2[None], coarse)[0], coarse, grid)
    fine, shells = _band(size, min(FINE_SHELLS, FINE_FRACTION * size / 2))
    a2_fine = sample_volume(a2[None], fine)[0]  # the reference's amplitudes at the band's frequencies
    best = None
    for r in _peaks(grid, scores, CANDIDATES):
        r = _refine(a1, a2_fine, fine, shells, r)
        for mirrored in (False, True):
            t = -r if mirrored else r
            match = _real_space_match(volume, reference, t)
            if best is None or match > best.correlation:
                best = MapAlignment(t, mirrored, match)
    return best
