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
(:func:`search_views_and_shifts`): the images stage 2 holds in wrong views are held there by wrong shifts. At every
polish epoch, where the map is (pseudo-)symmetric, each pose competes with its mates (:func:`relax_to_mates`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.density import solvent_mask
from ..metrics.fsc import resolution_at
from ..metrics.symmetry import mate_poses, mates, pseudo_symmetry
from ..physics.backproject import wiener_volume
from . import passes
from .batches import ImageSource
from .frequencies import Frequencies
from .maps import insert
from .search import JointShiftSearch

__all__ = ["polish_reference", "polish_split", "relax_to_mates", "search_views_and_shifts"]


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


MATE_REACH = 0.1  # with shifts: how far (of the box) the symmetry's axis may pass from the box centre
MATE_CHUNK = 12  # mates scored at once per image (memory: batch × this × the band's pixels)
SKIP_BELOW = 0.05  # a map this far below the relaxation's threshold is not searched again in the run's later epochs


def relax_to_mates(model, source: ImageSource, state, fr: Frequencies, config, history: list[dict] = ()) -> dict:
    """Symmetry relaxation under the polish's map (set into ``model``'s volume): where the map matches itself under
    a rotation (:func:`~..metrics.symmetry.pseudo_symmetry`, correlation ≥ ``config.relax_symmetry``), each image's
    best mate ``(R S, s + (R S t)_xy)`` at the band ``fr`` is refined ``config.reassign_steps`` pose steps and takes
    the image's place where it explains the image better (:func:`.passes.compete`). Returns the record: the best
    element found (order, correlation), and where relaxed, the group's size and how many images moved.

    Realistic 7PBL, from a finished run's poses (35 % of the good images > 20° off, median 5.52°; the map's
    60° self-correlation 0.80): one round moved 368 images, four rounds left 22 % > 20° off, median 4.39°, the
    polish map's FSC = 0.5 with the truth 10.2 → 9.2 Å. Once an earlier polish epoch of the run (``history``, its
    epochs' records) found the map short of the threshold by :data:`SKIP_BELOW`, the search is not repeated: the
    polish maps' symmetry hardly moves between epochs (3KPR: 0.536, 0.534, 0.534, 0.535), and it costs ~2 s."""
    if not config.relax_symmetry or state.table is None:
        return {}
    if any(h.get("symmetry_correlation", 1.0) < config.relax_symmetry - SKIP_BELOW for h in history):
        return {}
    table = state.table
    reach = MATE_REACH * source.size if table.shifts is not None else 0.0
    elements, best = pseudo_symmetry(model.volume.real_space(), config.relax_symmetry, reach)
    top = elements[0] if elements else best
    record = {"symmetry_order": top.order, "symmetry_correlation": round(top.correlation, 3)}
    if not elements:
        return record
    ops, trans = mates(elements)
    hartley = model.volume.hartley().detach()
    moved = 0
    for idx in passes.chunks(len(source), config, model.device):
        batch, dev = source.batch(idx, fr), idx.to(model.device)
        with torch.no_grad():
            rot, sh = mate_poses(table.rotations[dev], None if table.shifts is None else table.shifts[dev], ops, trans)
            losses = []
            for g in range(0, rot.shape[1], MATE_CHUNK):
                r, k = rot[:, g : g + MATE_CHUNK], min(MATE_CHUNK, rot.shape[1] - g)
                s = None if sh is None else sh[:, g : g + MATE_CHUNK].flatten(0, 1)
                losses.append(model.exact_loss(r.flatten(0, 1), s, batch.obs.repeat_interleave(k, 0),
                                               batch.ctf.repeat_interleave(k, 0), fr).reshape(len(idx), k))
            pick = torch.cat(losses, 1).argmin(1)
            rows = torch.arange(len(idx), device=model.device)
            cand = passes.pose_table(config, model.size, rot[rows, pick], None if sh is None else sh[rows, pick])
        moved += passes.compete(model, state, idx, cand, (batch, fr), (batch, fr), config.reassign_steps, hartley)
    state.sync_from_table()
    return {**record, "symmetry_group": len(ops) + 1, "symmetry_moved": moved}
