"""The two-stage reconstruction loop (paper, Sec. 2) as an iterator of snapshots.

Stage 1, auto-encoding: the multi-head encoder proposes M poses per image; the winner-takes-all Gaussian
likelihood trains encoder and volume together. Stage 2, auto-decoding (from ``switch_epoch``): each image
keeps its best head's pose and refines it by Adam on an axis-angle perturbation, alternating
``pose_steps`` pose steps with one volume step on the same batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.dataset import ParticleDataset, background_mask
from ..data.mrc import atomic_path, read_map
from ..metrics.alignment import align_poses, rotate_map
from ..metrics.fsc import fsc, resolution_at
from ..models.encoder import MultiHeadEncoder
from ..models.poses import PoseTable
from ..models.volume import HartleyVolume
from ..physics.ctf import compute_ctf
from ..physics.fourier import hartley_centered, ihartley_centered
from ..physics.likelihood import ShellNoiseModel, gaussian_nll, l1_loss, winner_takes_all
from ..physics.so3 import geodesic_distance
from .config import ReconstructionConfig
from .snapshot import Snapshot, WatchedParticle

__all__ = ["Reconstruction", "select_device"]

STAGE1, STAGE2 = "autoencode", "autodecode"


def select_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
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
        lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(self.grid.long().tolist())}
        self.negative = torch.tensor([lookup[(-a, -b)] for a, b in self.grid.long().tolist()], device=device)

    def __len__(self) -> int:
        return self.grid.shape[0]


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
        self.data = dataset or ParticleDataset.from_star(
            cfg.particles, cfg.datadir, cfg.pixel_size, cfg.use_ctf
        )
        self.data.cache_in_memory()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        n, size = len(self.data), self.data.box
        self.size = size
        torch.manual_seed(cfg.seed)
        dev = self.device
        self.freqs = {
            STAGE1: _Frequencies(size, cfg.autoencode_max_freq, dev),
            STAGE2: _Frequencies(size, cfg.max_freq, dev),
        }
        self.encoder = MultiHeadEncoder(
            size, cfg.heads, cfg.backbone, cfg.hidden, cfg.estimate_shifts, cfg.max_shift * size
        ).to(dev)
        self.volume = HartleyVolume(size).to(dev)
        self.noise = ShellNoiseModel(self.freqs[STAGE2].shells, size // 2 + 1)
        self._init_from_data()
        self.opt_encoder = torch.optim.Adam(self.encoder.parameters(), lr=cfg.encoder_lr)
        self.opt_volume = torch.optim.Adam(self.volume.parameters(), lr=cfg.volume_lr)
        self.poses = torch.eye(3).repeat(n, 1, 1)  # current best estimate per image (CPU)
        self.shifts = torch.zeros(n, 2) if cfg.estimate_shifts else None
        self._previous_poses: torch.Tensor | None = None
        self.table: PoseTable | None = None
        self.epoch = 0  # next epoch to run
        self.step_count = 0
        self.history: list[dict] = []
        self.reference_map = None
        if cfg.reference_map:
            ref, _ = read_map(cfg.reference_map)
            if ref.shape[-1] != size:
                raise ValueError(f"{cfg.reference_map}: box {ref.shape[-1]} differs from the particles' {size}")
            self.reference_map = torch.from_numpy(ref)

    # ---------------------------------------------------------------- set-up
    def _batch(self, idx: torch.Tensor, stage: str):
        """Images `(B, L, L)`, their Hartley coefficients `(B, P)` and CTF `(B, P)` on the device."""
        fr = self.freqs[stage]
        imgs = self.data.read(idx.numpy()).to(self.device)
        obs = hartley_centered(imgs, 2).flatten(1)[:, fr.flat_index]
        if self.data.ctf is not None:
            ctf = compute_ctf(self.data.ctf.index(idx), fr.per_pixel.cpu(), self.data.pixel_size).to(self.device)
        else:
            ctf = torch.ones(len(idx), len(fr), device=self.device)
        return imgs, obs, ctf

    @torch.no_grad()
    def _init_from_data(self) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        n = len(self.data)
        idx = torch.randperm(n, generator=gen)[: min(n, 1024)]
        _, obs, ctf = self._batch(idx, STAGE2)
        fr = self.freqs[STAGE2]
        n_shells = self.size // 2 + 1
        amp = HartleyVolume.radial_amplitude_from_images(obs.cpu(), fr.shells.cpu(), n_shells, ctf.cpu())
        # First noise estimate from the background: the images outside the particle circle, their power
        # per shell divided by the area kept (signal power would otherwise down-weight low frequencies).
        imgs = self.data.read(idx.numpy()).to(self.device)
        ring = background_mask(self.size, device=self.device)
        bg = hartley_centered(imgs * ring, 2).flatten(1)[:, fr.flat_index] / float(ring.mean()) ** 0.5
        self.noise.accumulate(bg)
        self.noise.update()
        if self.config.noise_model == "white":
            self.noise.variance.fill_(float(self.noise.variance.mean()))
        # A projection's transform is a slice of the volume's, so the images' amplitude per shell sets the
        # volume's scale; the images are mostly noise, so start at √0.1 of it (SNR ≈ 0.1). The exponent is
        # learned: this only has to be the right order of magnitude.
        self.volume.initialize(amp * 0.1**0.5, gen, self.config.volume_init_noise)
        self.volume.to(self.device)

    def _loss(self, pred, obs, inv_var):
        fn = gaussian_nll if self.config.loss == "gaussian" else l1_loss
        return fn(pred, obs, inv_var)

    def _predict(self, hartley, rotations, shifts, ctf, stage):
        """CTF-modulated, shifted slices `(..., P)`; ``ctf`` broadcasts against rotations' batch dims."""
        fr = self.freqs[stage]
        pred = self.volume.slice(fr.grid, rotations, hartley) * ctf
        if shifts is not None:
            from ..physics.fourier import shift_hartley

            pred = shift_hartley(pred, pred[..., fr.negative], fr.per_pixel, -shifts)
        return pred

    def _inv_var(self, stage):
        # noise shells follow the STAGE2 list; map onto this stage's frequencies by shell index
        return (1.0 / self.noise.variance.to(self.device))[self.freqs[stage].shells]

    # ---------------------------------------------------------------- steps
    def _step_autoencode(self, idx: torch.Tensor) -> float:
        imgs, obs, ctf = self._batch(idx, STAGE1)
        self.encoder.train()
        rot, sh = self.encoder(imgs)  # (B, M, 3, 3), (B, M, 2)
        pred = self._predict(None, rot, sh, ctf[:, None], STAGE1)
        losses = self._loss(pred, obs[:, None], self._inv_var(STAGE1))  # (B, M)
        best, head = winner_takes_all(losses)
        loss = best.mean()
        self.opt_encoder.zero_grad(set_to_none=True)
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_encoder.step()
        self.opt_volume.step()
        b = torch.arange(len(idx), device=self.device)
        self.poses[idx] = rot[b, head].detach().cpu()
        if sh is not None:
            self.shifts[idx] = sh[b, head].detach().cpu()
        return float(loss)

    def _step_autodecode(self, idx: torch.Tensor) -> float:
        _, obs, ctf = self._batch(idx, STAGE2)
        inv_var = self._inv_var(STAGE2)
        hartley = self.volume.hartley().detach()
        dev_idx = idx.to(self.device)
        for _ in range(self.config.pose_steps):
            w, t = self.table.perturbation(dev_idx)
            pred = self._predict(hartley, self.table.poses(dev_idx, w), t, ctf, STAGE2)
            self._loss(pred, obs, inv_var).sum().backward()
            self.table.step(dev_idx, w, t)
        rot = self.table.rotations[dev_idx]
        sh = None if self.table.shifts is None else self.table.shifts[dev_idx]
        pred = self._predict(None, rot, sh, ctf, STAGE2)
        loss = self._loss(pred, obs, inv_var).mean()
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_volume.step()
        self.noise.accumulate(pred.detach() - obs)
        self.poses[idx] = rot.cpu()
        if sh is not None:
            self.shifts[idx] = sh.cpu()
        return float(loss)

    @torch.no_grad()
    def _switch_to_autodecode(self) -> None:
        """Each image starts from its best head's pose under the current volume (paper, Sec. 2.2)."""
        self.encoder.eval()
        n = len(self.data)
        for s in range(0, n, 256):
            idx = torch.arange(s, min(s + 256, n))
            imgs, obs, ctf = self._batch(idx, STAGE2)
            rot, sh = self.encoder(imgs)
            pred = self._predict(None, rot, sh, ctf[:, None], STAGE2)
            losses = self._loss(pred, obs[:, None], self._inv_var(STAGE2))
            # Keep the stage-1 winner too: a head's current guess can be worse than its earlier one.
            prev = self._predict(None, self.poses[idx].to(self.device),
                                 None if sh is None else self.shifts[idx].to(self.device), ctf, STAGE2)
            prev_loss = self._loss(prev, obs, self._inv_var(STAGE2))
            best, head = winner_takes_all(losses)
            b = torch.arange(len(idx), device=self.device)
            take = (best < prev_loss).cpu()
            self.poses[idx[take]] = rot[b, head].cpu()[take]
            if sh is not None:
                self.shifts[idx[take]] = sh[b, head].cpu()[take]
        self.table = PoseTable(
            self.poses.to(self.device),
            None if self.shifts is None else self.shifts.to(self.device),
            lr=self.config.pose_lr,
            shift_lr=self.config.shift_lr,
        )
        for g in self.opt_volume.param_groups:
            g["lr"] = self.config.volume_lr_autodecode

    # ---------------------------------------------------------------- snapshots
    @torch.no_grad()
    def _watched(self, stage: str) -> tuple[WatchedParticle, ...]:
        ids = [i for i in self.config.watch if 0 <= i < len(self.data)]
        if not ids:
            return ()
        idx = torch.tensor(ids)
        size = self.size
        imgs = self.data.read(idx.numpy()).to(self.device)
        obs = hartley_centered(imgs, 2).flatten(1)
        fr = _Frequencies(size, 1.0, self.device)
        if self.data.ctf is not None:
            ctf = compute_ctf(self.data.ctf.index(idx), fr.per_pixel.cpu(), self.data.pixel_size).to(self.device)
        else:
            ctf = torch.ones(len(ids), len(fr), device=self.device)
        if stage == STAGE1:
            self.encoder.eval()
            rot, sh = self.encoder(imgs)
            self.encoder.train()
        else:
            rot = self.table.rotations[idx.to(self.device)][:, None]
            sh = None if self.table.shifts is None else self.table.shifts[idx.to(self.device)][:, None]
        pred = self.volume.slice(fr.grid, rot) * ctf[:, None]
        if sh is not None:
            from ..physics.fourier import shift_hartley

            pred = shift_hartley(pred, pred[..., fr.negative], fr.per_pixel, -sh)
        full = torch.zeros(*pred.shape[:2], size * size, device=self.device)
        full[..., fr.flat_index] = pred
        proj = ihartley_centered(full.reshape(*pred.shape[:2], size, size), 2)
        inv_var = (1.0 / self.noise.variance.to(self.device))[fr.shells]
        losses = self._loss(pred, obs[:, None, fr.flat_index], inv_var)
        out = []
        for j, i in enumerate(ids):
            out.append(WatchedParticle(
                index=i, image=imgs[j].cpu().numpy(), candidates=proj[j].cpu().numpy(),
                losses=losses[j].cpu().numpy(), winner=int(losses[j].argmin()),
                rotations=rot[j].cpu().numpy(),
            ))
        return tuple(out)

    def volume_map(self) -> np.ndarray:
        return self.volume.real_space().cpu().numpy()

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
            aligned = rotate_map(self.volume.real_space().cpu(), alignment.transform)
            curve = fsc(aligned, self.reference_map)
            m["fsc_0.5_angstrom"] = resolution_at(curve, self.size, self.data.pixel_size, 0.5)
            m["fsc_0.143_angstrom"] = resolution_at(curve, self.size, self.data.pixel_size, 0.143)
        return m

    def _order(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed * 100003 + self.epoch)
        return torch.randperm(len(self.data), generator=gen)

    # ---------------------------------------------------------------- the loop
    def __iter__(self) -> Iterator[Snapshot]:
        cfg = self.config
        n, bs = len(self.data), cfg.batch_size
        steps_per_epoch = (n + bs - 1) // bs
        while self.epoch < cfg.epochs:
            stage = STAGE1 if self.epoch < cfg.switch_epoch else STAGE2
            if stage == STAGE2 and self.table is None:
                self._switch_to_autodecode()
            order = self._order()
            losses: list[float] = []
            t_epoch = time.perf_counter()
            for s in range(steps_per_epoch):
                idx = order[s * bs : (s + 1) * bs]
                t0 = time.perf_counter()
                step = self._step_autoencode if stage == STAGE1 else self._step_autodecode
                loss = step(idx)
                losses.append(loss)
                self.step_count += 1
                ips = len(idx) / max(time.perf_counter() - t0, 1e-9)
                last = s == steps_per_epoch - 1
                full = cfg.snapshot_every > 0 and self.step_count % cfg.snapshot_every == 0
                if last:
                    metrics = self._finish_epoch(stage, losses, time.perf_counter() - t_epoch)
                    yield Snapshot(self.epoch - 1, self.step_count, steps_per_epoch, cfg.epochs, stage, loss,
                                   ips, True, self.volume_map(), self._watched(stage), metrics)
                elif full:
                    yield Snapshot(self.epoch, self.step_count, steps_per_epoch, cfg.epochs, stage, loss, ips,
                                   False, self.volume_map(), self._watched(stage))
                else:
                    yield Snapshot(self.epoch, self.step_count, steps_per_epoch, cfg.epochs, stage, loss, ips)

    def _finish_epoch(self, stage: str, losses: list[float], seconds: float) -> dict:
        if self.config.noise_model == "shell" and stage == STAGE2:
            self.noise.update()  # from the residuals: only once poses are settled enough to trust them
        metrics = self._epoch_metrics(stage, losses, seconds)
        self.history.append(metrics)
        self.epoch += 1
        if self.run_dir is not None:
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
            "shifts": self.shifts,
            "previous_poses": self._previous_poses,
            "table": None if self.table is None else self.table.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_count = state["epoch"], state["step"]
        self.encoder.load_state_dict(state["encoder"])
        self.volume.load_state_dict(state["volume"])
        self.opt_encoder.load_state_dict(state["opt_encoder"])
        self.opt_volume.load_state_dict(state["opt_volume"])
        self.noise.load_state_dict(state["noise"])
        self.poses, self.shifts = state["poses"], state["shifts"]
        self._previous_poses = state["previous_poses"]
        self.history = list(state["history"])
        if state["table"] is not None:
            self.table = PoseTable(self.poses.to(self.device), lr=self.config.pose_lr,
                                   shift_lr=self.config.shift_lr)
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
