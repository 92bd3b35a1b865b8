"""Passes over the whole data set, between epochs: the switch to stage 2, the reassignment of stage 2's
first epochs, the recentring of volume and shifts, and the junk flags. Each is a function of the image model,
the stage-1 strategy and the run's state."""

from __future__ import annotations

import torch

from ..metrics.density import density_centre
from ..models.poses import PoseTable
from ..physics.likelihood import winner_takes_all
from ..physics.so3 import geodesic_distance
from . import junk
from .batches import Batch, ImageSource
from .config import ReconstructionConfig
from .frequencies import Frequencies
from .junk import JunkFlags
from .scorer import ImageModel
from .search import GridSearch
from .stage1 import Stage1Strategy
from .stage2 import refine_poses
from .state import Modes, RunState
from .verdict import judge

__all__ = ["CENTRED_MEDIAN_PX", "RECENTRE_MIN_PX", "chunks", "common_translation", "compete", "decide_shifts",
           "flag_junk", "pose_table", "projected", "reassign", "recentre", "soft_modes",
           "switch_to_autodecode"]

# Recentre the volume (and every shift with it) when its centre has drifted further than this (voxels).
RECENTRE_MIN_PX = 0.25
# With shifts "auto", the particles are taken as centred from the switch on when the median length of the shifts
# stage 1 found, less the part a common move of the map explains, is below this (pixels). Its search is whole
# pixels around a centred volume: centred particles land on 0 ± rounding, off-centre ones by ±1 px or more on
# about half their images or more (docs/benchmarks.md, "Shifts by default").
CENTRED_MEDIAN_PX = 0.5


