"""The metrics each epoch logs: loss, speed, pose change, and on simulated data the pose error and the FSC
of the decoder's volume against the truth."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.dataset import ParticleDataset
from ..metrics.alignment import align_poses
from ..metrics.truth import pose_metrics, score_against_truth
from ..physics.so3 import geodesic_distance

__all__ = ["epoch_record", "epoch_scores", "truth_metrics"]


def epoch_record(epoch: int, stage: str, losses: list[float], seconds: float, n: int, poses: torch.Tensor,
                 previous: torch.Tensor | None) -> dict:
    """The training figures of the epoch ``epoch`` (0-based; logged 1-based)."""
    m: dict = {
        "epoch": epoch + 1,
        "stage": stage,
        "loss": float(np.mean(losses)),
        "seconds": seconds,
        "images_per_second": n / max(seconds, 1e-9),
        "time": time.time(),  # when the epoch's training ended (Unix seconds; the scoring follows)
    }
    if previous is not None:
        m["pose_change_deg"] = float(torch.rad2deg(geodesic_distance(previous, poses)).mean())
    return m


@torch.no_grad()
def truth_metrics(volume: torch.Tensor, poses: torch.Tensor, data: ParticleDataset, reference: torch.Tensor | None,
                  mask_diameter: float | None) -> dict:
    """Pose errors against the particles' known poses, and the FSC of ``volume`` against ``reference`` (both
    at the run's box) after aligning frame, hand and origin; empty without known poses."""
    if data.reference_rotations is None:
        return {}
    if reference is None:
        return pose_metrics(align_poses(poses, data.reference_rotations))
    radius = mask_diameter / 2 / data.pixel_size if mask_diameter else None  # the user's mask, as for particles
    return score_against_truth(volume, reference, data.pixel_size, poses, data.reference_rotations,
                               mask_radius_px=radius).metrics()


def epoch_scores(run) -> dict:
    """:func:`truth_metrics` of a :class:`~napari_semiamort.run.Reconstruction` as it stands: what its next
    epoch end would log against the truth."""
    return truth_metrics(run.volume.real_space(), run.poses, run.data, run.reference_map, run.config.mask_diameter)
