"""What a run knows about its particles and its progress: the poses, shifts and stage-1 winners, the pose
table of stage 2, the epoch and step reached, the history of epoch metrics and the watched paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..models.poses import PoseTable

__all__ = ["Modes", "RunState"]


class Modes(NamedTuple):
    """Each image's best distinct poses at the polish's last view search (the first its kept pose, refined since)
    and their posterior weights: the maps spread each image over them (:func:`~.maps.insert_modes`)."""

    rotations: torch.Tensor  # (N, M, 3, 3)
    shifts: torch.Tensor | None  # (N, M, 2) pixels, when shifts are estimated
    weights: torch.Tensor  # (N, M), each row summing to 1

    @classmethod
    def single(cls, poses: torch.Tensor, shifts: torch.Tensor | None, m: int) -> Modes:
        """``m`` slots per image, all weight on its pose ``poses`` `(N, 3, 3)` (``shifts`` `(N, 2)`)."""
        n = len(poses)
        weights = torch.cat([torch.ones(n, 1), torch.zeros(n, m - 1)], 1)
        return cls(poses[:, None].repeat(1, m, 1, 1), None if shifts is None else shifts[:, None].repeat(1, m, 1),
                   weights)

    @classmethod
    def from_dict(cls, saved: dict | None) -> Modes | None:
        return None if saved is None else cls(saved["rotations"], saved["shifts"], saved["weights"])


@dataclass
class RunState:
    """The per-particle estimates (on the CPU) and the run's position. One fresh per initialisation."""

    poses: torch.Tensor  # (N, 3, 3) current best pose per image
    winners: torch.Tensor  # (N,) the winning stage-1 proposal per image
    shifts: torch.Tensor | None  # (N, 2) pixels, when shifts are estimated
    previous_poses: torch.Tensor | None = None  # at the last epoch's end, for the pose change
    table: PoseTable | None = None  # stage 2's per-image optimiser (on the run's device), from the switch on
    switched_at: int | None = None  # the epoch stage 2 began
    epoch: int = 0  # the next epoch to run
    history: list[dict] = field(default_factory=list)  # one dict of metrics per finished epoch
    paths: dict[int, list[list[float]]] = field(default_factory=dict)  # watched particles' view directions
    junk: torch.Tensor | None = None  # (N,) bool: flagged as junk (from the switch on; None before)
    modes: Modes | None = None  # each image's best distinct poses and their weights, from the polish's view search

    def keep(self, idx: torch.Tensor) -> torch.Tensor | None:
        """`(B,)` bool: which of the images ``idx`` the volume learns from (None: all, nothing flagged)."""
        if self.junk is None or not bool(self.junk.any()):
            return None
        return ~self.junk[idx]

    def kept(self) -> np.ndarray:
        """`(N,)` bool: the images the maps are made from (all but those flagged as junk)."""
        return np.ones(len(self.poses), bool) if self.junk is None else ~self.junk.numpy()

    @classmethod
    def fresh(cls, n: int, estimate_shifts: bool) -> RunState:
        return cls(torch.eye(3).repeat(n, 1, 1), torch.zeros(n, dtype=torch.long),
                   torch.zeros(n, 2) if estimate_shifts else None)

    def take(self, idx: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None) -> None:
        """Record new poses (and shifts) for the images ``idx``."""
        self.poses[idx] = rotations.cpu()
        if shifts is not None:
            self.shifts[idx] = shifts.cpu()

    def sync_from_table(self) -> None:
        """The poses (and shifts) as the pose table holds them."""
        self.poses = self.table.rotations.cpu().clone()
        if self.table.shifts is not None:
            self.shifts = self.table.shifts.cpu().clone()
