"""Which of several stage-1 initialisations goes on.

Whether stage 1 breaks the symmetry of its blurry start depends on the initialisation (on 4ZXB, seeds 0, 1
and 2 reached FSC 77, 35 and 27 Å against the truth); the loss after a few epochs ranks them (6.81, 6.78,
6.76 at epoch 5), so the best of a few short starts is kept. When the lowest loss is not ``restart_margin``
below the median of the others, no start stands out: at boxes 96-192 that meant none had broken the
symmetry. More starts follow, one at a time, up to ``max_restarts``.
"""

from __future__ import annotations

import numpy as np

from .config import ReconstructionConfig

__all__ = ["RESTART_SEED_STRIDE", "RestartPolicy", "restart_gap"]

RESTART_SEED_STRIDE = 7919  # restart k starts from seed + 7919 k (a prime: the seeds never coincide)


def restart_gap(losses: list[float]) -> float:
    """How far the lowest loss lies below the median of the others, relative to that median (inf for a single
    loss). Against the median rather than the runner-up: two starts that both broke the symmetry are close to
    each other but still stand below the rest."""
    if len(losses) < 2:
        return float("inf")
    first, *others = sorted(losses)
    typical = float(np.median(others))
    return (typical - first) / typical if typical > 0 else 0.0


class RestartPolicy:
    """Plans the restarts and keeps the best one's state."""

    def __init__(self, config: ReconstructionConfig):
        self.config = config
        self.planned = config.restarts  # grows while no restart's loss stands out
        self.losses: list[float] = []
        self.best: tuple[float, dict] | None = None

    def seed(self, k: int) -> int:
        return self.config.seed + RESTART_SEED_STRIDE * k

    def record(self, loss: float, state: dict) -> None:
        """Restart number ``len(losses)`` ended at ``loss`` with ``state`` (kept when it is the best so far)."""
        self.losses.append(loss)
        if self.best is None or loss < self.best[0]:
            self.best = (loss, state)
        cfg = self.config
        k = len(self.losses)
        if k == self.planned and k < cfg.max_restarts and restart_gap(self.losses) < cfg.restart_margin:
            self.planned += 1

    @property
    def done(self) -> bool:
        return len(self.losses) >= self.planned

    def take_best(self) -> dict:
        """The best restart's state, handed over once (the policy keeps no copy)."""
        state, self.best = self.best[1], None
        return state

    def summary(self, chosen: int) -> dict:
        """The record the last restart epoch's metrics carry."""
        return {"chosen_restart": chosen, "restart_losses": [round(x, 6) for x in self.losses],
                "restart_gap": round(restart_gap(self.losses), 6)}

    def resumed(self, history: list[dict]) -> None:
        """A resumed run counts the restarts it tried (a checkpoint taken during the restarts has no record and
        leaves the count as it is)."""
        tried = [len(m["restart_losses"]) for m in history if "restart_losses" in m]
        if tried:
            self.planned = max(self.config.restarts, tried[-1])
