"""Pose errors and map comparison after aligning a run's frame (and hand) to the ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fourier import fft_centered, ifft_centered
from ..physics.slicing import sample_volume
from ..physics.so3 import geodesic_distance

__all__ = ["PoseAlignment", "align_poses", "align_translation", "rotate_map"]

_MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0]))


def _project_so3(m: torch.Tensor) -> torch.Tensor:
    u, _, vt = torch.linalg.svd(m)
    d = torch.sign(torch.linalg.det(u @ vt))
    return u @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ vt


def _fit_global(est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``G`` minimising Σ‖est_i G − ref_i‖², refitted on the better half twice to shed outliers."""
    keep = torch.ones(est.shape[0], dtype=torch.bool)
    for _ in range(3):
        g = _project_so3((est[keep].transpose(-1, -2) @ ref[keep]).sum(0))
        err = geodesic_distance(est @ g, ref)
        keep = err <= err.median()
    return g, err


def _fit_global_symmetric(est: torch.Tensor, ref: torch.Tensor, ops: torch.Tensor,
                          sample: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`_fit_global` for a symmetric truth: ``est_i G ≈ ref_i s_i``, each image with its own
    element ``s_i`` of the group ``ops`` `(n, 3, 3)`. ``G`` starts from the best of the candidates
    ``est_iᵀ ref_i s`` over a seeded sample of images (by the median error), then is refitted with each
    image's nearest copy three times; the errors are each image's least over the group."""
    copies = ref[:, None] @ ops[None]  # (N, n, 3, 3): the truth's equivalent poses

    def nearest(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return geodesic_distance((est @ g)[:, None], copies).min(1)  # (N,) errors and which copy

    rows = torch.randperm(est.shape[0], generator=torch.Generator().manual_seed(0))[:sample]
    candidates = (est[rows].transpose(-1, -2)[:, None] @ copies[rows]).reshape(-1, 3, 3)
    g = min(candidates, key=lambda c: float(nearest(c)[0].median()))
    for _ in range(3):
        _, which = nearest(g)
        g, _ = _fit_global(est, copies[torch.arange(est.shape[0]), which])
    return g, nearest(g)[0]


@dataclass(frozen=True)
class PoseAlignment:
    """``transform`` T `(3, 3)` (orthogonal, det −1 when mirrored): aligned map ``V(u) = V_run(T u)``."""

    transform: torch.Tensor
    mirrored: bool
    errors_deg: np.ndarray  # per image, after alignment

    @property
    def mean_error(self) -> float:
        return float(np.mean(self.errors_deg))

    @property
    def median_error(self) -> float:
        return float(np.median(self.errors_deg))


def align_poses(estimated: torch.Tensor, reference: torch.Tensor,
                symmetry: torch.Tensor | None = None) -> PoseAlignment:
    """Align estimated poses `(N, 3, 3)` to reference poses, trying both hands.

    A run's map is the truth up to a rotation ``G`` (poses ``R_i = R'_i G``) and possibly a mirror
    (poses ``P R'_i P`` with ``P = diag(1, 1, −1)``; images are unchanged by that flip).
    ``symmetry`` `(n, 3, 3)`: the truth's point group (identity included), as rotations of its frame about
    its centre. The poses ``R'`` and ``R' s`` then give the same images, and each image's error is the least
    over the group (a C2 complex's poses are otherwise 180° "wrong" for half its images).
    """
    est = estimated.to(torch.float64).cpu()
    ref = reference.to(torch.float64).cpu()
    p = _MIRROR.to(torch.float64)
    fit = _fit_global
    if symmetry is not None:
        ops = torch.as_tensor(symmetry, dtype=torch.float64).cpu()

        def fit(e: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _fit_global_symmetric(e, r, ops)

    g, err = fit(est, ref)
    gm, err_m = fit(p @ est @ p, ref)
    if err_m.median() < err.median():
        return PoseAlignment(p @ gm, True, np.rad2deg(err_m.numpy()))
    return PoseAlignment(g, False, np.rad2deg(err.numpy()))


def rotate_map(volume: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``V(u) = V_in(T u)`` for an orthogonal ``T`` `(3, 3)`, by sampling a 2×-padded transform.

    In float32: the padded transform is 8× the map, and in float64 it set the peak memory of a run that
    scores itself against a reference every epoch (~150 MB at box 64, ~1.2 GB at box 128); the trilinear
    interpolation's error is far above float32's rounding.
    """
    size = volume.shape[-1]
    pad = 2 * size
    x = (torch.arange(size, dtype=torch.float64) - size // 2) / pad
    s2 = (torch.sinc(x) ** 2).to(torch.float32)
    if bool(((transform.abs() - transform.abs().round()).abs() < 1e-6).all()):
        # a signed permutation (the identity, a turn by 90° or 180° about an axis): every T k falls on the padded
        # grid, nothing is interpolated, and the interpolation's sinc² compensation would only amplify the box's
        # edges (the identity read a true-pose map at 11.8 Å against the truth instead of 10.8 Å)
        s2 = torch.ones_like(s2)
    padded = torch.zeros(pad, pad, pad, dtype=torch.float32)
    lo = pad // 2 - size // 2
    padded[lo : lo + size, lo : lo + size, lo : lo + size] = (
        volume.to(torch.float32) / (s2[:, None, None] * s2[None, :, None] * s2[None, None, :])
    )
    f = fft_centered(padded, 3)
    del padded
    k = torch.arange(size, dtype=torch.float32) - size // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    coords = torch.stack([kx, ky, kz], -1) @ transform.to(torch.float32).T * 2.0  # T k, padded units
    s = sample_volume(torch.view_as_real(f).movedim(-1, 0), coords)
    del f
    return ifft_centered(torch.complex(s[0], s[1]), 3).real.contiguous()  # not a view holding the complex map


def align_translation(volume: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Translate ``volume`` (cubic, real, already rotated into the reference's frame) to where it
    correlates best with ``reference``; returns the moved volume and the translation (x, y, z) in voxels.

    A map is the truth only up to a rotation *and a translation* when the particles' shifts are estimated:
    moving the map by t and every image's shift by the projection of t fits the images equally well. A map
    one voxel off scores ~20 Å against the truth at any resolution, so it is moved before any FSC. The
    translation is the cross-correlation's integer peak (FFT), refined on finer grids around it to 1/512
    voxel by evaluating the correlation there directly (a separable DFT, one axis at a time); the map is then
    moved by a phase ramp.
    """
    n = volume.shape[-1]
    fv = torch.fft.fftn(volume.to(torch.float64).cpu())
    p = torch.fft.fftn(reference.to(torch.float64).cpu()) * fv.conj()  # c(t) = Σ_k p(k) e^{2πi k·t/n}
    cc = torch.fft.ifftn(p).real
    peak = np.unravel_index(int(torch.argmax(cc)), cc.shape)
    t = torch.tensor([((i + n // 2) % n) - n // 2 for i in peak], dtype=torch.float64)  # (z, y, x)
    k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    for step in (1 / 8, 1 / 64, 1 / 512):  # ±1 voxel in eighths, then ±1/8 in 64ths, ±1/64 in 512ths
        grid = t[:, None] + torch.arange(-8, 9, dtype=torch.float64) * step  # (3, 17)
        ez, ey, ex = (torch.exp(2j * torch.pi * torch.outer(g, k) / n) for g in grid)  # (17, n) each
        c = torch.einsum("ayx,by->abx", torch.tensordot(ez, p, dims=([1], [0])), ey)
        c = torch.einsum("abx,cx->abc", c, ex).real
        a, b, d = np.unravel_index(int(torch.argmax(c)), c.shape)
        t = torch.stack([grid[0, a], grid[1, b], grid[2, d]])
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    ramp = torch.exp(-2j * torch.pi * (kz * t[0] + ky * t[1] + kx * t[2]) / n)
    moved = torch.fft.ifftn(fv * ramp).real.to(volume.dtype)
    return moved, t.flip(0).numpy()
