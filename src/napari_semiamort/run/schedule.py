"""The run's schedule, built once from the config: the stage of each epoch and the decision to switch, the
stage-1 band (frequency marching), the reassignment window, the volume's learning rate, batches and steps.

Every rule about *when* lives here; the loop asks, the passes and steps do.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .config import ReconstructionConfig

__all__ = [
    "BAND_SNR",
    "DEFAULT_BAND_END",
    "DEFAULT_BAND_START",
    "EDGE_SNR",
    "MAX_BAND_PIXELS",
    "MAX_WIDER_BAND",
    "MIN_BAND_PIXELS",
    "SETTLED_GRID_FRACTION",
    "STAGE1",
    "STAGE2",
    "WIDER_BY",
    "AutoSwitch",
    "FixedEpochSwitch",
    "Schedule",
    "SwitchRule",
    "switch_rule",
    "default_band_end",
    "grid_spacing_deg",
    "measured_band_end",
    "spectral_snr",
    "supported_band",
]

STAGE1, STAGE2 = "autoencode", "autodecode"  # the paper's two stages (Sec. 2.1 and 2.2)
# Below ~80 frequencies an image says too little about its pose: box 32 with a 0.15 start failed to break
# symmetry. So the stage-1 band is whole Fourier pixels, at least 5.
MIN_BAND_PIXELS = 5
# The stage-1 band's start: 0.15 of Nyquist, or 5 Fourier pixels where that is less (a resolution relative to
# the box's width). At box 128, 0.15 of Nyquist (10 px) left stage 1 at 42° median pose error on 3KPR; 5 px
# gave 12° (docs/method.md).
DEFAULT_BAND_START = 0.15
# Its end at the switch: 0.4 of Nyquist, at most 26 Fourier pixels (box 128's). At box 192 the full 0.4 (38 px)
# left a quarter of 3KPR's particles in a wrong basin (47° mean pose error at epoch 10 against 15° with the cap;
# docs/benchmarks.md).
DEFAULT_BAND_END, MAX_BAND_PIXELS = 0.4, 26
# ... and at least 10 Fourier pixels (boxes under 50): at box 32, 0.4 of Nyquist is 6 px (~110 frequencies), and
# stage 1 on the tiny test set (ribosome, SNR 1) left 20° median and 45-60° mean pose errors at the switch, a
# third of the images in wrong basins; ending at 10 px, six seeds of six reached 1.4-3.4° median after stage 2
# (against 2.0-7.4°; docs/results.md, "Restarts: the loss first, and stage 1's band at small boxes").
MIN_BAND_END_PIXELS = 10
# ... or wider, where the images carry signal well beyond it (issue 18, item 3: the band from the data's spectral
# SNR, not a fixed share of Nyquist). At a coarse pixel the CTF leaves little of a large particle's signal within
# 0.4 of Nyquist and much beyond: realistic 80S ribosome sets (8.31 Å/px, box 64) carry a spectral SNR ≥ 0.05
# to 19 Fourier px, and with the fixed 13 px stage 1 never broke the symmetry (98.5 Å, true poses 16.7 Å); with
# 18-22 px it did (24.1-25.6 Å, median pose error 116° → 8-11°; docs/results.md, "Stage 1's band from the
# data"). The band the data support: the shells from the verdict's first (4 px) on whose spectral SNR S/N (the
# images' power over the background's, less one) is at least BAND_SNR, with no two in a row below it; the
# background's estimate runs ~0.03 low at the highest shells, so lower marks are noise. Realistic sets measured
# 8-13 px at 1.7-5.2 Å/px (5H73, 7PBL, 2CG9, 3KPR), 17-19 px at 7-8.6 Å/px (30S, 80S, CCT) and 24 px for the vault
# chain at 13.1 Å/px (with a dip at 6 px); clean 3KPR and 8ZPM 13-15.
BAND_SNR = 0.05
FIRST_BAND_SHELL = 4
# Widened only where the data support WIDER_BY Fourier px or more beyond the default end, and to at most
# MAX_WIDER_BAND of Nyquist (and MAX_BAND_PIXELS): box 32's 10 px (the tiny sets) and box 128's 26 px stay.
WIDER_BY, MAX_WIDER_BAND = 3, 0.6
# ... and only where the signal at the default end is weak: a spectral SNR there of at least EDGE_SNR gives stage 1
# enough to break the symmetry within it, and a wider band only costs. The demo's clean 80S (0.18 at 13 px)
# widened to 19 px took 3.1 min instead of 2.1 and ended at 1.20° median pose error instead of 1.04°, the same
# map; the realistic large particles that needed it measured 0.08-0.12 there (30S, 80S, CCT).
EDGE_SNR = 0.15


def default_band_end(size: int) -> float:
    """Stage 1's band end at box ``size`` without measurement (fraction of Nyquist): 0.4, within
    [MIN_BAND_END_PIXELS, MAX_BAND_PIXELS] Fourier pixels."""
    return min(1.0, max(MIN_BAND_END_PIXELS / (size / 2), min(DEFAULT_BAND_END, MAX_BAND_PIXELS / (size / 2))))


def spectral_snr(signal: np.ndarray) -> np.ndarray:
    """The spectral SNR S/N per shell from the signal fraction ``signal`` = S/(S+N)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return signal / (1 - signal)


