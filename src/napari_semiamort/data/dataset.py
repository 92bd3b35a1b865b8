"""Particle datasets: a STAR file's stacks (memory-mapped), CTF parameters, pixel size, known poses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..physics.ctf import CTFParams
from ..physics.so3 import euler_relion_to_matrix
from .mrc import open_stack
from .star import read_particle_star

__all__ = ["ParticleDataset", "background_mask", "normalize_background"]

_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration")


def background_mask(size: int, radius_fraction: float = 0.45, device=None) -> torch.Tensor:
    """`(size, size)` float mask, 1 outside the circle of radius ``radius_fraction · size``."""
    k = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    return ((k[:, None] ** 2 + k[None, :] ** 2) > (radius_fraction * size) ** 2).float()


def normalize_background(images: torch.Tensor, radius_fraction: float = 0.45) -> torch.Tensor:
    """Per image: subtract the mean and divide by the std of the pixels outside a circle (RELION's norm)."""
    ring = background_mask(images.shape[-1], radius_fraction).bool()
    bg = images[..., ring]
    mean = bg.mean(-1)
    std = bg.std(-1).clamp_min(1e-6)
    return (images - mean[..., None, None]) / std[..., None, None]


@dataclass
class ParticleDataset:
    """Images `(N, L, L)` read lazily from stacks, plus per-image metadata."""

    star_path: Path
    stacks: list[np.ndarray]
    stack_index: np.ndarray  # (N,) which stack
    image_index: np.ndarray  # (N,) which image in it
    image_names: list[str]
    pixel_size: float
    ctf: CTFParams | None
    ctf_columns: dict[str, np.ndarray]
    reference_rotations: torch.Tensor | None = None  # (N, 3, 3) from the file's angles, for metrics
    reference_shifts: torch.Tensor | None = None  # (N, 2) RELION origins in pixels
    _cache: torch.Tensor | None = field(default=None, repr=False)

    @property
    def box(self) -> int:
        return int(self.stacks[0].shape[-1])

    def __len__(self) -> int:
        return int(self.stack_index.shape[0])

    @classmethod
    def from_star(
        cls,
        path: str | Path,
        datadir: str | Path | None = None,
        pixel_size: float | None = None,
        use_ctf: bool = True,
    ) -> ParticleDataset:
        path = Path(path)
        cols = read_particle_star(path)
        if "rlnImageName" not in cols:
            raise ValueError(f"{path}: no rlnImageName column: the STAR does not say where the images are")
        names = [str(x) for x in cols["rlnImageName"]]
        base = Path(datadir) if datadir is not None else path.parent
        files: dict[str, int] = {}
        stack_index = np.empty(len(names), dtype=np.int64)
        image_index = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            if "@" not in name:
                raise ValueError(f"{path}: rlnImageName {name!r} is not of the form index@stack")
            idx, fname = name.split("@", 1)
            stack_index[i] = files.setdefault(fname, len(files))
            image_index[i] = int(idx) - 1
        stacks, missing = [], []
        for fname in files:
            p = Path(fname) if Path(fname).is_absolute() else base / fname
            if not p.is_file():
                missing.append(str(p))
                continue
            stacks.append(open_stack(p))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(f"{path}: stacks not found: {', '.join(missing[:3])}{more}")
        boxes = {s.shape[-1] for s in stacks}
        if len(boxes) > 1:
            raise ValueError(f"{path}: the stacks have different box sizes {sorted(boxes)}")
        for s_id, s in enumerate(stacks):
            used = image_index[stack_index == s_id]
            if used.size and (used.max() >= s.shape[0] or used.min() < 0):
                raise ValueError(
                    f"{path}: image {used.max() + 1} requested from {list(files)[s_id]}, "
                    f"which holds {s.shape[0]} images"
                )
        if pixel_size is None:
            if "rlnImagePixelSize" in cols:
                pixel_size = float(cols["rlnImagePixelSize"][0])
            elif "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
                pixel_size = float(cols["rlnDetectorPixelSize"][0]) * 1e4 / float(cols["rlnMagnification"][0])
            else:
                raise ValueError(f"{path}: no pixel size in the STAR; give it with --pixel-size")
        ctf = None
        ctf_columns: dict[str, np.ndarray] = {}
        n = len(names)
        if use_ctf:
            absent = [c for c in _CTF_COLUMNS if c not in cols]
            if absent:
                raise ValueError(f"{path}: CTF columns missing: {', '.join(absent)} (or run with --no-ctf)")
            get = lambda c, d: np.array(cols.get(c, np.full(n, d)), dtype=np.float64)  # noqa: E731  (a writable copy)
            ctf_columns = {
                "rlnDefocusU": get("rlnDefocusU", 0),
                "rlnDefocusV": get("rlnDefocusV", 0),
                "rlnDefocusAngle": get("rlnDefocusAngle", 0),
                "rlnVoltage": get("rlnVoltage", 300),
                "rlnSphericalAberration": get("rlnSphericalAberration", 2.7),
                "rlnAmplitudeContrast": get("rlnAmplitudeContrast", 0.1),
                "rlnPhaseShift": get("rlnPhaseShift", 0),
                "rlnCtfBfactor": get("rlnCtfBfactor", 0),
            }
            ctf = CTFParams(
                defocus_u_in_angstroms=torch.from_numpy(ctf_columns["rlnDefocusU"]),
                defocus_v_in_angstroms=torch.from_numpy(ctf_columns["rlnDefocusV"]),
                astigmatism_angle_in_degrees=torch.from_numpy(ctf_columns["rlnDefocusAngle"]),
                voltage_in_kilovolts=torch.from_numpy(ctf_columns["rlnVoltage"]),
                spherical_aberration_in_mm=torch.from_numpy(ctf_columns["rlnSphericalAberration"]),
                amplitude_contrast=torch.from_numpy(ctf_columns["rlnAmplitudeContrast"]),
                phase_shift_in_degrees=torch.from_numpy(ctf_columns["rlnPhaseShift"]),
                bfactor_in_angstroms_squared=torch.from_numpy(ctf_columns["rlnCtfBfactor"]),
            )
        rot = shifts = None
        if all(c in cols for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            ang = [torch.deg2rad(torch.tensor(np.array(cols[c], dtype=np.float64))) for c in
                   ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
            rot = euler_relion_to_matrix(*ang).to(torch.float32)
            if "rlnOriginXAngst" in cols:
                shifts = torch.tensor(
                    np.stack([cols["rlnOriginXAngst"], cols["rlnOriginYAngst"]], -1) / pixel_size,
                    dtype=torch.float32,
                )
        return cls(path, stacks, stack_index, image_index, names, float(pixel_size), ctf, ctf_columns,
                   rot, shifts)

    def read(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalised images `(B, L, L)` float32 for particle indices ``idx``."""
        idx = np.asarray(idx)
        if self._cache is not None:
            return self._cache[torch.as_tensor(idx)]
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        for j, i in enumerate(idx):
            out[j] = self.stacks[self.stack_index[i]][self.image_index[i]]
        return normalize_background(torch.from_numpy(out))

    def cache_in_memory(self, max_bytes: float = 2e9) -> bool:
        """Load all normalised images into RAM when they take under ``max_bytes``; returns whether it did."""
        if len(self) * self.box**2 * 4 > max_bytes:
            return False
        chunks = [self.read(np.arange(s, min(s + 4096, len(self)))) for s in range(0, len(self), 4096)]
        self._cache = torch.cat(chunks)
        return True
