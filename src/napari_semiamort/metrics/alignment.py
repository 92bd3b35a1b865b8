"""Pose errors and map comparison after aligning a run's frame (and hand) to the ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fourier import fft_centered, ifft_centered
from ..physics.slicing import sample_volume
from ..physics.so3 import geodesic_distance

__all__ = ["PoseAlignment", "align_poses", "rotate_map"]

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


def align_poses(estimated: torch.Tensor, reference: torch.Tensor) -> PoseAlignment:
    """Align estimated poses `(N, 3, 3)` to reference poses, trying both hands.

    A run's map is the truth up to a rotation ``G`` (poses ``R_i = R'_i G``) and possibly a mirror
    (poses ``P R'_i P`` with ``P = diag(1, 1, −1)``; images are unchanged by that flip).
    """
    est = estimated.to(torch.float64).cpu()
    ref = reference.to(torch.float64).cpu()
    p = _MIRROR.to(torch.float64)
    g, err = _fit_global(est, ref)
    gm, err_m = _fit_global(p @ est @ p, ref)
    if err_m.median() < err.median():
        return PoseAlignment(p @ gm, True, np.rad2deg(err_m.numpy()))
    return PoseAlignment(g, False, np.rad2deg(err.numpy()))


def rotate_map(volume: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``V(u) = V_in(T u)`` for an orthogonal ``T`` `(3, 3)`, by sampling a 2×-padded transform."""
    size = volume.shape[-1]
    pad = 2 * size
    x = (torch.arange(size, dtype=torch.float64) - size // 2) / pad
    s2 = torch.sinc(x) ** 2
    padded = torch.zeros(pad, pad, pad, dtype=torch.float64)
    lo = pad // 2 - size // 2
    padded[lo : lo + size, lo : lo + size, lo : lo + size] = (
        volume.to(torch.float64) / (s2[:, None, None] * s2[None, :, None] * s2[None, None, :])
    )
    f = fft_centered(padded, 3)
    k = torch.arange(size, dtype=torch.float64) - size // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    coords = torch.stack([kx, ky, kz], -1) @ transform.to(torch.float64).T * 2.0  # T k, padded units
    s = sample_volume(torch.stack([f.real, f.imag]), coords)
    return ifft_centered(torch.complex(s[0], s[1]), 3).real.to(torch.float32)
