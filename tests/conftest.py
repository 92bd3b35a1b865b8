from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = Path(__file__).resolve().parent / "data"

# One intra-op thread: the same arithmetic order on every machine (runs set their own threads).
torch.set_num_threads(1)


@pytest.fixture
def generator():
    """A seeded torch generator: every random draw in the tests comes from one."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def igg_map():
    """The bundled IgG model as a 32³ map at 8 Å/px (molecule inside the central half of the box)."""
    from importlib.resources import files

    from napari_semiamort.sim.atoms import density_from_atoms, read_atoms

    xyz, z = read_atoms(str(files("napari_semiamort") / "resources" / "1igy.cif.gz"))
    return density_from_atoms(xyz, z, 32, 8.0)
