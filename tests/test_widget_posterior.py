"""The pose posterior in napari: choose a particle, the sphere and its points appear and follow the run."""

from importlib.resources import files

import numpy as np
import pytest

from napari_semiamort._qt.widget import SPHERE, SPHERE_POINTS, ReconstructionWidget
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

pytestmark = pytest.mark.usefixtures("no_worker_outlives_its_test")


def test_choosing_a_particle_shows_its_posterior_sphere_and_points_that_update(make_napari_viewer, tmp_path,
                                                                               qtbot):
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), tmp_path / "sim", SimulationConfig(n_particles=256, box=24, snr=1.0, seed=3))
    viewer = make_napari_viewer(strict_qt=True)
    w = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(w, name="semiamort")
    w.form.set_values(particles=tmp_path / "sim" / "particles.star", stage1="heads", heads=4, switch_epoch=2, epochs=40,
                      batch_size=32, device="cpu")
    w.outdir.setText(str(tmp_path / "run"))
    w.start()
    qtbot.waitUntil(lambda: w.info is not None, timeout=30_000)
    w.posterior_particle.setValue(7)
    w.show_posterior()
    qtbot.waitUntil(lambda: SPHERE in viewer.layers and SPHERE_POINTS in viewer.layers, timeout=30_000)
    sphere = viewer.layers[SPHERE]
    assert sphere.metadata["particle"] == 7 and sphere.data[0].shape[1] == 3
    first = np.array(sphere.data[2])
    labels = list(viewer.layers[SPHERE_POINTS].features["label"])
    assert labels[:5] == ["1", "2", "3", "4", "pose"] and "truth" in labels  # 4 heads, the pose, the truth
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[SPHERE].data[2], first), timeout=30_000)
    assert w.plots.posterior.index == 7
    w.stop()
    qtbot.waitUntil(lambda: w.worker is None, timeout=5_000)
    # on demand after the run: another particle, computed from the run in memory
    w.posterior_particle.setValue(11)
    w.show_posterior()
    qtbot.waitUntil(lambda: viewer.layers[SPHERE].metadata["particle"] == 11, timeout=10_000)


def test_a_posterior_on_demand_from_a_finished_runs_checkpoint(make_napari_viewer, tmp_path, qtbot):
    from napari_semiamort.cli.main import main

    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), tmp_path / "sim", SimulationConfig(n_particles=128, box=24, snr=1.0, seed=4))
    run_dir = tmp_path / "run"
    assert main(["reconstruct", str(tmp_path / "sim" / "particles.star"), "-o", str(run_dir), "--epochs", "2",
                 "--switch-epoch", "1",
                 "--stage1", "heads", "--heads", "3", "--batch-size", "32", "--threads", "1"]) == 0
    viewer = make_napari_viewer(strict_qt=True)
    w = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(w, name="semiamort")
    w.outdir.setText(str(run_dir))
    w.posterior_particle.setValue(5)
    w.show_posterior()
    qtbot.waitUntil(lambda: SPHERE in viewer.layers, timeout=30_000)
    assert viewer.layers[SPHERE].metadata["particle"] == 5
    assert list(viewer.layers[SPHERE_POINTS].features["label"])[:4] == ["1", "2", "3", "pose"]
    # not a black canvas in 2D: the run's map beside the sphere, in 3D, and its curves
    assert "semiamort volume" in viewer.layers and viewer.dims.ndisplay == 3 and len(w.plots.history) == 2
