"""Junk: images that fit no view of the map (empty ice, contaminants, other molecules) found from how much of
the map, at each image's best pose, they hold.

Each image's score is the fitted amplitude ``a = Σ w·p·y / Σ w·p²`` of its prediction ``p`` (slice, CTF,
shift) in the image ``y``, with ``w = 1/σ²`` the noise model's weights, at the band the epoch trained: a
particle holds the map's projection at about its own scale (a ≈ 1, spread by the particles' scale and the
noise, ~0.1–0.2 at SNR 0.05, box 64); empty ice holds none of it (a ≈ 0, or the little the best of many poses
finds in noise); another molecule the share of the projection their shapes have in common, the less the finer
the band. The amplitude, unlike the matched filter ``Σ w·p·y / √(Σ w·p²)`` (used before, 2026-12-03 … 12-07),
does not grow with how much signal the image's CTF lets through, so the particles form one narrower
population. Realistic sets (SNR 0.05, box 64, seed 0; docs/results.md, "Session 14"): 3KPR with 15 % IgG images
as junk, 38 % of them flagged (1.5 % of the particles) where the matched filter flagged none; IgG with 15 %
TCR–HLA images, none either way (they fit the IgG map at 1.05 against the particles' 1.28); empty ice 97 % (94 %).
A two-component Gaussian mixture fitted to the scores separates the two populations; images more probably in
the lower component are flagged, and only when the two components are separated (Ashman's D above
:data:`MIN_SEPARATION`): a clean data set is one population, and nothing is flagged.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MIN_SEPARATION", "JunkFlags", "flag_junk"]

# Ashman's D = √2 |μ₁ − μ₂| / √(σ₁² + σ₂²) above which two Gaussian components count as two populations
# (D > 2 is the usual criterion for a clean separation).
MIN_SEPARATION = 2.0
# the lower component must not hold most images: junk is the minority of a picked data set
MAX_JUNK_FRACTION = 0.5


class JunkFlags(NamedTuple):
    flagged: np.ndarray  # (N,) bool: the image is junk
    threshold: float  # scores below this are flagged (nan when nothing is)
    separation: float  # Ashman's D of the fitted components
    means: tuple[float, float]  # the components' means (low, high)

    def record(self) -> dict:
        """The epoch metrics' entries: the fraction flagged, the separation, the threshold where one applies."""
        out = {"junk_fraction": float(self.flagged.mean()), "junk_separation": self.separation}
        return {**out, "junk_threshold": self.threshold} if self.flagged.any() else out


def _mixture(z: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and standard deviations `(2,)` of a two-Gaussian fit to ``z`` (EM, started from the
    10th and 60th percentiles)."""
    mu = np.percentile(z, [10, 60]).astype(np.float64)
    sd = np.full(2, max(float(np.std(z)) / 2, 1e-6))
    pi = np.array([0.5, 0.5])
    for _ in range(iterations):
        log = np.log(pi) - np.log(sd) - 0.5 * ((z[:, None] - mu) / sd) ** 2
        log -= log.max(1, keepdims=True)
        r = np.exp(log)
        r /= r.sum(1, keepdims=True)
        n = r.sum(0) + 1e-12
        new = (r * z[:, None]).sum(0) / n
        sd = np.sqrt(np.maximum((r * (z[:, None] - new) ** 2).sum(0) / n, 1e-12))
        pi, done, mu = n / len(z), np.allclose(new, mu, atol=1e-9), new
        if done:
            break
    order = np.argsort(mu)
    return pi[order], mu[order], sd[order]


def flag_junk(scores: np.ndarray) -> JunkFlags:
    """Flag the images whose detection ``scores`` `(N,)` fall in a separate lower population."""
    z = np.asarray(scores, dtype=np.float64)
    none = np.zeros(len(z), dtype=bool)
    finite = np.isfinite(z)
    if finite.sum() < 10:
        return JunkFlags(none, float("nan"), 0.0, (float("nan"),) * 2)
    pi, mu, sd = _mixture(z[finite])
    separation = float(np.sqrt(2) * (mu[1] - mu[0]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2))
    if separation < MIN_SEPARATION or pi[0] > MAX_JUNK_FRACTION:
        return JunkFlags(none, float("nan"), separation, (float(mu[0]), float(mu[1])))
    # where the posterior of the low component is one half, between the two means
    grid = np.linspace(mu[0], mu[1], 2001)
    log0 = np.log(pi[0]) - np.log(sd[0]) - 0.5 * ((grid - mu[0]) / sd[0]) ** 2
    log1 = np.log(pi[1]) - np.log(sd[1]) - 0.5 * ((grid - mu[1]) / sd[1]) ** 2
    threshold = float(grid[np.argmax(log1 > log0)])
    flagged = ~finite | (z < threshold)
    return JunkFlags(flagged, threshold, separation, (float(mu[0]), float(mu[1])))
