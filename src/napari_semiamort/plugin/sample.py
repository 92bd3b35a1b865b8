"""napari sample data: the bundled demo molecule (80S ribosome, 6ZU5) as a simulated particle stack with
its ground-truth map, ready for the Reconstruction widget.

The set is simulated once per setting into the user's cache folder (``$XDG_CACHE_HOME/napari-semiamort``, else
``~/.cache/napari-semiamort``; written under a temporary name and renamed when complete, so an interrupted
simulation never passes for a set) and read from there each later time: Open Sample then blocks the window for
the reading only, and leaves no new folder behind (it left a 17-67 MB temporary folder each time; issue 19)."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

__all__ = ["demo_folder", "demo_particles", "demo_root"]


def demo_root() -> Path:
    """The cache folder that holds the simulated demo sets."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-semiamort"


def demo_folder(n: int = 1000, box: int = 64, snr: float = 0.1, seed: int = 0) -> Path:
    """The demo set of these settings, simulated on first use (into a temporary folder when the cache cannot be
    written)."""
    from ..sim.simulate import SimulationConfig, simulate_dataset

    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    config = SimulationConfig(n_particles=n, box=box, snr=snr, seed=seed)
    folder = demo_root() / f"demo-6zu5-n{n}-box{box}-snr{snr:g}-seed{seed}"
    if (folder / "particles.star").is_file() and (folder / "truth.mrc").is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    except OSError:  # no writable cache: a temporary folder, as the user's system cleans them
        folder = Path(tempfile.mkdtemp(prefix="semiamort-demo-"))
        simulate_dataset(str(molecule), folder, config)
        return folder
    try:
        simulate_dataset(str(molecule), partial, config)
        os.replace(partial, folder)
    except OSError:
        if not (folder / "particles.star").is_file():  # not another process's complete set: ours failed
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def demo_particles(n: int = 1000, box: int = 64, snr: float = 0.1, seed: int = 0) -> list[tuple]:
    """The demo set's images (CTF, SNR 0.1) and its ground truth, as layers."""
    from .readers import read_map_layer, read_particles_layer

    folder = demo_folder(n, box, snr, seed)
    particles = read_particles_layer(str(folder / "particles.star"))[0]
    truth = read_map_layer(str(folder / "truth.mrc"))[0]
    particles[1]["name"] = "demo particles"
    truth[1]["name"] = "demo truth"
    truth[1]["metadata"]["semiamort_kind"] = "reference"
    truth[1]["visible"] = False
    return [particles, truth]
