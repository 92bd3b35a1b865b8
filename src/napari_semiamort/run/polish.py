"""Stage 2's last epochs, the polish: every pose refined against the map its images make, regularised.

Stage 2's decoder volume is trained on the poses it is refining, and each image's own noise is in the slice it is
scored against: from the true poses turned 4°, stage 2 settled at 2.6–2.7° median on realistic 30S, and a whole
run's 25 stage-2 epochs still left 3.9°. Scored instead against the map reconstructed directly from the current
poses with each shell weighted by the signal the half sets agree on (:func:`~..physics.backproject.wiener_volume`,
RELION's regularised map), the poses come in further each epoch as the map sharpens: 3.9° → 3.2, 3.0, 2.8 (FSC
against the truth 15.8 → 14.7 Å, true poses' 14.2 Å) in three epochs of ten pose steps each, against a map rebuilt
at each epoch's start (``docs/results.md``, "Stage 2's polish"). The per-image optimum under the noise-free map
lies 1.5° from the truth on those images: no method's median goes much below that.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.fsc import resolution_at
from ..physics.backproject import wiener_volume
from .batches import ImageSource
from .maps import insert

__all__ = ["polish_reference", "polish_split"]


def polish_split(half: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """`(N,)` 1 or 2: the half sets whose agreement weighs the polish's map: the particles' own halves (given, or
    the run's ``--halves``), else a seeded split."""
    if half is not None:
        return np.asarray(half)
    split = np.ones(n, np.int64)
    split[np.random.default_rng(seed).permutation(n)[: n // 2]] = 2
    return split


@torch.no_grad()
def polish_reference(source: ImageSource, poses: torch.Tensor, shifts: torch.Tensor | None, keep: np.ndarray,
                     split: np.ndarray) -> tuple[torch.Tensor, dict]:
    """The regularised map `(L, L, L)` of the images ``keep`` `(N,)` bool at ``poses`` (and ``shifts``), and a
    record for the epoch's metrics: the half sets' FSC at 0.143 (Å; the halves share stage 1's start, so this
    reads optimistic) and the shells the map keeps."""
    first = insert(source, poses, shifts, np.flatnonzero((split == 1) & keep))
    second = insert(source, poses, shifts, np.flatnonzero((split == 2) & keep))
    volume, curve = wiener_volume(first, second)
    curve = curve.cpu().numpy()
    size, pixel = source.size, source.data.pixel_size
    return volume, {"polish_halves_fsc_0143_A": round(float(resolution_at(curve, size, pixel, 0.143)), 2),
                    "polish_shells_kept": int(np.count_nonzero(curve > 0.143))}
