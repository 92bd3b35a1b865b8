"""Particle data I/O: MRC stacks and maps, STAR files, datasets."""

from .dataset import ParticleDataset, normalize_background
from .mrc import atomic_path, open_stack, read_map, write_mrc
from .star import read_particle_star, write_particle_star

__all__ = [
    "ParticleDataset",
    "atomic_path",
    "normalize_background",
    "open_stack",
    "read_map",
    "read_particle_star",
    "write_mrc",
    "write_particle_star",
]
