"""Stage 1 (paper, Sec. 2.1): how poses are proposed and explored while the map is blurry.

:class:`Stage1Strategy` is what the run needs of any stage-1 method: train on a batch, and propose
candidates (the switch, the reassignment, the watched particles and the posterior ask for them).
:class:`GridEM` (the default, ``stage1 grid``) is projection matching: each image's best poses on a HEALPix ×
in-plane grid under the current volume, the volume trained on their posterior. :class:`MultiHeadWTA`
(``stage1 heads``) is the paper's auto-encoding: a multi-head encoder proposes M poses per image, each head's
in-plane angle (and shift) is searched on a grid, and the best (head, angle, shift) wins.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from ..models.encoder import MultiHeadEncoder
from ..physics.fourier import fourier_crop_2d
from ..physics.likelihood import winner_takes_all
from .batches import Batch
from .config import ReconstructionConfig
from .frequencies import Frequencies
from .scorer import ImageModel, about_z, square_grid
from .search import GridSearch

__all__ = ["GRID_CANDIDATES", "Candidates", "GridEM", "MultiHeadWTA", "Stage1Result", "Stage1Strategy", "build_stage1"]

# Each image's best grid poses the volume is trained on (by their posterior) and the grid strategy proposes
GRID_CANDIDATES = 8


class Candidates(NamedTuple):
    rotations: torch.Tensor  # (B, M, 3, 3) each proposal's pose (at its best in-plane angle)
    shifts: torch.Tensor | None  # (B, M, 2) pixels, or None when shifts are not estimated
    scores: torch.Tensor  # (B, M) their losses, lower is better


class Stage1Result(NamedTuple):
    loss: float  # the batch's mean winning loss
    rotations: torch.Tensor  # (B, 3, 3) each image's winning pose (detached)
    shifts: torch.Tensor | None  # (B, 2) its shift
    winners: torch.Tensor  # (B,) which proposal won


class Stage1Strategy(Protocol):
    """A stage-1 method: trains the volume (through ``opt_volume``) and whatever proposes the poses.
    ``searches_shifts``: its shifts come from a search in the volume's frame (they move when it is recentred)."""

    searches_shifts: bool
    shift_reach: int  # ± pixels its shift search reaches (0: none)

    def stop_shifts(self) -> None:
        """From now on the images are centred: no shifts searched or proposed (the particles were found centred)."""

    def reset(self, seed: int) -> None:
        """A fresh initialisation (the global torch RNG is seeded with ``seed`` by the caller)."""

    def step(self, batch: Batch, idx: torch.Tensor, fr: Frequencies, opt_volume: torch.optim.Optimizer,
             shifts: torch.Tensor | None = None) -> Stage1Result:
        """One training step on ``batch`` at the band ``fr``; ``shifts`` `(B, 2)`: the images' current shifts
        (None: not estimated)."""

    def candidates(self, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                   shifts: torch.Tensor | None = None) -> Candidates:
        """The proposals for ``batch``'s images, scored at the band ``fr``, without training."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class MultiHeadWTA:
    """The paper's stage 1: a multi-head encoder, winner-takes-all over heads × in-plane angles × shifts."""

    def __init__(self, config: ReconstructionConfig, model: ImageModel, encoder_size: int):
        cfg, device = config, model.device
        self.config, self.model, self.encoder_size = cfg, model, encoder_size
        self.inplane = None  # (K, 3, 3): the in-plane turns each head's view is tried at
        if cfg.inplane_search > 1:
            angles = torch.arange(cfg.inplane_search) * (2 * torch.pi / cfg.inplane_search)
            self.inplane = about_z(angles).to(device)
        # Shifts, coarse to fine: every head and angle is scored on a grid of step shift_step (2 px: 9 shifts
        # for ±3 px, not 49), then the winner's shift is refined over the whole pixels around it by exact
        # slices. Stage 1's band ends at 26 Fourier px at most, so a shift's score falls off over ≥ box / 26
        # ≈ 2.5 px: the coarse grid still finds the peak (docs/benchmarks.md, "Shifts by default")
        self.shift_grid = self.shift_offsets = None  # (J, 2) pixels: the coarse grid; (9, 2) for step 2: ±1 px
        reach = min(cfg.shift_search, int(cfg.max_shift * model.size))  # bounded by max_shift
        self.shift_reach = 0  # ± px searched (0: none)
        if cfg.estimate_shifts and reach > 0 and self.inplane is not None:
            self.shift_reach = reach
            step = cfg.shift_step
            self.shift_grid = square_grid(self.shift_reach // step, step).to(device)
            edge = reach - (reach // step) * step  # beyond the grid's outermost points, up to ±reach
            self.shift_offsets = square_grid(max(step // 2, edge), 1).to(device)  # whole pixels around a point
        self.centred = False  # stop_shifts was called: the encoder's regressed shifts are dropped too
        self.encoder: MultiHeadEncoder | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def searches_shifts(self) -> bool:
        return self.shift_grid is not None

    def reset(self, seed: int) -> None:
        cfg = self.config
        self.encoder = MultiHeadEncoder(
            self.encoder_size, cfg.heads, cfg.backbone, cfg.hidden, cfg.estimate_shifts,
            cfg.max_shift * self.model.size, cfg.spread_heads,
        ).to(self.model.device)
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=cfg.encoder_lr)

    def stop_shifts(self) -> None:
        self.shift_grid = self.shift_offsets = None
        self.shift_reach, self.centred = 0, True

    def _encode(self, images: torch.Tensor):
        rot, sh = self.encoder(fourier_crop_2d(images, self.encoder_size))  # (B, M, 3, 3), (B, M, 2)
        return rot, None if self.centred else sh

    @torch.no_grad()
    def _search(self, rot: torch.Tensor, batch: Batch, idx: torch.Tensor, fr: Frequencies):
        """Each head's view at every in-plane angle (and grid shift): the winning (head, turn, shift index)."""
        slices = self.model.volume.slice(fr.grid, rot.detach())  # (B, M, P)
        scores = self.model.inplane_scores(slices, batch, idx, fr, self.inplane, self.shift_grid)
        j_count = 1 if self.shift_grid is None else self.shift_grid.shape[0]
        pick = scores.flatten(1).argmin(1)  # over (head, angle[, shift])
        k_count = self.inplane.shape[0]
        return pick // (k_count * j_count), (pick // j_count) % k_count, pick % j_count

    def step(self, batch: Batch, idx: torch.Tensor, fr: Frequencies, opt_volume: torch.optim.Optimizer,
             shifts: torch.Tensor | None = None) -> Stage1Result:
        model = self.model
        self.encoder.train()
        rot, sh = self._encode(batch.images)  # (B, M, 3, 3), (B, M, 2)
        b = torch.arange(len(idx), device=model.device)
        if self.inplane is None:
            pred = model.predict(rot, sh, batch.ctf[:, None], fr)
            best, head = winner_takes_all(model.loss(pred, batch.obs[:, None], fr))  # (B,), over M heads
        else:
            # Each head proposes a view; its in-plane angle is searched on a grid (no gradient), then the
            # winning (head, angle) pair is evaluated again with gradients for encoder and volume.
            head, turn, shift = self._search(rot, batch, idx, fr)
            rot = self.inplane[turn][:, None] @ rot  # every head of an image turned by its winning angle
            if self.shift_grid is not None:  # the searched shift, refined, replaces the heads' regressed ones
                sh = self._refine(rot[b, head][:, None], self.shift_grid[shift][:, None], batch, fr)[1]
                sh = sh.expand(-1, rot.shape[1], -1)
            best = model.exact_loss(rot[b, head], None if sh is None else sh[b, head], batch.obs, batch.ctf, fr)
        loss = best.mean()
        self.optimizer.zero_grad(set_to_none=True)
        opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        model.volume.keep_gradient_within(fr.max_shell)  # the band's edge voxels stay as they were
        model.guard.step(loss, (self.optimizer, opt_volume))
        shifts = None if sh is None else sh[b, head].detach().cpu()
        return Stage1Result(float(loss.detach()), rot[b, head].detach().cpu(), shifts, head.cpu())

    @torch.no_grad()
    def candidates(self, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                   shifts: torch.Tensor | None = None) -> Candidates:
        """Each head's pose at its best in-plane angle, its shift, and its score. With a shift search, each
        head's shift is the best of the grid at its best angle (as in training), not the head's regressed one."""
        model = self.model
        self.encoder.eval()
        rot, sh = self._encode(batch.images)
        self.encoder.train()
        if self.inplane is None:
            pred = model.predict(rot, sh, batch.ctf[:, None], fr)
            return Candidates(rot, sh, model.loss(pred, batch.obs[:, None], fr))
        slices = model.volume.slice(fr.grid, rot)  # (B, M, P)
        if self.shift_grid is None:
            best, turn = model.inplane_scores(slices, batch, idx, fr, self.inplane).min(-1)  # over (B, M, K)
            return Candidates(self.inplane[turn] @ rot, sh, best)
        step = self.config.batch_size  # the (B, K, J, P) term of the shift search bounds the chunk
        best, poses, shift = [], [], []
        for s in range(0, len(idx), step):
            scores = model.inplane_scores(slices[s : s + step], batch.part(s, s + step), idx[s : s + step], fr,
                                          self.inplane, self.shift_grid)
            _, pick = scores.flatten(2).min(-1)  # (b, M) over (K, J)
            turned = self.inplane[pick // self.shift_grid.shape[0]] @ rot[s : s + step]
            b, sh = self._refine(turned, self.shift_grid[pick % self.shift_grid.shape[0]], batch.part(s, s + step), fr)
            best.append(b)
            poses.append(turned)
            shift.append(sh)
        return Candidates(torch.cat(poses), torch.cat(shift), torch.cat(best))

    @torch.no_grad()
    def _refine(self, rot: torch.Tensor, coarse: torch.Tensor, batch: Batch, fr: Frequencies):
        """The poses' `(B, N, 3, 3)` shifts refined over the whole pixels around the coarse grid's ``coarse``
        `(B, N, 2)` (±1 px at step 2): (exact loss `(B, N)`, shift `(B, N, 2)`)."""
        slices = self.model.volume.slice(fr.grid, rot.detach())
        return self.model.refine_shifts(slices, batch, fr, coarse, self.shift_offsets, self.shift_reach)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "opt_encoder": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["opt_encoder"])


class GridEM:
    """Stage 1 by projection matching (the E-step of RELION's and cryoSPARC's ab-initio runs): each image's
    ``top`` best poses on the HEALPix(``search_nside``) × ``search_inplane`` grid under the current volume
    (:class:`~.search.GridSearch`: directions ranked at the image's current shift, then the shifts within
    ±``shift_search`` px at those poses), and the volume trained on their posterior (the likelihood's softmax
    over them; with hundreds of frequencies mostly the best pose's). A coarse grid: at nside 8 × 48 angles
    (8× the poses) realistic 3KPR's stage 1 had not broken the symmetry by the switch (docs/results.md, "Stage 1
    on the grid"): under a blurry map more candidates fit the noise better (measured while the grid's scores still
    held each turned image's resampled norm, which favoured off-grid turns: :func:`.scorer._image_norm`)."""

    def __init__(self, config: ReconstructionConfig, model: ImageModel, top: int = GRID_CANDIDATES):
        self.config, self.model, self.top = config, model, top
        reach = min(config.shift_search, int(config.max_shift * model.size)) if config.estimate_shifts else 0
        self.shift_reach = reach
        self.search = GridSearch(config.search_nside, config.search_inplane, model.device, reach, top=top)
        self.encoder = None  # no encoder: the run's ``encoder`` is None

    @property
    def searches_shifts(self) -> bool:
        return self.shift_reach > 0

    def reset(self, seed: int) -> None:
        """Nothing to reset: a fresh start is the run's fresh volume (the grid has no state)."""

    def stop_shifts(self) -> None:
        self.search.shift_grid = None
        self.shift_reach = 0

    def _shifts(self, idx: torch.Tensor, shifts: torch.Tensor | None) -> torch.Tensor | None:
        if self.shift_reach == 0:
            return None
        return torch.zeros(len(idx), 2, device=self.model.device) if shifts is None else shifts.to(self.model.device)

    def step(self, batch: Batch, idx: torch.Tensor, fr: Frequencies, opt_volume: torch.optim.Optimizer,
             shifts: torch.Tensor | None = None) -> Stage1Result:
        model = self.model
        found = self.search.search(model, batch, idx, fr, self._shifts(idx, shifts))
        rot, sh = found.rotations, found.shifts  # (B, T, 3, 3), (B, T, 2)
        loss_t = model.exact_loss(rot, sh, batch.obs[:, None], batch.ctf[:, None], fr)  # (B, T)
        with torch.no_grad():
            weights = torch.softmax(-(loss_t - loss_t.min(1, keepdim=True).values) * len(fr), 1)
        loss = (weights * loss_t).sum(1).mean()
        opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        model.volume.keep_gradient_within(fr.max_shell)  # the band's edge voxels stay as they were
        model.guard.step(loss, (opt_volume,))
        best = weights.argmax(1)
        b = torch.arange(len(idx), device=model.device)
        shifts_out = None if sh is None else sh[b, best].detach().cpu()
        return Stage1Result(float(loss_t.detach()[b, best].mean()), rot[b, best].detach().cpu(), shifts_out,
                            best.cpu())  # the winner: which of the grid's best (by its score) the posterior favours

    @torch.no_grad()
    def candidates(self, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                   shifts: torch.Tensor | None = None) -> Candidates:
        found = self.search.search(self.model, batch, idx, fr, self._shifts(idx, shifts))
        return Candidates(found.rotations, found.shifts, found.scores)

    def state_dict(self) -> dict:
        return {}  # no state of its own: the volume and the poses are the run's

    def load_state_dict(self, state: dict) -> None:
        return None


def build_stage1(config: ReconstructionConfig, model: ImageModel, encoder_size: int) -> Stage1Strategy:
    """The run's stage-1 strategy (``config.stage1``)."""
    if config.stage1 == "grid":
        return GridEM(config, model)
    return MultiHeadWTA(config, model, encoder_size)
