"""The divergence guard: no optimiser step that would put a NaN or an Inf into the model is ever kept.

A single bad value upstream (a NaN defocus, constant images, a learning rate far too high) used to turn the
whole run to NaN within a step, and it exited 0 with an all-zero map (issue 20). Every training step now goes
through :meth:`DivergenceGuard.step`, in place of the optimisers' own:

* a loss or a gradient that is not finite, or a step that leaves a parameter not finite or blown up (its
  largest magnitude more than :data:`BLOW_UP` times what it was: a finite gradient times far too high a rate):
  the parameters are put back as they were before the step, the optimisers' moments for them cleared, every
  learning rate of the step's optimisers halved, and the user told (a warning in the log: the CLI prints it);
* :data:`MAX_FAILURES` failed steps in a row: :class:`TrainingDiverged`, which ends the run with a non-zero exit
  and a message that names what to check, instead of training on.

The cost is one copy of the step's parameters per step into buffers kept from step to step, three max-magnitude
reductions over them and their gradients, and one host sync (the decision): within the measurement's noise at
box 64 on a CPU (``benchmarks/guard_cost.py``: 1.04× / 1.02× the unguarded images/s in stage 1 / 2, ±4 %; the
first version, with a fresh copy and ``isfinite`` passes, measured 0.92× / 0.91×).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

__all__ = ["MAX_FAILURES", "DivergenceGuard", "TrainingDiverged"]

log = logging.getLogger("napari_semiamort")

MAX_FAILURES = 20  # failed steps in a row before the run is given up (each halves the rates: 2^-20 ≈ 1e-6)
BLOW_UP = 1e4  # a step that multiplies a parameter's largest magnitude (plus one) by more than this blew it up


class TrainingDiverged(RuntimeError):
    """The loss stayed NaN or Inf however low the learning rates went: the inputs are the likely cause."""


def _largest(t: torch.Tensor) -> torch.Tensor:
    """The largest magnitude in ``t`` (a 0-d tensor; NaN where ``t`` holds one), in one pass without a temporary
    of its size (``aminmax``: 0.04 ms for 262,144 floats here, where ``vector_norm(inf)`` took 0.69 ms and
    ``isfinite().all()`` 0.39 ms)."""
    low, high = torch.aminmax(t.detach())
    return torch.maximum(-low, high)


def _params(optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    return [p for opt in optimizers for group in opt.param_groups for p in group["params"]]


class DivergenceGuard:
    """Applies the optimisers' steps only where they keep the model finite; counts what it refused."""

    def __init__(self, max_failures: int = MAX_FAILURES):
        self.max_failures = max_failures
        self.in_a_row = 0
        self.refused = 0  # steps refused in all
        self._saved: dict[int, torch.Tensor] = {}  # each parameter's copy before the step (kept: no allocation)
        self._largest: dict[int, torch.Tensor] = {}  # each parameter's largest magnitude after the last kept step

    def step(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer]) -> bool:
        """After ``loss.backward()``: step ``optimizers``, and keep the step only if the loss, the gradients and
        the parameters after it are finite and not blown up; else put the parameters back as they were, clear
        the optimisers' moments for them and halve the rates. True if kept. One host sync per step; the copies
        go into buffers kept from step to step, the checks are max-magnitude reductions (NaN propagates)."""
        params = [p for p in _params(optimizers) if p.numel()]
        bad = ~torch.isfinite(loss.detach()).all()
        for p in params:
            key = id(p)
            if key not in self._saved or self._saved[key].shape != p.shape:
                self._saved[key] = torch.empty_like(p.detach())
                self._largest[key] = _largest(p.detach())
            self._saved[key].copy_(p.detach())
            if p.grad is not None:
                bad = bad | ~torch.isfinite(_largest(p.grad))
        for opt in optimizers:
            opt.step()
        largest = {id(p): _largest(p.detach()) for p in params}
        for p in params:  # a NaN compares false: not finite and blown up are one test
            bad = bad | ~(largest[id(p)] <= BLOW_UP * (self._largest[id(p)] + 1))
        if not bool(bad):
            self._largest.update(largest)
            self.in_a_row = 0
            return True
        with torch.no_grad():
            for p in params:
                p.copy_(self._saved[id(p)])
        for opt in optimizers:  # the moments that drove the step out of range go with it
            for p in params:
                opt.state.pop(p, None)
        return self._refuse(optimizers, "a NaN or Inf in the loss, its gradient or the step's result, or a "
                                        "blown-up step")

    def _refuse(self, optimizers: Sequence[torch.optim.Optimizer], why: str) -> bool:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
            for group in opt.param_groups:
                group["lr"] = group["lr"] / 2
        self.in_a_row += 1
        self.refused += 1
        rates = ", ".join(f"{g['lr']:.3g}" for opt in optimizers for g in opt.param_groups)
        log.warning(f"training step skipped: {why}; learning rates halved to {rates}")
        if self.in_a_row >= self.max_failures:
            raise TrainingDiverged(
                f"training diverged: {self.in_a_row} steps in a row gave a NaN or Inf loss even with the learning "
                f"rates halved each time (now {rates}). Check the inputs: CTF parameters (defocus in Å, voltage, "
                f"pixel size), images that are constant or hold NaN/Inf, and the learning rates")
        return False