def projected(rotations: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(R_i t)_xy`` `(N, 2)` float32: how far a move ``t`` `(3,)` of the map (voxels, x y z) moves each image's
    projection. On the CPU in float64 (MPS has none)."""
    return (rotations.cpu().to(torch.float64)[:, :2, :] @ t.cpu().to(torch.float64)).to(torch.float32)


def common_translation(shifts: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """The translation ``d`` `(3,)` (voxels, x y z) of the map whose projections ``(R_i d)_xy`` explain the shifts
    `(N, 2)` best (least squares): a map that drifted by ``d`` gives centred particles exactly these shifts, and
    the recentring (:func:`recentre`) hands a drift of the density centre to every image's shift."""
    a = poses.cpu().to(torch.float64)[:, :2, :]  # (N, 2, 3): (R_i d)_xy = a_i d
    normal = torch.einsum("nij,nik->jk", a, a)
    if torch.linalg.matrix_rank(normal) < 3:  # too few or too alike views to tell a move of the map
        return torch.zeros(3, dtype=torch.float64)
    return torch.linalg.solve(normal, torch.einsum("nij,ni->j", a, shifts.cpu().to(torch.float64)))


def decide_shifts(state: RunState, stage1: Stage1Strategy, model: ImageModel,
                  opt_volume: torch.optim.Optimizer | None = None) -> dict:
    """At the switch of a run with shifts "auto": keep estimating the shifts if the particles are off centre,
    else drop them (shifts zero, none searched from now on: centred particles gain nothing from two more
    parameters each, and stage 2 runs faster without). Judged on what is left of the shifts once a common
    move of the map is taken out (:func:`common_translation`): on a centred tiny set the map had drifted by
    1.4 voxels and every shift with it (median 0.62 px at the switch, kept; 0.13 px without the drift); the
    ``model``'s volume is then moved by that drift so that zero shifts fit it (with ``opt_volume``'s moments).
    Returns the record for the epoch's metrics."""
    drift = common_translation(state.shifts, state.poses)
    median = float((state.shifts - projected(state.poses, drift)).norm(dim=1).median())
    kept = median >= CENTRED_MEDIAN_PX
    if not kept:
        model.volume.translate(-drift, opt_volume)
        state.shifts = None
        stage1.stop_shifts()
    return {"shifts_kept": kept, "shift_median_px": round(median, 3),
            "shift_drift_px": round(float(drift.norm()), 3)}


def chunks(n: int, config: ReconstructionConfig, device: torch.device):
    """Index chunks `(b,)` covering ``n`` images, for the passes. On the CPU a training batch each: a chunk of
    256 (× 4 candidates, with gradients) raised the run's peak memory by a third. On a GPU larger chunks keep
    it busy."""
    size = config.batch_size if device.type == "cpu" else max(256, config.batch_size)
    for s in range(0, n, size):
        yield torch.arange(s, min(s + size, n))


def pose_table(config: ReconstructionConfig, size: int, rotations: torch.Tensor,
               shifts: torch.Tensor | None = None) -> PoseTable:
    """A pose table with the run's pose and shift steps; shifts bounded by ``max_shift`` of the box."""
    return PoseTable(rotations, shifts, lr=config.pose_lr, shift_lr=config.shift_lr,
                     max_shift=config.max_shift * size)


@torch.no_grad()
def switch_to_autodecode(model: ImageModel, stage1: Stage1Strategy, source: ImageSource, state: RunState,
                         fr: Frequencies, config: ReconstructionConfig, search: GridSearch | None = None,
                         opt_volume: torch.optim.Optimizer | None = None) -> dict:
    """Each image starts stage 2 from its best candidate under the current volume (paper, Sec. 2.2), scored
    at the band ``fr`` (stage 1's at the switch); the pose it won with in the last epoch competes too: a
    head's current guess can be worse than its earlier one; and so does the global ``search``'s best.
    With shifts "auto", first decides whether to keep them (:func:`decide_shifts`; its record is returned).
    The record holds stage 1's verdict (:func:`.verdict.judge`) on the poses stage 2 starts from."""
    # only from shifts stage 1 searched: at a switch before any stage-1 epoch they are all still zero
    searched = state.shifts is not None and stage1.shift_reach > 0 and state.epoch > 0
    notes = decide_shifts(state, stage1, model, opt_volume) if config.shifts == "auto" and searched else {}
    for idx in chunks(len(source), config, model.device):
        batch = source.batch(idx, fr)
        prev_sh = None if state.shifts is None else state.shifts[idx].to(model.device)  # the last epoch's
        rot, sh, scores = stage1.candidates(batch, idx, fr, prev_sh)
        _, head = winner_takes_all(scores)
        b = torch.arange(len(idx), device=model.device)
        rot, sh = rot[b, head], None if sh is None else sh[b, head]
        best = model.exact_loss(rot, sh, batch.obs, batch.ctf, fr)
        if search is not None:  # the grid's best, at the image's last shift, against the heads' best
            found = search.search(model, batch, idx, fr, prev_sh)
            r2, s2 = found.rotations[:, 0], None if found.shifts is None else found.shifts[:, 0]
            grid = model.exact_loss(r2, s2, batch.obs, batch.ctf, fr)
            better = grid < best
            rot = torch.where(better[:, None, None], r2, rot)
            sh = None if sh is None else torch.where(better[:, None], s2, sh)
            best = torch.minimum(grid, best)
        current = model.exact_loss(state.poses[idx].to(model.device), prev_sh, batch.obs, batch.ctf, fr)
        take = (best < current).cpu()
        state.poses[idx[take]] = rot.cpu()[take]
        if sh is not None:
            state.shifts[idx[take]] = sh.cpu()[take]
    state.table = pose_table(config, model.size, state.poses.to(model.device),
                             None if state.shifts is None else state.shifts.to(model.device))
    notes.update(judge(model, source, state, fr, config.seed, final=False, stage1_band=fr.fraction))  # stage 1's
    return {"stage1_epochs": state.epoch, **notes}  # the switch's record: after this many stage-1 epochs


@torch.no_grad()
def flag_junk(model: ImageModel, source: ImageSource, state: RunState, fr: Frequencies,
              config: ReconstructionConfig) -> JunkFlags:
    """Each image's fitted amplitude at its current pose, scored at the band ``fr``, and the images flagged as
    junk from them (:func:`.junk.flag_junk`); recorded in ``state.junk``."""
    scores = []
    for idx in chunks(len(source), config, model.device):
        batch = source.batch(idx, fr)
        sh = None if state.shifts is None else state.shifts[idx].to(model.device)
        scores.append(model.amplitude(state.poses[idx].to(model.device), sh, batch.obs, batch.ctf, fr).cpu())
    flags = junk.flag_junk(torch.cat(scores).numpy())
    state.junk = torch.from_numpy(flags.flagged)
    return flags


def reassign(model: ImageModel, stage1: Stage1Strategy, source: ImageSource, state: RunState,
             bands: tuple[Frequencies, Frequencies, Frequencies], config: ReconstructionConfig,
             search: GridSearch | None = None, images: torch.Tensor | None = None,
             modes: Modes | None = None) -> int:
    """Let each image's refined pose (of ``images`` `(n,)`, default all) compete with the encoder's best
    candidates (and the global ``search``'s best poses under the current volume); returns how many moved.

    Local refinement cannot leave a wrong basin; the frozen encoder's candidates, scored against the sharper
    volume of stage 2, can, and so can a search of the whole grid. ``bands``: (stage 1's at the switch, where
    candidates are proposed; the band they are refined in by the same pose steps first; stage 2's, where they
    compete with the current poses).
    Images that move restart their optimiser state. ``modes``: filled at the images' rows (:func:`compete`).
    """
    hartley = model.volume.hartley().detach()
    moved = 0
    for rows in chunks(len(source) if images is None else len(images), config, model.device):
        idx = rows if images is None else images[rows]
        moved += _reassign_chunk(model, stage1, source, state, idx, bands, config, hartley, search, modes)
    state.sync_from_table()
    return moved


def _reassign_chunk(model, stage1, source, state, idx, bands, config, hartley, search, modes) -> int:
    fr1, fr_refine, fr2 = bands
    dev_idx = idx.to(model.device)
    first = source.batch(idx, fr1)
    k = config.reassign_candidates
    with torch.no_grad():
        cur = None if state.table.shifts is None else state.table.shifts[dev_idx]
        rot, sh, scores = stage1.candidates(first, idx, fr1, cur)
        k = min(k, scores.shape[1])
        top = scores.topk(k, dim=1, largest=False).indices  # (B, k) best heads
        b = torch.arange(len(idx), device=model.device)[:, None]
        rot, sh = rot[b, top], None if sh is None else sh[b, top]  # (B, k, 3, 3), (B, k, 2)
        if search is not None:  # the grid's best poses, at each image's current shift, join them
            found = search.search(model, first, idx, fr1, cur, hartley)
            rot = torch.cat([rot, found.rotations], 1)
            sh = None if sh is None else torch.cat([sh, found.shifts], 1)
            k = rot.shape[1]
        cand = pose_table(config, model.size, rot.flatten(0, 1), None if sh is None else sh.flatten(0, 1))
    second = source.batch(idx, fr2, reuse=first)
    refine = first if fr_refine is fr1 else second if fr_refine is fr2 else source.batch(idx, fr_refine, reuse=first)
    return compete(model, state, idx, cand, (refine, fr_refine), (second, fr2), config.reassign_steps, hartley, modes)


def compete(model: ImageModel, state: RunState, idx: torch.Tensor, cand: PoseTable, refine: tuple[Batch, Frequencies],
            judge_at: tuple[Batch, Frequencies], steps: int, hartley: torch.Tensor, modes: Modes | None = None) -> int:
    """Each image of ``idx`` `(B,)` has ``k`` candidates, rows ``i·k … i·k + k − 1`` of ``cand``: they are refined
    ``steps`` pose steps against ``refine``'s (batch, band), then the best at ``judge_at``'s replaces the image's
    pose in ``state.table`` (restarting its optimiser state) where it explains the image better. Returns how many
    moved. ``modes``: its rows ``idx`` set to each image's best distinct poses among its current one and the
    candidates, with their posterior weights (:func:`soft_modes`)."""
    (batch_r, fr_r), (batch_j, fr_j) = refine, judge_at
    k = len(cand.rotations) // len(idx)
    dev_idx = idx.to(model.device)
    rows = torch.arange(len(idx) * k, device=model.device)
    refine_poses(model, cand, rows, batch_r.obs.repeat_interleave(k, 0), batch_r.ctf.repeat_interleave(k, 0),
                 fr_r, steps, hartley)
    with torch.no_grad():
        obs_k, ctf_k = batch_j.obs.repeat_interleave(k, 0), batch_j.ctf.repeat_interleave(k, 0)
        losses = model.exact_loss(cand.rotations, cand.shifts, obs_k, ctf_k, fr_j).reshape(-1, k)
        new, pick = losses.min(1)
        table = state.table
        cur_sh = None if table.shifts is None else table.shifts[dev_idx]
        current = model.exact_loss(table.rotations[dev_idx], cur_sh, batch_j.obs, batch_j.ctf, fr_j)
        take = new < current
        if modes is not None:  # nats (the loss is a mean over the band's coefficients), the current pose first
            nll = torch.cat([current[:, None], losses], 1) * len(fr_j)
            rot = torch.cat([table.rotations[dev_idx][:, None], cand.rotations.reshape(len(idx), k, 3, 3)], 1)
            sh = None if cur_sh is None else torch.cat([cur_sh[:, None], cand.shifts.reshape(len(idx), k, 2)], 1)
            found = soft_modes(nll, rot, sh, torch.where(take, pick + 1, 0), modes.weights.shape[1])
            for mine, theirs in zip(modes, found, strict=True):
                if mine is not None:
                    mine[idx] = theirs.cpu()
        pick = torch.arange(len(idx), device=model.device) * k + pick
        if bool(take.any()):
            table.reset(dev_idx[take], cand.rotations[pick][take],
                        None if cand.shifts is None else cand.shifts[pick][take])
    return int(take.sum())


# candidates within this of a mode's best pose are that mode (the view search's grid spacing at nside 4 is ~15°)
SAME_MODE_DEG = 15.0


def soft_modes(nll: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None, chosen: torch.Tensor,
               m: int) -> Modes:
    """Each image's ``m`` best distinct modes among its candidates (``nll`` `(B, K)` in nats at ``rotations``
    `(B, K, 3, 3)` and ``shifts`` `(B, K, 2)`): the ``chosen`` `(B,)` first, then the best candidate more than
    :data:`SAME_MODE_DEG` from every mode taken so far, and so on; their posterior weights (a flat prior over the
    candidates) normalised over the modes kept. An image with fewer than ``m`` distinct modes gets weight 0 in the
    slots left (they repeat the chosen pose). Where one mode explains the image far better its weight is ~1; where
    m modes explain it alike, ~1/m each: the maps then take the image's ambiguity instead of a coin toss."""
    b = torch.arange(len(chosen), device=nll.device)
    picks, valid = [chosen], [torch.ones_like(chosen, dtype=torch.bool)]
    taken = torch.rad2deg(geodesic_distance(rotations, rotations[b, chosen][:, None])) <= SAME_MODE_DEG
    for _ in range(m - 1):
        masked = nll.masked_fill(taken, float("inf"))
        nxt = masked.argmin(1)
        ok = torch.isfinite(masked[b, nxt])
        picks.append(torch.where(ok, nxt, chosen))
        valid.append(ok)
        taken |= torch.rad2deg(geodesic_distance(rotations, rotations[b, nxt][:, None])) <= SAME_MODE_DEG
    idx = torch.stack(picks, 1)  # (B, m)
    w = torch.exp(nll[b, chosen][:, None] - nll.gather(1, idx)) * torch.stack(valid, 1)
    w = w / w.sum(1, keepdim=True)
    return Modes(rotations[b[:, None], idx], None if shifts is None else shifts[b[:, None], idx], w)


@torch.no_grad()
def recentre(model: ImageModel, state: RunState, opt_volume: torch.optim.Optimizer) -> float:
    """Move the volume's centre back to the box centre, and every shift with it; returns the move (voxels).

    With shifts estimated, a translation ``t`` of the volume and the shifts ``(R t)_xy`` of every image
    explain the data equally well, so the two drift together (by 1.9 voxels in a run on ±1 px data, where
    the per-image shifts were right to 0.13 px after taking the drift out) and carry the shifts out of their
    search range. Moving the volume by ``−c`` shifts image ``i``'s projection by ``−(R_i c)_xy``; the volume
    optimiser's moments move with the volume.
    """
    c = density_centre(model.volume.real_space())  # (x, y, z) voxels
    dist = float(c.norm())
    if dist < RECENTRE_MIN_PX:
        return dist
    model.volume.translate(-c, opt_volume)
    state.shifts -= projected(state.poses, c)
    if state.table is not None and state.table.shifts is not None:
        state.table.shifts -= projected(state.table.rotations, c).to(state.table.shifts.device)
    return dist
