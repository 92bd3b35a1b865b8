"""What the viewer sees of chosen particles: each watched image beside the projections the run proposes for
it (every stage-1 candidate, or the refined pose in stage 2), full band, CTF applied."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..physics.fourier import ihartley_centered
from .batches import Batch, ImageSource
from .frequencies import Frequencies
from .scorer import ImageModel
from .snapshot import WatchedParticle

# (idx, their batch at the full band) → poses `(W, M, 3, 3)` and shifts `(W, M, 2)` or None to project
Proposals = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor | None]]

__all__ = ["watched_particles"]


@torch.no_grad()
def watched_particles(ids: list[int], model: ImageModel, source: ImageSource, full: Frequencies,
                      proposals: Proposals) -> tuple[WatchedParticle, ...]:
    """The watched particles ``ids`` at the band ``full``, beside the projections of what ``proposals`` gives
    for them (every stage-1 candidate, or stage 2's refined pose)."""
    ids = [i for i in ids if 0 <= i < len(source)]
    if not ids:
        return ()
    idx = torch.tensor(ids)
    size = model.size
    batch = source.batch(idx, full)
    rot, sh = proposals(idx, batch)
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
