"""Per-image pose table for auto-decoding (paper, Sec. 2.2 and Supp. C), with a row-wise Adam."""

from __future__ import annotations

import torch

from ..physics.so3 import exp_so3

__all__ = ["PoseTable"]


class PoseTable:
    """Rotations `(N, 3, 3)` (and shifts `(N, 2)` in pixels) refined as ``R ← R_δ(ω) · R``.

    Each step evaluates the loss at ``ω = 0`` (the exponential map's Taylor branch keeps the gradient
    exact there), takes an Adam step on ``ω`` and folds it into ``R``. The Adam moments and step count are
    kept per image: only the rows of the batch are read and written, so an image's optimiser state does
    not age while other images are trained (``torch.optim.SparseAdam`` shares one step count).
    """

    def __init__(
        self,
        rotations: torch.Tensor,
        shifts: torch.Tensor | None = None,
        lr: float = 0.05,
        shift_lr: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_shift: float | None = None,
    ):
        n = rotations.shape[0]
        dev = rotations.device
        self.rotations = rotations.detach().clone()
        self.shifts = None if shifts is None else shifts.detach().clone()
        self.lr, self.shift_lr, self.betas, self.eps = lr, shift_lr, betas, eps
        self.max_shift = max_shift  # shifts are clamped to ±max_shift pixels per axis
        self._m = torch.zeros(n, 3, device=dev)
        self._v = torch.zeros(n, 3, device=dev)
        self._step = torch.zeros(n, dtype=torch.long, device=dev)
        if self.shifts is not None:
            self._ms = torch.zeros(n, 2, device=dev)
            self._vs = torch.zeros(n, 2, device=dev)

    def __len__(self) -> int:
        return self.rotations.shape[0]

    def perturbation(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Leaf tensors (ω `(B, 3)` at 0, shift `(B, 2)`) whose gradients drive :meth:`step`."""
        w = torch.zeros(idx.shape[0], 3, device=self.rotations.device, requires_grad=True)
        t = None if self.shifts is None else self.shifts[idx].clone().requires_grad_(True)
        return w, t

    def poses(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``R_δ(ω) · R`` `(B, 3, 3)` for the rows ``idx``."""
        return exp_so3(w) @ self.rotations[idx]

    def _adam(self, m, v, grad, step):
        b1, b2 = self.betas
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        t = step[:, None].to(m.dtype)  # float32 works on every device (MPS has no float64)
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        return m, v, mhat / (torch.sqrt(vhat) + self.eps)

    @torch.no_grad()
    def step(self, idx: torch.Tensor, w: torch.Tensor, t: torch.Tensor | None) -> None:
        """One Adam step on the rows ``idx`` from the gradients of ``w`` (and ``t``). A row whose gradient is
        not finite (its image's loss was NaN or Inf) keeps its pose and its moments: one bad image never puts a
        NaN into the table."""
        grad_w = w.grad
        grad_t = None if t is None or self.shifts is None else t.grad
        ok = torch.isfinite(grad_w).all(1)
        if grad_t is not None:
            ok &= torch.isfinite(grad_t).all(1)
        if not bool(ok.all()):
            idx, grad_w = idx[ok], grad_w[ok]
            t, grad_t = (None, None) if grad_t is None else (t[ok], grad_t[ok])
        step = self._step[idx] + 1
        self._step[idx] = step
        m, v, upd = self._adam(self._m[idx], self._v[idx], grad_w, step)
        self._m[idx], self._v[idx] = m, v
        self.rotations[idx] = exp_so3(-self.lr * upd) @ self.rotations[idx]
        if grad_t is not None:
            ms, vs, upd_s = self._adam(self._ms[idx], self._vs[idx], grad_t, step)
            self._ms[idx], self._vs[idx] = ms, vs
            new = t.detach() - self.shift_lr * upd_s
            if self.max_shift is not None:
                new = new.clamp(-self.max_shift, self.max_shift)
            self.shifts[idx] = new

    @torch.no_grad()
    def reset(self, idx: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None = None) -> None:
        """Move rows ``idx`` to new poses and restart their optimiser state."""
        self.rotations[idx] = rotations
        self._m[idx] = 0
        self._v[idx] = 0
        self._step[idx] = 0
        if shifts is not None and self.shifts is not None:
            self.shifts[idx] = shifts
            self._ms[idx] = 0
            self._vs[idx] = 0

    def state_dict(self) -> dict:
        state = {"rotations": self.rotations, "m": self._m, "v": self._v, "step": self._step}
        if self.shifts is not None:
            state.update(shifts=self.shifts, ms=self._ms, vs=self._vs)
        return {k: x.clone() for k, x in state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.rotations, self._m, self._v, self._step = (
            state["rotations"], state["m"], state["v"], state["step"],
        )
        if "shifts" in state:
            self.shifts, self._ms, self._vs = state["shifts"], state["ms"], state["vs"]
