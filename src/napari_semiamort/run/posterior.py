"""Question the pose inference: a particle's posterior over view directions, its heads' candidates, its path,
and which head wins where (the paper's Figures 4, 5, 8 and 10).

The view direction of a pose ``R`` (volume → image) is ``Rᵀ ẑ``, the third row of ``R``: the direction, in
the map's frame, along which the particle is projected. The SO(3) grid is a HEALPix grid of directions
(``R_d`` with RELION angles rot = φ_d, tilt = θ_d, psi = 0) times K in-plane turns ``Rz(ψ_k) R_d``; the
in-plane angle is marginalised with log-sum-exp under a uniform prior, and the result normalised over the
directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..metrics.alignment import _MIRROR, align_poses
from ..physics.healpix import healpix_directions, nearest_pixel
from ..physics.so3 import euler_relion_to_matrix

__all__ = [
    "HeadSpecialization",
    "PosePosterior",
    "direction_grid",
    "head_specialization",
    "pose_posterior",
    "reference_in_run_frame",
    "view_directions",
]


def view_directions(rotations) -> np.ndarray:
    """View directions `(..., 3)` of poses `(..., 3, 3)`: ``Rᵀ ẑ``, the third row."""
    return np.asarray(torch.as_tensor(rotations)[..., 2, :], dtype=np.float64)


def direction_grid(nside: int) -> tuple[np.ndarray, torch.Tensor]:
    """HEALPix directions `(D, 3)` and poses `(D, 3, 3)` (float64) whose view direction each one is."""
    d = healpix_directions(nside)
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    t = torch.from_numpy
    rot = euler_relion_to_matrix(t(phi), t(theta), torch.zeros(len(d), dtype=torch.float64))
    return d, rot


def reference_in_run_frame(run) -> torch.Tensor | None:
    """The known poses `(N, 3, 3)` expressed in the run's frame (and hand), or None without known poses.

    ``align_poses`` finds ``T`` with ``R_run G ≈ R_true`` (``T = G``), or in the mirror hand
    ``P R_run P G ≈ R_true`` (``T = P G``); both give the true pose in the run's frame as ``Pᵐ R_true Tᵀ``.
    """
    ref = run.data.reference_rotations
    if ref is None:
        return None
    al = align_poses(run.poses, ref)
    t = al.transform.to(torch.float64)
    out = ref.to(torch.float64) @ t.T
    return _MIRROR.to(torch.float64) @ out if al.mirrored else out


@dataclass(frozen=True)
class PosePosterior:
    """One particle's approximate posterior over view directions, with what the run proposed for it."""

    index: int
    nside: int
    directions: np.ndarray  # (D, 3) HEALPix centres
    log_posterior: np.ndarray  # (D,) log p(direction | image), in-plane marginalised, logsumexp = 0
    best_inplane_deg: np.ndarray  # (D,) the most likely in-plane angle at each direction
    candidates: np.ndarray  # (M, 3) the encoder heads' view directions
    candidate_scores: np.ndarray  # (M,) their losses (lower is better)
    winner: int  # the head with the lowest loss
    current: np.ndarray  # (3,) the run's pose for this particle
    truth: np.ndarray | None  # (3,) the known pose in the run's frame (simulated data)
    path: np.ndarray  # (E, 3) the view direction after each epoch (watched particles), else (0, 3)

    @property
    def mode(self) -> np.ndarray:
        return self.directions[int(np.argmax(self.log_posterior))]


def pose_posterior(run, index: int, nside: int = 8, inplane: int = 36, band: float = 1.0,
                   truth: torch.Tensor | None = None) -> PosePosterior:
    """The posterior of particle ``index`` on a HEALPix(``nside``) × ``inplane`` grid (768 × 36 by default).

    ``truth`` (the output of :func:`reference_in_run_frame`) saves the alignment when many particles are
    inspected.
    """
    if not 0 <= index < len(run.data):
        raise ValueError(f"particle {index}: the run has particles 0 to {len(run.data) - 1}")
    dirs, rot = direction_grid(nside)
    angles = torch.arange(inplane, dtype=torch.float64) * (2 * np.pi / inplane)
    loglik = run.log_likelihood_grid(index, rot, angles, band)  # (D, K)
    per_dir = torch.logsumexp(loglik, -1)
    log_post = (per_dir - torch.logsumexp(per_dir, 0)).numpy()
    best_psi = np.degrees(angles[loglik.argmax(-1)].numpy())
    cand_rot, _, scores = run.candidates(torch.tensor([int(index)]),
                                         run.stage1_band(min(run.epoch, run.schedule.switch.planned)))
    scores = scores[0].cpu().numpy()
    if truth is None:
        truth = reference_in_run_frame(run)
    path = np.asarray(run.paths.get(int(index), []), dtype=np.float64).reshape(-1, 3)
    return PosePosterior(
        index=int(index), nside=nside, directions=dirs, log_posterior=log_post, best_inplane_deg=best_psi,
        candidates=view_directions(cand_rot[0].cpu()), candidate_scores=scores, winner=int(np.argmin(scores)),
        current=view_directions(run.poses[index]), truth=None if truth is None else view_directions(truth[index]),
        path=path,
    )


@dataclass(frozen=True)
class HeadSpecialization:
    """Which head wins where (the paper's Figure 8): per HEALPix cell, each head's share of the wins."""

    nside: int
    directions: np.ndarray  # (D, 3)
    wins: np.ndarray  # (D, M) particles per cell won by each head
    head_error_deg: np.ndarray | None  # (M,) mean pose error of each head's particles (simulated data)
    head_count: np.ndarray  # (M,) particles won by each head

    @property
    def win_rate(self) -> np.ndarray:
        """(D, M) the share of each cell's particles each head won (NaN for empty cells)."""
        total = self.wins.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, self.wins / np.maximum(total, 1), np.nan)


def head_specialization(run, nside: int = 4) -> HeadSpecialization:
    """Bin every particle by its current view direction; count the stage-1 winning head per cell."""
    dirs = healpix_directions(nside)
    cell = nearest_pixel(view_directions(run.poses), dirs)
    heads = run.config.heads
    winners = run.winners.numpy()
    wins = np.zeros((len(dirs), heads), np.int64)
    np.add.at(wins, (cell, winners), 1)
    count = np.bincount(winners, minlength=heads)
    err = None
    if run.data.reference_rotations is not None:
        al = align_poses(run.poses, run.data.reference_rotations)
        per = np.asarray(al.errors_deg)
        sums = np.bincount(winners, weights=per, minlength=heads)
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
    return HeadSpecialization(nside, dirs, wins, err, count)
