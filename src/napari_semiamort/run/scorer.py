"""The image model: how well a pose explains an image under the current volume, noise model and CTF.

One object answers every question the stages, the passes and the posterior ask: a prediction (slice, CTF,
shift), the loss of one pose per image, and the scores of many in-plane angles and shifts at once.
"""

from __future__ import annotations

import torch

from ..models.volume import HartleyVolume
from ..physics.fourier import shift_hartley
from ..physics.likelihood import ShellNoiseModel, gaussian_nll, l1_loss
from ..physics.so3 import exp_so3
from .batches import Batch, ImageSource
from .frequencies import Frequencies
from .guard import DivergenceGuard

__all__ = ["SHIFT_CHUNK_VALUES", "ImageModel", "about_z", "square_grid"]

# The shift search's (B, K, J, P) term is built about this many values at a time, at least one shift per chunk
# (each chunk holds ~4 such arrays). At box 64's widest stage-1 band that is one shift at a time: 2²⁰ ran a
# stage-1 step in 0.49–0.52 s, 2²² in 0.55–0.57 s and 2²⁴ in 0.82–0.83 s (1 thread; smaller chunks stay in
# cache), with 150 MB less peak memory.
SHIFT_CHUNK_VALUES = 2**20


def about_z(angles: torch.Tensor) -> torch.Tensor:
    """Rotations `(K, 3, 3)` about z by ``angles`` (radians): the in-plane turns. Built by the exponential
    map, not ``so3._rot_z``: the two differ at float rounding, and the tiny end-to-end run is sensitive to it."""
    z = torch.zeros_like(angles)
    return exp_so3(torch.stack([z, z, angles], -1))


def square_grid(half: int, step: float) -> torch.Tensor:
    """The shifts `(J, 2)` (x, y) pixels of a square grid: ``-half … half`` steps of ``step`` each way."""
    r = torch.arange(-half, half + 1, dtype=torch.float32) * step
    return torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)


