"""Gaussian likelihood of Fourier (Hartley) images, per-shell noise, winner-takes-all over heads."""

from __future__ import annotations

import torch

__all__ = ["ShellNoiseModel", "gaussian_nll", "l1_loss", "winner_takes_all"]


def gaussian_nll(pred: torch.Tensor, obs: torch.Tensor, inv_var: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood per image, as a mean over frequencies `(...)`.

    ``0.5 · mean_k (pred − obs)² / σ²(k)`` (paper, Eq. 2/5, without the constant). Hartley coefficients of
    a real image carry the same squared error as its Fourier coefficients (Parseval), so this equals the
    Fourier-space likelihood. Divided by the number of frequencies so that 0.5 means "residual at the
    noise level" whatever the box.
    """
    return 0.5 * ((pred - obs) ** 2 * inv_var).mean(-1)


def l1_loss(pred: torch.Tensor, obs: torch.Tensor, inv_var: torch.Tensor) -> torch.Tensor:
    """Mean ``|Δ| / σ`` per image: the public CryoSPIN code's loss (a mean |ΔF|), kept as an option."""
    return ((pred - obs).abs() * torch.sqrt(inv_var)).mean(-1)


def winner_takes_all(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum over heads of losses `(B, M)`: (loss `(B,)`, winning head `(B,)`) (paper, Sec. 2.1)."""
    best, head = losses.min(dim=-1)
    return best, head


class ShellNoiseModel:
    """Per-frequency-shell noise variance ``σ²(|k|)``, estimated from the data.

    Starts from the mean power of the images per shell (at low SNR that is mostly noise) and is re-estimated
    each epoch from the residuals of the current best fit. Real noise is coloured, so a single σ² would
    over-weight the shells where noise is strong.
    """

    def __init__(self, shells: torch.Tensor, n_shells: int, floor: float = 1e-3):
        self.shells = shells  # (P,) shell index of each frequency in the loss
        self.n_shells = n_shells
        self.floor = floor
        self.variance = torch.ones(n_shells, dtype=torch.float32, device=shells.device)
        self._sum = torch.zeros(n_shells, dtype=torch.float64, device=shells.device)
        self._count = torch.zeros(n_shells, dtype=torch.float64, device=shells.device)

    def accumulate(self, residual: torch.Tensor, shells: torch.Tensor | None = None) -> None:
        """Add squared residuals `(B, P)` to the running estimate; ``shells`` `(P,)`: their frequencies' shells
        where the residuals cover another band than the model's (default: the model's own)."""
        shells = self.shells if shells is None else shells.to(self.shells.device)
        r2 = (residual.detach().to(torch.float64) ** 2).sum(0)
        self._sum.index_add_(0, shells, r2)
        self._count.index_add_(0, shells, torch.full_like(r2, float(residual.shape[0])))

    def update(self) -> None:
        """Replace ``σ²`` by the accumulated mean (shells with no data keep their value)."""
        seen = self._count > 0
        est = torch.where(seen, self._sum / self._count.clamp_min(1), self.variance.to(torch.float64))
        mean = est[seen].mean() if seen.any() else torch.tensor(1.0, dtype=torch.float64)
        self.variance = est.clamp_min(self.floor * float(mean)).to(torch.float32)
        self._sum.zero_()
        self._count.zero_()

    def tie_dc_to_next_shell(self) -> None:
        """Give the DC term shell 1's variance (per-image normalisation leaves the DC with almost none)."""
        self.variance[0] = self.variance[1]

    def make_white(self) -> None:
        """One variance for all shells: their mean."""
        self.variance.fill_(float(self.variance.mean()))

    def inverse_variance(self, shells: torch.Tensor | None = None) -> torch.Tensor:
        """``1 / σ²`` `(P,)` at frequencies of the shells ``shells`` `(P,)` (default: the model's own)."""
        return 1.0 / self.variance[self.shells if shells is None else shells]

    def state_dict(self) -> dict:
        return {"variance": self.variance.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.variance = state["variance"].to(self.shells.device)
