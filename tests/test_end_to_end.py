"""The method works: on a tiny simulated problem, poses are recovered and the map matches the truth."""

import json
from importlib.resources import files

import numpy as np
import pytest
import torch

from napari_semiamort.data.mrc import read_map
from napari_semiamort.metrics.alignment import align_poses, rotate_map
from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), out, SimulationConfig(n_particles=1000, box=32, snr=1.0, seed=7))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_reconstruction_recovers_poses_and_map(tiny_dataset, tmp_path):
    cfg = ReconstructionConfig(
        particles=str(tiny_dataset / "particles.star"), epochs=24, switch_epoch=16, seed=1, threads=1, heads=24,
        batch_size=32,
        reference_map=str(tiny_dataset / "truth.mrc"),
    )
    run = Reconstruction(cfg, run_dir=tmp_path)
    snapshots = list(run)
    from napari_semiamort.run.loop import restart_gap

    trials = [s for s in snapshots if s.epoch_end and s.restart is not None]
    last = {s.restart: s.metrics["loss"] for s in trials if s.metrics["epoch"] == 5}
    tried = len(last)
    assert 3 <= tried <= 6
    assert [(s.restart, s.metrics["epoch"]) for s in trials] == [(k, e) for k in range(tried) for e in range(1, 6)]
    # restarts were added only while no loss stood out (at SNR 1 every start is good: they are close)
    losses = [last[k] for k in range(tried)]
    assert all(restart_gap(losses[:k]) < cfg.restart_margin for k in range(3, tried))
    assert tried == 6 or restart_gap(losses) >= cfg.restart_margin
    assert run.history[4]["restart_losses"] == pytest.approx(losses, abs=1e-6)
    ends = [s for s in snapshots if s.epoch_end and s.restart is None]
    assert [s.metrics["epoch"] for s in ends] == list(range(6, 25))
    # the restart that goes on is the one with the lowest loss at its last epoch
    assert run.history[4]["chosen_restart"] == min(last, key=last.get)
    assert snapshots[-1].progress == 1.0
    assert {s.stage for s in ends} == {"autoencode", "autodecode"}
    al = align_poses(run.poses, run.data.reference_rotations)
    assert al.median_error < 4.0 and al.mean_error < 15.0
    truth, _ = read_map(tiny_dataset / "truth.mrc")
    aligned = rotate_map(torch.from_numpy(run.volume_map()), al.transform).numpy()
    assert np.corrcoef(aligned.ravel(), truth.ravel())[0, 1] > 0.9
    # the pose error falls after the switch
    err = {s.metrics["epoch"]: s.metrics["pose_error_median_deg"] for s in ends}
    assert err[24] < 0.5 * err[cfg.switch_epoch]
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "metrics.jsonl").is_file()


def test_runs_with_the_same_seed_are_identical_and_another_seed_differs(tiny_dataset):
    def run(seed):
        cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=2, switch_epoch=1,
                                   heads=4, seed=seed, threads=1, reassign_epochs=0)
        r = Reconstruction(cfg)
        losses = [s.loss for s in r]
        return losses, r.volume_map()

    a, b, c = run(3), run(3), run(4)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert a[0] != c[0]


def test_snapshots_carry_volume_and_watched_candidates(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=2, switch_epoch=1, heads=3,
                               threads=1, snapshot_every=5, watch=[0, 7], reassign_epochs=0)
    snaps = list(Reconstruction(cfg))
    full = [s for s in snaps if s.volume is not None]
    assert len(full) >= 3 and all(s.volume.shape == (32, 32, 32) for s in full)
    stage1 = next(s for s in full if s.stage == "autoencode")
    assert [w.index for w in stage1.watched] == [0, 7]
    assert stage1.watched[0].candidates.shape == (3, 32, 32)
    assert stage1.watched[0].winner == int(np.argmin(stage1.watched[0].losses))
    stage2 = next(s for s in full if s.stage == "autodecode")
    assert stage2.watched[0].candidates.shape == (1, 32, 32)
    assert not np.array_equal(full[0].volume, full[-1].volume)
    with pytest.raises(AttributeError):
        full[0].loss = 0.0  # snapshots are immutable


