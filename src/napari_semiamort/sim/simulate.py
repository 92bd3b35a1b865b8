"""Simulated particle stacks with known poses: the ground truth for tests, the demo and benchmarks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.mrc import read_map, write_mrc
from ..data.particles import ParticleTable
from ..data.star import write_star
from ..physics.ctf import CTFParams, compute_ctf
from ..physics.fourier import frequency_grid_2d, ifft_centered, resample_map
from ..physics.so3 import random_rotations
from .atoms import density_from_atoms, read_atoms
from .project import PaddedProjector

__all__ = ["SimulationConfig", "simulate_dataset", "truth_map"]

_ATOM_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent", ".pdb.gz", ".cif.gz", ".mmcif.gz", ".ent.gz")


@dataclass
class SimulationConfig:
    n_particles: int = 3000
    box: int = 64
    pixel_size: float | None = None  # Å; None: the model's longest extent fills `fill` of the box
    fill: float = 0.6
    snr: float = 0.1  # variance of the noise-free (CTF-modulated) images over the noise variance
    ctf: bool = True
    defocus_min: float = 10000.0  # Å
    defocus_max: float = 25000.0
    astigmatism_max: float = 500.0  # |U − V| in Å
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.1
    max_shift: float = 0.0  # RELION origins uniform in ±max_shift pixels
    seed: int = 0


def truth_map(source: str | Path, box: int, pixel_size: float | None, fill: float) -> tuple[torch.Tensor, float]:
    """The ground-truth map `(box³)` and its voxel size from an atomic model or an MRC map."""
    source = Path(source)
    name = source.name.lower()
    if name.endswith(_ATOM_SUFFIXES):
        xyz, z = read_atoms(source)
        if pixel_size is None:
            extent = float(np.max(np.linalg.norm(xyz - xyz.mean(0), axis=1))) * 2
            pixel_size = round(extent / (fill * box), 2)
        return density_from_atoms(xyz, z, box, pixel_size), pixel_size
    data, voxel = read_map(source)
    if voxel <= 0:
        raise ValueError(f"{source}: the map's header has no voxel size")
    vol = resample_map(torch.from_numpy(data), box)
    return vol, voxel * data.shape[-1] / box


def simulate_dataset(source: str | Path, out_dir: str | Path, cfg: SimulationConfig, force: bool = False,
                     device: torch.device | str | None = None) -> dict:
    """Write ``particles.mrcs``, ``particles.star`` (true poses), ``truth.mrc`` and ``simulation.json``.

    ``device`` computes the projections and CTFs there (a GPU makes large stacks fast); poses, CTF
    parameters and noise are drawn from the seeded CPU generator on any device, so a seed gives the same
    draws everywhere and images equal to float32 rounding.
    """
    out_dir = Path(out_dir)
    star_path = out_dir / "particles.star"
    if star_path.exists() and not force:
        raise FileExistsError(f"{star_path}: exists; pass --force to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    vol, pixel_size = truth_map(source, cfg.box, cfg.pixel_size, cfg.fill)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, box = cfg.n_particles, cfg.box
    rots = random_rotations(n, generator=gen)
    shifts = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.max_shift
    dfu = cfg.defocus_min + torch.rand(n, generator=gen, dtype=torch.float64) * (cfg.defocus_max - cfg.defocus_min)
    dfv = dfu - torch.rand(n, generator=gen, dtype=torch.float64) * cfg.astigmatism_max
    ang = torch.rand(n, generator=gen, dtype=torch.float64) * 180.0
    ctf = CTFParams.stack(
        n, defocus_u_in_angstroms=dfu, defocus_v_in_angstroms=dfv, astigmatism_angle_in_degrees=ang,
        voltage_in_kilovolts=cfg.voltage, spherical_aberration_in_mm=cfg.spherical_aberration,
        amplitude_contrast=cfg.amplitude_contrast,
    )
    proj = PaddedProjector(vol, device)
    freqs = frequency_grid_2d(box, device=device)  # (L, L, 2)
    # the CTF is evaluated in float64, which MPS lacks: there it is computed on the CPU and moved
    ctf_freqs = freqs.cpu() if freqs.device.type == "mps" else freqs
    clean = torch.empty(n, box, box)
    for s in range(0, n, 256):
        sl = slice(s, min(s + 256, n))
        f = proj.fourier(rots[sl])
        if cfg.ctf:
            f = f * compute_ctf(ctf.index(sl).to(ctf_freqs.device), ctf_freqs, pixel_size).to(freqs.device)
        # RELION: the image is the projection shifted by −origin, i.e. F · exp(+2πi k·origin)
        phase = 2 * torch.pi * (freqs[None] * shifts[sl, None, None, :].float().to(freqs.device)).sum(-1)
        f = f * torch.polar(torch.ones_like(phase), phase)
        clean[sl] = ifft_centered(f, 2).real.cpu()
    signal_var = float(clean.var(dim=(-2, -1)).mean())
    noise_std = (signal_var / cfg.snr) ** 0.5
    images = clean + noise_std * torch.randn(clean.shape, generator=gen)
    write_mrc(out_dir / "particles.mrcs", images.numpy(), pixel_size)
    write_mrc(out_dir / "truth.mrc", vol.numpy(), pixel_size)
    ctf_cols = None
    if cfg.ctf:
        ctf_cols = {
            "rlnDefocusU": dfu.numpy(), "rlnDefocusV": dfv.numpy(), "rlnDefocusAngle": ang.numpy(),
            "rlnVoltage": np.full(n, cfg.voltage), "rlnSphericalAberration": np.full(n, cfg.spherical_aberration),
            "rlnAmplitudeContrast": np.full(n, cfg.amplitude_contrast), "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
        }
    table = ParticleTable(
        source=star_path, stacks=[Path("particles.mrcs")], stack_index=np.zeros(n, np.int64),
        image_index=np.arange(n), pixel_size=pixel_size, box=box, ctf=ctf_cols,
        rotations=rots.to(torch.float64).numpy(), origins=shifts.numpy() * pixel_size,
    )
    write_star(star_path, table, absolute_paths=False, force=True)
    info = {**asdict(cfg), "source": str(source), "pixel_size": pixel_size, "noise_std": noise_std}
    (out_dir / "simulation.json").write_text(json.dumps(info, indent=2))
    return info
