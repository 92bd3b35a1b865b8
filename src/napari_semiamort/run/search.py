"""Exhaustive pose search on a grid: HEALPix view directions × in-plane turns, at a band, under the current
volume (the E-step of projection matching, as RELION's and cryoSPARC's ab-initio run it at low resolution).

One slice per direction serves every image and every in-plane turn (:meth:`ImageModel.grid_scores`); the
shifts are searched afterwards for each image's few best poses only, on a grid of whole pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .batches import Batch
from .frequencies import Frequencies
from .posterior import direction_grid
from .scorer import ImageModel, about_z, square_grid

__all__ = ["GridSearch", "JointShiftSearch", "SearchResult", "grid_for_band"]


class SearchResult(NamedTuple):
    rotations: torch.Tensor  # (B, T, 3, 3) each image's T best grid poses, best first
    shifts: torch.Tensor | None  # (B, T, 2) their shifts (pixels), None when shifts are not searched
    scores: torch.Tensor  # (B, T) their losses (lower is better)


def grid_for_band(band_pixels: float, particle_fraction: float = 0.6) -> tuple[int, int]:
    """The HEALPix ``nside`` and the in-plane count whose step resolves a band of ``band_pixels`` Fourier
    pixels for a particle filling ``particle_fraction`` of the box: two poses a step ``Δ`` apart differ at
    the band's edge by ``Δ · band · fraction`` pixels; half a pixel is the Crowther-like criterion."""
    step = 0.5 / max(1.0, band_pixels * particle_fraction)  # radians
    nside = 1
    while np.sqrt(np.pi / 3) / nside > step and nside < 16:  # HEALPix's mean spacing ≈ √(π/3)/nside
        nside *= 2
    inplane = int(np.ceil(2 * np.pi / step / 4) * 4)
    return nside, inplane


