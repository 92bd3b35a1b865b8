"""Particle data I/O: stacks and maps, RELION / cryoSPARC / cryoDRGN metadata, prepared datasets."""

from .atomic import atomic_path
from .dataset import ParticleDataset, normalize_background
from .fsc_csv import write_fsc_csv
from .mrc import Stack, open_stack, read_map, write_mrc
from .particles import ParticleTable
from .readers import open_dataset, read_particles
from .star import read_star, write_star

__all__ = [
    "ParticleDataset",
    "ParticleTable",
    "Stack",
    "atomic_path",
    "normalize_background",
    "open_dataset",
    "open_stack",
    "read_map",
    "read_particles",
    "read_star",
    "write_fsc_csv",
    "write_mrc",
    "write_star",
]