@pytest.mark.parametrize(
    "options",
    [
        {"estimate_shifts": True},
        {"estimate_shifts": True, "shift_search": 0},
        {"loss": "l1", "noise_model": "white"},
        {"noise_model": "shell-residual", "backbone": "vgg16"},
        # the paper's stage 1: heads alone propose the poses, full band, no restarts or reassignment
        {"inplane_search": 0, "heads": 7, "spread_heads": False, "autoencode_min_freq": 1.0,
         "autoencode_max_freq": 1.0, "reassign_epochs": 0},
    ],
    ids=["shifts", "regressed-shifts", "l1-white", "residual-noise-vgg16", "paper-stage1"],
)
def test_every_documented_option_runs_both_stages_and_writes_outputs(tiny_dataset, tmp_path, options):
    from napari_semiamort.data.star import read_star_columns
    from napari_semiamort.run.outputs import write_outputs

    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=1,
                               threads=1, **{"heads": 4, "reassign_epochs": 1, **options})
    run = Reconstruction(cfg, run_dir=tmp_path)
    ends = [s for s in run if s.epoch_end]
    assert [s.stage for s in ends] == ["autoencode", "autodecode", "autodecode"]
    assert all(np.isfinite(s.loss) for s in ends) and np.isfinite(run.volume_map()).all()
    write_outputs(run, tmp_path)
    cols = read_star_columns(tmp_path / "poses.star")
    origins = np.stack([cols["rlnOriginXAngst"], cols["rlnOriginYAngst"]], -1)
    if options.get("estimate_shifts"):
        assert run.shifts is not None and np.abs(origins).max() > 0
        assert np.abs(origins).max() <= cfg.max_shift * 32 * run.data.pixel_size + 1e-3
    else:
        assert np.abs(origins).max() == 0


def test_noise_model_starts_from_the_background_without_a_zero_dc_shell(tiny_dataset):
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1))
    var = run.noise.variance
    # the background of normalised images has zero mean: a DC variance of ~0 would weight the DC 1000-fold
    assert float(var[0]) == float(var[1])
    # white simulated noise: the shells agree within sampling error
    inner = var[1 : run.size // 2]
    assert float(inner.max() / inner.min()) < 1.5


def test_the_reference_fsc_is_also_taken_within_the_users_mask(tiny_dataset):
    def last_metrics(**extra):
        cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=2, switch_epoch=1,
                                   heads=4, threads=1, reassign_epochs=0,
                                   reference_map=str(tiny_dataset / "truth.mrc"), **extra)
        run = Reconstruction(cfg)
        return [s for s in run if s.epoch_end][-1].metrics, run

    plain, _ = last_metrics()
    assert "fsc_0.5_angstrom_masked" not in plain
    pixel = json.loads((tiny_dataset / "simulation.json").read_text())["pixel_size"]
    masked, run = last_metrics(mask_diameter=0.7 * 32 * pixel)
    assert len(masked["fsc_curve_masked"]) == len(masked["fsc_curve"])
    assert masked["fsc_curve_masked"] != masked["fsc_curve"]
    assert 2 * run.data.pixel_size <= masked["fsc_0.5_angstrom_masked"] <= 32 * run.data.pixel_size


