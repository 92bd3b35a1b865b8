"""Immutable snapshots of a running reconstruction: what the CLI prints and the plugin draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Snapshot", "WatchedParticle"]


@dataclass(frozen=True)
class WatchedParticle:
    """One watched particle: its image and the projections the model proposes for it (CTF applied)."""

    index: int
    image: np.ndarray  # (L, L) the (normalised) particle image
    candidates: np.ndarray  # (M, L, L) per-head projections in stage 1; (1, L, L) the refined pose after
    losses: np.ndarray  # (M,) or (1,)
    winner: int  # index into candidates
    rotations: np.ndarray  # (M, 3, 3) or (1, 3, 3)


@dataclass(frozen=True)
class Snapshot:
    """State after a training step. ``volume`` and ``watched`` are set on full snapshots only."""

    epoch: int  # 0-based epoch in progress (or just finished when ``epoch_end``)
    step: int  # global step count
    total_steps: int  # of the whole run, restarts included
    epochs: int
    stage: str  # "autoencode" or "autodecode"
    loss: float  # this step's mean loss
    images_per_second: float
    epoch_end: bool = False
    volume: np.ndarray | None = None  # (L, L, L) real-space map
    watched: tuple[WatchedParticle, ...] = ()
    metrics: dict = field(default_factory=dict)  # epoch metrics on epoch ends
    restart: int | None = None  # which initialisation is training, during the restarts
    box: int = 0  # the run's box (pixels): the volume's and the candidates' size
    pixel_size: float = 0.0  # Å per pixel at that box (the volume's voxel size)
    history: tuple[dict, ...] = ()  # every finished epoch's metrics so far, oldest first (on epoch ends)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))
