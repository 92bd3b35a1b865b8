"""Stage 2, auto-decoding (paper, Sec. 2.2): each image refines its own pose by gradient steps on an
axis-angle perturbation, ``pose_steps`` pose steps to one volume step on the same batch."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models.poses import PoseTable
from .batches import Batch
from .frequencies import Frequencies
from .scorer import ImageModel

__all__ = ["Stage2Result", "autodecode_step", "polish_step", "refine_poses"]


class Stage2Result(NamedTuple):
    loss: float  # the batch's mean loss at the refined poses
    rotations: torch.Tensor  # (B, 3, 3) the refined poses (on the run's device)
    shifts: torch.Tensor | None  # (B, 2) and shifts


def refine_poses(model: ImageModel, table: PoseTable, rows: torch.Tensor, obs: torch.Tensor, ctf: torch.Tensor,
                 fr: Frequencies, steps: int, hartley: torch.Tensor | None = None) -> None:
    """``steps`` pose steps on the table's ``rows`` against ``obs`` `(B, P)` under the volume as it is (its
    transform ``hartley``, computed here when not given, is held fixed: no gradient reaches the volume)."""
    hartley = model.volume.hartley().detach() if hartley is None else hartley
    for _ in range(steps):
        w, t = table.perturbation(rows)
        pred = model.predict(table.poses(rows, w), t, ctf, fr, hartley=hartley)
        model.loss(pred, obs, fr).sum().backward()
        table.step(rows, w, t)


def autodecode_step(model: ImageModel, table: PoseTable, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                    pose_steps: int, opt_volume: torch.optim.Optimizer,
                    keep: torch.Tensor | None = None) -> Stage2Result:
    """The images' pose steps, then one volume step at the refined poses; the residuals feed the noise model.
    ``keep`` `(B,)` bool: the images the volume and the noise model learn from (None: all; junk is left out)."""
    dev_idx = idx.to(model.device)
    refine_poses(model, table, dev_idx, batch.obs, batch.ctf, fr, pose_steps)
    rot = table.rotations[dev_idx]
    sh = None if table.shifts is None else table.shifts[dev_idx]
    pred = model.predict(rot, sh, batch.ctf, fr)
    per_image = model.loss(pred, batch.obs, fr)
    if keep is None:
        loss = per_image.mean()
    else:  # the junk's poses are refined (its flag may be lifted) but it does not pull the volume
        keep = keep.to(per_image.device)
        loss = (per_image * keep).sum() / keep.sum().clamp_min(1)
    opt_volume.zero_grad(set_to_none=True)
    loss.backward()
    model.guard.step(loss, (opt_volume,))
    residual = pred.detach() - batch.obs
    model.noise.accumulate(residual if keep is None else residual[keep], fr.shells)
    return Stage2Result(float(loss.detach()), rot, sh)


def polish_step(model: ImageModel, table: PoseTable, batch: Batch, idx: torch.Tensor, fr: Frequencies, steps: int,
                reference: torch.Tensor, keep: torch.Tensor | None = None) -> Stage2Result:
    """A polish epoch's step (:mod:`.polish`): ``steps`` pose steps against the fixed map whose Hartley transform is
    ``reference``; the volume is not stepped. The residuals of the images ``keep`` feed the noise model."""
    dev_idx = idx.to(model.device)
    refine_poses(model, table, dev_idx, batch.obs, batch.ctf, fr, steps, reference)
    rot = table.rotations[dev_idx]
    sh = None if table.shifts is None else table.shifts[dev_idx]
    with torch.no_grad():
        pred = model.predict(rot, sh, batch.ctf, fr, hartley=reference)
        per_image = model.loss(pred, batch.obs, fr)
        keep = torch.ones_like(per_image, dtype=torch.bool) if keep is None else keep.to(per_image.device)
        model.noise.accumulate((pred - batch.obs)[keep], fr.shells)
        loss = float((per_image * keep).sum() / keep.sum().clamp_min(1))
    return Stage2Result(loss, rot, sh)