def test_stage1_shift_search_scores_equal_the_shifted_predictions_loss(tiny_dataset):
    """The shift search's scores are the Gaussian loss of the prediction turned by each in-plane angle and
    shifted by each grid shift. At 0° and 90° the turned frequencies fall on the pixel grid, so the
    resampling trick is exact there and the two must agree to rounding: this pins the shift's sign."""
    from napari_semiamort.physics.so3 import random_rotations

    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2, threads=1,
                               estimate_shifts=True, shift_search=2)
    run = Reconstruction(cfg)
    assert run._shift_grid.shape == (25, 2)
    idx = torch.arange(4)
    fr = run._stage1_frequencies()
    batch = run._batch(idx, fr)
    rot = random_rotations(8, torch.Generator().manual_seed(0)).reshape(4, 2, 3, 3)
    with torch.no_grad():
        scores = run._inplane_scores(run.volume.slice(fr.grid, rot), batch, idx, fr, shifts=run._shift_grid)
        assert scores.shape == (4, 2, cfg.inplane_search, 25)
        inv_var = run._inv_var_for(fr)
        for k in (0, cfg.inplane_search // 4):  # 0° and 90°
            for j in (0, 7, 12, 18):  # (−2, −2), (0, −1), (0, 0), (1, 1) pixels
                s = run._shift_grid[j].expand(4, 2, 2)
                pred = run._predict(None, run._inplane[k] @ rot, s, batch.ctf[:, None], fr)
                exact = run._loss(pred, batch.obs[:, None], inv_var)
                assert torch.allclose(scores[:, :, k, j], exact, rtol=1e-4, atol=1e-6), (k, j)
        # and a wrong sign would not pass: the opposite shift's loss is far from the score, compared with
        # the agreement above
        s = run._shift_grid[18].expand(4, 2, 2)
        right = run._loss(run._predict(None, rot, s, batch.ctf[:, None], fr), batch.obs[:, None], inv_var)
        wrong = run._loss(run._predict(None, rot, -s, batch.ctf[:, None], fr), batch.obs[:, None], inv_var)
        err = (scores[:, :, 0, 18] - right).abs().max()
        assert (scores[:, :, 0, 18] - wrong).abs().max() > 100 * err


def test_recentring_moves_volume_and_shifts_together_and_keeps_the_fit(tiny_dataset):
    """A volume off the box centre by c and the images' shifts explain the data as well as the centred
    volume with shifts − (R c)_xy: recentring must leave each image's loss where it was (a wrong sign or
    axis order would not) and put the density at the centre."""
    from napari_semiamort.data.mrc import read_map
    from napari_semiamort.metrics.density import density_centre

    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2, threads=1,
                               estimate_shifts=True, switch_epoch=0)
    run = Reconstruction(cfg)
    truth, _ = read_map(tiny_dataset / "truth.mrc")
    run.poses = run.data.reference_rotations.to(torch.float32).clone()
    idx = torch.arange(64)
    fr = run.freqs["autodecode"]
    batch = run._batch(idx, fr)
    with torch.no_grad():  # the truth at the images' scale (least squares), so that the loss is a fit
        run.volume.set_from_map(torch.from_numpy(truth))
        pred, w = run._predict(None, run.poses[idx], None, batch.ctf, fr), run._inv_var_for(fr)
        scale = float((pred * batch.obs * w).sum() / (pred * pred * w).sum())
    off = scale * torch.roll(torch.from_numpy(truth), shifts=(1, -2, 2), dims=(0, 1, 2))  # (z, y, x) = (1, −2, 2)
    run.volume.set_from_map(off)
    c_true = torch.tensor([2.0, -2.0, 1.0], dtype=torch.float64)  # (x, y, z)
    # the shifts that make the off-centre volume fit the centred images: + (R c)_xy
    run.shifts = (run.poses[:, :2, :].to(torch.float64) @ c_true).to(torch.float32)
    with torch.no_grad():
        before = run._exact_loss(run.poses[idx], run.shifts[idx], batch.obs, batch.ctf, fr)
        centred = run._exact_loss(run.poses[idx], torch.zeros(64, 2), batch.obs, batch.ctf, fr)
    assert float((centred > 1.5 * before).float().mean()) > 0.9  # the shifts matter to this volume
    run.table = run._pose_table(run.poses, run.shifts.clone())  # stage 2's copy moves too
    moved = run._recentre()
    torch.testing.assert_close(run.table.shifts, run.shifts)
    assert abs(moved - float(c_true.norm())) < 0.15
    assert float(density_centre(run.volume.real_space()).norm()) < 0.1
    with torch.no_grad():
        after = run._exact_loss(run.poses[idx], run.shifts[idx], batch.obs, batch.ctf, fr)
    # the same fit, to a small fraction of what dropping the shifts costs
    assert float((after - before).abs().max()) < 0.05 * float((centred - before).abs().mean())
    assert float(run.shifts.abs().max()) < 0.2  # the truth's images are centred: nothing is left to shift


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shifted_particles_are_centred_and_aligned_by_the_shift_search(tmp_path_factory, tmp_path):
    """Particles off centre by up to ±3 px (10 % of the box): with --estimate-shifts the stage-1 shift
    search and the recentring recover poses, shifts and map (without the search, ±3 px on 3KPR left every
    pose random)."""
    from napari_semiamort.data.star import read_star

    data = tmp_path_factory.mktemp("tiny_shifted")
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), data, SimulationConfig(n_particles=1000, box=32, snr=1.0, seed=7, max_shift=3))
    cfg = ReconstructionConfig(particles=str(data / "particles.star"), epochs=24, switch_epoch=16, seed=1,
                               threads=1, heads=24, batch_size=32, estimate_shifts=True)
    run = Reconstruction(cfg, run_dir=tmp_path)
    for _ in run:
        pass
    al = align_poses(run.poses, run.data.reference_rotations)
    assert al.median_error < 8.0, al.median_error  # measured 4.2°; 124° without the search
    truth = read_star(data / "particles.star", require_stacks=False).origins / run.data.pixel_size
    err = np.linalg.norm(run.shifts.numpy() - truth, axis=1)
    assert np.median(err) < 0.3, np.median(err)  # measured 0.15 px; 2.4 px leaving them at 0
    assert np.median(np.linalg.norm(truth, axis=1)) > 1.5
    whole, _, _ = run.final_maps()
    t, _ = read_map(data / "truth.mrc")
    aligned = rotate_map(torch.from_numpy(whole), al.transform).numpy()
    assert np.corrcoef(aligned.ravel(), t.ravel())[0, 1] > 0.93  # measured 0.97; 0.79 without the search


