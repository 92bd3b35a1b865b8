"""The two-stage reconstruction (paper, Sec. 2) as an iterator of snapshots.

:class:`Reconstruction` orchestrates the parts: the :class:`~.schedule.Schedule` says what each epoch does, the
stage-1 strategy (:mod:`.stage1`) and stage 2's step (:mod:`.stage2`) train, the passes (:mod:`.passes`) run between
epochs, the :class:`~.scorer.ImageModel` scores poses, :mod:`.maps` makes the maps and :mod:`.checkpoint` keeps the
state. Stage 1, auto-encoding: poses proposed on a grid (or by the paper's multi-head encoder), the volume trained
on the best. Stage 2, auto-decoding (from the switch): each image keeps its best pose and refines it, ``pose_steps``
pose steps to one volume step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import CACHE_BYTES, ParticleDataset
from ..data.loader import BatchLoader
from ..data.readers import open_dataset
from ..devices import select_device
from ..models.volume import HartleyVolume
from ..physics.likelihood import ShellNoiseModel
from . import checkpoint, maps, passes, polish, verdict
from .batches import ImageSource
from .build import initial_noise, initial_volume, widen_stage1_band
from .config import ReconstructionConfig
from .frequencies import Frequencies, FrequencyBank
from .metrics import epoch_record, truth_metrics
from .progress import EpochProgress
from .restarts import RestartPolicy, train_restarts
from .schedule import STAGE1, STAGE2, Schedule
from .scorer import ImageModel, about_z
from .search import GridSearch
from .snapshot import Snapshot, WatchedParticle
from .stage1 import Candidates, build_stage1
from .stage2 import autodecode_step, polish_step
from .state import RunState
from .watch import watched_particles

__all__ = ["Reconstruction"]


class Reconstruction:
    """A reconstruction run: build it, then iterate over it to train. Stopping is stopping the iteration."""

    def __init__(self, config: ReconstructionConfig, dataset: ParticleDataset | None = None,
                 run_dir: str | Path | None = None, *, _scan: dict | None = None, _cache: bool = True):
        config.validate()
        self.config = cfg = config
        self.device = select_device(cfg.device)
        data = dataset if dataset is not None else open_dataset(cfg)
        data.check_box(cfg.output_box)  # an impossible map box fails now, not after the scan or the training
        if _scan is not None:  # a resumed run: what the scan decided, without reading every image again
            data = data.restore_scan(_scan, CACHE_BYTES if _cache else 0.0)
        self.data = data if data.scanned else data.scan()
        if cfg.halves and self.data.half is None:
            self.data.split_halves(cfg.seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.size = self.data.box
        self.source = ImageSource(self.data, self.device)
        self.bank = FrequencyBank(self.size, self.device)
        self.watch = list(cfg.watch)
        self.restarts = RestartPolicy(cfg, len(self.data))
        self.step_count = 0
        self.trial: int | None = None  # the restart being trained, while restarts run
        self.progress: EpochProgress | None = None  # the epoch in progress (None between epochs)
        self.resumed: dict | None = None  # a resumed run's checkpoint (its file, metrics.jsonl's size), till it trains
        self._saved_at = time.monotonic()  # the last checkpoint's time
        self.reference: torch.Tensor | None = None  # a polish epoch's map (Hartley), which its pose steps score against
        self.reference_map = maps.read_reference(cfg.reference_map, self.size, self.data.pixel_size) \
            if cfg.reference_map else None
        stage2 = self.bank.at(cfg.max_freq)  # stage 2's band
        blank = _scan is not None  # a resumed run's noise and volume come from its checkpoint
        noise = ShellNoiseModel(stage2.shells, self.size // 2 + 1) if blank else \
            initial_noise(self.source, stage2, cfg.seed, cfg.noise_model == "white")
        # stage 1's band from the images' spectral SNR, where the config leaves it to the run
        self.band_from_data = not blank and widen_stage1_band(cfg, self.source, self.bank, noise)
        self.schedule = Schedule(cfg, self.size, len(self.data))
        self.model = ImageModel(HartleyVolume(self.size), noise, self.source, cfg.loss)
        self.stage1 = build_stage1(cfg, self.model, self.schedule.encoder_size)
        self.search = GridSearch.for_run(cfg, self.device, self.stage1.shift_reach)  # the reassignment's, or None
        self._initialise(cfg.seed, blank)

    def _initialise(self, seed: int, blank: bool = False) -> None:
        """Fresh encoder, volume, optimisers and poses from ``seed`` (``blank``: zeros, for a checkpoint's)."""
        cfg = self.config
        torch.manual_seed(seed)
        self.stage1.reset(seed)
        self.model.volume = HartleyVolume(self.size).to(self.device) if blank else initial_volume(
            self.source, self.bank.at(self.schedule.stage2_band), seed, cfg.volume_init_noise, cfg.batch_size)
        self.opt_volume = torch.optim.Adam(self.model.volume.parameters(), lr=self.schedule.volume_lr(0, None))
        self.state = RunState.fresh(len(self.data), cfg.estimate_shifts)

    # ---------------------------------------------------------------- the parts, as the run's public view
    volume = property(lambda self: self.model.volume)
    noise = property(lambda self: self.model.noise)
    encoder = property(lambda self: self.stage1.encoder)
    epoch = property(lambda self: self.state.epoch)
    history = property(lambda self: self.state.history)
    paths = property(lambda self: self.state.paths)
    winners = property(lambda self: self.state.winners)
    table = property(lambda self: self.state.table)
    stage1_end = property(lambda self: self.schedule.switch_band(self.state.switched_at))  # its band at the switch
    encoder_size = property(lambda self: self.schedule.encoder_size)
    end_epoch = property(lambda self: self.schedule.end(self.state.switched_at))  # the auto switch moves it
    # the run's steps, the restarts included (those added so far, when no two agreed and none stood out)
    total_steps = property(lambda self: self.schedule.total_steps(self.restarts.planned, self.state.switched_at))

    @property
    def poses(self) -> torch.Tensor:
        """`(N, 3, 3)` each image's current pose (CPU)."""
        return self.state.poses

    @poses.setter
    def poses(self, value: torch.Tensor) -> None:
        self.state.poses = value

    @property
    def shifts(self) -> torch.Tensor | None:
        """`(N, 2)` each image's shift in the run's pixels (CPU), or None when shifts are not estimated."""
        return self.state.shifts

    @shifts.setter
    def shifts(self, value: torch.Tensor | None) -> None:
        self.state.shifts = value

    batch_size = property(lambda self: self.schedule.batch_size)  # run.batch_size(stage): images per step
    stage1_band = property(lambda self: self.schedule.stage1_band)  # run.stage1_band(epoch): its band

    def frequencies(self, fraction: float) -> Frequencies:
        """The image frequencies within ``fraction`` of Nyquist at the run's box."""
        return self.bank.at(fraction)

    def set_watch(self, indices) -> None:
        """Watch these particles (0-based) from the next full snapshot on (and in the config `inspect` reads)."""
        self.watch = [int(i) for i in indices]
        self.config.watch = list(self.watch)

    # ---------------------------------------------------------------- the loop
    def __iter__(self) -> Iterator[Snapshot]:
        if self.resumed is not None:  # what was written after the checkpoint goes
            checkpoint.settle(self)
        if self.trial is not None or (self.state.epoch == 0 and self.schedule.restarts_enabled):
            yield from train_restarts(self)
        yield from self._epochs()

    def _epochs(self, until: int | None = None) -> Iterator[Snapshot]:  # None: the run's end
        while self.state.epoch < (self.end_epoch if until is None else until):
            yield from self._epoch()

    def _epoch(self) -> Iterator[Snapshot]:
        st = self.state
        stage = self.schedule.stage(st.epoch, st.switched_at, st.history)
        if self.progress is None or self.progress.epoch != st.epoch:  # else: stopped between two steps, goes on
            started = time.perf_counter()  # the epoch's time counts the switch's and the reassignment's passes
            notes = self._between_epochs(stage)  # for the epoch's metrics
            self.progress = EpochProgress(st.epoch, notes, self.reference, started=started)
        p, batches = self.progress, self.schedule.batches(st.epoch, stage)
        loader = iter(BatchLoader(self.data, [b.numpy() for b in batches[p.done:]]))
        try:
            for idx in batches[p.done:]:
                _, images = next(loader)  # read ahead by the loader's thread
                t0 = time.perf_counter()
                p.losses.append(self._step(stage, idx, images))
                self.step_count += 1
                ips = len(idx) / max(time.perf_counter() - t0, 1e-9)
                metrics = None
                if p.done == len(batches):
                    self.progress = None
                    metrics = self._finish_epoch(stage, p.losses, p.elapsed(), p.notes)
                elif self.run_dir is not None and checkpoint.checkpoint_due(self._saved_at):  # a long epoch's
                    self.save_checkpoint()
                yield self._snapshot(stage, p.losses[-1], ips, metrics)
        finally:
            loader.close()  # stops the read-ahead thread when the run stops mid-epoch

    def _between_epochs(self, stage: str) -> dict:
        """Before the epoch: stage 1's map, the switch, the polish's maps or the reassignment; their record."""
        st, sched = self.state, self.schedule
        notes, self.reference = {}, None
        if stage == STAGE2 and st.table is None:
            notes = self.switch()
        elif stage == STAGE1 and 0 < self.config.stage1_maps_from <= st.epoch:  # stage 1's M-step
            notes = polish.stage1_map(self.model, self.source, st, self.config, self.data.half, self.bank.at(
                sched.band(st.epoch, STAGE1, st.switched_at)).max_shell)
        elif stage == STAGE2 and sched.polishes(st.epoch, st.switched_at):
            notes = self._polish_reference()
        elif stage == STAGE2 and sched.reassigns(st.epoch, st.switched_at):
            bands = tuple(map(self.bank.at, (self.stage1_end, sched.reassign_band(st.switched_at), sched.stage2_band)))
            notes = {"reassigned": passes.reassign(self.model, self.stage1, self.source, st, bands, self.config,
                                                   self.search)}
        self._set_volume_lr()
        return notes

    def switch(self) -> dict:
        """Switch to stage 2 now (:func:`passes.switch_to_autodecode`); returns its record for the metrics."""
        st = self.state
        notes = passes.switch_to_autodecode(self.model, self.stage1, self.source, st, self.bank.at(
            self.schedule.switch_band(st.epoch)), self.config, self.search, self.opt_volume)
        st.switched_at = st.epoch
        self._set_volume_lr()
        return notes

    def _polish_reference(self) -> dict:
        """A polish epoch's map from the kept images' poses (:mod:`.polish`), into the decoder too; its record."""
        st, split = self.state, polish.polish_split(self.data.half, len(self.data), self.config.seed)
        maps = (rebuild := polish.rebuilder(self.source, st, split, self.config.mask_diameter))()
        self.model.volume.set_from_map(maps.volume.to(self.device))  # (no gradient: set_from_map is no_grad)
        bands = (self.bank.at(self.stage1_end), self.bank.at(self.config.max_freq))
        if sum(self.schedule.polishes(e, st.switched_at) for e in range(st.epoch)) % polish.SEARCH_EVERY == 0:
            maps = polish.search_views_and_shifts(self.model, self.stage1, self.source, st, bands, self.config, maps,
                                                  split, rebuild)
        record = {**maps.record, **polish.relax_to_mates(self.model, self.source, st, bands[1], self.config, maps,
                                                         split, self.history, rebuild)}
        self.reference = self.model.volume.hartley().detach()
        return record

    def _flag_junk(self) -> dict:
        """Flag the images that fit no view of the map (:mod:`.junk`), scored at the band the epoch trained: the
        finer the map, the less another molecule's images share with it."""
        fr = self.bank.at(self.schedule.band(self.state.epoch, STAGE2, self.state.switched_at))
        return passes.flag_junk(self.model, self.source, self.state, fr, self.config).record()

    def _set_volume_lr(self) -> None:
        for group in self.opt_volume.param_groups:
            group["lr"] = self.schedule.volume_lr(self.state.epoch, self.state.switched_at)

    def train_step(self, idx: torch.Tensor, images: torch.Tensor | None = None) -> float:
        """One training step on the images ``idx`` in the run's current stage, at the current epoch's band;
        returns its loss. Iterating the run does this; benchmarks and profilers time it alone."""
        return self._step(STAGE1 if self.state.switched_at is None else STAGE2, idx, images)

    def _step(self, stage: str, idx: torch.Tensor, images: torch.Tensor | None) -> float:
        st = self.state
        fr = self.bank.at(self.schedule.band(st.epoch, stage, st.switched_at))
        if stage == STAGE1:
            result = self.stage1.step(self.source.batch(idx, fr, images), idx, fr, self.opt_volume, self._shifts(idx))
            st.winners[idx] = result.winners
        elif self.reference is not None:  # a polish epoch
            result = polish_step(self.model, st.table, self.source.batch(idx, fr, images), idx, fr,
                                 self.config.pose_steps, self.reference, st.keep(idx))
        else:
            result = autodecode_step(self.model, st.table, self.source.batch(idx, fr, images), idx, fr,
                                     self.config.pose_steps, self.opt_volume, st.keep(idx))
        st.take(idx, result.rotations, result.shifts)
        return result.loss

    def _finish_epoch(self, stage: str, losses: list[float], seconds: float, notes: dict) -> dict:
        cfg, st = self.config, self.state
        if cfg.noise_model == "shell-residual" and stage == STAGE2:
            self.model.noise.update()  # from the residuals: only once poses are settled enough to trust them
        recentred = None
        # With the shift search only: the encoder's regressed shifts (shift_search 0) would stay in the old
        # frame, and stage 2's reassignment would score its candidates with them.
        if st.shifts is not None and self.stage1.searches_shifts:
            recentred = passes.recentre(self.model, st, self.opt_volume)  # before the metrics: they score it
        metrics = epoch_record(st.epoch, stage, losses, seconds, len(self.data), st.poses, st.previous_poses)
        if stage == STAGE2 and cfg.flag_junk:
            metrics.update(self._flag_junk())
        if st.epoch + 1 == self.end_epoch and self.trial is None:  # the run's verdict (issue 18, item 8)
            fr = self.bank.at(self.schedule.band(st.epoch, stage, st.switched_at))
            metrics.update(verdict.judge(self.model, self.source, st, fr, cfg.seed, True, self.stage1_end))
        st.previous_poses = st.poses.clone()
        metrics.update(truth_metrics(self.model.volume.real_space(), st.poses, self.data, self.reference_map,
                                     cfg.mask_diameter))
        extra = {"volume_centre_px": recentred, "restart": self.trial,
                 "band_fraction": self.schedule.stage1_band(st.epoch) if stage == STAGE1 else None, **notes}
        metrics.update({k: v for k, v in extra.items() if v is not None})
        st.history.append(metrics)
        for i in self.watch:  # the view direction after each epoch (Rᵀ ẑ), for the posterior plots
            if 0 <= i < len(self.data):
                st.paths.setdefault(int(i), []).append(st.poses[i][2].tolist())
        st.epoch += 1
        if self.run_dir is not None:  # the line first: the checkpoint records the file's size with it
            checkpoint.append_metrics(self.run_dir, metrics)
            self.save_checkpoint()  # the restarts' epochs too, with their record
        return metrics

    # ---------------------------------------------------------------- snapshots
    def _snapshot(self, stage: str, loss: float, ips: float, metrics: dict | None) -> Snapshot:
        """A step's snapshot: with the volume and the watched particles at epoch ends (``metrics`` given) and
        every ``snapshot_every`` steps."""
        cfg, end = self.config, metrics is not None
        full = end or (cfg.snapshot_every > 0 and self.step_count % cfg.snapshot_every == 0)
        head = (self.state.epoch - 1 if end else self.state.epoch, self.step_count, self.total_steps, self.end_epoch,
                stage, loss, ips)
        common = {"restart": self.trial, "box": self.size, "pixel_size": self.data.pixel_size}
        if not full:
            return Snapshot(*head, **common)
        return Snapshot(*head, end, self.volume_map(), self._watched(stage), metrics or {},
                        history=tuple(self.state.history) if end else (), **common)

    def _watched(self, stage: str) -> tuple[WatchedParticle, ...]:
        """Full-band projections (CTF applied) of the watched particles' candidates, or refined pose."""
        band = self.bank.at(self.schedule.stage1_band(self.state.epoch))

        def candidates(idx, batch):  # every head's, scored at the epoch's band
            return self.stage1.candidates(self.source.batch(idx, band, reuse=batch), idx, band, self._shifts(idx))[:2]

        def refined(idx, batch):  # the pose table's
            table, rows = self.state.table, idx.to(self.device)
            return table.rotations[rows][:, None], None if table.shifts is None else table.shifts[rows][:, None]

        proposals = candidates if stage == STAGE1 else refined
        return watched_particles(self.watch, self.model, self.source, self.bank.at(1.0), proposals)

    def volume_map(self) -> np.ndarray:
        """The decoder's volume `(L, L, L)` in real space."""
        return self.model.volume.real_space().cpu().numpy()

    # ---------------------------------------------------------------- questions about particles
    @torch.no_grad()
    def candidates(self, idx: torch.Tensor, band: float) -> Candidates:
        """The stage-1 proposals for the images ``idx``, scored at ``band`` (fraction of Nyquist)."""
        fr = self.bank.at(band)
        return self.stage1.candidates(self.source.batch(idx, fr), idx, fr, self._shifts(idx))

    def _shifts(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.state.shifts is None else self.state.shifts[idx]

    def log_likelihood_grid(self, index: int, rotations: torch.Tensor, inplane_angles: torch.Tensor,
                            band: float = 1.0, chunk: int = 1024) -> torch.Tensor:
        """``log p(image | R)`` `(D, K)` of particle ``index`` for the poses ``Rz(ψ_k) R_d``, up to a constant
        (:meth:`ImageModel.log_likelihood_grid`): the current volume, CTF and noise model, within ``band`` of
        Nyquist. Shifts are not marginalised: the image is compared at the run's current shift for it."""
        inplane = about_z(torch.as_tensor(inplane_angles, dtype=torch.float32)).to(self.device)
        shift = None if self.shifts is None else self.shifts[[int(index)]].to(self.device)  # (1, 2)
        return self.model.log_likelihood_grid(index, rotations, inplane, self.bank.at(band), shift, chunk)

    # ---------------------------------------------------------------- maps
    def insert(self, which: np.ndarray, batch: int = 256, data: ParticleDataset | None = None):
        """The images ``which`` inserted into a frequency grid with the current poses (:func:`maps.insert`)."""
        return maps.insert(self.source, self.poses, self.shifts, which, data, batch)

    def backproject(self, which: np.ndarray, batch: int = 256, data: ParticleDataset | None = None) -> np.ndarray:
        """A map `(L, L, L)` from the images ``which`` with the current poses (at ``data``'s box)."""
        return maps.backproject(self.source, self.poses, self.shifts, which, data, batch)

    def final_maps(self, data: ParticleDataset | None = None):
        """``(map, half1, half2)`` by direct Fourier reconstruction from the final poses at ``data``'s box
        (default :meth:`output_data`). This, not the decoder's volume, is the run's map: the decoder's
        outermost shell is untrained, and this is made from the images at their own box."""
        data, st = self.output_data() if data is None else data, self.state
        return maps.final_maps(self.source, self.poses, self.shifts, data, self.config.halves, st.kept(), st.modes)

    def output_data(self) -> ParticleDataset:
        """The particles at the box of the run's maps (``output_box``; default the images' own box)."""
        return self.data.at_box(self.config.output_box)

    def reference_at(self, box: int) -> torch.Tensor | None:
        """The reference map (``reference_map``) resampled to ``box``, or None without one."""
        if not self.config.reference_map:
            return None
        if box == self.size and self.reference_map is not None:
            return self.reference_map
        return maps.read_reference(self.config.reference_map, box, self.data.pixel_size * self.size / box)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return checkpoint.run_state(self)

    def load_state_dict(self, state: dict) -> None:
        checkpoint.restore_state(self, state)

    def save_checkpoint(self) -> Path:
        """The run as it stands (between two steps) to ``RUN_DIR/checkpoint.pt`` (:mod:`.checkpoint`)."""
        self._saved_at = time.monotonic()
        return checkpoint.save_checkpoint(self.run_dir, checkpoint.checkpoint_state(self))

    @classmethod
    def resume(cls, run_dir: str | Path, cache_images: bool = True, **overrides) -> Reconstruction:
        """Continue a run from ``RUN_DIR/checkpoint.pt`` (epochs may be raised via ``overrides``), without
        scanning the images again, from the step it was taken at; ``cache_images=False`` to question a run
        without reading its images."""
        state, cfg = checkpoint.load_checkpoint(run_dir, **overrides)
        run = cls(cfg, run_dir=run_dir, _scan=state.get("data"), _cache=cache_images)
        run.load_state_dict(state)
        checkpoint.restore_resume(run, state)
        return run
