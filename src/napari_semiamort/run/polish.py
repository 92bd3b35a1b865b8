"""Stage 2's last epochs, the polish: every pose refined against the map its images make, regularised.

Stage 2's decoder volume is trained on the poses it is refining, and each image's own noise is in the slice it is
scored against: from the true poses turned 4°, stage 2 settled at 2.6–2.7° median on realistic 30S, and a whole
run's 25 stage-2 epochs still left 3.9°. Scored instead against the map reconstructed directly from the current
poses with each shell weighted by the signal the half sets agree on (:func:`~..physics.backproject.wiener_volume`,
RELION's regularised map), the poses come in further each epoch as the map sharpens: 3.9° → 3.2, 3.0, 2.8 (FSC
against the truth 15.8 → 14.7 Å, true poses' 14.2 Å) in three epochs of ten pose steps each, against a map rebuilt
at each epoch's start (``docs/results.md``, "Stage 2's polish"). The per-image optimum under the noise-free map
lies 1.5° from the truth on those images: no method's median goes much below that. The run's polish: its last
``polish_epochs`` (4) stage-2 epochs, ``pose_steps`` pose steps per image each (5 did better than 10 or 15).

At the first polish epoch, with shifts estimated, each image's view is also searched jointly with its shift
(:func:`search_views_and_shifts`): the images stage 2 holds in wrong views are held there by wrong shifts.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.density import solvent_mask
from ..metrics.fsc import resolution_at
from ..physics.backproject import wiener_volume
from . import passes
from .batches import ImageSource
from .frequencies import Frequencies
from .maps import insert
from .search import JointShiftSearch

__all__ = ["polish_reference", "polish_split", "search_views_and_shifts"]


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
                     split: np.ndarray, diameter: float | None = None) -> tuple[torch.Tensor, dict]:
    """The regularised map `(L, L, L)` of the images ``keep`` `(N,)` bool at ``poses`` (and ``shifts``), its
    solvent masked (:func:`~..metrics.density.solvent_mask`: a soft sphere about the particle, its radius fitted
    to the map or ``diameter`` Å), and a record for the epoch's metrics: the half sets' FSC at 0.143 (Å; the
    halves share stage 1's start, so this reads optimistic), the shells the map keeps, the mask's radius (Å).

    The mask, as RELION's references carry one: a pose fitted to an unmasked map fits its image's noise to the
    map's noise in the solvent, which the other images' poses built there. On realistic 3KPR the final map's FSC
    with the truth was 13.8 Å over the box but 11.1 Å within a sphere about the particle (the true poses' 10.9 and
    10.4 Å); with the polish's maps masked, 12.3 Å and 10.8 Å, the median pose error 3.9° → 3.1°."""
    first = insert(source, poses, shifts, np.flatnonzero((split == 1) & keep))
    second = insert(source, poses, shifts, np.flatnonzero((split == 2) & keep))
    volume, curve = wiener_volume(first, second)
    curve = curve.cpu().numpy()
    size, pixel = source.size, source.data.pixel_size
    record = {"polish_halves_fsc_0143_A": round(float(resolution_at(curve, size, pixel, 0.143)), 2),
              "polish_shells_kept": int(np.count_nonzero(curve > 0.143))}
    mask = solvent_mask(volume, None if diameter is None else diameter / 2 / pixel)
    if mask is not None:
        volume = volume * mask[0]
        record["polish_mask_radius_A"] = round(mask[1] * pixel, 1)
    return volume, record


SHIFT_REACH, SHIFT_STEP = 4, 2  # the joint search's shifts: ±4 px, 2 px apart (25; the pose refinement does the rest)


def search_views_and_shifts(model, stage1, source: ImageSource, state, bands: tuple[Frequencies, Frequencies],
                            config) -> dict:
    """At the polish's first epoch, under its map (set into ``model``'s volume): each image's current pose
    competes with its best poses on stage 1's grid searched jointly with the shift (:class:`.JointShiftSearch`;
    proposed at ``bands[0]``, stage 1's band, refined there, compared at ``bands[1]``, stage 2's), as the
    reassignment lets candidates compete. Only when shifts are estimated; returns the record."""
    if state.table is None or state.table.shifts is None:
        return {}
    search = JointShiftSearch(config.search_nside, config.search_inplane, model.device, SHIFT_REACH,
                              SHIFT_STEP, top=config.reassign_candidates)
    moved = passes.reassign(model, stage1, source, state, (bands[0], bands[0], bands[1]), config, search)
    return {"polish_moved": moved}
