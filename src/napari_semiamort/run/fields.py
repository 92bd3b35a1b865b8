"""One table of the run's settings: every field of :class:`~.config.ReconstructionConfig` a user may set, with
its label, group, help, command-line flag and the hints a form needs (range, step, choices, the text shown
for None).

``semiamort reconstruct`` builds its options from this table and the plugin's dock builds its form from it,
so a field is described once. No Qt, no napari and no torch here: the CLI and the dock import it alike.
A test walks ``dataclasses.fields(ReconstructionConfig)`` and fails for any field missing from the table.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ReconstructionConfig

__all__ = ["ADVANCED", "DATA", "FIELDS", "GROUPS", "TRAINING", "Field", "dock_wording", "field_named", "fields_in",
           "parse_watch", "to_value"]

DATA, TRAINING, ADVANCED = "Data", "Training", "Advanced"
GROUPS = (DATA, TRAINING, ADVANCED)


_SAME = object()  # a field's dock default: the config's


def _devices() -> list[str]:
    from ..devices import available_devices  # torch: only when a form asks

    return available_devices()


@dataclass(frozen=True)
class Field:
    """One setting of the run, as the command line and the dock offer it."""

    name: str  # the config field
    label: str  # the dock's label (a check box's text)
    group: str  # DATA, TRAINING or ADVANCED
    help: str  # the CLI's help and the dock's tooltip
    flag: str | None = None  # the CLI option; None: the positional argument (particles)
    minimum: float | None = None  # a spin box's range; where the field may be None, the minimum stands for None
    maximum: float | None = None
    step: float | None = None
    decimals: int | None = None  # a float spin box's decimals
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None  # a callable: found at run time
    special: str | None = None  # the text a spin box shows at its minimum (None for an optional field)
    path: str | None = None  # "file" or "folder": resolved to an absolute path
    file_filter: str | None = None  # the dock's file dialog filter
    enabled_by: str | None = None  # a boolean field (or a choice, see enabled_value) that enables this one
    enabled_value: str | None = None  # the enabling field's value that enables this one (None: any but off/"no")
    dock_default: Any = _SAME  # the dock's starting value where it differs from the config's
    flag_help: str | None = None  # the CLI's help where the flag turns the field off

    @property
    def annotation(self) -> Any:
        return _HINTS[self.name]

    @property
    def optional(self) -> bool:
        """Whether None is a value of the field (``X | None``)."""
        return type(None) in typing.get_args(self.annotation)

    @property
    def kind(self) -> type:
        """The field's type without None: bool, int, float, str or list."""
        hint = self.annotation
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return typing.get_origin(hint) or hint

    @property
    def default(self) -> Any:
        """The config's default value."""
        return getattr(ReconstructionConfig(), self.name)

    @property
    def start(self) -> Any:
        """The dock's starting value: the config's default unless the dock has its own."""
        return self.default if self.dock_default is _SAME else self.dock_default

    def options(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def default_text(self) -> str:
        """The default as the CLI's help states it."""
        d = self.default
        if d is None:
            return self.special or "none"
        if isinstance(d, bool):
            return "on" if d else "off"
        if isinstance(d, list):
            return " ".join(str(x) for x in d)
        return str(d)


_HINTS = typing.get_type_hints(ReconstructionConfig)
_LR = {"minimum": 1e-6, "maximum": 1.0, "decimals": 6}
_BAND = {"minimum": 0.0, "maximum": 1.0, "step": 0.05, "decimals": 3}
_HEADS = {"enabled_by": "stage1", "enabled_value": "heads"}  # the encoder's settings: stage 1 heads only
_STAR = "Particles (*.star *.cs *.mrcs *.mrc *.mrcs.gz)"

FIELDS: tuple[Field, ...] = (
    # ---------------------------------------------------------------- Data
    Field("particles", "Particles", DATA, "particles: RELION .star, cryoSPARC .cs or an MRC stack",
          path="file", file_filter=_STAR),
    Field("pixel_size", "Pixel size (Å)", DATA, "pixel size in Å (overrides the file's)", "--pixel-size",
          0, 100, 0.1, 4, special="from the file"),
    Field("box", "Downsample to box", DATA, "downsample the images to this box by Fourier cropping to infer the "
          "poses (faster); the maps are still made at the images' box (see --output-box)", "--box",
          0, 1024, 2, special="as extracted"),
    Field("use_ctf", "model the CTF", DATA, "apply each image's CTF in the likelihood", "--no-ctf",
          flag_help="ignore the CTF (data without CTF columns)"),
    Field("halves", "half maps and FSC", DATA, "split the particles in two (rlnRandomSubset, else seeded) and "
          "write half maps and their FSC", "--halves"),
    Field("mask_diameter", "Mask diameter (Å)", DATA, "the particle's diameter + ~10 % (Å): a soft circular mask "
          "on the images and the radius of the polish's spherical solvent mask (none: the images unmasked, the "
          "solvent mask fitted to the map)", "--mask-diameter", 0, 100_000, 10, 1, special="none"),
    Field("shifts", "Shifts", DATA, "in-plane shifts of off-centre particles: auto searches them in stage 1 and "
          "refines them in stage 2 only if the particles are off centre (the median estimated shift at the "
          "switch is half a pixel or more); yes: estimated throughout; no: the particles are centred (e.g. "
          "re-extracted after a refinement). The map is kept centred", "--shifts", choices=("auto", "yes", "no")),
    Field("shift_search", "Shift search (± px)", DATA, "with shifts, the shifts stage 1 tries: ± this many "
          "pixels, on a grid of step 2 px refined to 1 px around the best; 0: the heads' regressed shifts alone",
          "--shift-search", 0, 64, special="none: regressed by the heads", enabled_by="shifts"),
    Field("shift_step", "Shift grid step (px)", ADVANCED, "the step of stage 1's shift grid; the winner's shift "
          "is then refined to whole pixels around it. 1 scores every whole pixel (stage 1 ~1.9× slower than "
          "without shifts, against ~1.1× at 2)", "--shift-step", 1, 16, enabled_by="shifts"),
    Field("reference_map", "Reference", DATA, "ground-truth map for FSC in the log (simulated data)",
          "--reference-map", path="file", file_filter="Maps (*.mrc *.map *.mrc.gz *.map.gz)"),
    # ---------------------------------------------------------------- Training
    Field("stage1", "Stage 1", TRAINING, "how stage 1 finds the poses: grid (projection matching: each image's best "
          "poses on the search grid under the current map; the default, robust on noisy data) or heads (the paper's "
          "multi-head encoder)", "--stage1", choices=("grid", "heads")),
    Field("heads", "Heads (M)", TRAINING, "encoder heads: pose candidates per image (stage 1 heads)", "--heads",
          1, 512, **_HEADS),
    Field("encoder_lr", "Encoder lr", TRAINING, "the encoder's learning rate (Adam)", "--encoder-lr",
          step=1e-4, **_LR, **_HEADS),
    Field("volume_lr", "Volume lr", TRAINING, "the volume's learning rate in stage 1 (Adam)", "--volume-lr",
          step=1e-3, **_LR),
    Field("pose_lr", "Pose lr", TRAINING, "the poses' learning rate in stage 2 (Adam)", "--pose-lr",
          step=1e-3, **_LR),
    Field("switch_epoch", "Switch epoch", TRAINING, "epochs of stage 1 (auto-encoding) before the switch to "
          "stage 2 (auto-decoding); with the auto switch, the latest", "--switch-epoch", 0, 10_000),
    Field("switch", "Switch", TRAINING, "when stage 1 hands over to stage 2: auto (default), at the switch epoch "
          "at the latest, from the earliest switch epoch on as soon as the images keep their grid cells (pose "
          "change under half the grid's spacing), stage 2 then running epochs − switch epoch epochs; fixed, at the "
          "switch epoch exactly (the paper's rule)", "--switch", choices=("auto", "fixed")),
    Field("switch_min_epoch", "Earliest switch", TRAINING, "auto switch: the earliest switch (stage 1's band still "
          "growing to its end at the switch epoch)", "--switch-min-epoch", 0, 10_000, enabled_by="switch",
          enabled_value="auto"),
    Field("switch_max_epoch", "Latest switch", TRAINING, "auto switch: the latest switch (the switch epoch "
          "above it is cut to it)", "--switch-max-epoch",
          0, 10_000, enabled_by="switch", enabled_value="auto"),
    Field("epochs", "Epochs", TRAINING, "epochs in all (auto switch: the switch epoch plus epochs − switch "
          "epoch)", "--epochs", 1, 10_000),
    Field("batch_size", "Batch size", TRAINING, "images per step", "--batch-size", 2, 4096),
    Field("stage2_batch_size", "Stage-2 batch", TRAINING, "images per step in stage 2 (256 runs stage 2 faster on "
          "a GPU; each image still gets its pose steps every epoch)", "--stage2-batch-size", 0, 4096,
          special="as stage 1"),
    Field("device", "Device", TRAINING, "where the run computes: auto (CUDA, then MPS, then CPU), cpu, cuda, "
          "cuda:N or mps", "--device", choices=_devices),
    Field("seed", "Seed", TRAINING, "random seed", "--seed", 0, 2**31 - 1),
    Field("watch", "Watch", TRAINING, "particle indices (0-based) whose candidates are shown", "--watch"),
    # ---------------------------------------------------------------- Advanced: inputs and outputs
    Field("datadir", "Image folder", ADVANCED, "folder the STAR's image paths are relative to", "--datadir",
          special="the STAR's", path="folder"),
    Field("ctf_pkl", "CTF pickle", ADVANCED, "cryoDRGN ctf.pkl for a bare particle stack", "--ctf-pkl",
          path="file", file_filter="cryoDRGN (*.pkl)"),
    Field("pose_pkl", "Known poses", ADVANCED, "cryoDRGN pose.pkl with known poses (for the pose-error log only)",
          "--pose-pkl", path="file", file_filter="cryoDRGN (*.pkl)"),
    Field("passthrough", "Passthrough .cs", ADVANCED, "cryoSPARC passthrough .cs", "--passthrough",
          special="found beside the .cs", path="file", file_filter="cryoSPARC (*.cs)"),
    Field("output_box", "Map box", ADVANCED, "box of map.mrc and the half maps, made from the final poses",
          "--output-box", 0, 4096, 2, special="the images' box"),
    Field("invert", "Invert contrast", ADVANCED, "contrast inversion for dark-on-light particles (auto: decided "
          "from the data)", "--invert", choices=("auto", "yes", "no")),
    # ---------------------------------------------------------------- Advanced: model
    Field("backbone", "Encoder backbone", ADVANCED, "the encoder's features: light (~40× cheaper, suits a CPU) "
          "or vgg16 (the paper's)", "--backbone", choices=("light", "vgg16"), **_HEADS),
    Field("hidden", "Hidden units", ADVANCED, "width of the encoder's hidden layers", "--hidden", 8, 8192, 8,
          **_HEADS),
    Field("spread_heads", "spread the heads' first directions", ADVANCED, "the heads start looking along M evenly "
          "spread directions", "--no-spread-heads",
          flag_help="start the heads without spreading their directions (the paper's initialisation)", **_HEADS),
    Field("inplane_search", "In-plane search", ADVANCED, "in-plane angles each head's candidate is searched on in "
          "stage 1 (0 or 1: off)", "--inplane-search", 0, 720, **_HEADS),
    Field("volume_init_noise", "Volume init noise", ADVANCED, "scale of the random initial volume",
          "--volume-init-noise", 0, 10, 0.01, 4),
    # ---------------------------------------------------------------- Advanced: stage 2
    Field("volume_lr_autodecode", "Volume lr (stage 2)", ADVANCED, "the volume's learning rate in stage 2 (Adam)",
          "--volume-lr-autodecode", step=1e-3, **_LR),
    Field("volume_lr_final_fraction", "Volume lr, final fraction", ADVANCED, "stage 2's volume step decays "
          "linearly to this fraction of its start", "--volume-lr-final-fraction", 0, 1, 0.05, 3),
    Field("pose_steps", "Pose steps", ADVANCED, "pose steps per volume step in stage 2", "--pose-steps", 1, 100),
    Field("shift_lr", "Shift lr (px)", ADVANCED, "the shifts' learning rate in stage 2 (pixels)", "--shift-lr",
          0, 10, 0.01, 4),
    Field("polish_epochs", "Polish epochs", ADVANCED, "stage 2's last epochs, in which every pose is refined "
          "against the regularised map its images make (0: none)", "--polish-epochs", 0, 10_000),
    Field("relax_symmetry", "Symmetry relaxation", ADVANCED, "at each polish epoch, where the map matches itself "
          "under a rotation with this correlation, each pose competes with its mates under that rotation (0: off)",
          "--relax-symmetry", 0, 1, 0.05, 2, special="off"),
    Field("reassign_epochs", "Reassignment epochs", ADVANCED, "first stage-2 epochs in which the encoder's "
          "candidates may replace a pose", "--reassign-epochs", 0, 10_000),
    Field("reassign_steps", "Reassignment steps", ADVANCED, "pose steps refining a candidate before it competes",
          "--reassign-steps", 0, 1000),
    Field("reassign_candidates", "Reassignment candidates", ADVANCED, "how many of the encoder's best candidates "
          "per image compete", "--reassign-candidates", 1, 512),
    Field("reassign_max_freq", "Reassignment band", ADVANCED, "band (fraction of Nyquist) in which the candidates "
          "are refined before they compete", "--reassign-max-freq", special="stage 1's band at the switch",
          **_BAND),
    # ---------------------------------------------------------------- Advanced: restarts
    Field("restarts", "Restarts", ADVANCED, "initialisations tried for the first restart epochs; one whose poses "
          "agree with another's goes on (the lowest loss of those), else the lowest loss (1: off)", "--restarts",
          1, 100),
    Field("restart_epochs", "Restart epochs", ADVANCED, "epochs each initialisation trains before they are "
          "compared", "--restart-epochs", 0, 10_000),
    Field("max_restarts", "Max restarts", ADVANCED, "more initialisations, up to this many, while no two agree "
          "and no loss stands out by the restart margin", "--max-restarts", 1, 100),
    Field("restart_margin", "Restart margin", ADVANCED, "how far (relative) the lowest loss must lie below the "
          "others' median to stand out (0: exactly --restarts)", "--restart-margin", 0, 1, 0.01, 3),
    Field("stage1_maps_from", "Stage-1 maps from", ADVANCED, "from this stage-1 epoch on, each epoch starts from "
          "the regularised map of the images at their current poses (0: never)", "--stage1-maps-from", 0, 10_000),
    # ---------------------------------------------------------------- Advanced: likelihood and bands
    Field("loss", "Loss", ADVANCED, "gaussian (the paper's) or l1 (the public code's mean |ΔF|)", "--loss",
          choices=("gaussian", "l1")),
    Field("noise_model", "Noise model", ADVANCED, "shell: σ² per frequency shell from the images' background; "
          "shell-residual: re-estimated from the residuals each stage-2 epoch; white: one σ²", "--noise-model",
          choices=("shell", "shell-residual", "white")),
    Field("max_freq", "Stage-2 band", ADVANCED, "fraction of Nyquist used in the loss after the switch",
          "--max-freq", 0.01, 1, 0.05, 3),
    Field("stage2_ramp_epochs", "Stage-2 band ramp", ADVANCED, "stage 2's band grows from stage 1's at the "
          "switch to the stage-2 band over this many epochs (0: the stage-2 band at once)", "--stage2-ramp-epochs",
          0, 1000),
    Field("autoencode_min_freq", "Stage-1 band, start", ADVANCED, "stage-1 band at the start, as a fraction of "
          "Nyquist (auto: 0.15, or 5 Fourier pixels where that is less)", "--autoencode-min-freq",
          special="auto", **_BAND),
    Field("autoencode_max_freq", "Stage-1 band, switch", ADVANCED, "stage-1 band at the switch, as a fraction of "
          "Nyquist (auto: 0.4 within 10 and 26 Fourier pixels, or wider, to at most 0.6, where the images' "
          "spectral SNR is weak at 0.4 and ≥ 0.05 further: large particles at coarse pixels)",
          "--autoencode-max-freq",
          special="auto", **_BAND),
    Field("global_search", "global search in the reassignment", ADVANCED, "stage 2's reassignment: each image's "
          "best poses on a coarse grid (HEALPix × in-plane) under the current map compete with the encoder's "
          "candidates", "--no-global-search",
          flag_help="reassign from the encoder's candidates alone (no global search)", **_HEADS),
    Field("search_nside", "Search HEALPix nside", ADVANCED, "the search grid's view directions (stage 1's grid "
          "and the global search's): 12·nside² (4: 192, ~15° apart)", "--search-nside", 1, 64),
    Field("search_inplane", "Search in-plane angles", ADVANCED, "the search grid's in-plane angles",
          "--search-inplane", 4, 720),
    Field("flag_junk", "flag junk particles", ADVANCED, "from the switch on, flag the images that fit no view "
          "of the map: they stop pulling it, are left out of the maps and are marked rlnSelected 0 in "
          "poses.star (poses_kept.star holds the others)", "--no-flag-junk",
          flag_help="keep every image (no junk flags)"),
    Field("max_shift", "Max shift", ADVANCED, "largest shift, as a fraction of the box", "--max-shift",
          0, 0.5, 0.01, 3),
    # ---------------------------------------------------------------- Advanced: the machine and the view
    Field("threads", "CPU threads", ADVANCED, "torch's intra-op threads on the CPU; auto: the cores free of other "
          "work (affinity, cgroup quota, load average), one fewer in the dock (left to the interface)", "--threads",
          0, 1024, special="auto"),
    Field("snapshot_every", "Snapshot every", ADVANCED, "steps between full snapshots (volume, candidates); 0: at "
          "epoch ends only", "--snapshot-every", 0, 100_000, special="epoch ends", dock_default=10),
)

_BY_NAME = {f.name: f for f in FIELDS}


def field_named(name: str) -> Field:
    return _BY_NAME[name]


def fields_in(group: str) -> tuple[Field, ...]:
    return tuple(f for f in FIELDS if f.group == group)


def to_value(f: Field, value: Any) -> Any:
    """A value as the config takes it: a path absolute, an empty path or text None."""
    if f.path is not None:
        if value is None or not str(value).strip():
            return None
        try:
            return str(Path(value).resolve())
        except RuntimeError as exc:  # Python < 3.13 raises it for a loop of symbolic links
            raise ValueError(f"{value}: a loop of symbolic links ({f.label})") from exc
    return value


def parse_watch(text: str) -> list[int]:
    """A watch list from text: indices separated by spaces or commas."""
    return [int(x) for x in text.replace(",", " ").split()]


def dock_wording(message: str) -> str:
    """A message of the configuration's checks or the data readers as the dock's user reads it: each
    command-line flag (``--ctf-pkl``) and, in a configuration error, each field's name (``switch_epoch``) becomes
    the field's label, with its section where it is not in view (“CTF pickle” (Advanced))."""
    import re

    def label(f: Field, flag: str = "") -> str:
        off = " unticked" if flag.startswith("--no-") and f.kind is bool else ""
        return f"“{f.label}”{off}" + (f" ({f.group})" if f.group == ADVANCED else "")

    flags = {f.flag: f for f in FIELDS if f.flag}
    message = re.sub(r"--[a-z][a-z0-9-]*",
                     lambda m: label(flags[m.group()], m.group()) if m.group() in flags else m.group(), message)
    head, sep, checks = message.partition("invalid configuration: ")
    if not sep:
        return message
    names = "|".join(sorted((re.escape(f.name) for f in FIELDS), key=len, reverse=True))
    return "invalid settings: " + re.sub(rf"\b({names})\b", lambda m: label(_BY_NAME[m.group()]), checks)
