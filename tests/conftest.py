import os
import tempfile
from pathlib import Path

import pytest
import torch

# napari without a screen (../shared/docs/HEADLESS.md): pytest-xvfb gives a DISPLAY, no settings file is
# read or written, and napari objects touched off the GUI thread raise.
os.environ.pop("QT_QPA_PLATFORM", None)
os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
os.makedirs(os.environ["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
os.environ["NAPARI_CONFIG"] = ""
os.environ["NAPARI_ENSURE_PLUGIN_MAIN_THREAD"] = "1"
# the demo set is cached in the user's cache folder: the tests' own, not the user's
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="semiamort-test-cache-")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = Path(__file__).resolve().parent / "data"

# One intra-op thread: the same arithmetic order on every machine (runs set their own threads).
torch.set_num_threads(1)


@pytest.fixture
def generator():
    """A seeded torch generator: every random draw in the tests comes from one."""
    return torch.Generator().manual_seed(1234)


def simulate_ribosome(out: Path, **settings) -> Path:
    """Images of the bundled 80S ribosome (``settings``: SimulationConfig's) in ``out``; returns ``out``."""
    from importlib.resources import files

    from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), out, SimulationConfig(**settings))
    return out


@pytest.fixture(scope="session")
def ribosome_images():
    """:func:`simulate_ribosome`, for tests that simulate sets of their own."""
    return simulate_ribosome


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """1,000 images of the bundled 80S ribosome at box 32, SNR 1 (simulated, seed 7)."""
    return simulate_ribosome(tmp_path_factory.mktemp("tiny"), n_particles=1000, box=32, snr=1.0, seed=7)


@pytest.fixture(scope="session")
def igg_map():
    """The bundled IgG model as a 32³ map at 8 Å/px (molecule inside the central half of the box)."""
    from importlib.resources import files

    from napari_semiamort.sim.atoms import density_from_atoms, read_atoms

    xyz, z = read_atoms(str(files("napari_semiamort") / "resources" / "1igy.cif.gz"))
    return density_from_atoms(xyz, z, 32, 8.0)


@pytest.fixture
def no_worker_outlives_its_test(qtbot):
    """A napari worker still running when a test's viewer closes fails the next test (HEADLESS.md)."""
    yield
    from superqt.utils import WorkerBase

    WorkerBase.await_workers(msecs=10_000)
    qtbot.wait(10)
