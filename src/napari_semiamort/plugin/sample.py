"""napari sample data: the bundled demo molecule (80S ribosome, 6ZU5) as a simulated particle stack with
its ground-truth map, ready for the Reconstruction widget."""

from __future__ import annotations

import tempfile
from importlib.resources import files
from pathlib import Path

__all__ = ["demo_particles"]


def demo_particles(n: int = 1000, box: int = 64, snr: float = 0.1, seed: int = 0) -> list[tuple]:
    """Simulate ``n`` images (CTF, SNR 0.1) into a temporary folder; return the particles and the truth."""
    from ..sim.simulate import SimulationConfig, simulate_dataset
    from .readers import read_map_layer, read_particles_layer

    folder = Path(tempfile.mkdtemp(prefix="semiamort-demo-"))
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), folder, SimulationConfig(n_particles=n, box=box, snr=snr, seed=seed))
    particles = read_particles_layer(str(folder / "particles.star"))[0]
    truth = read_map_layer(str(folder / "truth.mrc"))[0]
    particles[1]["name"] = "demo particles"
    truth[1]["name"] = "demo truth"
    truth[1]["metadata"]["semiamort_kind"] = "reference"
    truth[1]["visible"] = False
    return [particles, truth]
