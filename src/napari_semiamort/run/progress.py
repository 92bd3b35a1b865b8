"""Where a run stands within an epoch: the steps done and their losses, the record of the pass before the epoch
and the polish's reference map.

A checkpoint taken between two steps holds it, so that a resumed run goes on from the next step exactly as the
uninterrupted run did: the epoch's batches are drawn again from its seed (:meth:`~.schedule.Schedule.batches`),
the steps done are skipped, and the pass before the epoch (the switch, the reassignment, the polish's map), whose
effects are in the run's state already, is not run again; its record and the polish's reference come from here.
No step draws from a random generator, so nothing else is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

__all__ = ["EpochProgress"]


@dataclass
class EpochProgress:
    """An epoch in progress: ``epoch`` (0-based), ``notes`` (the record of the pass before it, for its metrics),
    ``reference`` (a polish epoch's map, Hartley, on the run's device), the ``losses`` of its steps so far, and
    the ``seconds`` it had taken before this run of it started (a resumed epoch's time counts both)."""

    epoch: int
    notes: dict
    reference: torch.Tensor | None = None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def done(self) -> int:
        """The steps done."""
        return len(self.losses)

    def elapsed(self) -> float:
        """The epoch's seconds so far."""
        return self.seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "notes": self.notes, "losses": list(self.losses), "seconds": self.elapsed(),
                "reference": None if self.reference is None else self.reference.cpu()}

    @classmethod
    def from_dict(cls, saved: dict, device: torch.device) -> EpochProgress:
        ref = saved["reference"]
        return cls(int(saved["epoch"]), dict(saved["notes"]), None if ref is None else ref.to(device),
                   [float(x) for x in saved["losses"]], float(saved["seconds"]))
