"""The run's typed configuration, with the paper's defaults where they fit a CPU and notes where not."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ReconstructionConfig"]


@dataclass
class ReconstructionConfig:
    """Every knob of a reconstruction. Saved as ``config.json`` in the run folder."""

    particles: str = ""
    datadir: str | None = None
    pixel_size: float | None = None  # Å; overrides the metadata's
    use_ctf: bool = True
    ctf_pkl: str | None = None  # cryoDRGN CTF pickle, for a bare stack
    pose_pkl: str | None = None  # cryoDRGN pose pickle (known poses: metrics only)
    passthrough: str | None = None  # cryoSPARC passthrough .cs (found automatically when beside the .cs)

    # Preparation (data/dataset.py)
    box: int | None = None  # downsample to this box by Fourier cropping; None keeps the images' box
    # box of map.mrc and the half maps, reconstructed from the final poses: None, the images' own box (so
    # poses inferred at a smaller `box` still give a map at the images' full resolution)
    output_box: int | None = None
    invert: str = "auto"  # contrast inversion: "auto" (decided from the data), "yes", "no"
    mask_diameter: float | None = None  # soft circular mask in Å; None: none
    halves: bool = False  # split the particles in two (seeded, or rlnRandomSubset) and write half maps

    # Stage 1's method (run/stage1.py): "grid", projection matching on the global search's grid (search_nside ×
    # search_inplane), the volume trained on each image's best grid poses; "heads", the paper's multi-head encoder.
    # On realistic sets (SNR 0.05) the grid broke the symmetry where the heads never left the start (30S: 15.4 Å
    # against 44.1 Å), at 0.4× the time (docs/results.md, "Stage 1 on the grid")
    stage1: str = "grid"

    # Encoder (paper, Sec. 3: M = 7 synthetic / 15 real, VGG16 features, Adam 1e-4)
    heads: int = 48  # paper: 7 (synthetic) / 15 (real); see docs/method.md for the CPU-scale choice
    backbone: str = "light"  # "vgg16" is the paper's; "light" is ~40× cheaper and suits a CPU
    hidden: int = 256
    spread_heads: bool = True  # heads start looking along M evenly spread directions (False: the paper's init)
    encoder_lr: float = 1e-3  # paper 1e-4; ~10× fewer images and steps here (docs/method.md)
    inplane_search: int = 36  # >1: each head's in-plane angle is searched on this many angles; 0: off

    # Volume decoder (paper: Adam 0.05, then 0.02 after the switch; the public code uses 10× lower)
    volume_lr: float = 0.05
    volume_lr_autodecode: float = 0.005  # paper 0.02; see docs/method.md
    volume_init_noise: float = 0.1
    # From this stage-1 epoch on (0-based; 0: never), each stage-1 epoch starts from the regularised map of the
    # images at their current poses, within the epoch's band (an EM M-step: run/polish.stage1_map) rather than the
    # volume's SGD steps alone; the steps then go on from it. Stage 1 one start, realistic sets, median pose error at
    # the switch: 8ZPM 42.2° → 28.9° and 40.1° → 26.4° (two run seeds), 7PBL 52.6° → 10.8°; 3KPR 8.2° → 7.6°, 1IGY
    # 7.3° → 6.5° (measured with the map over the whole band); from the first epoch on it kept 1IGY's start in the
    # symmetric basin until epoch 12 (docs/results.md, "Session 17")
    stage1_maps_from: int = 5

    # Auto-decoding (paper: Adam 0.05 on ω, 5 pose steps per volume step)
    pose_lr: float = 0.05
    pose_steps: int = 5
    reassign_epochs: int = 3  # first stage-2 epochs in which the encoder's candidates may replace a pose
    reassign_steps: int = 10  # pose steps refining a candidate before it competes
    reassign_candidates: int = 4  # how many of the encoder's best candidates per image compete
    # band (fraction of Nyquist) in which the candidates are refined before they compete in stage 2's band;
    # None: stage 1's band at the switch
    reassign_max_freq: float | None = None
    volume_lr_final_fraction: float = 0.1  # the stage-2 volume step decays linearly to this fraction
    # stage 2's last epochs in which every pose is refined against the regularised map its images make (run.polish),
    # the volume not stepped (pose_steps each); only epochs after the band ramp and the reassignment. Realistic 30S:
    # 3 epochs 4.07° → 2.82° median, 5 epochs 2.68° (docs/results.md, "Stage 2's polish")
    polish_epochs: int = 4
    # at each polish epoch, where the map matches itself under a rotation with at least this correlation (its
    # whitened detail; asymmetric molecules' maps 0.36–0.46, (pseudo-)symmetric ones' 0.65–0.92), each pose competes
    # with its mates under that symmetry (run/polish.relax_to_mates; 0: never)
    relax_symmetry: float = 0.6
    shift_lr: float = 0.05  # pixels

    # Schedule (paper: 20 epochs, switch after 7, on 50,000 images; see docs for the CPU-scale choice)
    epochs: int = 25
    switch_epoch: int = 15
    # "auto" (issue 18, item 7; the default): the stage-1 band grows to its end at switch_epoch (at most
    # switch_max_epoch), the switch there at the latest; from switch_min_epoch on, as soon as the images keep their
    # grid cells (schedule.AutoSwitch); stage 2 then runs epochs − switch_epoch epochs (its length under the fixed
    # rule) from the band reached. On clean sets it switches at 10-12, as good as the best fixed epoch in 0.8-0.9x
    # the time; on realistic ones, where images change views late, at switch_epoch (docs/benchmarks.md, "The
    # automatic switch now"). "fixed": at switch_epoch exactly (the paper's rule).
    switch: str = "auto"
    switch_min_epoch: int = 10
    switch_max_epoch: int = 20
    batch_size: int = 64
    # Stage 2's batch (None: batch_size). Each image still gets its pose steps once per epoch at any batch
    # size; the volume gets fewer, larger steps. On an H100, 256 runs stage 2 1.6–3.3× faster; on the full
    # benchmark's data it gave the same map and a 0.2° worse median pose error, 1,024 a lagging volume
    # (docs/benchmarks.md). No faster on the CPU. Stage 1 needs its steps: at 256 it never left 60°.
    stage2_batch_size: int | None = None
    # initialisations tried for the first restart_epochs epochs; one whose poses agree with another's goes on (the
    # lowest loss of those), else the lowest loss (run/restarts.py)
    restarts: int = 3
    # 8, not 5: on realistic sets stage 1 on the grid starts to break the symmetry as its band passes ~8 Fourier px
    # (epochs 6-8 at box 64); after 5 epochs every start was still at 110-120° and the losses could not rank them,
    # after 8 the lowest loss was the start furthest along (7PBL: 68° median against 81-100°); realistic 30S seed 1
    # failed with 5 (33 Å) and succeeded with 8 (15.6 Å) (docs/results.md, "Stage 1 on the grid")
    restart_epochs: int = 8
    # More initialisations, up to max_restarts, while no two agree and the lowest loss is not restart_margin below the
    # median of the others: a restart that broke the symmetry stood 12-27 % below every other in each run
    # measured at box 96-192, and a run where none had was within 3 % (docs/benchmarks.md, "Box 128")
    # (at most max(restarts, max_restarts) in all; max_restarts = restarts or restart_margin = 0 gives exactly
    # `restarts`; restarts = 1 turns restarts off altogether)
    max_restarts: int = 6
    restart_margin: float = 0.04

    # Likelihood
    loss: str = "gaussian"  # "gaussian" (paper, Eq. 2) or "l1" (the public code's mean |ΔF|)
    # "shell": σ² per frequency shell from the images' background; "shell-residual": re-estimated from the
    # residuals each stage-2 epoch; "white": one σ² for all frequencies
    noise_model: str = "shell"
    max_freq: float = 1.0  # fraction of Nyquist used in the loss after the switch
    # stage 2's band grows from stage 1's at the switch to max_freq over this many epochs (0: max_freq at once):
    # at once, the full band locks in the poses stage 1 handed over (docs/results.md, "Why stage 1 fails")
    stage2_ramp_epochs: int = 5
    # stage-1 band at the first epoch (fraction of Nyquist; None: 0.15, or 5 Fourier pixels where that is less,
    # i.e. at most the box's width / 5 in Å: 0.15 at box 64, 0.078 at box 128, where 0.15 failed) ...
    autoencode_min_freq: float | None = None
    # ... growing linearly to this at the switch (frequency marching; None: 0.4, at most 26 Fourier pixels,
    # i.e. from box 132 up the box's width / 26 in Å: at box 192 the full 0.4 left a quarter of the particles
    # in a wrong basin; and at least 10, i.e. below box 50 the box's width / 10: at box 32 the 0.4 (6 px) left a
    # third of the tiny set's images in wrong basins; or wider, where the images' spectral SNR supports it:
    # schedule.measured_band_end, measured when the run starts and written here, so that a resume keeps it)
    autoencode_max_freq: float | None = None

    # Shifts (paper: not estimated on synthetic data; the public code never estimates them). "auto": searched in
    # stage 1, where off-centre particles keep it from breaking the symmetry, and kept in stage 2 only when the
    # data need them (passes.decide_shifts, at the switch; without a shift search "auto" means "no"); "yes":
    # estimated throughout; "no": the particles are taken as centred
    shifts: str = "auto"
    max_shift: float = 0.1  # fraction of the box
    # with shifts, stage 1 (and stage 2's reassignment) scores shifts within ±this many pixels (stage 1: a grid
    # of step 2 px with each head's in-plane angles, the winner refined to 1 px); 0: the heads' regressed shifts
    # alone (they fail beyond ~1 px)
    shift_search: int = 3
    # stage 1's shift grid's step (px; the winner refined to whole pixels between its points): 2 costs stage 1
    # 1.07–1.2× on the 3KPR benchmark, 1 (every whole pixel, the search before issue 18) ~1.9×
    shift_step: int = 2

    # Global search in stage 2's reassignment (issue 18): each image's best poses on a HEALPix(nside) × in-plane
    # grid under the current volume compete with the encoder's candidates (a way out of a wrong basin)
    global_search: bool = True
    search_nside: int = 4
    search_inplane: int = 24
    # From the switch on, flag the images that fit no view of the map (run/junk.py): they stop pulling the
    # volume, are left out of the maps, and poses.star marks them (rlnSelected 0)
    flag_junk: bool = True

    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA, then MPS, then CPU
    # torch intra-op CPU threads, set by the programs (CLI, dock) before a run; None: the cores free of other
    # work (napari_semiamort.devices.auto_threads). A process-wide setting: the library leaves it alone
    # (napari_semiamort.devices.set_cpu_threads)
    threads: int | None = None
    watch: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    snapshot_every: int = 0  # steps between full snapshots (volume, candidates); 0: at epoch ends only
    reference_map: str | None = None  # ground truth, for FSC in the log (synthetic data)

    @property
    def estimate_shifts(self) -> bool:
        """Whether the run estimates shifts: "yes"; or "auto" where stage 1 searches them (a shift search with the
        in-plane search; without one "auto" takes the particles as centred: the heads' regressed shifts alone
        fail beyond ~1 px, and "yes" keeps them)."""
        searches = self.shift_search > 0 and self.inplane_search > 1
        return self.shifts == "yes" or (self.shifts == "auto" and searches)

    def validate(self) -> None:
        checks = [
            (self.shifts in ("auto", "yes", "no"), "shifts must be 'auto', 'yes' or 'no'"),
            (self.heads >= 1, "heads must be at least 1"),
            (self.stage1 in ("grid", "heads"), f"stage1 must be grid or heads, not {self.stage1!r}"),
            (self.search_nside >= 1, "search_nside must be at least 1"),
            (self.stage2_ramp_epochs >= 0, "stage2_ramp_epochs must be at least 0"),
            (self.search_inplane >= 4, "search_inplane must be at least 4"),
            (self.backbone in ("light", "vgg16"), "backbone must be 'light' or 'vgg16'"),
            (self.loss in ("gaussian", "l1"), "loss must be 'gaussian' or 'l1'"),
            (self.noise_model in ("shell", "shell-residual", "white"),
             "noise_model must be 'shell', 'shell-residual' or 'white'"),
            (0 <= self.switch_epoch <= self.epochs, "switch_epoch must lie in [0, epochs]"),
            (self.switch in ("fixed", "auto"), "switch must be 'fixed' or 'auto'"),
            (0 <= self.switch_min_epoch <= self.switch_max_epoch,
             "switch_min_epoch must be at least 0 and at most switch_max_epoch"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.stage2_batch_size is None or self.stage2_batch_size >= 1,
             "stage2_batch_size must be at least 1 (or None: batch_size)"),
            (self.invert in ("auto", "yes", "no"), "invert must be 'auto', 'yes' or 'no'"),
            (self.box is None or (self.box >= 8 and self.box % 2 == 0), "box must be even and at least 8"),
            (self.output_box is None or (self.output_box >= 8 and self.output_box % 2 == 0),
             "output_box must be even and at least 8"),
            (self.pose_steps >= 1, "pose_steps must be at least 1"),
            (self.polish_epochs >= 0, "polish_epochs must be at least 0"),
            (self.stage1_maps_from >= 0, "stage1_maps_from must be at least 0 (0: never)"),
            (0 <= self.relax_symmetry <= 1, "relax_symmetry must lie in [0, 1] (0: off)"),
            (self.shift_search >= 0, "shift_search must be 0 (off) or a positive number of pixels"),
            (self.shift_step >= 1, "shift_step must be at least 1 pixel"),
            (0 < self.max_freq <= 1 and (self.autoencode_max_freq is None or 0 < self.autoencode_max_freq <= 1)
             and (self.autoencode_min_freq is None or 0 < self.autoencode_min_freq <= 1)
             and (None in (self.autoencode_min_freq, self.autoencode_max_freq)
                  or self.autoencode_min_freq <= self.autoencode_max_freq),
             "frequency fractions must lie in (0, 1], autoencode_min_freq ≤ autoencode_max_freq"),
            (self.restarts >= 1 and self.max_restarts >= 1 and self.restart_margin >= 0,
             "restarts and max_restarts must be at least 1, restart_margin at least 0"),
            (self.reassign_max_freq is None or 0 < self.reassign_max_freq <= 1,
             "reassign_max_freq must lie in (0, 1] (or None: stage 1's band at the switch)"),
        ]
        for ok, msg in self._number_checks() + checks:
            if not ok:
                raise ValueError(f"invalid configuration: {msg}")

    def _number_checks(self) -> list[tuple[bool, str]]:
        """The numeric settings' checks (a NaN passes every comparison, so finiteness comes first): learning rates
        finite and above 0, every other float finite, then the ranges of the run's length, reach and inputs."""
        import math

        from ..data.checks import PIXEL_SIZE_RANGE  # the data layer's own plausible range

        rates = ("encoder_lr", "volume_lr", "volume_lr_autodecode", "pose_lr", "shift_lr")
        checks = [(math.isfinite(getattr(self, n)) and getattr(self, n) > 0,
                   f"{n} must be a finite number greater than 0, not {getattr(self, n)}") for n in rates]
        floats = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), float)]
        checks += [(math.isfinite(getattr(self, n)), f"{n} must be a finite number, not {getattr(self, n)}")
                   for n in floats]
        lo, hi = PIXEL_SIZE_RANGE
        return checks + [
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (0 <= self.max_shift <= 0.5,
             f"max_shift must lie in [0, 0.5] (a fraction of the box), not {self.max_shift}"),
            (self.threads is None or self.threads >= 0, f"threads must be 0 (auto) or more, not {self.threads}"),
            (self.pixel_size is None or lo <= self.pixel_size <= hi,
             f"pixel_size must lie in {lo:g}–{hi:g} Å (or None: the file's), not {self.pixel_size}"),
            (self.mask_diameter is None or self.mask_diameter > 0,
             f"mask_diameter must be greater than 0 Å (or None: no mask), not {self.mask_diameter}"),
            (self.seed >= 0, f"seed must be 0 or more, not {self.seed}"),
            (self.hidden >= 1 and self.reassign_candidates >= 1,
             "hidden and reassign_candidates must be at least 1"),
            (min(self.inplane_search, self.reassign_epochs, self.reassign_steps, self.restart_epochs,
                 self.snapshot_every) >= 0,
             "inplane_search, reassign_epochs, reassign_steps, restart_epochs and snapshot_every must be at least 0"),
            (self.volume_init_noise >= 0 and 0 <= self.volume_lr_final_fraction <= 1,
             "volume_init_noise must be at least 0, volume_lr_final_fraction lie in [0, 1]"),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ReconstructionConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if "estimate_shifts" in d:  # run folders written before "shifts" (a boolean then, off by default)
            d = {**{k: v for k, v in d.items() if k != "estimate_shifts"},
                 "shifts": "yes" if d["estimate_shifts"] else "no"}
        if "switch" not in d:  # run folders written before the automatic switch ran the fixed rule
            d = {**d, "switch": "fixed"}
        if "stage1_maps_from" not in d:  # run folders written before stage 1's maps trained the volume alone
            d = {**d, "stage1_maps_from": 0}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> ReconstructionConfig:
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("config", data))