class ImageModel:
    """The volume, the noise model and the loss, with the images' CTF from ``source``."""

    def __init__(self, volume: HartleyVolume, noise: ShellNoiseModel, source: ImageSource, loss: str = "gaussian"):
        self.volume, self.noise, self.source = volume, noise, source
        self.loss_fn = gaussian_nll if loss == "gaussian" else l1_loss
        self.size = source.size
        self.guard = DivergenceGuard()  # every training step through it: none that leaves a NaN is kept

    @property
    def device(self) -> torch.device:
        return self.source.device

    def inv_var(self, fr: Frequencies) -> torch.Tensor:
        """``1/σ²`` `(P,)` at the frequencies ``fr`` (the noise model is kept per shell)."""
        return self.noise.inverse_variance(fr.shells.to(self.noise.variance.device)).to(self.device)

    def loss(self, pred: torch.Tensor, obs: torch.Tensor, fr: Frequencies) -> torch.Tensor:
        """The per-image loss `(...)` of predictions `(..., P)` against the coefficients ``obs``."""
        return self.loss_fn(pred, obs, self.inv_var(fr))

    def predict(self, rotations: torch.Tensor, shifts: torch.Tensor | None, ctf: torch.Tensor, fr: Frequencies,
                hartley: torch.Tensor | None = None) -> torch.Tensor:
        """CTF-modulated, shifted slices `(..., P)`; ``ctf`` broadcasts against rotations' batch dims.
        ``hartley``: the volume's transform, detached (pose steps), instead of the trainable volume."""
        pred = self.volume.slice(fr.grid, rotations, hartley) * ctf
        if shifts is not None:
            pred = shift_hartley(pred, pred[..., fr.negative], fr.per_pixel, -shifts)
        return pred

    def exact_loss(self, rotations: torch.Tensor, shifts: torch.Tensor | None, obs: torch.Tensor, ctf: torch.Tensor,
                   fr: Frequencies) -> torch.Tensor:
        """Loss `(B,)` of one pose per image against ``obs`` `(B, P)`, sliced exactly (the in-plane search
        interpolates the image)."""
        return self.loss(self.predict(rotations, shifts, ctf, fr), obs, fr)

    def amplitude(self, rotations: torch.Tensor, shifts: torch.Tensor | None, obs: torch.Tensor, ctf: torch.Tensor,
                  fr: Frequencies) -> torch.Tensor:
        """Each image's fitted amplitude `(B,)` of its prediction ``p`` at one pose per image: the least-squares
        scale ``Σ w·p·y / Σ w·p²`` that best fits ``p`` to ``obs`` under the noise model's weights ``w``. A
        particle holds the map's projection at about its scale (~1); empty ice holds none of it (~0); another
        molecule only the part of it their low-resolution shapes share (:mod:`.junk`)."""
        pred, w = self.predict(rotations, shifts, ctf, fr), self.inv_var(fr)
        return (w * pred * obs).sum(-1) / (w * pred * pred).sum(-1).clamp_min(1e-30)

    def inplane_scores(self, slices: torch.Tensor, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                       inplane: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian scores `(B, M, K)` (`(B, M, K, J)` with shifts `(J, 2)`) of every slice `(B, M, P)` at
        every in-plane turn ``inplane`` `(K, 3, 3)`.

        Turning the pose in-plane, ``R → Rz(φ) R``, turns its slice: ``S(k) → S(Rz(φ)ᵀ k)``. Comparing that
        with the image equals comparing the unturned slice with the image and CTF sampled at ``Rz(φ) q``,
        so one slice per head serves all K angles and the scores are three matrix products.
        """
        img_k, img_neg, ctf_k, rq = self._turned(batch, idx, fr, inplane, shifts is not None)
        q = fr.grid
        w = self.inv_var(fr)
        quad = torch.einsum("bmp,bkp->bmk", slices * slices, w * ctf_k * ctf_k)
        const = _image_norm(batch, w)[:, None, None]
        if shifts is None:
            cross = torch.einsum("bmp,bkp->bmk", slices, w * ctf_k * img_k)
            return 0.5 * (quad - 2 * cross + const) / q.shape[0]
        # Shifting the prediction by −s equals shifting the image by +s: at the turned frequencies k = Rz q,
        # H'(k) = cos θ · H(k) + sin θ · H(−k) with θ = 2π k·s (shift_hartley's convention). Only the cross
        # term depends on s: a shift is unitary over the symmetric band.
        cross = _shifted_cross(slices, w * ctf_k * img_k, w * ctf_k * img_neg, rq / self.size, shifts)
        return 0.5 * (quad[..., None] - 2 * cross + const[..., None]) / q.shape[0]

    @torch.no_grad()
    def refine_shifts(self, slices: torch.Tensor, batch: Batch, fr: Frequencies, shifts: torch.Tensor,
                      offsets: torch.Tensor, reach: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each slice's shift refined: slices `(B, N, P)` (unshifted, no CTF) at their ``shifts`` `(B, N, 2)`
        plus each of ``offsets`` `(J, 2)`, clamped to ±``reach`` pixels, scored exactly against the image.
        Returns the best loss `(B, N)` and its shift `(B, N, 2)`. One offset at a time: `(B, N, P)` each."""
        pred = slices * batch.ctf[:, None]
        flipped = pred[..., fr.negative]
        best, best_shift = None, None
        for d in offsets:
            trial = (shifts + d).clamp(-reach, reach)
            score = self.loss(shift_hartley(pred, flipped, fr.per_pixel, -trial), batch.obs[:, None], fr)
            if best is None:
                best, best_shift = score, trial
                continue
            better = score < best
            best = torch.where(better, score, best)
            best_shift = torch.where(better[..., None], trial, best_shift)
        return best, best_shift

    def _turned(self, batch: Batch, idx: torch.Tensor, fr: Frequencies, inplane: torch.Tensor, negative: bool):
        """The image and its CTF at the turned frequencies ``Rz(φ_k) q``: ``(img(k), img(−k), ctf, rq)``,
        the first three `(B, K, P)` (``img(−k)`` only when ``negative``, for shifts), ``rq`` `(K, P, 2)` in
        Fourier pixels."""
        size = self.size
        rq = torch.einsum("kij,pj->kpi", inplane[:, :2, :2], fr.grid)  # (K, P, 2)
        h = batch.hartley[:, None]  # (B, 1, L, L)

        def sample(coords: torch.Tensor) -> torch.Tensor:
            grid = ((coords + size // 2) * (2.0 / (size - 1)) - 1.0)[None].expand(len(idx), -1, -1, -1)
            return torch.nn.functional.grid_sample(h, grid, mode="bilinear", align_corners=True)[:, 0]

        img_k = sample(rq)
        return img_k, sample(-rq) if negative else None, self.source.ctf(idx, rq / size).to(img_k.dtype), rq

    def grid_scores(self, slices: torch.Tensor, batch: Batch, idx: torch.Tensor, fr: Frequencies,
                    inplane: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian scores `(B, D, K)` of the slices `(D, P)` shared by every image (a grid of directions) at
        every in-plane turn, each image at its own shift ``shifts`` `(B, 2)` (None: centred). As
        :meth:`inplane_scores`, but the slices' products are matrix products over the whole batch."""
        img_k, img_neg, ctf_k, rq = self._turned(batch, idx, fr, inplane, shifts is not None)
        if shifts is not None:  # the image shifted by +s (the prediction by −s), as in _shifted_cross
            theta = 2 * torch.pi * torch.einsum("kpi,bi->bkp", rq / self.size, shifts.to(rq.dtype))
            img_k = img_k * torch.cos(theta) + img_neg * torch.sin(theta)
        w = self.inv_var(fr)
        b, k, p = img_k.shape
        quad = ((w * ctf_k * ctf_k).reshape(b * k, p) @ (slices * slices).T).reshape(b, k, -1)
        cross = ((w * ctf_k * img_k).reshape(b * k, p) @ slices.T).reshape(b, k, -1)
        const = _image_norm(batch, w)[:, None, None]
        return (0.5 * (quad - 2 * cross + const) / p).transpose(1, 2)

    @torch.no_grad()
    def log_likelihood_grid(self, index: int, rotations: torch.Tensor, inplane: torch.Tensor, fr: Frequencies,
                            shift: torch.Tensor | None, chunk: int = 1024) -> torch.Tensor:
        """``log p(image | R)`` `(D, K)` of particle ``index`` for the poses ``Rz(ψ_k) R_d``, up to a constant:
        the likelihood summed over the frequencies ``fr``; one slice per ``R_d`` `(D, 3, 3)`, the in-plane
        turns ``inplane`` `(K, 3, 3)` scored by resampling the image; at the image's ``shift`` `(1, 2)` (None:
        unshifted)."""
        idx = torch.tensor([int(index)])
        batch = self.source.batch(idx, fr)
        out = []
        for s in range(0, rotations.shape[0], chunk):
            rot = rotations[s : s + chunk].to(self.device, torch.float32)[None]  # (1, d, 3, 3)
            scores = self.inplane_scores(self.volume.slice(fr.grid, rot), batch, idx, fr, inplane, shift)
            if shift is not None:
                scores = scores[..., 0]  # (1, d, K)
            out.append(-scores[0] * len(fr))  # the mean over frequencies back to their sum
        return torch.cat(out).cpu().to(torch.float64)


def _image_norm(batch: Batch, inv_var: torch.Tensor) -> torch.Tensor:
    """``Σ w·y²`` `(B,)` of the images as they are, the same for every in-plane turn: a turn only permutes the
    band's frequencies (within a shell, where ``w`` is constant). The resampled images' own norms are not: bilinear
    resampling averages neighbouring coefficients, so off-grid turns hold up to ~half the noise power, and over
    hundreds of noise-dominated frequencies that difference outweighed the signal (the true map's best grid pose
    on realistic 8ZPM, median error: 12.8° at 13 Fourier px, 60.8° at Nyquist)."""
    return (inv_var * batch.obs * batch.obs).sum(-1)


def _shifted_cross(slices: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rq: torch.Tensor,
                   shifts: torch.Tensor) -> torch.Tensor:
    """The cross term `(B, M, K, J)` of slices `(B, M, P)` with the image shifted by each of ``shifts``
    `(J, 2)`: ``a`` and ``b`` `(B, K, P)` are the weighted image at ``k`` and ``−k``, ``rq`` `(K, P, 2)` the
    turned frequencies in cycles per pixel. (B, K, J, P) would reach gigabytes at box 128 and beyond: the
    shifts go in chunks of SHIFT_CHUNK_VALUES."""
    step = max(1, SHIFT_CHUNK_VALUES // max(1, a.numel()))
    cross = []
    for j in range(0, shifts.shape[0], step):
        theta = 2 * torch.pi * torch.einsum("kpi,ji->kjp", rq, shifts[j : j + step])  # (K, j, P)
        shifted = a[:, :, None] * torch.cos(theta) + b[:, :, None] * torch.sin(theta)  # (B, K, j, P)
        cross.append(torch.einsum("bmp,bkjp->bmkj", slices, shifted))
    return torch.cat(cross, -1)