def supported_band(signal: np.ndarray) -> int:
    """The last shell (Fourier px) of the run from shell 4 on whose spectral SNR is at least :data:`BAND_SNR`,
    from the images' signal fraction ``signal`` = S/(S+N) per shell; one shell below the mark between two above
    it does not end the run (a thin particle's realistic set, the vault chain at 13 Å/px, dips to 0.049 at 6 px
    and holds 0.05-0.09 from 7 to 24 px), two do, and so does a shell without images (0 where none counts)."""
    snr = spectral_snr(signal)
    last, below = 0, 0
    for k in range(FIRST_BAND_SHELL, len(signal)):
        if not np.isfinite(snr[k]):
            break
        if snr[k] >= BAND_SNR:
            last, below = k, 0
        else:
            below += 1
            if below > 1:
                break
    return last


def measured_band_end(size: int, signal: np.ndarray) -> float | None:
    """Stage 1's band end (fraction of Nyquist) where the images' signal fraction per shell ``signal`` supports a
    band :data:`WIDER_BY` Fourier px or more beyond :func:`default_band_end` and is weak at that end (spectral SNR
    below :data:`EDGE_SNR`): the supported band, capped at :data:`MAX_WIDER_BAND` of Nyquist and
    :data:`MAX_BAND_PIXELS`; None where the default stands."""
    half = size / 2
    default = round(default_band_end(size) * half)
    if default >= len(signal) or not spectral_snr(signal)[default] < EDGE_SNR:
        return None
    px = min(supported_band(signal), int(MAX_WIDER_BAND * half), MAX_BAND_PIXELS)
    return px / half if px >= default + WIDER_BY else None


class SwitchRule(Protocol):
    """When stage 1 hands over to stage 2. ``planned`` is the epoch the schedule plans around (the stage-1
    band's growth, the progress bar); ``switches`` decides at the start of each stage-1 epoch. A rule with a true
    ``moves_end`` attribute moves the run's end with its switch (stage 2 keeps its length); others end at
    ``epochs``."""

    planned: int

    def switches(self, epoch: int, history: list[dict]) -> bool: ...


class FixedEpochSwitch:
    """Switch at a fixed epoch (the paper's rule: ``switch_epoch``)."""

    def __init__(self, epoch: int):
        self.planned = epoch

    def switches(self, epoch: int, history: list[dict]) -> bool:
        return epoch >= self.planned


# The automatic switch comes early, before the band's end, once an epoch's mean pose change is under this fraction
# of the search grid's spacing: most images keep their grid cell and only the grid's jitter moves them (clean 3KPR,
# 1IGY, 8ZPM: 2.8-5.4° from epoch 10 on, median error flat at 8.4-11° from there); stage 1 gains nothing more then.
# Where images still hop between views (realistic sets: 16.5° at epoch 13 on realistic 3KPR) it runs the fixed
# schedule. Measured with stage 1 stepping only within its band (models.volume.keep_gradient_within); before that
# an early switch met a map drifted 0.7-0.8 px and lost a tail of images (docs/benchmarks.md, "The automatic switch").
SETTLED_GRID_FRACTION = 0.5


def grid_spacing_deg(nside: int, inplane: int) -> float:
    """The search grid's spacing (degrees): the larger of its directions' (HEALPix, √(4π / 12 nside²)) and its
    in-plane angles' (360 / inplane)."""
    return float(max(np.degrees(np.sqrt(4 * np.pi / (12 * nside**2))), 360.0 / inplane))


