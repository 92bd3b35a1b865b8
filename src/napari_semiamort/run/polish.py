"""Stage 2's last epochs, the polish: every pose refined against the map its images make, regularised.

Stage 2's decoder volume is trained on the poses it is refining, and each image's own noise is in the slice it is
scored against: from the true poses turned 4°, stage 2 settled at 2.6–2.7° median on realistic 30S, and a whole
run's 25 stage-2 epochs still left 3.9°. Scored instead against the map reconstructed directly from the current
poses with each shell weighted by the signal the half sets agree on (:func:`~..physics.backproject.wiener_maps`,
RELION's regularised map), the poses come in further each epoch as the map sharpens: 3.9° → 3.2, 3.0, 2.8 (FSC
against the truth 15.8 → 14.7 Å, true poses' 14.2 Å) in three epochs of ten pose steps each, against a map rebuilt
at each epoch's start (``docs/results.md``, "Stage 2's polish"). The per-image optimum under the noise-free map
lies 1.5° from the truth on those images: no method's median goes much below that. The run's polish: its last
``polish_epochs`` (4) stage-2 epochs, ``pose_steps`` pose steps per image each (5 did better than 10 or 15).

At the polish's first epoch and every :data:`SEARCH_EVERY`-th after, with shifts estimated, each image's view is
also searched jointly with its shift (:func:`search_views_and_shifts`): the images stage 2 holds in wrong views are
held there by wrong shifts, and by their own noise in the map they are judged against; from the first search on,
the maps spread each image over its best distinct poses by their posterior weights (soft assignment). At every
polish epoch, where the map is (pseudo-)symmetric, each pose competes with its mates (:func:`relax_to_mates`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..metrics.density import solvent_mask
from ..metrics.fsc import resolution_at
from ..metrics.symmetry import mate_poses, mates, pseudo_symmetry
from ..physics.backproject import wiener_maps
from . import passes
from .batches import ImageSource
from .frequencies import Frequencies
from .maps import insert_modes
from .search import JointShiftSearch
from .stage2 import refine_poses
from .state import Modes

__all__ = ["PolishMaps", "polish_reference", "polish_split", "rebuilder", "relax_to_mates", "search_views_and_shifts",
           "stage1_map"]


def polish_split(half: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """`(N,)` 1 or 2: the half sets whose agreement weighs the polish's map: the particles' own halves (given, or
    the run's ``--halves``), else a seeded split."""
    if half is not None:
        return np.asarray(half)
    split = np.ones(n, np.int64)
    split[np.random.default_rng(seed).permutation(n)[: n // 2]] = 2
    return split


class PolishMaps(NamedTuple):
    """A polish epoch's maps, masked alike: the whole set's, and each half set's (:func:`.wiener_maps`)."""

    volume: torch.Tensor  # (L, L, L)
    record: dict  # for the epoch's metrics
    halves: tuple[torch.Tensor, torch.Tensor]  # the half sets 1 and 2


@torch.no_grad()
def polish_reference(source: ImageSource, poses: torch.Tensor, shifts: torch.Tensor | None, keep: np.ndarray,
                     split: np.ndarray, diameter: float | None = None, radius: float | None = None,
                     modes: Modes | None = None) -> PolishMaps:
    """The regularised map `(L, L, L)` of the images ``keep`` `(N,)` bool at ``poses`` (and ``shifts``), its
    solvent masked (:func:`~..metrics.density.solvent_mask`: a soft sphere about the particle, its radius fitted
    to the map or ``diameter`` Å; the images' frequencies up to ``radius`` Fourier pixels, default Nyquist),
    each half set's map masked alike, and a record for the epoch's metrics: the
    half sets' FSC at 0.143 (Å; the halves share stage 1's start, so this reads optimistic), the shells the map
    keeps, the mask's radius (Å).

    The mask, as RELION's references carry one: a pose fitted to an unmasked map fits its image's noise to the
    map's noise in the solvent, which the other images' poses built there. On realistic 3KPR the final map's FSC
    with the truth was 13.8 Å over the box but 11.1 Å within a sphere about the particle (the true poses' 10.9 and
    10.4 Å); with the polish's maps masked, 12.3 Å and 10.8 Å, the median pose error 3.9° → 3.1°."""
    first = insert_modes(source, poses, shifts, np.flatnonzero((split == 1) & keep), radius, modes)
    second = insert_modes(source, poses, shifts, np.flatnonzero((split == 2) & keep), radius, modes)
    volume, curve, halves = wiener_maps(first, second)
    curve = curve.cpu().numpy()
    size, pixel = source.size, source.data.pixel_size
    record = {"polish_halves_fsc_0143_A": round(float(resolution_at(curve, size, pixel, 0.143)), 2),
              "polish_shells_kept": int(np.count_nonzero(curve > 0.143))}
    mask = solvent_mask(volume, None if diameter is None else diameter / 2 / pixel)
    if mask is not None:
        volume, halves = volume * mask[0], tuple(h * mask[0] for h in halves)
        record["polish_mask_radius_A"] = round(mask[1] * pixel, 1)
    return PolishMaps(volume, record, halves)


@torch.no_grad()
def stage1_map(model, source: ImageSource, state, config, half: np.ndarray | None, shell: int) -> dict:
    """Stage 1's M-step: the volume's coefficients within ``shell`` + 1 Fourier pixels (all the band up to
    ``shell`` reads through the slice's interpolation) set to those of the regularised map
    (:func:`polish_reference`, its solvent masked) of the kept images at their current poses and shifts, as
    RELION's and cryoSPARC's EM rebuild the reference each iteration; the rest stays, and stage 1's steps go on
    from it. The volume's SGD steps alone lag the poses: on realistic 8ZPM the median error fell 2-3° an epoch to
    42° at the switch, with this map at each epoch's start to 26-29° (``config.stage1_maps_from``). Returns the
    record: the half sets' FSC at 0.143 (Å; within the band inserted)."""
    split = polish_split(half, len(state.poses), config.seed)
    radius = min(shell + 2, source.size / 2)  # the images' frequencies that reach the voxels within shell + 1
    maps = rebuilder(source, state, split, config.mask_diameter, radius)()
    model.volume.set_from_map(maps.volume.to(model.device), within=shell + 1)
    return {"stage1_map_fsc_0143_A": maps.record["polish_halves_fsc_0143_A"]}


def rebuilder(source: ImageSource, state, split: np.ndarray, diameter: float | None,
              radius: float | None = None) -> Callable[[], PolishMaps]:
    """The polish's maps (:func:`polish_reference`) of the run's kept images at their poses as they are when called."""
    return lambda: polish_reference(source, state.poses, state.shifts, state.kept(), split, diameter, radius,
                                    state.modes)


# the views are searched (with the shifts) at the polish's first epoch and every this many after, under maps
# sharper each time: on realistic 80S a search under the finished run's map still moved 700-960 images
SEARCH_EVERY = 2
SOFT_MODES = 3  # each image's best distinct poses (more than passes.SAME_MODE_DEG apart) the maps spread it over
SHIFT_REACH, SHIFT_STEP = 4, 2  # the joint search's shifts: ±4 px, 2 px apart (25; the pose refinement does the rest)


def search_views_and_shifts(model, stage1, source: ImageSource, state, bands: tuple[Frequencies, Frequencies],
                            config, maps: PolishMaps, split: np.ndarray,
                            rebuild: Callable[[], PolishMaps]) -> PolishMaps:
    """At the polish's first epoch and every :data:`SEARCH_EVERY`-th after: each image's current pose competes
    with its best poses on stage 1's grid searched jointly with the shift (:class:`.JointShiftSearch`; proposed at
    ``bands[0]``, stage 1's band, refined there, compared at ``bands[1]``, stage 2's), as the reassignment lets
    candidates compete, each half set's images (``split`` `(N,)` 1 or 2) under the *other* half's map
    (``maps.halves``): under the whole set's map an image's own noise holds it in its view (as
    :func:`relax_to_mates` found). Only when shifts are estimated. Returns the polish's maps, rebuilt (and set into
    ``model``), their record with ``polish_moved``. From then on every map of the run (the polish's and
    ``map.mrc``) spreads each image over its :data:`SOFT_MODES` best distinct poses among its own and the search's
    candidates, weighted by their posterior (``state.modes``, :func:`.passes.soft_modes`): on a small particle a
    wrong view's projection differs from the right one's by ~2 noise units, the image's own evidence cannot
    single out its view, and a hard choice puts a third of such images in wrong views (docs/results.md,
    "Session 18"). Realistic, seeds 0 / 1: 8ZPM 11.80 / 12.34 → 11.55 / 11.78 Å, 5EIL 14.69 / 13.60 → 12.49 /
    12.82 Å, poses as they were; 7PBL s1 9.69 → 9.62 Å, 3KPR s0 12.19 → 12.18 Å.

    Realistic 80S, seed 1 (a finished run whose first polish epoch had searched once, 16.9 % of the good images
    > 90° off, most near 180°): one more search under the whole map moved 699 images (> 90° 10.8 %, map.mrc
    17.59 → 17.25 Å), under the other half's 958 (10.4 %, 17.23 Å; true poses 16.72 Å). Hence also the search at
    every :data:`SEARCH_EVERY`-th polish epoch: whole runs, realistic 80S seed 1 17.59 → 17.11 Å, mean / median
    error 31.5° / 2.32° → 19.2° / 1.77°; realistic 3KPR seed 0 12.47 → 12.36 Å, 9.06° / 3.15° → 7.51° / 3.05°."""
    if state.table is None or state.table.shifts is None:
        return maps
    search = JointShiftSearch(config.search_nside, config.search_inplane, model.device, SHIFT_REACH,
                              SHIFT_STEP, top=config.reassign_candidates)
    modes = Modes.single(state.poses, state.shifts, SOFT_MODES)
    moved = 0
    for h in (1, 2):
        model.volume.set_from_map(maps.halves[2 - h].to(model.device))
        mine = torch.from_numpy(np.flatnonzero(split == h))
        moved += passes.reassign(model, stage1, source, state, (bands[0], bands[0], bands[1]), config, search, mine,
                                 modes)
    state.modes = modes
    maps = rebuild()
    model.volume.set_from_map(maps.volume.to(model.device))
    return maps._replace(record={**maps.record, "polish_moved": moved})


MATE_REACH = 0.1  # with shifts: how far (of the box) the symmetry's axis may pass from the box centre
MATE_CHUNK = 12  # mates scored at once per image (memory: batch × this × the band's pixels)
MATE_TOP = 3  # the mates (best unrefined) refined to compete with the current pose
RELAX_STEPS = 5  # pose steps refining each candidate before they compete
RELAX_ROUNDS, RELAX_SETTLED = 3, 0.05  # rounds per polish epoch, while more than this fraction of images moves
SKIP_BELOW = 0.05  # a map this far below the relaxation's threshold is not searched again in the run's later epochs


def relax_to_mates(model, source: ImageSource, state, fr: Frequencies, config, maps: PolishMaps, split: np.ndarray,
                   history: list[dict] = (), rebuild: Callable[[], PolishMaps] | None = None) -> dict:
    """Symmetry relaxation under the polish's maps: where the map matches itself under a rotation
    (:func:`~..metrics.symmetry.pseudo_symmetry` of ``maps.volume``, correlation ≥ ``config.relax_symmetry``),
    each image's pose and its :data:`MATE_TOP` best mates ``(R S, s + (R S t)_xy)`` are refined
    :data:`RELAX_STEPS` pose steps at the band ``fr`` against the map of the *other* half set (``split``
    `(N,)` 1 or 2), and the best takes the image's place. With ``rebuild`` (the polish's maps of the poses as they
    are), up to :data:`RELAX_ROUNDS` rounds, the maps rebuilt between them, while more than :data:`RELAX_SETTLED` of
    the images move. Leaves the last whole map in ``model``. Returns the record: the best element found (order,
    correlation), and where relaxed, the group's size, how many images moved over the rounds, and the rounds.

    Judged by the other half's map, not the whole set's: under the whole set's map each image's own noise is in
    its own slice, so its current pose outscores its mates whatever they are. Realistic 7PBL seed 1 (a finished
    run, 56 % of the good images > 20° off, held at the ring's mates): against the whole map no image moved in
    eight rounds, and its right mate scored worse for all 1,095 images one mate would fix; against the other
    half's map, all candidates refined 10 steps, nine rounds moved 508, 410, 399, 367, … 162 images and took the
    map's FSC = 0.5 with the truth from 14.6 to 9.7 Å; whole runs 15.19 → 10.38 Å, median 51.7 → 4.53°
    (docs/results.md, "Judged by the other half's map").

    Once an earlier polish epoch of the run (``history``, its epochs' records) found the map short of the
    threshold by :data:`SKIP_BELOW`, the search is not repeated: the polish maps' symmetry hardly moves between
    epochs (3KPR: 0.536, 0.534, 0.534, 0.535), and it costs ~2 s."""
    if not config.relax_symmetry or state.table is None:
        return {}
    if any(h.get("symmetry_correlation", 1.0) < config.relax_symmetry - SKIP_BELOW for h in history):
        return {}
    reach = MATE_REACH * source.size if state.table.shifts is not None else 0.0
    elements, best = pseudo_symmetry(maps.volume, config.relax_symmetry, reach)
    top = elements[0] if elements else best
    record = {"symmetry_order": top.order, "symmetry_correlation": round(top.correlation, 3)}
    if not elements:
        return record
    ops, trans = mates(elements)
    moved, rounds = 0, 0
    while True:
        rounds += 1
        now = sum(_relax_half(model, source, state, (ops, trans), fr, config, maps.halves[2 - h], split == h)
                  for h in (1, 2))  # half 1 against the second's map, half 2 against the first's
        moved += now
        state.sync_from_table()
        if rebuild is None or rounds == RELAX_ROUNDS or now <= RELAX_SETTLED * len(split):
            break
        maps = rebuild()
    model.volume.set_from_map(maps.volume.to(model.device))
    return {**record, "symmetry_group": len(ops) + 1, "symmetry_moved": moved, "symmetry_rounds": rounds}


def _relax_half(model, source: ImageSource, state, group: tuple, fr: Frequencies, config, other: torch.Tensor,
                mine: np.ndarray) -> int:
    """One round for the images ``mine`` `(N,)` bool, against the map ``other`` (the other half set's)."""
    model.volume.set_from_map(other.to(model.device))
    hartley = model.volume.hartley().detach()
    idx = torch.from_numpy(np.flatnonzero(mine))
    return sum(_relax_chunk(model, source, state, idx[rows], group, fr, config, hartley)
               for rows in passes.chunks(len(idx), config, model.device))


def _relax_chunk(model, source: ImageSource, state, idx: torch.Tensor, group: tuple, fr: Frequencies, config,
                 hartley: torch.Tensor) -> int:
    """The images ``idx``: the pose and its best mates under ``group`` (ops, translations) refined, the best kept;
    returns how many moved to a mate."""
    table, batch, dev = state.table, source.batch(idx, fr), idx.to(model.device)
    with torch.no_grad():
        cur_r, cur_s = table.rotations[dev], None if table.shifts is None else table.shifts[dev]
        rot, sh = mate_poses(cur_r, cur_s, *group)
        losses = []
        for g in range(0, rot.shape[1], MATE_CHUNK):
            r, k = rot[:, g : g + MATE_CHUNK], min(MATE_CHUNK, rot.shape[1] - g)
            s = None if sh is None else sh[:, g : g + MATE_CHUNK].flatten(0, 1)
            losses.append(model.exact_loss(r.flatten(0, 1), s, batch.obs.repeat_interleave(k, 0),
                                           batch.ctf.repeat_interleave(k, 0), fr).reshape(len(idx), k))
        top = torch.cat(losses, 1).topk(min(MATE_TOP, rot.shape[1]), 1, largest=False).indices
        rows = torch.arange(len(idx), device=model.device)[:, None]
        k = top.shape[1] + 1
        cand_r = torch.cat([cur_r[:, None], rot[rows, top]], 1).flatten(0, 1)
        cand_s = None if sh is None else torch.cat([cur_s[:, None], sh[rows, top]], 1).flatten(0, 1)
        cand = passes.pose_table(config, model.size, cand_r, cand_s)
    obs_k, ctf_k = batch.obs.repeat_interleave(k, 0), batch.ctf.repeat_interleave(k, 0)
    refine_poses(model, cand, torch.arange(len(idx) * k, device=model.device), obs_k, ctf_k, fr, RELAX_STEPS,
                 hartley)
    with torch.no_grad():
        pick = model.exact_loss(cand.rotations, cand.shifts, obs_k, ctf_k, fr).reshape(-1, k).argmin(1)
        take = pick > 0
        if bool(take.any()):
            chosen = torch.arange(len(idx), device=model.device) * k + pick
            table.reset(dev[take], cand.rotations[chosen][take],
                        None if cand.shifts is None else cand.shifts[chosen][take])
    return int(take.sum())