def test_the_posterior_grid_compares_the_image_at_its_estimated_shift(tiny_dataset):
    """With shifts estimated, ``log_likelihood_grid`` scores the image at the run's shift for it: at 0°
    in-plane (exact resampling) it is minus the shifted prediction's summed loss, not the unshifted one's."""
    from napari_semiamort.physics.so3 import random_rotations

    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2,
                                              threads=1, estimate_shifts=True))
    run.shifts[5] = torch.tensor([1.5, -2.0])
    rot = random_rotations(3, torch.Generator().manual_seed(2))
    grid = run.log_likelihood_grid(5, rot, torch.zeros(1))  # (3, 1)
    fr = run._frequencies(1.0)
    idx = torch.tensor([5])
    batch = run._batch(idx, fr)
    with torch.no_grad():
        def loglik(shift):
            pred = run._predict(None, rot[None], shift.expand(1, 3, 2), batch.ctf[:, None], fr)
            return -run._loss(pred, batch.obs[:, None], run._inv_var_for(fr))[0] * len(fr)
        right, unshifted = loglik(run.shifts[5]).to(torch.float64), loglik(torch.zeros(2)).to(torch.float64)
    err = (grid[:, 0] - right).abs().max()
    assert err <= 1e-4 * right.abs().max()
    assert (grid[:, 0] - unshifted).abs().max() > 100 * err


def test_stage2_steps_at_its_own_batch_size_and_the_progress_counts_both(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=1, heads=2,
                               threads=1, restarts=1, reassign_epochs=0, batch_size=100, stage2_batch_size=250)
    run = Reconstruction(cfg)
    snaps = list(run)
    per_stage = {stage: sum(s.stage == stage for s in snaps) for stage in ("autoencode", "autodecode")}
    assert per_stage == {"autoencode": 10, "autodecode": 2 * 4}  # 1,000 images: 10 steps of 100, 4 of 250
    assert snaps[-1].total_steps == 18 and snaps[-1].progress == 1.0
    assert [h["epoch"] for h in run.history] == [1, 2, 3]


def test_stage2_batch_defaults_to_stage_1s(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2, threads=1, batch_size=32)
    run = Reconstruction(cfg)
    assert run.batch_size("autoencode") == 32 and run.batch_size("autodecode") == 32
    cfg.stage2_batch_size = 48
    assert run.batch_size("autodecode") == 48
    with pytest.raises(ValueError, match="stage2_batch_size"):
        ReconstructionConfig(stage2_batch_size=0).validate()


