"""One particle table for every metadata format: where each image is, its CTF, its pose if known.

RELION STAR, cryoSPARC ``.cs`` and cryoDRGN pickles are all read into a :class:`ParticleTable` and written
from one. Conventions (``RELION-CONVENTIONS.md``):

- ``rotations`` `(N, 3, 3)` float64 are RELION's ``A = Rz(−psi) Ry(−tilt) Rz(−rot)``, mapping volume
  coordinates to image coordinates: ``img(x, y) = ∫ V(Aᵀ (x, y, z)) dz``.
- ``origins`` `(N, 2)` float64 are RELION's ``rlnOriginX/YAngst`` in Å: the image is the projection
  shifted by **−origin**.
- ``ctf`` holds per-particle float64 arrays under RELION's names (``rlnDefocusU``/``V`` in Å,
  ``rlnDefocusAngle`` and ``rlnPhaseShift`` in degrees, ``rlnVoltage`` in kV, ``rlnSphericalAberration`` in
  mm, ``rlnAmplitudeContrast``, ``rlnCtfBfactor`` in Å²).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CTF_FIELDS", "ParticleTable", "find_base", "resolve_stacks"]

# RELION name → default when a file does not give it (the first five are required for a CTF).
CTF_FIELDS: dict[str, float | None] = {
    "rlnDefocusU": None,
    "rlnDefocusV": None,
    "rlnDefocusAngle": None,
    "rlnVoltage": None,
    "rlnSphericalAberration": None,
    "rlnAmplitudeContrast": 0.1,
    "rlnPhaseShift": 0.0,
    "rlnCtfBfactor": 0.0,
}


@dataclass
class ParticleTable:
    """Per-particle metadata, no pixels. Build with a reader (``read_particles``), write with a writer."""

    source: Path  # the metadata file (or stack) it was read from
    stacks: list[Path]  # stack files, resolved to existing paths
    stack_index: np.ndarray  # (N,) int64: which stack
    image_index: np.ndarray  # (N,) int64: which image in it, 0-based
    pixel_size: float | None = None  # Å per pixel of the stack images; None: unknown
    box: int | None = None  # image size the metadata states (checked against the stacks)
    ctf: dict[str, np.ndarray] | None = None  # CTF_FIELDS names → (N,) float64; None when incomplete
    ctf_missing: list[str] = field(default_factory=list)  # required CTF fields the file lacks (then ctf is None)
    ctf_source: Path | None = None  # the file the CTF came from where it is not ``source`` (a cryoDRGN ctf.pkl)
    phase_flipped: np.ndarray | None = None  # (N,) bool: rlnCtfDataArePhaseFlipped
    ctf_premultiplied: np.ndarray | None = None  # (N,) bool: rlnCtfDataAreCtfPremultiplied
    rotations: np.ndarray | None = None  # (N, 3, 3) float64, RELION's A
    origins: np.ndarray | None = None  # (N, 2) float64, rlnOriginX/YAngst in Å
    optics_group: np.ndarray | None = None  # (N,) int64, the file's optics group (1-based)
    optics: dict[int, dict] = field(default_factory=dict)  # the input's data_optics rows by group, all columns
    uid: np.ndarray | None = None  # (N,) uint64: cryoSPARC particle ids, carried to a written .cs
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other per-particle columns, carried through

    def __post_init__(self):
        n = len(self.stack_index)
        for name in ("image_index", "phase_flipped", "ctf_premultiplied", "rotations", "origins",
                     "optics_group", "uid"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{self.source}: {name} has {len(v)} rows, the table {n}")

    def __len__(self) -> int:
        return int(len(self.stack_index))

    def image_name(self, i: int, absolute: bool = True) -> str:
        """RELION's ``rlnImageName`` for particle ``i``: ``000012@/path/to/stack.mrcs``."""
        p = self.stacks[int(self.stack_index[i])]
        return f"{int(self.image_index[i]) + 1:06d}@{p.resolve() if absolute else p}"

    def image_names(self, absolute: bool = True) -> list[str]:
        return [self.image_name(i, absolute) for i in range(len(self))]

    def subset(self, keep: np.ndarray) -> ParticleTable:
        """The rows ``keep`` (a boolean mask or indices), stacks unchanged."""
        keep = np.asarray(keep)

        def take(v):
            return None if v is None else v[keep]

        return dataclasses.replace(
            self,
            stack_index=self.stack_index[keep],
            image_index=self.image_index[keep],
            ctf=None if self.ctf is None else {k: v[keep] for k, v in self.ctf.items()},
            phase_flipped=take(self.phase_flipped),
            ctf_premultiplied=take(self.ctf_premultiplied),
            rotations=take(self.rotations),
            origins=take(self.origins),
            optics_group=take(self.optics_group),
            uid=take(self.uid),
            extra={k: v[keep] for k, v in self.extra.items()},
        )


def find_base(source: Path, first_stack: str, datadir: str | Path | None) -> Path:
    """The folder relative stack paths are resolved against.

    ``datadir`` when given; else the first of the metadata file's folder, its parents (a RELION project's
    ``Class3D/job020/run_data.star`` names stacks relative to the project folder, three levels up) and the
    working directory under which ``first_stack`` exists; the metadata file's folder when none has it.
    """
    if datadir is not None:
        return Path(datadir)
    here = source.resolve().parent
    for base in (here, *list(here.parents)[:3], Path.cwd()):
        if (base / first_stack).is_file():
            return base
    return here


def resolve_stacks(source: Path, names: list[str], datadir: str | Path | None, require: bool = True) -> list[Path]:
    """Existing paths for stack names as written in ``source``; a clear error listing the first missing.

    ``require=False`` (metadata conversion without the images): missing stacks are kept as paths.
    """
    if not names:
        return []
    relative = [n for n in names if not Path(n).is_absolute()]
    base = find_base(source, relative[0], datadir) if relative else source.parent
    paths = [Path(n) if Path(n).is_absolute() else base / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and require:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        hint = "check --datadir" if datadir is not None else "give the folder they are in with --datadir"
        raise FileNotFoundError(
            f"{source}: {len(missing)} of {len(paths)} particle stacks not found: "
            f"{', '.join(missing[:3])}{more} ({hint})"
        )
    return paths
