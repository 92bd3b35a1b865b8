"""The two-stage reconstruction loop (paper, Sec. 2) as an iterator of snapshots.

Stage 1, auto-encoding: the multi-head encoder proposes M poses per image; the winner-takes-all Gaussian
likelihood trains encoder and volume together. Stage 2, auto-decoding (from ``switch_epoch``): each image
keeps its best head's pose and refines it by Adam on an axis-angle perturbation, alternating
``pose_steps`` pose steps with one volume step on the same batch.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import __version__
from ..data.dataset import ParticleDataset, background_mask
from ..data.loader import BatchLoader
from ..data.mrc import atomic_path, read_map
from ..data.readers import open_dataset
from ..metrics.alignment import align_poses, align_translation, rotate_map
from ..metrics.density import density_centre
from ..metrics.fsc import fsc, masked_fsc, resolution_at
from ..models.encoder import MultiHeadEncoder
from ..models.poses import PoseTable
from ..models.volume import HartleyVolume
from ..physics.backproject import FourierInserter
from ..physics.ctf import compute_ctf
from ..physics.fourier import (
    fft_centered,
    fourier_crop_2d,
    frequency_grid_2d,
    hartley_centered,
    ihartley_centered,
    shift_hartley,
)
from ..physics.likelihood import ShellNoiseModel, gaussian_nll, l1_loss, winner_takes_all
from ..physics.so3 import exp_so3, geodesic_distance
from ..sim.simulate import resample_map
from .config import ReconstructionConfig
from .snapshot import Snapshot, WatchedParticle

__all__ = ["Reconstruction", "select_device"]

STAGE1, STAGE2 = "autoencode", "autodecode"
_MIN_BAND_PIXELS = 5
_DEFAULT_START = 0.15  # the stage-1 band's start (fraction of Nyquist) where 5 Fourier pixels is more
_DEFAULT_END, _MAX_BAND_PIXELS = 0.4, 26  # its end: 0.4 of Nyquist, at most 26 Fourier pixels
# The shift search's (B, K, J, P) term is built about this many values at a time, at least one shift per chunk
# (each chunk holds ~4 such arrays).
# At box 64's widest stage-1 band that is one shift at a time: 2²⁰ ran a stage-1 step in 0.49–0.52 s, 2²² in
# 0.55–0.57 s and 2²⁴ in 0.82–0.83 s (1 thread; smaller chunks stay in cache), with 150 MB less peak memory.
_SHIFT_CHUNK_VALUES = 2**20
# Recentre the volume (and every shift with it) when its centre has drifted further than this (voxels).
_RECENTRE_MIN_PX = 0.25


def restart_gap(losses: list[float]) -> float:
    """How far the lowest loss lies below the median of the others, relative to that median (inf for a single
    loss). Against the median rather than the runner-up: two starts that both broke the symmetry are close to
    each other but still stand below the rest."""
    if len(losses) < 2:
        return float("inf")
    first, *others = sorted(losses)
    typical = float(np.median(others))
    return (typical - first) / typical if typical > 0 else 0.0


def select_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: not a device torch knows (auto, cpu, cuda, cuda:N or mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here")
    return dev


class _Frequencies:
    """The image frequencies inside a circle, as flat lists, with the index of each one's negative."""

    def __init__(self, size: int, fraction: float, device):
        k = torch.arange(size) - size // 2
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        radius = min(fraction * size / 2, size / 2 - 1)  # the −L/2 row has no +L/2 partner: excluded
        inside = (kx**2 + ky**2) <= radius**2
        self.flat_index = torch.nonzero(inside.flatten()).squeeze(1).to(device)  # into L·L
        self.grid = torch.stack([kx[inside], ky[inside]], -1).to(torch.float32).to(device)  # (P, 2)
        self.per_pixel = self.grid / size  # cycles per pixel
        self.shells = torch.round(self.grid.norm(dim=-1)).long()
        # index of each frequency's negative, through a dense (L, L) map (a Python dict over the P
        # frequencies held the GIL ~100 ms per band and stalled the napari GUI thread)
        flat = torch.full((size * size,), -1, dtype=torch.long)
        kx_in, ky_in = kx[inside], ky[inside]
        flat[(ky_in + size // 2) * size + (kx_in + size // 2)] = torch.arange(len(kx_in))
        self.negative = flat[(-ky_in + size // 2) * size + (-kx_in + size // 2)].to(device)

    def __len__(self) -> int:
        return self.grid.shape[0]


def _about_z(angles: torch.Tensor) -> torch.Tensor:
    """Rotations `(K, 3, 3)` about z by ``angles`` (radians): the in-plane turns. Built by the exponential
    map, not ``so3._rot_z``: the two differ at float rounding, and the tiny end-to-end run is sensitive to it."""
    z = torch.zeros_like(angles)
    return exp_so3(torch.stack([z, z, angles], -1))


class _Batch(NamedTuple):
    images: torch.Tensor  # (B, L, L) normalised, real space
    hartley: torch.Tensor  # (B, L, L) their centred Hartley transforms
    obs: torch.Tensor  # (B, P) the coefficients at a band's frequencies
    ctf: torch.Tensor  # (B, P) the CTF there


class Reconstruction:
    """A reconstruction run: build it, then iterate over it to train. Stopping is stopping the iteration."""

    def __init__(
        self,
        config: ReconstructionConfig,
        dataset: ParticleDataset | None = None,
        run_dir: str | Path | None = None,
    ):
        config.validate()
        self.config = cfg = config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(cfg.device)
        data = dataset if dataset is not None else open_dataset(cfg)
        data.check_box(cfg.output_box)  # an impossible map box fails now, not after the scan or the training
        self.data = data if data.scanned else data.scan()
        if cfg.halves and self.data.half is None:
            self.data.split_halves(cfg.seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        size = self.data.box
        self.size = size
        self._freq_cache: dict[float, _Frequencies] = {}
        self._ready: tuple[np.ndarray, torch.Tensor] | None = None  # a batch the loader read ahead
        self.freqs = {STAGE2: self._frequencies(cfg.max_freq)}
        # The encoder sees the images low-passed to the band the stage-1 loss uses (and downsampled to it):
        # finer detail cannot inform the poses it is trained on, and a smaller input is cheaper.
        # the stage-1 band at the switch: 0.4 of Nyquist, at most 26 Fourier pixels by default (box 128's). At
        # box 192 the full 0.4 (38 px) left a quarter of 3KPR's particles in a wrong basin through stage 1
        # (47° mean pose error at epoch 10 against 15° with the cap, same data and seed; docs/benchmarks.md)
        end = cfg.autoencode_max_freq
        self.stage1_end = min(_DEFAULT_END, _MAX_BAND_PIXELS / (size / 2)) if end is None else end
        band = max(_MIN_BAND_PIXELS, int(np.ceil(self.stage1_end * size / 2)))
        self.encoder_size = min(size, max(16, 2 * band + 2))
        self._inplane = None
        if cfg.inplane_search > 1:
            angles = torch.arange(cfg.inplane_search) * (2 * torch.pi / cfg.inplane_search)
            self._inplane = _about_z(angles).to(self.device)  # (K, 3, 3)
        self._shift_grid = None  # (J, 2) pixels: the shifts stage 1 searches when it estimates shifts
        reach = min(cfg.shift_search, int(cfg.max_shift * size))  # shifts are bounded by max_shift
        if cfg.estimate_shifts and reach > 0 and self._inplane is not None:
            r = torch.arange(-reach, reach + 1, dtype=torch.float32)
            self._shift_grid = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2).to(self.device)
        self.noise = ShellNoiseModel(self.freqs[STAGE2].shells, size // 2 + 1)
        self._init_noise()
        self._build(cfg.seed)
        self.step_count = 0
        self.trial: int | None = None  # the restart being trained, while restarts run
        self._restarts_planned = self.config.restarts  # grows while no restart's loss stands out
        self.reference_map = None
        if cfg.reference_map:
            ref, voxel = read_map(cfg.reference_map)
            extent, ours = ref.shape[-1] * voxel, size * self.data.pixel_size
            if voxel > 0 and abs(extent / ours - 1) > 0.01:
                raise ValueError(f"{cfg.reference_map}: spans {extent:.1f} Å ({ref.shape[-1]} × {voxel:.3f} Å), "
                                 f"the particles' box {ours:.1f} Å: resample it to the particles' box")
            if ref.shape[-1] != size and voxel <= 0:
                raise ValueError(f"{cfg.reference_map}: box {ref.shape[-1]} differs from the particles' {size} "
                                 "and the header has no voxel size to check the scale")
            # a run on downsampled images is compared with the reference downsampled the same way
            self.reference_map = resample_map(torch.from_numpy(ref), size)

    def set_watch(self, indices) -> None:
        """Watch these particles (0-based) from the next full snapshot on."""
        self.config.watch = [int(i) for i in indices]

    # ---------------------------------------------------------------- set-up
    def _frequencies(self, fraction: float) -> _Frequencies:
        key = round(fraction, 4)
        if key not in self._freq_cache:
            self._freq_cache[key] = _Frequencies(self.size, key, self.device)
        return self._freq_cache[key]

    def stage1_band(self, epoch: int) -> float:
        """Fraction of Nyquist in the stage-1 loss: grows linearly over stage 1 (frequency marching)."""
        cfg = self.config
        if cfg.switch_epoch <= 1:
            return self.stage1_end
        t = min(1.0, epoch / (cfg.switch_epoch - 1))
        # By default the start is at most 5 Fourier pixels: a resolution relative to the box's width (and so to
        # the particle), not to the pixel. At box 128, 0.15 of Nyquist (10 px) left stage 1 at 42° median pose
        # error on 3KPR; 5 px (box 64's start) gave 12° (docs/method.md). Below box 67 it is 0.15 of Nyquist,
        # as before, every box-64 result measured with it.
        low = cfg.autoencode_min_freq
        if low is None:
            low = min(_DEFAULT_START, _MIN_BAND_PIXELS / (self.size / 2))
        band = low + t * max(0.0, self.stage1_end - low)
        # Whole Fourier pixels (few frequency sets are built), and at least 5: below ~80 frequencies an
        # image says too little about its pose (box 32 with the 0.15 start failed to break symmetry).
        return min(1.0, max(_MIN_BAND_PIXELS, round(band * self.size / 2)) / (self.size / 2))

    def _stage1_frequencies(self) -> _Frequencies:
        return self._frequencies(self.stage1_band(self.epoch))

    def _batch(self, idx: torch.Tensor, fr: _Frequencies, reuse: _Batch | None = None) -> _Batch:
        """Images, their Hartley transforms, and the coefficients and CTF at the frequencies ``fr``.

        ``reuse``: a batch of the same images at another band, whose images and transforms are kept.
        """
        if reuse is None:
            imgs = self._read(idx).to(self.device)
            hartley = hartley_centered(imgs, 2)
        else:
            imgs, hartley = reuse.images, reuse.hartley
        obs = hartley.flatten(1)[:, fr.flat_index]
        return _Batch(imgs, hartley, obs, self._ctf(idx, fr.per_pixel))

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        """The prepared images of ``idx``: the loader's read-ahead batch when it is the one asked for."""
        ready = self._ready
        if ready is not None and len(ready[0]) == len(idx) and np.array_equal(ready[0], idx.numpy()):
            self._ready = None
            return ready[1]
        return self.data.read(idx.numpy())

    def _ctf(self, idx: torch.Tensor, freqs: torch.Tensor, data: ParticleDataset | None = None) -> torch.Tensor:
        """The CTF `(B, ...)` the images ``idx`` went through, at frequencies ``freqs`` `(..., 2)` (1/px of
        ``data``, default the run's): ``|CTF|`` for phase-flipped data, ``CTF²`` for CTF-premultiplied data."""
        data = self.data if data is None else data
        if data.ctf is None:
            return torch.ones(len(idx), *freqs.shape[:-1], device=self.device)
        ctf = compute_ctf(data.ctf.index(idx), freqs.cpu(), data.pixel_size)
        mode = data.ctf_mode[idx].reshape(-1, *([1] * (ctf.ndim - 1)))
        ctf = torch.where(mode == 1, ctf.abs(), torch.where(mode == 2, ctf * ctf, ctf))
        return ctf.to(self.device)

    @torch.no_grad()
    def _init_noise(self) -> None:
        """First noise estimate from the background: the images outside the particle circle, their power
        per shell divided by the area kept (signal power would otherwise down-weight low frequencies)."""
        gen = torch.Generator().manual_seed(self.config.seed)
        idx = torch.randperm(len(self.data), generator=gen)[: min(len(self.data), 1024)]
        imgs = self.data.read(idx.numpy(), masked=False).to(self.device)
        fr = self.freqs[STAGE2]
        ring = background_mask(self.size, device=self.device)
        bg = hartley_centered(imgs * ring, 2).flatten(1)[:, fr.flat_index] / float(ring.mean()) ** 0.5
        self.noise.accumulate(bg)
        self.noise.update()
        # The per-image normalisation zeroes the background's mean, hence its DC: take the next shell's value
        # (a near-zero σ² would weight the DC term a thousand-fold).
        self.noise.variance[0] = self.noise.variance[1]
        if self.config.noise_model == "white":
            self.noise.variance.fill_(float(self.noise.variance.mean()))

    def _build(self, seed: int) -> None:
        """Fresh encoder, volume, optimisers and poses, initialised from ``seed``."""
        cfg, n, size = self.config, len(self.data), self.size
        torch.manual_seed(seed)
        self.encoder = MultiHeadEncoder(
            self.encoder_size, cfg.heads, cfg.backbone, cfg.hidden, cfg.estimate_shifts, cfg.max_shift * size,
            cfg.spread_heads,
        ).to(self.device)
        self.volume = HartleyVolume(size)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(n, generator=gen)[: min(n, 1024)]
            fr = self.freqs[STAGE2]
            # in training-batch chunks: the CTF's float64 intermediates for 1,024 images at once were the
            # largest allocation of the set-up
            parts = [self._batch(c, fr)[2:] for c in idx.split(cfg.batch_size)]
            obs, ctf = (torch.cat([p[i].cpu() for p in parts]) for i in (0, 1))
            amp = HartleyVolume.radial_amplitude_from_images(obs, fr.shells.cpu(), size // 2 + 1, ctf)
            # A projection's transform is a slice of the volume's, so the images' amplitude per shell sets
            # the volume's scale; the images are mostly noise, so start at √0.1 of it (SNR ≈ 0.1). The
            # exponent is learned: this only has to be the right order of magnitude.
            self.volume.initialize(amp * 0.1**0.5, gen, cfg.volume_init_noise)
        self.volume.to(self.device)
        self.opt_encoder = torch.optim.Adam(self.encoder.parameters(), lr=cfg.encoder_lr)
        self.opt_volume = torch.optim.Adam(self.volume.parameters(), lr=cfg.volume_lr)
        self.poses = torch.eye(3).repeat(n, 1, 1)  # current best estimate per image (CPU)
        self.winners = torch.zeros(n, dtype=torch.long)  # winning head per image in stage 1
        self.shifts = torch.zeros(n, 2) if cfg.estimate_shifts else None
        self._previous_poses: torch.Tensor | None = None
        self.table: PoseTable | None = None
        self.epoch = 0  # next epoch to run
        self.history: list[dict] = []
        self.paths: dict[int, list[list[float]]] = {}  # watched particles' view directions, one per epoch

    def _encode(self, imgs: torch.Tensor):
        return self.encoder(fourier_crop_2d(imgs, self.encoder_size))

    def _loss(self, pred, obs, inv_var):
        fn = gaussian_nll if self.config.loss == "gaussian" else l1_loss
        return fn(pred, obs, inv_var)

    def _predict(self, hartley, rotations, shifts, ctf, fr: _Frequencies):
        """CTF-modulated, shifted slices `(..., P)`; ``ctf`` broadcasts against rotations' batch dims."""
        pred = self.volume.slice(fr.grid, rotations, hartley) * ctf
        if shifts is not None:
            pred = shift_hartley(pred, pred[..., fr.negative], fr.per_pixel, -shifts)
        return pred

    def _inv_var_for(self, fr: _Frequencies) -> torch.Tensor:
        """``1/σ²`` at the frequencies ``fr`` (the noise model is kept per shell)."""
        return (1.0 / self.noise.variance.to(self.device))[fr.shells]

    # ---------------------------------------------------------------- steps
    def _inplane_scores(self, slices, batch: _Batch, idx, fr, inplane: torch.Tensor | None = None,
                        shifts: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian scores `(B, M, K)` of every head's slice `(B, M, P)` at every in-plane angle.

        Turning the pose in-plane, ``R → Rz(φ) R``, turns its slice: ``S(k) → S(Rz(φ)ᵀ k)``. Comparing that
        with the image equals comparing the unturned slice with the image and CTF sampled at ``Rz(φ) q``,
        so one slice per head serves all K angles and the scores are three matrix products.
        """
        size = self.size
        k2 = (self._inplane if inplane is None else inplane)[:, :2, :2]  # (K, 2, 2)
        q = fr.grid  # (P, 2)
        rq = torch.einsum("kij,pj->kpi", k2, q)  # (K, P, 2) in Fourier pixels
        h = batch.hartley[:, None]  # (B, 1, L, L)

        def sample(coords: torch.Tensor) -> torch.Tensor:  # the image at Fourier pixels `(K, P, 2)` → (B, K, P)
            grid = ((coords + size // 2) * (2.0 / (size - 1)) - 1.0)[None].expand(len(idx), -1, -1, -1)
            return torch.nn.functional.grid_sample(h, grid, mode="bilinear", align_corners=True)[:, 0]

        img_k = sample(rq)
        ctf_k = self._ctf(idx, rq / size).to(img_k.dtype)
        w = self._inv_var_for(fr)
        quad = torch.einsum("bmp,bkp->bmk", slices * slices, w * ctf_k * ctf_k)
        const = (w * img_k * img_k).sum(-1)[:, None, :]
        if shifts is None:
            cross = torch.einsum("bmp,bkp->bmk", slices, w * ctf_k * img_k)
            return 0.5 * (quad - 2 * cross + const) / q.shape[0]
        # Shifting the prediction by −s equals shifting the image by +s: at the turned frequencies k = Rz q,
        # H'(k) = cos θ · H(k) + sin θ · H(−k) with θ = 2π k·s (shift_hartley's convention). Only the cross
        # term depends on s: a shift is unitary over the symmetric band.
        img_neg = sample(-rq)  # H(−k)
        a, b = w * ctf_k * img_k, w * ctf_k * img_neg
        # (B, K, J, P) would reach gigabytes at box 128 and beyond: the shifts go in chunks (_SHIFT_CHUNK_VALUES)
        step = max(1, _SHIFT_CHUNK_VALUES // max(1, a.numel()))
        cross = []
        for j in range(0, shifts.shape[0], step):
            theta = 2 * torch.pi * torch.einsum("kpi,ji->kjp", rq / size, shifts[j : j + step])  # (K, j, P)
            shifted = a[:, :, None] * torch.cos(theta) + b[:, :, None] * torch.sin(theta)  # (B, K, j, P)
            cross.append(torch.einsum("bmp,bkjp->bmkj", slices, shifted))
        cross = torch.cat(cross, -1)
        return 0.5 * (quad[..., None] - 2 * cross + const[..., None]) / q.shape[0]

    def _step_autoencode(self, idx: torch.Tensor) -> float:
        fr = self._stage1_frequencies()
        batch = self._batch(idx, fr)
        imgs, obs, ctf = batch.images, batch.obs, batch.ctf
        self.encoder.train()
        rot, sh = self._encode(imgs)  # (B, M, 3, 3), (B, M, 2)
        inv_var = self._inv_var_for(fr)
        b = torch.arange(len(idx), device=self.device)
        if self._inplane is None:
            pred = self._predict(None, rot, sh, ctf[:, None], fr)
            best, head = winner_takes_all(self._loss(pred, obs[:, None], inv_var))  # (B,), over M heads
        else:
            # Each head proposes a view; its in-plane angle is searched on a grid (no gradient), then the
            # winning (head, angle) pair is evaluated again with gradients for encoder and volume.
            with torch.no_grad():
                slices = self.volume.slice(fr.grid, rot.detach())  # (B, M, P)
                scores = self._inplane_scores(slices, batch, idx, fr, shifts=self._shift_grid)
                j_count = 1 if self._shift_grid is None else self._shift_grid.shape[0]
                k_count = self._inplane.shape[0]
                pick = scores.flatten(1).argmin(1)  # over (head, angle[, shift])
                head, turn = pick // (k_count * j_count), (pick // j_count) % k_count
                if self._shift_grid is not None:  # the searched shift replaces the heads' regressed ones
                    sh = self._shift_grid[pick % j_count][:, None].expand(-1, rot.shape[1], -1)
            rot = self._inplane[turn][:, None] @ rot  # every head of an image turned by its winning angle
            best = self._loss(
                self._predict(None, rot[b, head], None if sh is None else sh[b, head], ctf, fr), obs, inv_var
            )
        loss = best.mean()
        self.opt_encoder.zero_grad(set_to_none=True)
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_encoder.step()
        self.opt_volume.step()
        self.poses[idx] = rot[b, head].detach().cpu()
        self.winners[idx] = head.cpu()
        if sh is not None:
            self.shifts[idx] = sh[b, head].detach().cpu()
        return float(loss.detach())

    def _step_autodecode(self, idx: torch.Tensor) -> float:
        fr = self.freqs[STAGE2]
        _, _, obs, ctf = self._batch(idx, fr)
        inv_var = self._inv_var_for(fr)
        hartley = self.volume.hartley().detach()
        dev_idx = idx.to(self.device)
        for _ in range(self.config.pose_steps):
            w, t = self.table.perturbation(dev_idx)
            pred = self._predict(hartley, self.table.poses(dev_idx, w), t, ctf, fr)
            self._loss(pred, obs, inv_var).sum().backward()
            self.table.step(dev_idx, w, t)
        rot = self.table.rotations[dev_idx]
        sh = None if self.table.shifts is None else self.table.shifts[dev_idx]
        pred = self._predict(None, rot, sh, ctf, fr)
        loss = self._loss(pred, obs, inv_var).mean()
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_volume.step()
        self.noise.accumulate(pred.detach() - obs)
        self.poses[idx] = rot.cpu()
        if sh is not None:
            self.shifts[idx] = sh.cpu()
        return float(loss.detach())

    @torch.no_grad()
    def _candidates(self, batch: _Batch, idx: torch.Tensor, fr: _Frequencies):
        """Each head's pose at its best in-plane angle `(B, M, 3, 3)`, its shift, and its score `(B, M)`.

        ``batch`` holds the images at the band ``fr``. With a shift search, each head's shift is the best
        of the grid at its best angle (as in stage 1), not the head's regressed one.
        """
        self.encoder.eval()
        rot, sh = self._encode(batch.images)
        self.encoder.train()
        if self._inplane is None:
            pred = self._predict(None, rot, sh, batch.ctf[:, None], fr)
            return rot, sh, self._loss(pred, batch.obs[:, None], self._inv_var_for(fr))
        slices = self.volume.slice(fr.grid, rot)  # (B, M, P)
        if self._shift_grid is None:
            best, turn = self._inplane_scores(slices, batch, idx, fr).min(-1)  # over (B, M, K)
            return self._inplane[turn] @ rot, sh, best
        step = self.config.batch_size  # the (B, K, J, P) term of the shift search bounds the chunk
        best, turn, shift = [], [], []
        for s in range(0, len(idx), step):
            part = _Batch(*(x[s : s + step] for x in batch))
            scores = self._inplane_scores(slices[s : s + step], part, idx[s : s + step], fr, shifts=self._shift_grid)
            b, pick = scores.flatten(2).min(-1)  # (b, M) over (K, J)
            best.append(b)
            turn.append(pick // self._shift_grid.shape[0])
            shift.append(self._shift_grid[pick % self._shift_grid.shape[0]])
        best, turn, shift = torch.cat(best), torch.cat(turn), torch.cat(shift)
        return self._inplane[turn] @ rot, shift, best

    @torch.no_grad()
    def _recentre(self) -> float:
        """Move the volume's centre back to the box centre, and every shift with it; returns the move (voxels).

        With shifts estimated, a translation ``t`` of the volume and the shifts ``(R t)_xy`` of every image
        explain the data equally well, so the two drift together (by 1.9 voxels in a run on ±1 px data,
        where the per-image shifts were right to 0.13 px after taking the drift out) and carry the shifts
        out of their search range. Moving the volume by ``−c`` shifts image ``i``'s projection by
        ``−(R_i c)_xy``; the volume optimiser's moments move with the volume.
        """
        c = density_centre(self.volume.real_space())  # (x, y, z) voxels
        dist = float(c.norm())
        if dist < _RECENTRE_MIN_PX:
            return dist
        def projected(rotations: torch.Tensor) -> torch.Tensor:  # (R c)_xy, on the CPU: MPS has no float64
            return (rotations.cpu().to(torch.float64)[:, :2, :] @ c).to(torch.float32)

        self.volume.translate(-c, self.opt_volume)
        self.shifts -= projected(self.poses)
        if self.table is not None and self.table.shifts is not None:
            self.table.shifts -= projected(self.table.rotations).to(self.table.shifts.device)
        return dist

    def _pose_table(self, rotations: torch.Tensor, shifts: torch.Tensor | None = None) -> PoseTable:
        cfg = self.config
        return PoseTable(rotations, shifts, lr=cfg.pose_lr, shift_lr=cfg.shift_lr, max_shift=cfg.max_shift * self.size)

    def _exact_loss(self, rotations, shifts, obs, ctf, fr) -> torch.Tensor:
        """Loss `(B,)` of one pose per image, sliced exactly (the in-plane search interpolates the image)."""
        return self._loss(self._predict(None, rotations, shifts, ctf, fr), obs, self._inv_var_for(fr))

    def _pass_chunk(self) -> int:
        """Images per chunk in the passes over the whole data set (the switch, the reassignment). On the CPU,
        a training batch: a chunk of 256 (× 4 candidates, with gradients) raised the run's peak memory by a
        third. On a GPU, larger chunks keep it busy."""
        return self.config.batch_size if self.device.type == "cpu" else max(256, self.config.batch_size)

    def _reassign(self) -> int:
        """Let each image's refined pose compete with the encoder's best candidates; returns how many moved.

        Local refinement cannot leave a wrong basin; the frozen encoder's candidates, scored against the
        sharper volume of stage 2, can. The best few candidates are refined by the same pose steps first, so
        that both compete at their local optimum; images that move restart their optimiser state.
        """
        n = len(self.data)
        fr1 = self._frequencies(self.stage1_end)
        fr2 = self.freqs[STAGE2]
        # the candidates are refined in this band (default: stage 1's at the switch) and compete in stage 2's
        cfg = self.config
        fr_refine = fr1 if cfg.reassign_max_freq is None else self._frequencies(cfg.reassign_max_freq)
        hartley = self.volume.hartley().detach()
        moved = 0
        chunk = self._pass_chunk()
        for s in range(0, n, chunk):
            idx = torch.arange(s, min(s + chunk, n))
            dev_idx = idx.to(self.device)
            first = self._batch(idx, fr1)
            k = min(self.config.reassign_candidates, self.config.heads)
            with torch.no_grad():
                rot, sh, scores = self._candidates(first, idx, fr1)
                top = scores.topk(k, dim=1, largest=False).indices  # (B, k) best heads
                b = torch.arange(len(idx), device=self.device)[:, None]
                cand = self._pose_table(rot[b, top].flatten(0, 1), None if sh is None else sh[b, top].flatten(0, 1))
            _, _, obs, ctf = second = self._batch(idx, fr2, reuse=first)
            if fr_refine is fr1 or fr_refine is fr2:
                refine = first if fr_refine is fr1 else second
            else:
                refine = self._batch(idx, fr_refine, reuse=first)
            obs_r, ctf_r = refine.obs.repeat_interleave(k, 0), refine.ctf.repeat_interleave(k, 0)
            rows = torch.arange(len(idx) * k, device=self.device)
            inv_var = self._inv_var_for(fr_refine)
            for _ in range(self.config.reassign_steps):
                w, t = cand.perturbation(rows)
                pred = self._predict(hartley, cand.poses(rows, w), t, ctf_r, fr_refine)
                self._loss(pred, obs_r, inv_var).sum().backward()
                cand.step(rows, w, t)
            obs_k, ctf_k = obs.repeat_interleave(k, 0), ctf.repeat_interleave(k, 0)
            with torch.no_grad():
                new = self._exact_loss(cand.rotations, cand.shifts, obs_k, ctf_k, fr2).reshape(-1, k)
                new, pick = new.min(1)
                pick = torch.arange(len(idx), device=self.device) * k + pick
                cur_sh = None if self.table.shifts is None else self.table.shifts[dev_idx]
                take = new < self._exact_loss(self.table.rotations[dev_idx], cur_sh, obs, ctf, fr2)
                if bool(take.any()):
                    self.table.reset(dev_idx[take], cand.rotations[pick][take],
                                     None if cand.shifts is None else cand.shifts[pick][take])
                    moved += int(take.sum())
        self.poses = self.table.rotations.cpu().clone()
        if self.table.shifts is not None:
            self.shifts = self.table.shifts.cpu().clone()
        return moved

    @torch.no_grad()
    def _switch_to_autodecode(self) -> None:
        """Each image starts from its best candidate under the current volume (paper, Sec. 2.2)."""
        n = len(self.data)
        fr = self._frequencies(self.stage1_end)
        chunk = self._pass_chunk()
        for s in range(0, n, chunk):
            idx = torch.arange(s, min(s + chunk, n))
            batch = self._batch(idx, fr)
            obs, ctf = batch.obs, batch.ctf
            rot, sh, scores = self._candidates(batch, idx, fr)
            _, head = winner_takes_all(scores)
            b = torch.arange(len(idx), device=self.device)
            best = self._exact_loss(rot[b, head], None if sh is None else sh[b, head], obs, ctf, fr)
            # The pose each image won with during the last epoch competes too: a head's current guess can
            # be worse than its earlier one.
            prev_sh = None if sh is None else self.shifts[idx].to(self.device)
            take = (best < self._exact_loss(self.poses[idx].to(self.device), prev_sh, obs, ctf, fr)).cpu()
            self.poses[idx[take]] = rot[b, head].cpu()[take]
            if sh is not None:
                self.shifts[idx[take]] = sh[b, head].cpu()[take]
        self.table = self._pose_table(self.poses.to(self.device),
                                      None if self.shifts is None else self.shifts.to(self.device))
        for g in self.opt_volume.param_groups:
            g["lr"] = self.config.volume_lr_autodecode

    # ---------------------------------------------------------------- snapshots
    @torch.no_grad()
    def _watched(self, stage: str) -> tuple[WatchedParticle, ...]:
        """Full-band projections (CTF applied) of the watched particles' candidates, or refined pose."""
        ids = [i for i in self.config.watch if 0 <= i < len(self.data)]
        if not ids:
            return ()
        idx = torch.tensor(ids)
        size = self.size
        fr = self._frequencies(1.0)
        batch = self._batch(idx, fr)
        imgs, obs, ctf = batch.images, batch.obs, batch.ctf
        if stage == STAGE1:
            band = self._stage1_frequencies()
            rot, sh, _ = self._candidates(self._batch(idx, band, reuse=batch), idx, band)
        else:
            dev_idx = idx.to(self.device)
            rot = self.table.rotations[dev_idx][:, None]
            sh = None if self.table.shifts is None else self.table.shifts[dev_idx][:, None]
        pred = self._predict(None, rot, sh, ctf[:, None], fr)  # (W, M, P)
        losses = self._loss(pred, obs[:, None], self._inv_var_for(fr))
        full = torch.zeros(*pred.shape[:2], size * size, device=self.device)
        full[..., fr.flat_index] = pred
        proj = ihartley_centered(full.reshape(*pred.shape[:2], size, size), 2)
        return tuple(
            WatchedParticle(
                index=i, image=imgs[j].cpu().numpy(), candidates=proj[j].cpu().numpy(),
                losses=losses[j].cpu().numpy(), winner=int(losses[j].argmin()), rotations=rot[j].cpu().numpy(),
            )
            for j, i in enumerate(ids)
        )

    def volume_map(self) -> np.ndarray:
        return self.volume.real_space().cpu().numpy()

    @torch.no_grad()
    def log_likelihood_grid(self, index: int, rotations: torch.Tensor, inplane_angles: torch.Tensor,
                            band: float = 1.0, chunk: int = 1024) -> torch.Tensor:
        """``log p(image | R)`` `(D, K)` of particle ``index`` for the poses ``Rz(ψ_k) R_d``, up to a constant.

        The Gaussian likelihood of the current volume (CTF applied, the noise model's σ² per shell) summed
        over the image's frequencies within ``band`` of Nyquist: one slice per ``R_d`` `(D, 3, 3)`, the K
        in-plane angles (radians) scored by resampling the image (``_inplane_scores``). Shifts are not
        marginalised: the image is compared at the run's current shift for it (none when shifts are not
        estimated).
        """
        fr = self._frequencies(band)
        idx = torch.tensor([int(index)])
        batch = self._batch(idx, fr)
        inplane = _about_z(torch.as_tensor(inplane_angles, dtype=torch.float32)).to(self.device)
        shift = None if self.shifts is None else self.shifts[idx].to(self.device)  # (1, 2): a one-shift "grid"
        out = []
        for s in range(0, rotations.shape[0], chunk):
            rot = rotations[s : s + chunk].to(self.device, torch.float32)[None]  # (1, d, 3, 3)
            scores = self._inplane_scores(self.volume.slice(fr.grid, rot), batch, idx, fr, inplane, shift)
            if shift is not None:
                scores = scores[..., 0]  # (1, d, K)
            out.append(-scores[0] * len(fr))  # the mean over frequencies back to their sum
        return torch.cat(out).cpu().to(torch.float64)

    @torch.no_grad()
    def insert(self, which: np.ndarray, batch: int = 256, data: ParticleDataset | None = None) -> FourierInserter:
        """The images ``which`` inserted into a frequency grid with the current poses (and shifts), every
        frequency up to Nyquist (:class:`~napari_semiamort.physics.backproject.FourierInserter`).

        ``data``: the same particles prepared at another box (:meth:`ParticleDataset.at_box`), for a map at
        that box; default the run's images."""
        data = self.data if data is None else data
        # images per batch: 256 at box 128 and below, fewer above (the insertion's temporaries grow with L²)
        batch = max(8, min(batch, batch * 128**2 // data.box**2))
        inserter = FourierInserter(data.box, self.device)
        freqs = frequency_grid_2d(data.box, device=self.device)  # (L, L, 2) cycles per pixel
        px = self.data.pixel_size / data.pixel_size  # the run's pixels in ``data``'s
        for s in range(0, len(which), batch):
            idx = torch.from_numpy(np.asarray(which[s : s + batch], dtype=np.int64))
            f = fft_centered(data.read(idx.numpy()).to(self.device), 2)
            if self.shifts is not None:  # the image is the projection shifted by −origin: undo it
                o = self.shifts[idx].to(self.device) * px
                phase = -2 * torch.pi * (freqs[None] * o[:, None, None, :]).sum(-1)
                f = f * torch.polar(torch.ones_like(phase), phase)
            inserter.insert(f, self.poses[idx].to(self.device), self._ctf(idx, freqs, data))
        return inserter

    def backproject(self, which: np.ndarray, batch: int = 256, data: ParticleDataset | None = None) -> np.ndarray:
        """A map `(L, L, L)` reconstructed directly from the images ``which`` with the current poses (at
        ``data``'s box, default the run's)."""
        return self.insert(which, batch, data).volume().cpu().numpy()

    def output_data(self) -> ParticleDataset:
        """The particles at the box of the run's maps (``output_box``; default the images' own box, which
        differs from the run's when ``box`` downsampled them)."""
        return self.data.at_box(self.config.output_box)

    def reference_at(self, box: int) -> torch.Tensor | None:
        """The reference map (``reference_map``) resampled to ``box``, or None without one."""
        if not self.config.reference_map:
            return None
        if box == self.size and self.reference_map is not None:
            return self.reference_map
        return resample_map(torch.from_numpy(read_map(self.config.reference_map)[0]), box)

    def final_maps(self, data: ParticleDataset | None = None) -> tuple[np.ndarray, np.ndarray | None,
                                                                      np.ndarray | None]:
        """``(map, half1, half2)`` by direct Fourier reconstruction from the final poses, at ``data``'s box
        (default :meth:`output_data`); the map from all images (the halves' sums added, one pass over the
        data); no halves when the run keeps none.

        This, not the decoder's volume, is the run's map: the decoder is trained on frequencies within
        ``L/2 − 1`` (the −L/2 row has no Hermitian partner), so its outermost shell is untrained. And it is
        made from the images at full size: poses found on downsampled images carry to the finer pixels.
        """
        data = self.output_data() if data is None else data
        if not self.config.halves or self.data.half is None:
            return self.backproject(np.arange(len(self.data)), data=data), None, None
        first = self.insert(np.flatnonzero(self.data.half == 1), data=data)
        half1 = first.volume().cpu().numpy()
        second = self.insert(np.flatnonzero(self.data.half == 2), data=data)
        half2 = second.volume().cpu().numpy()
        first.add_(second)  # the whole set's sums, without a third grid (1.6 GB each at box 512)
        del second
        return first.volume().cpu().numpy(), half1, half2

    # ---------------------------------------------------------------- epoch bookkeeping
    @torch.no_grad()
    def _epoch_metrics(self, stage: str, losses: list[float], seconds: float) -> dict:
        n = len(self.data)
        m: dict = {
            "epoch": self.epoch + 1,
            "stage": stage,
            "loss": float(np.mean(losses)),
            "seconds": seconds,
            "images_per_second": n / max(seconds, 1e-9),
            "time": time.time(),  # when the epoch's training ended (Unix seconds; the scoring below follows)
        }
        if self._previous_poses is not None:
            m["pose_change_deg"] = float(torch.rad2deg(geodesic_distance(self._previous_poses, self.poses)).mean())
        self._previous_poses = self.poses.clone()
        alignment = None
        if self.data.reference_rotations is not None:
            alignment = align_poses(self.poses, self.data.reference_rotations)
            m["pose_error_mean_deg"] = alignment.mean_error
            m["pose_error_median_deg"] = alignment.median_error
            m["mirrored"] = alignment.mirrored
        if self.reference_map is not None and alignment is not None:
            aligned, offset = align_translation(rotate_map(self.volume.real_space().cpu(), alignment.transform),
                                                self.reference_map)
            m["reference_offset_px"] = round(float(np.linalg.norm(offset)), 3)
            curves = {"": fsc(aligned, self.reference_map)}
            if self.config.mask_diameter:  # also within the user's mask, as a particle's FSC is reported
                curves["_masked"] = masked_fsc(aligned, self.reference_map,
                                               self.config.mask_diameter / 2 / self.data.pixel_size)
            for suffix, curve in curves.items():
                m[f"fsc_curve{suffix}"] = [round(float(c), 5) for c in curve]
                m[f"fsc_0.5_angstrom{suffix}"] = resolution_at(curve, self.size, self.data.pixel_size, 0.5)
                m[f"fsc_0.143_angstrom{suffix}"] = resolution_at(curve, self.size, self.data.pixel_size, 0.143)
        return m

    def _order(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed * 100003 + self.epoch)
        return torch.randperm(len(self.data), generator=gen)

    # ---------------------------------------------------------------- the loop
    def __iter__(self) -> Iterator[Snapshot]:
        cfg = self.config
        if self.epoch == 0 and cfg.restarts > 1 and 0 < cfg.restart_epochs < cfg.switch_epoch:
            yield from self._restarts()
        yield from self._epochs(cfg.epochs)

    @property
    def total_steps(self) -> int:
        """Steps of the whole run, the restarts included (those added so far, when the first did not rank)."""
        cfg = self.config
        epochs = cfg.epochs
        if cfg.restarts > 1 and 0 < cfg.restart_epochs < cfg.switch_epoch:
            epochs += (self._restarts_planned - 1) * cfg.restart_epochs
        stage2 = max(0, cfg.epochs - cfg.switch_epoch)
        return (epochs - stage2) * self._steps_per_epoch(STAGE1) + stage2 * self._steps_per_epoch(STAGE2)

    def batch_size(self, stage: str) -> int:
        """Images per step in ``stage``: ``batch_size``, or ``stage2_batch_size`` in stage 2 where it is set
        (on a GPU a larger stage-2 batch is faster; see the config)."""
        cfg = self.config
        return cfg.batch_size if stage == STAGE1 or cfg.stage2_batch_size is None else cfg.stage2_batch_size

    def _steps_per_epoch(self, stage: str) -> int:
        n, bs = len(self.data), self.batch_size(stage)
        steps = (n + bs - 1) // bs
        # a last batch of one image joins the one before (batch norm needs two)
        return steps - 1 if n % bs == 1 and steps > 1 else steps

    def _restarts(self) -> Iterator[Snapshot]:
        """Train ``restarts`` initialisations for ``restart_epochs`` epochs each; keep the lowest loss.

        Whether stage 1 breaks the symmetry of its blurry start depends on the initialisation (on 4ZXB,
        seeds 0, 1 and 2 reached FSC 77, 35 and 27 Å against the truth); the loss after a few epochs ranks
        them (6.81, 6.78, 6.76 at epoch 5), so the best of a few short starts is kept.

        When the lowest loss is not ``restart_margin`` below the median of the others, no start stands out: at
        boxes 96-192 that meant none had broken the symmetry. More starts follow, one at a time, up to
        ``max_restarts``.
        """
        cfg = self.config
        best: tuple[float, dict] | None = None
        losses: list[float] = []
        k = 0
        while k < self._restarts_planned:
            self.trial = k
            if k > 0:
                self._build(cfg.seed + 7919 * k)
            yield from self._epochs(cfg.restart_epochs)
            loss = self.history[-1]["loss"]
            losses.append(loss)
            if best is None or loss < best[0]:
                best = (loss, copy.deepcopy(self.state_dict()))
            k += 1
            if k == self._restarts_planned and k < cfg.max_restarts and restart_gap(losses) < cfg.restart_margin:
                self._restarts_planned += 1
        self.trial = None
        steps = self.step_count
        self.load_state_dict(best[1])
        self.step_count = steps  # the steps of every restart were taken
        self.history[-1]["chosen_restart"] = best[1]["trial"]
        self.history[-1]["restart_losses"] = [round(x, 6) for x in losses]
        self.history[-1]["restart_gap"] = round(restart_gap(losses), 6)
        if self.run_dir is not None:
            self.save_checkpoint()

    def _epochs(self, until: int) -> Iterator[Snapshot]:
        cfg = self.config
        n = len(self.data)
        while self.epoch < until:
            stage = STAGE1 if self.epoch < cfg.switch_epoch else STAGE2
            bs, steps_per_epoch = self.batch_size(stage), self._steps_per_epoch(stage)
            # the epoch's time counts the switch's and the reassignment's passes over the data set too
            t_epoch = time.perf_counter()
            reassigned = None
            if stage == STAGE2 and self.table is None:
                self._switch_to_autodecode()
            elif stage == STAGE2 and self.epoch - cfg.switch_epoch < cfg.reassign_epochs:
                reassigned = self._reassign()
            if stage == STAGE2:
                # linear decay of the volume step over stage 2: averages the noise out of late updates
                t = (self.epoch - cfg.switch_epoch) / max(1, cfg.epochs - cfg.switch_epoch)
                for g in self.opt_volume.param_groups:
                    g["lr"] = cfg.volume_lr_autodecode * (1 - (1 - cfg.volume_lr_final_fraction) * t)
            order = self._order()
            batches = [order[s * bs : (s + 1) * bs if s < steps_per_epoch - 1 else n] for s in range(steps_per_epoch)]
            loader = iter(BatchLoader(self.data, [b.numpy() for b in batches]))
            losses: list[float] = []
            try:
                for s, idx in enumerate(batches):
                    self._ready = next(loader)
                    t0 = time.perf_counter()
                    step = self._step_autoencode if stage == STAGE1 else self._step_autodecode
                    loss = step(idx)
                    losses.append(loss)
                    self.step_count += 1
                    ips = len(idx) / max(time.perf_counter() - t0, 1e-9)
                    last = s == steps_per_epoch - 1
                    full = cfg.snapshot_every > 0 and self.step_count % cfg.snapshot_every == 0
                    if last:
                        metrics = self._finish_epoch(stage, losses, time.perf_counter() - t_epoch, reassigned)
                        yield Snapshot(self.epoch - 1, self.step_count, self.total_steps, cfg.epochs, stage, loss,
                                       ips, True, self.volume_map(), self._watched(stage), metrics, restart=self.trial,
                                       box=self.size, pixel_size=self.data.pixel_size, history=tuple(self.history))
                    elif full:
                        yield Snapshot(self.epoch, self.step_count, self.total_steps, cfg.epochs, stage, loss, ips,
                                       False, self.volume_map(), self._watched(stage), restart=self.trial,
                                       box=self.size, pixel_size=self.data.pixel_size)
                    else:
                        yield Snapshot(self.epoch, self.step_count, self.total_steps, cfg.epochs, stage, loss, ips,
                                       restart=self.trial, box=self.size, pixel_size=self.data.pixel_size)
            finally:
                loader.close()  # stops the read-ahead thread when the run stops mid-epoch

    def _finish_epoch(self, stage: str, losses: list[float], seconds: float, reassigned: int | None) -> dict:
        if self.config.noise_model == "shell-residual" and stage == STAGE2:
            self.noise.update()  # from the residuals: only once poses are settled enough to trust them
        recentred = None
        # With the shift search only: the encoder's regressed shifts (shift_search 0) would stay in the old
        # frame, and stage 2's reassignment would score its candidates with them.
        if self.shifts is not None and self._shift_grid is not None:
            recentred = self._recentre()  # before the metrics: they score the recentred volume
        metrics = self._epoch_metrics(stage, losses, seconds)
        if recentred is not None:
            metrics["volume_centre_px"] = recentred
        if stage == STAGE1:
            metrics["band_fraction"] = self.stage1_band(self.epoch)
        if reassigned is not None:
            metrics["reassigned"] = reassigned
        if self.trial is not None:
            metrics["restart"] = self.trial
        self.history.append(metrics)
        for i in self.config.watch:  # the view direction after each epoch (Rᵀ ẑ), for the posterior plots
            if 0 <= i < len(self.data):
                self.paths.setdefault(int(i), []).append(self.poses[i][2].tolist())
        self.epoch += 1
        if self.run_dir is not None:
            if self.trial is None:  # restarts are checkpointed once the best is chosen
                self.save_checkpoint()
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        return metrics

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "version": __version__,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step_count,
            "encoder": self.encoder.state_dict(),
            "volume": self.volume.state_dict(),
            "opt_encoder": self.opt_encoder.state_dict(),
            "opt_volume": self.opt_volume.state_dict(),
            "noise": self.noise.state_dict(),
            "poses": self.poses,
            "winners": self.winners,
            "shifts": self.shifts,
            "previous_poses": self._previous_poses,
            "table": None if self.table is None else self.table.state_dict(),
            "history": self.history,
            "paths": self.paths,
            "trial": self.trial,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_count = state["epoch"], state["step"]
        self.encoder.load_state_dict(state["encoder"])
        self.volume.load_state_dict(state["volume"])
        self.opt_encoder.load_state_dict(state["opt_encoder"])
        self.opt_volume.load_state_dict(state["opt_volume"])
        self.noise.load_state_dict(state["noise"])
        self.poses, self.shifts = state["poses"], state["shifts"]
        if "winners" in state:  # checkpoints before version 0.1 lack them
            self.winners = state["winners"]
        self._previous_poses = state["previous_poses"]
        self.history = list(state["history"])
        # a resumed run counts the restarts it tried (the snapshot of a restart, taken before they ended,
        # has no record and leaves the count as it is)
        tried = [len(m["restart_losses"]) for m in self.history if "restart_losses" in m]
        if tried:
            self._restarts_planned = max(self.config.restarts, tried[-1])
        self.paths = {int(k): list(v) for k, v in state.get("paths", {}).items()}
        if state["table"] is not None:
            self.table = self._pose_table(self.poses.to(self.device))
            self.table.load_state_dict({k: v.to(self.device) for k, v in state["table"].items()})

    def save_checkpoint(self) -> Path:
        path = self.run_dir / "checkpoint.pt"
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    @classmethod
    def resume(cls, run_dir: str | Path, **overrides) -> Reconstruction:
        """Continue a run from ``RUN_DIR/checkpoint.pt`` (epochs may be raised via ``overrides``)."""
        run_dir = Path(run_dir)
        ckpt = run_dir / "checkpoint.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        cfg = ReconstructionConfig.from_dict({**state["config"], **overrides})
        run = cls(cfg, run_dir=run_dir)
        run.load_state_dict(state)
        return run
