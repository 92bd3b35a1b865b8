"""One score of a map against the truth (metrics.truth.score_against_truth), and the places that use it
agreeing: ``semiamort fsc`` and the run's own epoch metrics give the same figures on the same map, also when
the map's origin drifted (as it does where shifts are estimated)."""

from __future__ import annotations

import re
from importlib.resources import files

import numpy as np
import pytest
import torch

from napari_semiamort.cli.main import main
from napari_semiamort.data.fsc_csv import write_fsc_csv
from napari_semiamort.data.mrc import read_map, write_mrc
from napari_semiamort.data.star import read_star, write_star
from napari_semiamort.metrics.alignment import rotate_map
from napari_semiamort.metrics.fsc import fsc
from napari_semiamort.metrics.truth import score_against_truth
from napari_semiamort.physics.fourier import resample_map
from napari_semiamort.physics.so3 import exp_so3, random_rotations

RIBOSOME = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
DRIFT = (1, -2, 2)  # (z, y, x) voxels: a map whose origin drifted


@pytest.fixture(scope="module")
def truth():
    """The bundled ribosome at box 32 (16.6 Å/px)."""
    m, voxel = read_map(RIBOSOME)
    return resample_map(torch.from_numpy(m), 32), voxel * 2


@pytest.fixture(scope="module")
def frame():
    """True poses, and a run's poses in another frame ``G``: ``est_i G = ref_i``."""
    ref = random_rotations(200, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g = exp_so3(torch.tensor([0.5, -0.8, 1.2], dtype=torch.float64))
    return ref, g


def drifted(volume: torch.Tensor) -> torch.Tensor:
    return torch.roll(volume, DRIFT, dims=(0, 1, 2))


def test_the_truth_itself_scores_one_at_every_shell(truth):
    volume, pixel = truth
    s = score_against_truth(volume, volume, pixel)
    assert np.allclose(s.curve, 1.0) and s.offset_norm_px < 1e-6
    assert s.resolution_05 == s.resolution_0143 == pytest.approx(2 * pixel)
    assert s.poses is None and s.masked_curve is None and not s.contrast_inverted
    assert "pose_error_mean_deg" not in s.metrics() and "fsc_curve_masked" not in s.metrics()


def test_a_drifted_map_is_moved_back_and_the_offset_reported(truth):
    volume, pixel = truth
    s = score_against_truth(drifted(volume), volume, pixel)
    assert np.allclose(s.offset_px, [-2, 2, -1], atol=1e-3)  # (x, y, z): the drift undone
    assert s.offset_norm_px == pytest.approx(3.0, abs=1e-3)
    assert s.curve.min() > 0.999
    assert s.metrics()["reference_offset_px"] == pytest.approx(3.0, abs=1e-3)


def test_a_map_in_another_frame_is_rotated_back_by_the_poses(truth, frame):
    volume, pixel = truth
    ref, g = frame
    run_map = rotate_map(volume, g.T.float())  # V_run(G u) = V(u)
    s = score_against_truth(drifted(run_map), volume, pixel, ref @ g.T, ref)
    assert not s.poses.mirrored and s.poses.mean_error < 1e-3 and s.pose_errors_deg.shape == (200,)
    assert s.offset_norm_px == pytest.approx(3.0, abs=0.05)  # the drift, seen in the truth's frame
    assert s.curve[: 32 // 3].min() > 0.98  # two trilinear resamplings blur the highest shells only
    assert s.resolution_05 < 2.5 * pixel
    m = s.metrics()
    assert list(m)[:4] == ["pose_error_mean_deg", "pose_error_median_deg", "mirrored", "reference_offset_px"]
    assert len(m["fsc_curve"]) == 17 and m["fsc_0.5_angstrom"] == s.resolution_05


def test_the_mirror_hand_is_found_and_undone(truth, frame):
    volume, pixel = truth
    ref, g = frame
    run_map = rotate_map(volume, (g.T @ MIRROR).float())  # the mirror image, in the frame G
    s = score_against_truth(run_map, volume, pixel, MIRROR @ ref @ g.T @ MIRROR, ref)
    assert s.poses.mirrored and s.metrics()["mirrored"] is True
    assert s.curve[: 32 // 3].min() > 0.98


def test_the_masked_curve_sees_the_particle_not_the_solvent(truth, generator):
    volume, pixel = truth
    noisy = volume + 0.3 * volume.std() * torch.randn(volume.shape, generator=generator)
    s = score_against_truth(noisy, volume, pixel, mask_radius_px=10.0)
    assert s.masked_curve is not None and not np.allclose(s.masked_curve, s.curve)
    assert s.masked_curve[8:].mean() > s.curve[8:].mean()  # less of the box's noise within the mask
    assert s.fsc_outer_masked == pytest.approx(float(np.mean(s.masked_curve[8:17])))
    m = s.metrics()
    for key in ("fsc_curve_masked", "fsc_0.5_angstrom_masked", "fsc_0.143_angstrom_masked"):
        assert key in m
    assert m["fsc_0.5_angstrom_masked"] == s.resolution_05_masked


def test_an_inverted_map_is_flipped_only_when_allowed(truth):
    volume, pixel = truth
    flipped = score_against_truth(-volume, volume, pixel, allow_inverted=True)
    assert flipped.contrast_inverted and flipped.curve.min() > 0.999
    kept = score_against_truth(-volume, volume, pixel)
    assert not kept.contrast_inverted and kept.resolution_05 > 10 * pixel


def test_maps_of_different_boxes_or_unmatched_poses_are_refused(truth, frame):
    volume, pixel = truth
    with pytest.raises(ValueError, match=r"\(16, 16, 16\).*\(32, 32, 32\)"):
        score_against_truth(volume[::2, ::2, ::2], volume, pixel)
    ref, _ = frame
    with pytest.raises(ValueError, match="200.*100"):
        score_against_truth(volume, volume, pixel, ref, ref[:100])
    with pytest.raises(ValueError, match="both"):
        score_against_truth(volume, volume, pixel, ref)


def test_the_fsc_csv_has_one_column_per_curve(tmp_path):
    path = write_fsc_csv(tmp_path / "fsc.csv", {"halves": np.linspace(1, 0, 9), "reference": np.ones(9)}, 16, 2.0)
    table = np.genfromtxt(path, delimiter=",", names=True)
    assert table.dtype.names == ("shell", "frequency_per_angstrom", "resolution_angstrom", "fsc_halves",
                                 "fsc_reference")
    assert table["resolution_angstrom"][-1] == pytest.approx(4.0) and np.isinf(table["resolution_angstrom"][0])
    with pytest.raises(ValueError, match="'bad': 5 shells"):
        write_fsc_csv(tmp_path / "bad.csv", {"bad": np.ones(5)}, 16, 2.0)


# ---------------------------------------------------------------- semiamort fsc and the run agree


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """64 simulated images of the ribosome at box 32 with their true poses (particles.star) and truth.mrc."""
    from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

    out = tmp_path_factory.mktemp("truth_sim")
    simulate_dataset(str(RIBOSOME), out, SimulationConfig(n_particles=64, box=32, snr=1.0, seed=7))
    return out


def _fsc_command(capsys, *args: str) -> tuple[float, float, str]:
    capsys.readouterr()
    assert main(["fsc", *args]) == 0
    out = capsys.readouterr().out
    r05, r0143 = re.search(r"^FSC=0\.5: ([\d.]+) Å   FSC=0\.143: ([\d.]+) Å", out, re.MULTILINE).groups()
    return float(r05), float(r0143), out


def test_semiamort_fsc_scores_a_drifted_map_as_score_against_truth(sim, tmp_path, capsys):
    """`semiamort fsc` fits the map's origin as the run's metrics do: a map one voxel off scores ~20 Å at
    any resolution otherwise, and the two would disagree."""
    truth, pixel = read_map(sim / "truth.mrc")
    table = read_star(sim / "particles.star", require_stacks=False)
    g = exp_so3(torch.tensor([0.3, 1.1, -0.4], dtype=torch.float64))
    rotations = table.rotations @ g.T.numpy()  # the run's frame G
    write_star(tmp_path / "poses.star", table, rotations, force=True)
    run_map = drifted(rotate_map(torch.from_numpy(truth), g.T.float()))
    write_mrc(tmp_path / "map.mrc", run_map.numpy(), pixel)
    r05, r0143, out = _fsc_command(capsys, str(tmp_path / "map.mrc"), str(sim / "truth.mrc"), "--poses",
                                   str(tmp_path / "poses.star"), "--reference-poses", str(sim / "particles.star"),
                                   "--csv", str(tmp_path / "fsc.csv"))
    est = torch.from_numpy(read_star(tmp_path / "poses.star", require_stacks=False).rotations)
    s = score_against_truth(run_map, torch.from_numpy(truth), pixel, est, torch.from_numpy(table.rotations))
    assert r05 == pytest.approx(s.resolution_05, abs=0.006) and r0143 == pytest.approx(s.resolution_0143, abs=0.006)
    assert s.resolution_05 < 2.5 * pixel  # the drift undone: without the fit it is ~the box length
    assert "same hand" in out and "origin fitted: map1 moved by 3.0" in out
    csv = np.genfromtxt(tmp_path / "fsc.csv", delimiter=",", names=True)
    assert np.allclose(csv["fsc_reference"], s.curve, atol=1e-5)


def test_semiamort_fsc_and_the_runs_metrics_agree_on_a_drifted_map(sim, tmp_path, capsys):
    """The run's epoch metrics (run.metrics.epoch_scores: what its next epoch end logs) and `semiamort fsc`
    on the run's map and poses give the same FSC, unmasked and within the mask."""
    from napari_semiamort.run import Reconstruction, ReconstructionConfig
    from napari_semiamort.run.metrics import epoch_scores

    truth, pixel = read_map(sim / "truth.mrc")
    mask = 0.6 * 32 * pixel
    run = Reconstruction(ReconstructionConfig(particles=str(sim / "particles.star"),
                                              reference_map=str(sim / "truth.mrc"), epochs=1, switch_epoch=1,
                                              heads=2, restarts=1, threads=1, mask_diameter=mask))
    run.volume.set_from_map(drifted(torch.from_numpy(truth)))
    run.poses = run.data.reference_rotations.clone()
    m = epoch_scores(run)
    write_mrc(tmp_path / "map.mrc", run.volume_map(), run.data.pixel_size)
    star = str(sim / "particles.star")
    r05, r0143, out = _fsc_command(capsys, str(tmp_path / "map.mrc"), str(sim / "truth.mrc"), "--poses", star,
                                   "--reference-poses", star, "--mask-diameter", f"{mask}")
    assert m["reference_offset_px"] == pytest.approx(3.0, abs=0.01)
    assert r05 == pytest.approx(m["fsc_0.5_angstrom"], abs=0.006)
    assert r0143 == pytest.approx(m["fsc_0.143_angstrom"], abs=0.006)
    masked = re.search(r"within the mask: FSC=0\.5: ([\d.]+) Å", out).group(1)
    assert float(masked) == pytest.approx(m["fsc_0.5_angstrom_masked"], abs=0.006)
    assert m["fsc_0.5_angstrom"] < 2.5 * pixel  # the drift undone by both


def test_semiamort_fsc_compares_half_maps_as_they_are(sim, tmp_path, capsys):
    """Half maps share frame and origin: with --halves they are compared as they are (the run's fsc_halves),
    where the origin fit would have hidden a real misregistration."""
    truth, pixel = read_map(sim / "truth.mrc")
    off = drifted(torch.from_numpy(truth))
    write_mrc(tmp_path / "half1.mrc", off.numpy(), pixel)
    r05, _, out = _fsc_command(capsys, str(tmp_path / "half1.mrc"), str(sim / "truth.mrc"), "--halves",
                               "--csv", str(tmp_path / "fsc.csv"))
    csv = np.genfromtxt(tmp_path / "fsc.csv", delimiter=",", names=True)
    assert np.allclose(csv["fsc_halves"], fsc(off, torch.from_numpy(truth)), atol=1e-5)
    assert "origin fitted" not in out
    fitted, _, _ = _fsc_command(capsys, str(tmp_path / "half1.mrc"), str(sim / "truth.mrc"))
    assert fitted < r05  # the fit would have undone the 3-voxel offset
    assert main(["fsc", str(tmp_path / "half1.mrc"), str(sim / "truth.mrc"), "--halves", "--poses", "a.star",
                 "--reference-poses", "b.star"]) == 1
    assert "--halves compares a run's two half maps" in capsys.readouterr().err
