"""What the viewer sees of chosen particles: each watched image beside the projections the run proposes for
it (every stage-1 candidate, or the refined pose in stage 2), full band, CTF applied."""

from __future__ import annotations

import torch

from ..physics.fourier import ihartley_centered
from .batches import ImageSource
from .frequencies import Frequencies
from .scorer import ImageModel
from .snapshot import WatchedParticle
from .stage1 import Stage1Strategy
from .state import RunState

__all__ = ["watched_particles"]


@torch.no_grad()
def watched_particles(ids: list[int], model: ImageModel, source: ImageSource, full: Frequencies,
                      proposals: tuple[Stage1Strategy, Frequencies] | RunState) -> tuple[WatchedParticle, ...]:
    """The watched particles ``ids`` at the band ``full``. ``proposals``: in stage 1, the strategy and the
    band its candidates are scored at; in stage 2, the run's state (its pose table's poses)."""
    ids = [i for i in ids if 0 <= i < len(source)]
    if not ids:
        return ()
    idx = torch.tensor(ids)
    size = model.size
    batch = source.batch(idx, full)
    if isinstance(proposals, RunState):
        table, dev_idx = proposals.table, idx.to(model.device)
        rot = table.rotations[dev_idx][:, None]
        sh = None if table.shifts is None else table.shifts[dev_idx][:, None]
    else:
        stage1, band = proposals
        rot, sh, _ = stage1.candidates(source.batch(idx, band, reuse=batch), idx, band)
    pred = model.predict(rot, sh, batch.ctf[:, None], full)  # (W, M, P)
    losses = model.loss(pred, batch.obs[:, None], full)
    flat = torch.zeros(*pred.shape[:2], size * size, device=model.device)
    flat[..., full.flat_index] = pred
    proj = ihartley_centered(flat.reshape(*pred.shape[:2], size, size), 2)
    return tuple(
        WatchedParticle(
            index=i, image=batch.images[j].cpu().numpy(), candidates=proj[j].cpu().numpy(),
            losses=losses[j].cpu().numpy(), winner=int(losses[j].argmin()), rotations=rot[j].cpu().numpy(),
        )
        for j, i in enumerate(ids)
    )
