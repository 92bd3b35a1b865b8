"""Simulation of particle stacks from atomic models or maps."""

from .atoms import density_from_atoms, read_atoms
from .project import PaddedProjector
from .simulate import SimulationConfig, simulate_dataset, truth_map

__all__ = [
    "PaddedProjector",
    "SimulationConfig",
    "density_from_atoms",
    "read_atoms",
    "simulate_dataset",
    "truth_map",
]