class AutoSwitch:
    """Switch once stage 1's poses have settled (issue 18, item 7; the paper's future work): the stage-1 band
    grows to its end over ``planned`` epochs, as under the fixed rule, and the run switches there at the latest;
    from ``earliest`` on it switches as soon as an epoch's mean pose change is under ``settled_deg`` (most images
    keep their grid cell: clean sets), at the band reached then, which stage 2 starts from. Where the symmetry
    breaks late (realistic sets: images still hop between views) it runs the fixed schedule."""

    moves_end = True  # stage 2 runs its length after wherever the switch falls

    def __init__(self, earliest: int, planned: int, settled_deg: float):
        self.planned, self.earliest, self.settled_deg = planned, min(earliest, planned), settled_deg

    def switches(self, epoch: int, history: list[dict]) -> bool:
        if epoch >= self.planned:
            return True
        if epoch < self.earliest or not history:
            return False
        last = history[-1]
        return (last.get("stage") == STAGE1 and last.get("restart") is None
                and last.get("pose_change_deg", float("inf")) < self.settled_deg)


def switch_rule(config: ReconstructionConfig) -> SwitchRule:
    """The config's switch rule: ``switch`` "fixed" at ``switch_epoch``, or "auto" from ``switch_min_epoch`` on
    and at ``switch_epoch`` (at most ``switch_max_epoch``) at the latest: never later than the fixed rule, so that
    a short run (a switch epoch under the earliest) switches where it says."""
    if config.switch == "auto":
        settled = SETTLED_GRID_FRACTION * grid_spacing_deg(config.search_nside, config.search_inplane)
        planned = min(config.switch_epoch, config.switch_max_epoch)
        return AutoSwitch(config.switch_min_epoch, planned, settled)
    return FixedEpochSwitch(config.switch_epoch)