def test_maps_are_made_at_the_images_box_when_the_poses_were_inferred_downsampled(tmp_path):
    """``box`` downsamples the images the poses are inferred on; the maps come from the images at their own
    box: the same maps, to float precision, as a run at full size with the same poses and shifts (scaled to
    its pixels), and a map.mrc / fsc.csv at the full box and pixel size."""
    from napari_semiamort.run.outputs import write_outputs

    data = tmp_path / "data"
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), data, SimulationConfig(n_particles=120, box=32, snr=1.0, seed=5, max_shift=3))

    def known_poses(box, output_box=None):
        run = Reconstruction(ReconstructionConfig(
            particles=str(data / "particles.star"), box=box, output_box=output_box, halves=True, heads=2,
            threads=1, estimate_shifts=True, mask_diameter=100.0, reference_map=str(data / "truth.mrc")))
        run.poses = run.data.reference_rotations.clone()
        run.shifts = run.data.reference_shifts.clone()
        return run

    small, full = known_poses(16), known_poses(None)
    assert small.size == 16 and small.data.pixel_size == pytest.approx(2 * full.data.pixel_size)
    maps = small.output_data()
    assert maps.box == 32 and maps.pixel_size == pytest.approx(full.data.pixel_size)
    for ours, theirs in zip(small.final_maps(), full.final_maps(), strict=True):
        assert ours.shape == (32, 32, 32)
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * np.abs(theirs).max())
    # the whole map from the halves' sums is the one pass over every image
    one_pass = small.backproject(np.arange(len(small.data)), data=maps)
    np.testing.assert_allclose(small.final_maps()[0], one_pass, atol=1e-5 * np.abs(one_pass).max())
    # the shifts matter: left in the small pixels (half the full ones), the map would differ
    ours, theirs = small.final_maps()[0], full.final_maps()[0]
    small.shifts = small.shifts / 2
    assert np.abs(small.final_maps()[0] - theirs).max() > 100 * np.abs(ours - theirs).max()
    small.shifts = small.shifts * 2

    out = write_outputs(small, tmp_path / "run")
    m, voxel = read_map(out["map"])
    assert m.shape == (32, 32, 32) and voxel == pytest.approx(full.data.pixel_size, rel=1e-4)
    assert read_map(out["half2"])[0].shape == (32, 32, 32)
    rows = (tmp_path / "run" / "fsc.csv").read_text().splitlines()
    assert rows[0].endswith("fsc_halves,fsc_reference") and len(rows) == 1 + 17
    assert float(rows[-1].split(",")[2]) == pytest.approx(2 * full.data.pixel_size, rel=1e-3)  # full Nyquist

    # output_box keeps the maps at the run's box
    assert known_poses(16, output_box=16).final_maps()[0].shape == (16, 16, 16)
    with pytest.raises(ValueError, match=r"particles\.star: box 64: choose an even size from 8 to the images' 32"):
        known_poses(16, output_box=64)


def test_the_stage1_band_starts_at_five_fourier_pixels_on_large_boxes(tmp_path):
    """Frequency marching starts at 5 Fourier pixels (the box's width / 5 in Å) at any box from 64 up, and
    grows to 0.4 of Nyquist at the switch, at most 26 Fourier pixels; below box 67 it starts from 0.15 of
    Nyquist as before; fractions of Nyquist given explicitly are kept. (At box 128 the old start, 0.15 of
    Nyquist = 10 px, left stage 1 at 42° median pose error on 3KPR; at box 192 the uncapped end, 38 px,
    left 47° mean error at epoch 10 against 15° capped.)"""
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), tmp_path, SimulationConfig(n_particles=8, box=128, snr=1.0, seed=2))

    def schedule(data=tmp_path, **kw):
        run = Reconstruction(ReconstructionConfig(particles=str(data / "particles.star"), heads=2, threads=1,
                                                  restarts=1, **kw))
        return [round(run.stage1_band(e) * run.size / 2) for e in range(run.config.switch_epoch)]

    for box in (None, 96, 64):
        px = schedule(box=box)
        assert px[0] == 5 and px == sorted(px), (box, px)
        assert px[-1] == round(0.4 * (box or 128) / 2), (box, px)
    assert schedule(autoencode_min_freq=0.15)[0] == 10
    # box 32 and 64: the schedule of every earlier result (0.15 of Nyquist, at least 5 px)
    for box in (32, 64):
        old = [max(5, round((0.15 + e / 14 * 0.25) * box / 2)) for e in range(15)]
        assert schedule(box=box) == old, box
    # above box 130 the end is held at 26 px (box 128's), and the encoder's input with it
    big = tmp_path / "big"
    simulate_dataset(str(molecule), big, SimulationConfig(n_particles=4, box=192, snr=1.0, seed=2))
    px = schedule(big)
    assert px[0] == 5 and px[-1] == 26 and px == sorted(px)
    assert schedule(big, autoencode_max_freq=0.4)[-1] == 38  # an explicit fraction is kept
    run = Reconstruction(ReconstructionConfig(particles=str(big / "particles.star"), heads=2, threads=1))
    assert run.stage1_end == pytest.approx(26 / 96) and run.encoder_size == 54


