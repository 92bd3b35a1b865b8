"""One way to score a map against the truth: the frame and hand from the poses, the origin by a translation
fit, then the FSC (whole box and within a mask) and the pose errors.

Every figure against the truth comes from :func:`score_against_truth`: the run's epoch metrics, the FSC curve
a run writes, ``semiamort fsc``, the demo and the benchmarks; so that they agree on the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .alignment import PoseAlignment, align_poses, align_translation, rotate_map
from .fsc import fsc, masked_fsc, resolution_at

__all__ = ["TruthScore", "pose_metrics", "score_against_truth"]


def pose_metrics(alignment: PoseAlignment) -> dict:
    """The pose errors a run logs: ``pose_error_mean_deg``, ``pose_error_median_deg``, ``mirrored``."""
    return {"pose_error_mean_deg": alignment.mean_error, "pose_error_median_deg": alignment.median_error,
            "mirrored": alignment.mirrored}


@dataclass(frozen=True)
class TruthScore:
    """A map scored against the truth (see :func:`score_against_truth`).

    ``aligned`` is the map moved into the reference's frame, hand, contrast and origin; ``offset_px`` the
    translation (x, y, z) in voxels that moved it there. Resolutions are in Å (FSC = 0.5 and 0.143). The
    ``masked`` figures are None without a mask, ``poses`` None without poses.
    """

    aligned: torch.Tensor
    offset_px: np.ndarray
    curve: np.ndarray
    resolution_05: float
    resolution_0143: float
    size: int
    pixel_size: float
    poses: PoseAlignment | None = None
    contrast_inverted: bool = False
    masked_curve: np.ndarray | None = None
    resolution_05_masked: float | None = None
    resolution_0143_masked: float | None = None
    fsc_outer_masked: float | None = None  # the masked FSC's mean over shells L/4 .. L/2 (Nyquist)

    @property
    def offset_norm_px(self) -> float:
        """How far (voxels) the map's origin was from the reference's."""
        return float(np.linalg.norm(self.offset_px))

    @property
    def pose_errors_deg(self) -> np.ndarray | None:
        """Each particle's pose error (degrees) after the alignment, or None without poses."""
        return None if self.poses is None else self.poses.errors_deg

    def metrics(self) -> dict:
        """The figures a run logs at each epoch end: the pose errors (with poses), ``reference_offset_px``,
        and per curve (suffix ``""``, and ``"_masked"`` with a mask) ``fsc_curve``, ``fsc_0.5_angstrom`` and
        ``fsc_0.143_angstrom``."""
        m = {} if self.poses is None else pose_metrics(self.poses)
        m["reference_offset_px"] = round(self.offset_norm_px, 3)
        curves = {"": (self.curve, self.resolution_05, self.resolution_0143)}
        if self.masked_curve is not None:
            curves["_masked"] = (self.masked_curve, self.resolution_05_masked, self.resolution_0143_masked)
        for suffix, (curve, r05, r0143) in curves.items():
            m[f"fsc_curve{suffix}"] = [round(float(c), 5) for c in curve]
            m[f"fsc_0.5_angstrom{suffix}"] = r05
            m[f"fsc_0.143_angstrom{suffix}"] = r0143
        return m


def _check_shapes(volume: torch.Tensor, reference: torch.Tensor) -> None:
    if volume.shape != reference.shape:
        raise ValueError(f"the map's box {tuple(volume.shape)} differs from the reference's {tuple(reference.shape)}")
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"maps must be cubic (L, L, L), not {tuple(volume.shape)}")


@torch.no_grad()
def score_against_truth(volume: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, pixel_size: float,
                        rotations: torch.Tensor | np.ndarray | None = None,
                        reference_rotations: torch.Tensor | np.ndarray | None = None,
                        mask_radius_px: float | None = None, allow_inverted: bool = False,
                        fit_origin: bool = True, symmetry: torch.Tensor | None = None) -> TruthScore:
    """Score ``volume`` `(L, L, L)` against ``reference`` (the truth, same box and pixel size in Å).

    With ``rotations`` `(N, 3, 3)` (the run's poses) and ``reference_rotations`` (the true poses, same
    particles in the same order), the run's frame and hand are aligned to the truth's (:func:`align_poses`)
    and the map is rotated into the truth's frame; without them the map is compared as it is. With
    ``allow_inverted``, a map whose FSC over shells 1–3 is negative is negated (``contrast_inverted``;
    cryoDRGN's maps come out so). The map's origin is then fitted (:func:`align_translation`: where shifts
    are estimated a map's origin is arbitrary), and the FSC taken over the whole box and, with
    ``mask_radius_px``, within the same soft spherical mask of that radius (voxels) on both maps.
    ``fit_origin=False``: the maps share their origin by construction (a run's half maps): compared as they are.
    ``symmetry`` `(n, 3, 3)`: the truth's point group, for the pose errors (:func:`align_poses`).
    """
    volume, reference = torch.as_tensor(volume).cpu(), torch.as_tensor(reference)
    _check_shapes(volume, reference)
    if (rotations is None) != (reference_rotations is None):
        raise ValueError("give both the rotations and the reference rotations, or neither")
    alignment = None
    if rotations is not None:
        rotations, reference_rotations = torch.as_tensor(rotations), torch.as_tensor(reference_rotations)
        if rotations.shape != reference_rotations.shape:
            raise ValueError(f"{tuple(rotations.shape)} rotations, but {tuple(reference_rotations.shape)} "
                             "reference rotations: the same particles are needed in both")
        alignment = align_poses(rotations, reference_rotations, symmetry)
        volume = rotate_map(volume, alignment.transform)
    inverted = False
    if allow_inverted:
        inverted = bool(np.mean(fsc(volume, reference)[1:4]) < 0)
        if inverted:
            volume = -volume
    if fit_origin:
        aligned, offset = align_translation(volume, reference)
    else:
        aligned, offset = volume, np.zeros(3)
    size = reference.shape[-1]

    def resolutions(curve: np.ndarray) -> tuple[float, float]:
        return resolution_at(curve, size, pixel_size, 0.5), resolution_at(curve, size, pixel_size, 0.143)

    curve = fsc(aligned, reference)
    masked = {}
    if mask_radius_px:
        mc = masked_fsc(aligned, reference, mask_radius_px)
        r05, r0143 = resolutions(mc)
        masked = {"masked_curve": mc, "resolution_05_masked": r05, "resolution_0143_masked": r0143,
                  "fsc_outer_masked": float(np.mean(mc[size // 4 : size // 2 + 1]))}
    return TruthScore(aligned, offset, curve, *resolutions(curve), size=size, pixel_size=float(pixel_size),
                      poses=alignment, contrast_inverted=inverted, **masked)