class Schedule:
    """What each epoch does, for a run of ``n_images`` images at box ``size``."""

    def __init__(self, config: ReconstructionConfig, size: int, n_images: int, switch: SwitchRule | None = None):
        self.config, self.size, self.n_images = config, size, n_images
        self.switch = switch_rule(config) if switch is None else switch
        end = config.autoencode_max_freq
        self.stage1_end = default_band_end(size) if end is None else end
        band = max(MIN_BAND_PIXELS, int(np.ceil(self.stage1_end * size / 2)))
        # The encoder sees the images low-passed to the band the stage-1 loss uses (and downsampled to it):
        # finer detail cannot inform the poses it is trained on, and a smaller input is cheaper.
        self.encoder_size = min(size, max(16, 2 * band + 2))

    # ---------------------------------------------------------------- stages
    def stage(self, epoch: int, switched_at: int | None, history: list[dict]) -> str:
        """The stage of ``epoch``: stage 2 once the run has switched, or when the rule says it switches now."""
        if switched_at is not None or self.switch.switches(epoch, history):
            return STAGE2
        return STAGE1

    @property
    def stage2_epochs(self) -> int:
        """Stage 2's length: ``epochs − switch_epoch``, after whichever epoch the run switches at (the automatic
        rule moves the whole of stage 2; the fixed rule's run ends at ``epochs``)."""
        return max(0, self.config.epochs - self.config.switch_epoch)

    def switch_epoch(self, switched_at: int | None) -> int:
        """The epoch stage 2 starts at: the run's switch, or the rule's planned one until it happens."""
        return self.switch.planned if switched_at is None else switched_at

    def end(self, switched_at: int | None) -> int:
        """The epoch count the run ends at: ``epochs`` with the fixed rule; with the automatic one, stage 2's
        length after the switch (planned from the earliest switch until it happens)."""
        if not getattr(self.switch, "moves_end", False):
            return self.config.epochs
        return self.switch_epoch(switched_at) + self.stage2_epochs

    def reassigns(self, epoch: int, switched_at: int) -> bool:
        """Whether the stage-2 ``epoch`` (after the switch's own) lets the encoder's candidates compete."""
        return epoch - switched_at < self.config.reassign_epochs

    def polishes(self, epoch: int, switched_at: int | None) -> bool:
        """Whether the stage-2 ``epoch`` is one of the run's last ``polish_epochs`` (:mod:`.polish`); never the
        band ramp's or the reassignment's epochs: those need the trained volume."""
        if switched_at is None or self.config.polish_epochs <= 0:
            return False
        settled = switched_at + max(self.config.stage2_ramp_epochs, self.config.reassign_epochs, 1)
        return epoch >= max(settled, self.end(switched_at) - self.config.polish_epochs)

    @property
    def restarts_enabled(self) -> bool:
        """Restarts run only when there are several and they end before the planned switch."""
        cfg = self.config
        return cfg.restarts > 1 and 0 < cfg.restart_epochs < self.switch.planned

    # ---------------------------------------------------------------- bands
    def stage1_band(self, epoch: int) -> float:
        """Fraction of Nyquist in the stage-1 loss: grows linearly over stage 1 (frequency marching)."""
        planned = self.switch.planned
        if planned <= 1:
            return self.stage1_end
        t = min(1.0, epoch / (planned - 1))
        low = self.config.autoencode_min_freq
        if low is None:  # below box 67 this is 0.15 of Nyquist, every box-64 result's start
            low = min(DEFAULT_BAND_START, MIN_BAND_PIXELS / (self.size / 2))
        band = low + t * max(0.0, self.stage1_end - low)
        # whole Fourier pixels (few frequency sets are built), at least MIN_BAND_PIXELS
        return min(1.0, max(MIN_BAND_PIXELS, round(band * self.size / 2)) / (self.size / 2))

    @property
    def stage2_band(self) -> float:
        return self.config.max_freq

    def band(self, epoch: int, stage: str, switched_at: int | None) -> float:
        """The band (fraction of Nyquist) the losses of ``epoch`` use in ``stage``."""
        return self.stage1_band(epoch) if stage == STAGE1 else self.stage2_band_at(epoch, switched_at)

    def stage2_band_at(self, epoch: int, switched_at: int) -> float:
        """Stage 2's band at ``epoch``: with ``stage2_ramp_epochs``, from stage 1's at the switch growing linearly
        to ``max_freq`` over that many epochs (whole Fourier pixels); else ``max_freq``."""
        ramp = self.config.stage2_ramp_epochs
        if ramp <= 0 or epoch - switched_at >= ramp:
            return self.stage2_band
        t = (epoch - switched_at) / ramp
        start = self.switch_band(switched_at)
        band = start + t * max(0.0, self.stage2_band - start)
        return min(1.0, max(MIN_BAND_PIXELS, round(band * self.size / 2)) / (self.size / 2))

    def switch_band(self, switched_at: int | None) -> float:
        """Stage 1's band at the switch at ``switched_at`` (its last epoch's): the band's end, or below it where
        the automatic rule switched early; stage 2's ramp, the reassignment and the polish start from it."""
        if switched_at is None or switched_at >= self.switch.planned:
            return self.stage1_end
        return self.stage1_band(max(0, switched_at - 1))

    def reassign_band(self, switched_at: int | None) -> float:
        """The band the reassignment's candidates are refined in (default: stage 1's at the switch)."""
        band = self.config.reassign_max_freq
        return self.switch_band(switched_at) if band is None else band

    # ---------------------------------------------------------------- learning rate
    def volume_lr(self, epoch: int, switched_at: int | None) -> float:
        """The volume's step: ``volume_lr`` in stage 1; in stage 2 ``volume_lr_autodecode`` decaying linearly to
        ``volume_lr_final_fraction`` of it at the last epoch (averages the noise out of late updates)."""
        cfg = self.config
        if switched_at is None:
            return cfg.volume_lr
        t = (epoch - switched_at) / max(1, self.end(switched_at) - switched_at)
        return cfg.volume_lr_autodecode * (1 - (1 - cfg.volume_lr_final_fraction) * t)

    # ---------------------------------------------------------------- batches and steps
    def batch_size(self, stage: str) -> int:
        """Images per step in ``stage``: ``batch_size``, or ``stage2_batch_size`` in stage 2 where it is set."""
        cfg = self.config
        return cfg.batch_size if stage == STAGE1 or cfg.stage2_batch_size is None else cfg.stage2_batch_size

    def steps_per_epoch(self, stage: str) -> int:
        n, bs = self.n_images, self.batch_size(stage)
        steps = (n + bs - 1) // bs
        # a last batch of one image joins the one before (batch norm needs two)
        return steps - 1 if n % bs == 1 and steps > 1 else steps

    def batches(self, epoch: int, stage: str) -> list[torch.Tensor]:
        """The epoch's batches of image indices: a seeded permutation per epoch, cut into steps."""
        gen = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        order = torch.randperm(self.n_images, generator=gen)
        bs, steps = self.batch_size(stage), self.steps_per_epoch(stage)
        return [order[s * bs : (s + 1) * bs if s < steps - 1 else self.n_images] for s in range(steps)]

    def total_steps(self, restarts_planned: int, switched_at: int | None = None) -> int:
        """Steps of the whole run, the restarts included (``restarts_planned`` of them); the automatic switch's
        run planned from its earliest switch until it happens."""
        cfg = self.config
        epochs = end = self.end(switched_at)
        if self.restarts_enabled:
            epochs += (restarts_planned - 1) * cfg.restart_epochs
        stage2 = max(0, end - self.switch_epoch(switched_at))
        return (epochs - stage2) * self.steps_per_epoch(STAGE1) + stage2 * self.steps_per_epoch(STAGE2)