@pytest.mark.parametrize("band", [None, 1.0], ids=["stage1-band", "full-band"])
def test_reassignment_refines_in_its_band_competes_in_stage_twos_and_is_timed(tiny_dataset, band):
    import time

    from napari_semiamort.run.loop import STAGE2

    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=1, heads=4,
                               threads=1, restarts=1, reassign_epochs=3, reassign_max_freq=band)
    run = Reconstruction(cfg)
    refined, compared, spent = set(), set(), []
    predict, reassign = run._predict, run._reassign

    def recording_predict(hartley, rotations, shifts, ctf, fr):
        if spent and spent[-1] is None:  # inside the reassignment
            (refined if hartley is not None else compared).add(id(fr))
        return predict(hartley, rotations, shifts, ctf, fr)

    def timed_reassign():
        spent.append(None)
        t0 = time.perf_counter()
        moved = reassign()
        spent[-1] = time.perf_counter() - t0
        return moved

    step, stepped = run._step_autodecode, []

    def timed_step(idx):
        t0 = time.perf_counter()
        loss = step(idx)
        stepped.append(time.perf_counter() - t0)
        return loss

    run._predict, run._reassign, run._step_autodecode = recording_predict, timed_reassign, timed_step
    ends = [s.metrics for s in run if s.epoch_end]
    assert [m.get("reassigned") is not None for m in ends] == [False, False, True]
    want = run._frequencies(run.stage1_end) if band is None else run._frequencies(band)
    assert refined == {id(want)}
    assert compared == {id(run.freqs[STAGE2])}
    if band is None:
        assert want.grid.shape[0] < run.freqs[STAGE2].grid.shape[0]
    # the epoch's time includes its reassignment pass as well as its training steps
    last_epoch_steps = sum(stepped[len(stepped) // 2 :])  # two stage-2 epochs of equal step counts
    assert len(spent) == 1 and ends[-1]["seconds"] >= spent[0] + last_epoch_steps


def test_the_reassignment_band_is_validated(tiny_dataset):
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="reassign_max_freq"):
            ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), reassign_max_freq=bad).validate()


def test_restart_gap_is_the_lowest_losss_lead_over_the_others_median():
    from napari_semiamort.run.loop import restart_gap

    # measured losses after five epochs (docs/benchmarks.md): one good start of three; none
    assert restart_gap([0.692, 0.676, 0.517]) == pytest.approx((0.684 - 0.517) / 0.684)
    assert restart_gap([1.298, 1.295, 1.258]) == pytest.approx((1.2965 - 1.258) / 1.2965)
    assert restart_gap([1.298, 1.295, 1.258]) < 0.04
    # two good starts of three (box 96 on the CPU): close to each other, both far below the third
    assert restart_gap([0.469, 0.605, 0.486]) > 0.1
    assert restart_gap([0.5]) == float("inf")
    assert restart_gap([0.3, 0.3]) == 0.0


@pytest.mark.parametrize("margin, tried", [(0.0, 2), (10.0, 4)], ids=["a-start-stands-out", "none-stands-out"])
def test_more_restarts_are_tried_while_no_loss_stands_out(tiny_dataset, margin, tried):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=2, heads=3,
                               threads=1, restarts=2, max_restarts=4, restart_epochs=1, restart_margin=margin,
                               reassign_epochs=0)
    run = Reconstruction(cfg)
    snaps = list(run)
    trials = [s.restart for s in snaps if s.epoch_end and s.restart is not None]
    assert trials == list(range(tried))
    first = run.history[0]
    assert len(first["restart_losses"]) == tried
    assert first["chosen_restart"] == int(np.argmin(first["restart_losses"]))
    # the progress counts the added restarts' steps: it ends at 1 and never runs past it
    assert snaps[-1].progress == 1.0 and run.step_count == run.total_steps
    assert [s.metrics["epoch"] for s in snaps if s.epoch_end and s.restart is None] == [2, 3]


def test_a_resumed_run_counts_the_restarts_it_added_and_the_cli_names_the_kept_one(tiny_dataset, tmp_path,
                                                                                   capsys):
    from napari_semiamort.cli.reconstruct import train

    # one step per epoch (the whole set in a batch): the restarts' record is not the last history entry
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=2, heads=3,
                               threads=1, restarts=2, max_restarts=3, restart_epochs=1, restart_margin=10.0,
                               reassign_epochs=0, batch_size=1000)
    run = Reconstruction(cfg, run_dir=tmp_path)
    train(run, tmp_path, quiet=True)
    out = capsys.readouterr().out
    chosen = next(m for m in run.history if "chosen_restart" in m)["chosen_restart"]
    assert f"kept restart {chosen + 1} of 3 (lowest loss" in out
    assert run.step_count == run.total_steps == 3 + 2  # three restarts of one step, then epochs 2 and 3
    resumed = Reconstruction.resume(tmp_path, epochs=4)
    assert resumed.total_steps == 3 + 3
    assert [s for s in resumed][-1].progress == 1.0 and resumed.step_count == resumed.total_steps
