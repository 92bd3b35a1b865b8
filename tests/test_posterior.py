"""Pose posteriors: the HEALPix grid, the posterior's mode at the true view, the two modes of a 2-fold
symmetric molecule, and head specialisation."""

from importlib.resources import files

import numpy as np
import pytest
import torch

from napari_semiamort.data.mrc import read_map, write_mrc
from napari_semiamort.physics.fourier import hartley_centered
from napari_semiamort.physics.healpix import healpix_directions, healpix_resolution_deg, nearest_pixel
from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.posterior import direction_grid, head_specialization, pose_posterior, view_directions
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

RIBOSOME = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"


@pytest.mark.parametrize("nside", [1, 2, 8, 16])
def test_our_healpix_centres_are_those_of_the_bsd_healpix_package(nside):
    healpix = pytest.importorskip("healpix")  # a test dependency: pyproject's [test] extra
    theirs = np.stack(healpix.pix2vec(nside, np.arange(12 * nside * nside)), -1)
    np.testing.assert_allclose(healpix_directions(nside), theirs, atol=1e-12)


def test_each_grid_pose_looks_along_its_healpix_direction():
    d, rot = direction_grid(8)
    assert d.shape == (768, 3)
    np.testing.assert_allclose(view_directions(rot), d, atol=1e-12)
    assert np.array_equal(nearest_pixel(d, d), np.arange(768))


def _converged(folder, n_fit=50):
    """A run whose volume is the ground truth, scaled to the images by least squares at the true poses."""
    run = Reconstruction(ReconstructionConfig(particles=str(folder / "particles.star"), threads=1))
    truth, _ = read_map(folder / "truth.mrc")
    with torch.no_grad():
        run.volume.mantissa.copy_(hartley_centered(torch.from_numpy(truth), 3))
        run.volume.exponent.zero_()
        fr = run.frequencies(1.0)
        idx = torch.arange(n_fit)
        batch = run.source.batch(idx, fr)
        pred = run.model.predict(run.data.reference_rotations[idx], None, batch.ctf, fr)
        run.volume.mantissa.mul_(float((pred * batch.obs).sum() / (pred * pred).sum()))
    run.poses = run.data.reference_rotations.clone()
    return run


def test_the_posterior_peaks_within_a_cell_of_the_true_view_for_90_percent_of_50_particles(tmp_path):
    simulate_dataset(str(RIBOSOME), tmp_path, SimulationConfig(n_particles=100, box=64, snr=0.1, seed=1))
    run = _converged(tmp_path)
    truth = run.data.reference_rotations.to(torch.float64)
    cell = healpix_resolution_deg(8)  # 7.3°
    errors = []
    for i in range(50):
        post = pose_posterior(run, i, nside=8, inplane=36, truth=truth)
        assert post.log_posterior.shape == (768,)
        assert np.isclose(np.logaddexp.reduce(post.log_posterior), 0.0)
        errors.append(np.degrees(np.arccos(np.clip(post.mode @ view_directions(truth[i]), -1, 1))))
    # "within one grid cell": the mode is the true direction's cell or a neighbour (≤ 1.5 cells away)
    assert np.mean(np.array(errors) <= 1.5 * cell) >= 0.9, np.round(sorted(errors), 1)


def test_a_two_fold_symmetric_molecule_gives_two_modes_of_equal_height_half_a_turn_apart(tmp_path):
    vol, voxel = read_map(RIBOSOME)
    # C2 about z: V(x, y, z) + V(−x, −y, z), index i ↦ (L − i) mod L keeps the centre L/2 in place
    sym = vol + np.roll(vol[:, ::-1, ::-1], 1, axis=(1, 2))
    write_mrc(tmp_path / "c2.mrc", sym, voxel)
    sim = tmp_path / "sim"
    simulate_dataset(str(tmp_path / "c2.mrc"), sim, SimulationConfig(n_particles=60, box=64, snr=0.1, seed=2))
    run = _converged(sim)
    truth = run.data.reference_rotations.to(torch.float64)
    tilts = np.degrees(np.arccos(np.clip(view_directions(truth)[:, 2], -1, 1)))
    i = int(np.flatnonzero((tilts > 30) & (tilts < 150))[0])  # away from the axis, where the modes merge
    post = pose_posterior(run, i, truth=truth)
    lp, d = post.log_posterior, post.directions
    first = int(np.argmax(lp))
    # the symmetry maps view direction (x, y, z) to (−x, −y, z)
    mirror_dir = d[first] * np.array([-1, -1, 1])
    far = np.degrees(np.arccos(np.clip(d @ d[first], -1, 1))) > 30
    second = int(np.flatnonzero(far)[np.argmax(lp[far])])
    apart = np.degrees(np.arccos(np.clip(d[second] @ mirror_dir, -1, 1)))
    assert apart <= 1.5 * healpix_resolution_deg(8)
    assert abs(lp[first] - lp[second]) < 0.5  # comparable heights (equal up to interpolation)
    both = np.logaddexp(lp[first], lp[second])
    assert both > np.log(0.5)  # the two modes hold most of the posterior mass


def test_head_specialisation_counts_every_particle_once_per_winning_head(tmp_path):
    simulate_dataset(str(RIBOSOME), tmp_path, SimulationConfig(n_particles=200, box=32, snr=1.0, seed=4))
    cfg = ReconstructionConfig(particles=str(tmp_path / "particles.star"), threads=1, heads=6, epochs=2,
                               switch_epoch=2, restarts=1, batch_size=50)
    run = Reconstruction(cfg)
    for _ in run:
        pass
    spec = head_specialization(run, nside=2)
    assert spec.wins.shape == (48, 6) and spec.wins.sum() == 200
    np.testing.assert_array_equal(spec.head_count, np.bincount(run.winners.numpy(), minlength=6))
    rates = spec.win_rate[spec.wins.sum(1) > 0]
    np.testing.assert_allclose(rates.sum(1), 1.0)
    assert spec.head_error_deg is not None and spec.head_error_deg.shape == (6,)


@pytest.mark.parametrize("stage1", ["heads", "grid"])
def test_inspect_writes_posterior_maps_and_head_specialisation_for_a_run(tmp_path, capsys, stage1):
    from napari_semiamort.cli.main import main

    simulate_dataset(str(RIBOSOME), tmp_path / "sim", SimulationConfig(n_particles=150, box=32, snr=1.0, seed=5))
    run = tmp_path / "run"
    assert main(["reconstruct", str(tmp_path / "sim" / "particles.star"), "-o", str(run), "--epochs", "3",
                 "--switch-epoch", "2", "--stage1", stage1, "--heads", "5", "--batch-size", "50", "--threads", "1",
                 "--watch", "3"]) == 0
    assert main(["inspect", str(run), "--particles", "3", "10", "--nside", "4"]) == 0
    for name in ("posterior_000003.png", "posterior_000010.png"):
        assert (run / "inspect" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "particle 3:" in out and "from the truth" in out
    # head specialisation only where stage 1 had heads; the grid's 8 candidates otherwise
    assert (run / "inspect" / "head_specialization.png").is_file() == (stage1 == "heads")
    assert ("winning head" in out and "of 5" in out) if stage1 == "heads" else "best grid candidate" in out
    # the watched particle's path was recorded once per epoch and survives the checkpoint
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert len(state["paths"][3]) == 3 and state["winners"].max() < 5
    assert main(["inspect", str(tmp_path / "nope")]) == 1
