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
from .realistic import JUNK_KINDS, draw_ctf_rows, falling_noise, read_ctf_table, realistic_rng

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
    # Realism (sim/realistic.py); all off by default, and switching them on leaves the other draws as they were
    ctf_table: str | None = None  # each image's CTF drawn from this real table (cryoDRGN .pkl, RELION .star, .cs)
    noise_falloff: float = 0.0  # Å²: noise power ∝ NOISE_FLOOR + exp(−B k²/4), k in 1/Å; 0: white noise
    bfactor: float = 0.0  # Å²: the signal's envelope exp(−B k²/4); not in the STAR (real data do not state it)
    scale_spread: float = 0.0  # each image's signal × exp(N(0, σ²)): ice thickness and dose vary
    junk_fraction: float = 0.0  # images that hold no particle of the molecule (listed in junk.txt)
    junk_kind: str = "ice"  # "ice": noise alone; "other": projections of junk_source, another molecule
    junk_source: str | None = None

    def validate(self) -> None:
        checks = [
            (self.n_particles >= 1 and self.box >= 8 and self.box % 2 == 0,
             "n must be positive and box an even number of at least 8"),
            (self.snr > 0, "snr must be positive"),
            (min(self.noise_falloff, self.bfactor, self.scale_spread, self.max_shift) >= 0,
             "noise falloff, B-factor, scale spread and maximum shift must be at least 0"),
            (0 <= self.junk_fraction < 1, "the junk fraction must lie in [0, 1)"),
            (self.junk_kind in JUNK_KINDS, f"the junk kind must be one of {', '.join(JUNK_KINDS)}"),
            (self.junk_kind != "other" or self.junk_fraction == 0 or self.junk_source,
             "junk of kind 'other' needs a junk source (a model or map of another molecule)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid simulation: {msg}")


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
    cfg.validate()
    out_dir = Path(out_dir)
    star_path = out_dir / "particles.star"
    if star_path.exists() and not force:
        raise FileExistsError(f"{star_path}: exists; pass --force to overwrite")
    table_ctf = read_ctf_table(cfg.ctf_table) if cfg.ctf_table else None  # a bad table fails before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    vol, pixel_size = truth_map(source, cfg.box, cfg.pixel_size, cfg.fill)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, box = cfg.n_particles, cfg.box
    rots = random_rotations(n, generator=gen)
    shifts = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.max_shift
    ctf_values = _draw_ctf(cfg, n, gen, table_ctf)
    extra = _draw_realism(cfg, n)
    ctf = CTFParams.stack(n, **{_CTF_NAMES[k]: torch.from_numpy(v) for k, v in ctf_values.items()})
    other = None
    if extra["junk"].size and cfg.junk_kind == "other":
        other = PaddedProjector(truth_map(cfg.junk_source, box, pixel_size, cfg.fill)[0], device)
    clean = _project(PaddedProjector(vol, device), other, rots, shifts, ctf if cfg.ctf else None, extra, pixel_size,
                     cfg.bfactor, box, device)
    particles = np.setdiff1d(np.arange(n), extra["junk"])
    signal_var = float(clean[torch.from_numpy(particles)].var(dim=(-2, -1)).mean())
    noise_std = (signal_var / cfg.snr) ** 0.5
    noise = torch.randn(clean.shape, generator=gen)
    if cfg.noise_falloff > 0:
        noise = falling_noise(noise, pixel_size, cfg.noise_falloff)
    images = clean + noise_std * noise
    write_mrc(out_dir / "particles.mrcs", images.numpy(), pixel_size)
    write_mrc(out_dir / "truth.mrc", vol.numpy(), pixel_size)
    ctf_cols = None
    if cfg.ctf:
        ctf_cols = {k: np.broadcast_to(v, (n,)).astype(np.float64) for k, v in ctf_values.items()}
        ctf_cols["rlnCtfBfactor"] = np.zeros(n)  # the envelope (bfactor) is the data's, unknown to the user
    table = ParticleTable(
        source=star_path, stacks=[Path("particles.mrcs")], stack_index=np.zeros(n, np.int64),
        image_index=np.arange(n), pixel_size=pixel_size, box=box, ctf=ctf_cols,
        rotations=rots.to(torch.float64).numpy(), origins=shifts.numpy() * pixel_size,
    )
    write_star(star_path, table, absolute_paths=False, force=True)
    junk_file = out_dir / "junk.txt"
    junk_file.unlink(missing_ok=True)
    if extra["junk"].size:
        junk_file.write_text("".join(f"{i}\n" for i in extra["junk"]))
    info = {**asdict(cfg), "source": str(source), "pixel_size": pixel_size, "noise_std": noise_std,
            "junk_count": int(extra["junk"].size)}
    (out_dir / "simulation.json").write_text(json.dumps(info, indent=2))
    return info


_CTF_NAMES = {"rlnDefocusU": "defocus_u_in_angstroms", "rlnDefocusV": "defocus_v_in_angstroms",
              "rlnDefocusAngle": "astigmatism_angle_in_degrees", "rlnVoltage": "voltage_in_kilovolts",
              "rlnSphericalAberration": "spherical_aberration_in_mm", "rlnAmplitudeContrast": "amplitude_contrast",
              "rlnPhaseShift": "phase_shift_in_degrees"}


def _draw_ctf(cfg: SimulationConfig, n: int, gen: torch.Generator, table: dict | None) -> dict[str, np.ndarray]:
    """Each image's CTF parameters (RELION names): defocus uniform in the configured range, or rows of a real
    table. The uniform draws are made either way, so that the draws after them stay the same."""
    dfu = cfg.defocus_min + torch.rand(n, generator=gen, dtype=torch.float64) * (cfg.defocus_max - cfg.defocus_min)
    dfv = dfu - torch.rand(n, generator=gen, dtype=torch.float64) * cfg.astigmatism_max
    ang = torch.rand(n, generator=gen, dtype=torch.float64) * 180.0
    if table is not None:
        return draw_ctf_rows(table, n, realistic_rng(cfg.seed + 1))
    return {"rlnDefocusU": dfu.numpy(), "rlnDefocusV": dfv.numpy(), "rlnDefocusAngle": ang.numpy(),
            "rlnVoltage": np.full(n, cfg.voltage), "rlnSphericalAberration": np.full(n, cfg.spherical_aberration),
            "rlnAmplitudeContrast": np.full(n, cfg.amplitude_contrast), "rlnPhaseShift": np.zeros(n)}


def _draw_realism(cfg: SimulationConfig, n: int) -> dict[str, np.ndarray]:
    """The junk images (sorted indices) and each image's signal scale."""
    rng = realistic_rng(cfg.seed)
    count = int(round(cfg.junk_fraction * n))
    junk = np.sort(rng.choice(n, count, replace=False)) if count else np.zeros(0, np.int64)
    scale = np.exp(rng.normal(0.0, cfg.scale_spread, n)) if cfg.scale_spread > 0 else np.ones(n)
    return {"junk": junk, "scale": scale}


def _project(proj: PaddedProjector, other: PaddedProjector | None, rots: torch.Tensor, shifts: torch.Tensor,
             ctf: CTFParams | None, extra: dict, pixel_size: float, bfactor: float, box: int,
             device) -> torch.Tensor:
    """The noise-free images `(N, L, L)`: projections (of the junk molecule for junk rows of kind "other",
    nothing for empty ice), the B-factor envelope, the CTF, the shift, the per-image scale."""
    n = rots.shape[0]
    freqs = frequency_grid_2d(box, device=device)  # (L, L, 2)
    # the CTF is evaluated in float64, which MPS lacks: there it is computed on the CPU and moved
    ctf_freqs = freqs.cpu() if freqs.device.type == "mps" else freqs
    junk = torch.zeros(n, dtype=torch.bool)
    junk[torch.from_numpy(extra["junk"])] = True
    envelope = torch.exp(-bfactor * (freqs / pixel_size).square().sum(-1) / 4) if bfactor > 0 else None
    clean = torch.empty(n, box, box)
    for s in range(0, n, 256):
        sl = slice(s, min(s + 256, n))
        f = proj.fourier(rots[sl])
        if other is not None and bool(junk[sl].any()):
            rows = torch.nonzero(junk[sl]).squeeze(1)
            f[rows.to(f.device)] = other.fourier(rots[sl][rows])
        if envelope is not None:
            f = f * envelope
        if ctf is not None:
            f = f * compute_ctf(ctf.index(sl).to(ctf_freqs.device), ctf_freqs, pixel_size).to(freqs.device)
        # RELION: the image is the projection shifted by −origin, i.e. F · exp(+2πi k·origin)
        phase = 2 * torch.pi * (freqs[None] * shifts[sl, None, None, :].float().to(freqs.device)).sum(-1)
        f = f * torch.polar(torch.ones_like(phase), phase)
        clean[sl] = ifft_centered(f, 2).real.cpu()
    if other is None:
        clean[junk] = 0.0  # empty ice: the noise alone
    if not np.all(extra["scale"] == 1):
        clean *= torch.from_numpy(extra["scale"]).to(clean.dtype)[:, None, None]
    return clean