class GridSearch:
    """The best poses of a batch's images on the grid ``nside`` × ``inplane`` (and a shift grid of
    ±``max_shift`` whole pixels, searched at the ``top`` best poses of each image)."""

    def __init__(self, nside: int, inplane: int, device: torch.device, max_shift: int = 0, top: int = 4,
                 chunk: int = 64):
        _, rot = direction_grid(nside)
        self.directions = rot.to(device, torch.float32)  # (D, 3, 3)
        angles = torch.arange(inplane, dtype=torch.float32) * (2 * torch.pi / inplane)
        self.inplane = about_z(angles).to(device)  # (K, 3, 3)
        self.top, self.chunk = top, chunk
        self.shift_grid = square_grid(max_shift, 1).to(device) if max_shift > 0 else None

    @classmethod
    def for_run(cls, config, device: torch.device, reach: int) -> GridSearch | None:
        """The reassignment's search of a run (``config.global_search``; None when off), its shifts searched over
        stage 1's shift search's ``reach`` (0: shifts not searched). None with ``stage1 grid`` too: stage 1's
        candidates are this grid's best poses already."""
        if not config.global_search or config.stage1 == "grid":
            return None
        return cls(config.search_nside, config.search_inplane, device, reach, top=config.reassign_candidates)

    @torch.no_grad()
    def search(self, model: ImageModel, batch: Batch, idx: torch.Tensor, fr: Frequencies,
               shifts: torch.Tensor | None = None, hartley: torch.Tensor | None = None) -> SearchResult:
        """Each image's ``top`` best grid poses at its current ``shifts`` `(B, 2)`, then, with a shift grid, each
        of those re-scored at every grid shift (best shift per pose). ``shifts`` None: the images are centred
        and their shifts not estimated (none searched, as when a run drops them at the switch). ``hartley``: the
        volume's transform to slice instead of the trainable volume's."""
        slices = model.volume.slice(fr.grid, self.directions[None], hartley)[0]  # (D, P)
        k = self.inplane.shape[0]
        best, which = [], []
        for s in range(0, len(idx), self.chunk):
            part = slice(s, s + self.chunk)
            scores = model.grid_scores(slices, batch.part(s, s + self.chunk), idx[part], fr, self.inplane,
                                       None if shifts is None else shifts[part])  # (b, D, K)
            b, w = scores.flatten(1).topk(self.top, dim=1, largest=False)
            best.append(b)
            which.append(w)
        scores, which = torch.cat(best), torch.cat(which)
        rot = self.inplane[which % k] @ self.directions[which // k]  # (B, T, 3, 3)
        if self.shift_grid is None or shifts is None:  # shifts not estimated (or no longer: centred particles)
            return SearchResult(rot, None if shifts is None else shifts[:, None].expand(-1, self.top, -1), scores)
        return self._search_shifts(model, batch, idx, fr, rot, hartley)

    def _search_shifts(self, model: ImageModel, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                       rot: torch.Tensor, hartley: torch.Tensor | None) -> SearchResult:
        slices = model.volume.slice(fr.grid, rot, hartley)  # (B, T, P)
        identity = torch.eye(3, device=rot.device)[None]
        out, pick = [], []
        for s in range(0, len(idx), self.chunk):
            part = slice(s, s + self.chunk)
            scores = model.inplane_scores(slices[part], batch.part(s, s + self.chunk), idx[part], fr, identity,
                                          self.shift_grid)[:, :, 0]  # (b, T, J)
            b, j = scores.min(-1)
            out.append(b)
            pick.append(j)
        scores, pick = torch.cat(out), torch.cat(pick)
        order = scores.argsort(1)
        rows = torch.arange(len(idx), device=rot.device)[:, None]
        shifts = self.shift_grid[pick]  # (B, T, 2)
        return SearchResult(rot[rows, order], shifts[rows, order], scores[rows, order])


class JointShiftSearch(GridSearch):
    """The grid's best poses searched at every shift of a grid about the box centre (±``max_shift`` whole pixels),
    not at each image's current shift: an image whose shift is wrong scores its right view no better than any
    other there, and a search at that shift cannot find it (realistic 30S: 10 % of the good images held a wrong
    view with a shift 2.3 px off; at their shifts the truth's grid pose ranked 2,107th of 4,608, at the true
    shifts 1st; docs/results.md, "Stage 2's polish"). Each image's ``top`` best (pose, shift) pairs; the shifts
    ``step`` pixels apart."""

    def __init__(self, nside: int, inplane: int, device: torch.device, max_shift: int, step: float = 1.0,
                 top: int = 4, chunk: int = 64):
        super().__init__(nside, inplane, device, max_shift, top, chunk)
        if max_shift > 0:
            self.shift_grid = square_grid(int(max_shift // step), step).to(device)

    @torch.no_grad()
    def search(self, model: ImageModel, batch: Batch, idx: torch.Tensor, fr: Frequencies,
               shifts: torch.Tensor | None = None, hartley: torch.Tensor | None = None) -> SearchResult:
        if shifts is None or self.shift_grid is None:  # centred particles: the grid at their (zero) shifts
            return super().search(model, batch, idx, fr, shifts, hartley)
        slices = model.volume.slice(fr.grid, self.directions[None], hartley)[0]  # (D, P)
        k, grid = self.inplane.shape[0], self.shift_grid
        best, which = [], []
        for s in range(0, len(idx), self.chunk):
            part, b = slice(s, s + self.chunk), len(idx[s:s + self.chunk])
            scores = torch.stack([model.grid_scores(slices, batch.part(s, s + self.chunk), idx[part], fr,
                                                    self.inplane, t.expand(b, 2)).flatten(1) for t in grid], 1)
            v, w = scores.flatten(1).topk(self.top, dim=1, largest=False)  # over (shift, direction, turn)
            best.append(v)
            which.append(w)
        scores, which = torch.cat(best), torch.cat(which)
        per_shift = self.directions.shape[0] * k
        pose = which % per_shift
        rot = self.inplane[pose % k] @ self.directions[pose // k]  # (B, T, 3, 3)
        return SearchResult(rot, grid[which // per_shift], scores)
