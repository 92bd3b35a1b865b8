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
    from napari_semiamort.run.restarts import restart_gap

    trials = [s for s in snapshots if s.epoch_end and s.restart is not None]
    n = cfg.restart_epochs
    last = {s.restart: s.metrics["loss"] for s in trials if s.metrics["epoch"] == n}
    tried = len(last)
    assert 3 <= tried <= 6
    assert [(s.restart, s.metrics["epoch"]) for s in trials] == [(k, e) for k in range(tried) for e in range(1, n + 1)]
    # restarts were added only while the lowest loss agreed with no other start and did not stand out
    losses = [last[k] for k in range(tried)]
    record = run.history[n - 1]
    agreed = bool(record["restart_agrees_with"])
    assert all(restart_gap(losses[:k]) < cfg.restart_margin for k in range(3, tried))
    assert tried == 6 or restart_gap(losses) >= cfg.restart_margin or agreed
    assert record["restart_losses"] == pytest.approx(losses, abs=1e-6)
    ends = [s for s in snapshots if s.epoch_end and s.restart is None]
    # the automatic switch (the default): by epoch 16 at the latest, then stage 2's 8 epochs wherever it fell
    switched = run.state.switched_at
    assert min(cfg.switch_min_epoch, 16) <= switched <= 16 and run.end_epoch == switched + 8
    assert [s.metrics["epoch"] for s in ends] == list(range(n + 1, run.end_epoch + 1))
    assert record["chosen_restart"] == min(last, key=last.get)  # the lowest loss goes on, agreeing or not
    assert snapshots[-1].progress == 1.0
    assert {s.stage for s in ends} == {"autoencode", "autodecode"}
    # Issue 18: with the restarts chosen by agreement first and stage 1's band ending at 6 px, seeds 0-5 ended
    # at median pose errors of 50.8°, 7.3°, 2.9°, 54.6°, 2.0° and 11.6° on one x86-64 machine (seed 1 at < 4° on
    # another). With the lowest loss first and the band ending at 10 px: 1.5°, 3.4°, 1.5°, 1.6°, 1.4°, 1.7°
    # (means 1.6-23.8°), map correlations 0.92-0.95, verdicts found (five) and doubtful (seed 1, 74 % of the
    # signal explained). Stage 1 on the grid (the default since session 7; this test's heads setting is then
    # unused) and starts compared after 8 epochs: seeds 0-3 at 1.38°, 1.36°, 1.70°, 1.42° (means 1.5-3.3°),
    # correlations 0.95, 0.96, 0.61, 0.95 (seed 2's decoder grew power at stage 1's band edge; its map.mrc 0.98),
    # verdicts found. The automatic switch (the default since session 15): seeds 0-3 all switched at 11 and ended
    # at 1.07°, 1.07°, 1.08°, 1.10° (means 1.2-2.2°), map.mrc's correlations 0.982, verdicts found. Asserted with a
    # margin for another CPU's round-off.
    al = align_poses(run.poses, run.data.reference_rotations)
    assert al.median_error < 5.0, al.median_error
    assert run.history[-1]["verdict"] in ("found", "doubtful")
    truth, _ = read_map(tiny_dataset / "truth.mrc")
    # the run's map (map.mrc's: from the final poses), not the decoder's volume, which seed 2 let grow at stage 1's
    # band edge (0.61 there, its map 0.98)
    whole, _, _ = run.final_maps()
    aligned = rotate_map(torch.from_numpy(whole), al.transform).numpy()
    assert np.corrcoef(aligned.ravel(), truth.ravel())[0, 1] > 0.85
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
                               stage1="heads",
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
        {"shifts": "yes"},
        {"shifts": "yes", "shift_search": 0},
        {"shifts": "no"},
        {"loss": "l1", "noise_model": "white"},
        {"noise_model": "shell-residual", "backbone": "vgg16"},
        # the paper's stage 1: heads alone propose the poses, full band, no restarts or reassignment
        {"stage1": "heads", "inplane_search": 0, "heads": 7, "spread_heads": False, "autoencode_min_freq": 1.0,
         "autoencode_max_freq": 1.0, "reassign_epochs": 0, "global_search": False, "stage2_ramp_epochs": 0},
        # issue 18's additions off: no global search, no stage-2 band ramp, no junk flags, no polish
        {"global_search": False, "stage2_ramp_epochs": 0, "flag_junk": False, "polish_epochs": 0},
        # stage 2's last epoch a polish epoch, with shifts refined against its map
        {"shifts": "yes", "stage2_ramp_epochs": 0, "polish_epochs": 1},
        # stage 1 by the multi-head encoder with this project's additions (the default before session 7)
        {"stage1": "heads"},
        {"stage1": "heads", "shifts": "yes", "shift_search": 0},
    ],
    ids=["shifts", "regressed-shifts", "centred", "l1-white", "residual-noise-vgg16", "paper-stage1", "no-issue18",
         "polish-shifts", "heads", "heads-regressed-shifts"],
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
    assert ("polish_shells_kept" in run.history[-1]) == run.schedule.polishes(2, 1)
    assert ("polish_moved" in run.history[-1]) == (run.schedule.polishes(2, 1) and run.table.shifts is not None)
    write_outputs(run, tmp_path)
    cols = read_star_columns(tmp_path / "poses.star")
    origins = np.stack([cols["rlnOriginXAngst"], cols["rlnOriginYAngst"]], -1)
    if options.get("shifts") == "yes":
        assert run.shifts is not None and np.abs(origins).max() > 0
    if run.shifts is not None:  # "yes", or "auto" that kept them at the switch
        assert options.get("shifts") == "yes" or run.history[1]["shifts_kept"]
        assert np.abs(origins).max() <= cfg.max_shift * 32 * run.data.pixel_size + 1e-3
    else:  # none estimated ("no"; "auto" without a search), or dropped at the switch ("auto")
        assert np.abs(origins).max() == 0 and (not cfg.estimate_shifts or not run.history[1]["shifts_kept"])


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


@pytest.fixture(scope="module")
def tiny_shifted(tmp_path_factory):
    """1,000 images of the bundled ribosome at box 32, SNR 1, off centre by up to ±3 px (10 % of the box)."""
    data = tmp_path_factory.mktemp("tiny_shifted")
    molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
    simulate_dataset(str(molecule), data, SimulationConfig(n_particles=1000, box=32, snr=1.0, seed=7, max_shift=3))
    return data


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_shifted_particles_are_centred_and_aligned_by_default(tiny_shifted, tmp_path):
    """Particles off centre by up to ±3 px, three seeds of the run with the defaults (``shifts`` auto): the
    stage-1 shift search, the decision at the switch to keep the shifts and the recentring recover every
    image's shift and the map in each seed; the poses in the best seed (without the search, ±3 px on 3KPR left
    every pose random).

    Issue 18: this was one seeded trajectory whose fate depended on the CPU's round-off (4.2° median where it
    was written, 17.45° on other machines of the same kind). Over seeds 1–3 the median pose errors were 8.2°,
    16.8° and 47.4° (the 1-px grid of before: 69.9°, 6.9°, 4.0°; stage 1 breaks symmetry in some seeds only on
    this tiny set), the shift errors 0.11–0.21 px (before: 0.13–1.16 px), the map correlations 0.89–0.96. On an
    AMD EPYC machine: 3.2°, 4.2°, 4.6°, shifts 0.09–0.19 px, correlations 0.78–0.91 in one process, while in the
    suite's process (its images simulated under another thread count) seed 1 lost its shifts (1.13 px): the
    shifts and the map are asserted in two seeds of three. With the restarts' lowest loss first and stage 1's band
    ending at 10 px (box 32; before: 6 px), on the AMD machine in one process: 1.75°, 1.89°, 3.39° median, shifts
    0.09-0.13 px, correlations 0.92-0.94. Stage 1 on the grid (the default since session 7): 1.44°, 1.46°, 1.45°,
    shifts 0.15-0.18 px, correlations 0.95."""
    from napari_semiamort.data.star import read_star

    data = tiny_shifted
    truth = read_star(data / "particles.star", require_stacks=False).origins
    t, _ = read_map(data / "truth.mrc")
    medians, shift_errors, correlations = [], [], []
    for seed in (1, 2, 3):
        cfg = ReconstructionConfig(particles=str(data / "particles.star"), epochs=24, switch_epoch=16, seed=seed,
                                   threads=1, heads=24, batch_size=32)
        (tmp_path / str(seed)).mkdir()
        run = Reconstruction(cfg, run_dir=tmp_path / str(seed))
        for _ in run:
            pass
        switch = next(m for m in run.history if "shifts_kept" in m)
        assert switch["shifts_kept"] and switch["shift_median_px"] > 1.0  # ±3 px: kept (measured 2.24–2.36 px)
        err = np.linalg.norm(run.shifts.numpy() - truth / run.data.pixel_size, axis=1)
        shift_errors.append(float(np.median(err)))
        al = align_poses(run.poses, run.data.reference_rotations)
        whole, _, _ = run.final_maps()
        aligned = rotate_map(torch.from_numpy(whole), al.transform).numpy()
        correlations.append(float(np.corrcoef(aligned.ravel(), t.ravel())[0, 1]))
        medians.append(al.median_error)
    # in at least two seeds of three (one CPU's round-off lost seed 1: 1.13 px, where another's got 0.09 px)
    assert sorted(shift_errors)[1] < 0.35, shift_errors  # 2.4 px leaving them at 0
    assert sorted(correlations)[1] > 0.85, correlations  # 0.79 without the search; measured 0.78-0.96
    assert np.median(medians) < 5.0, medians  # 124° without the search; measured 1.44-1.46° (heads: 1.75-3.39°)


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
            threads=1, shifts="yes", mask_diameter=100.0, reference_map=str(data / "truth.mrc")))
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
    # the map within the user's sphere (100 Å), and the mask, beside it; the halves' FSC also within it
    mask, _ = read_map(out["mask"])
    assert mask.max() == 1 and mask.min() == 0 and np.count_nonzero(mask == 1) < mask.size / 4
    np.testing.assert_allclose(read_map(out["map_masked"])[0], m * mask, atol=1e-6 * np.abs(m).max())
    assert "map_masked.mrc" in out["chimerax"].read_text()  # opened hidden beside the map
    rows = (tmp_path / "run" / "fsc.csv").read_text().splitlines()
    assert rows[0].endswith("fsc_halves,fsc_halves_masked,fsc_reference") and len(rows) == 1 + 17
    assert float(rows[-1].split(",")[2]) == pytest.approx(2 * full.data.pixel_size, rel=1e-3)  # full Nyquist
    # written again where no sphere fits (here: a 1,000 Å mask in a 530 Å box): the earlier mask must not stay
    import dataclasses

    small.config = dataclasses.replace(small.config, mask_diameter=1000.0)
    again = write_outputs(small, tmp_path / "run")
    assert "mask" not in again and not (tmp_path / "run" / "map_masked.mrc").exists()
    assert not (tmp_path / "run" / "mask.mrc").exists() and "map_masked" not in again["chimerax"].read_text()

    # output_box keeps the maps at the run's box
    assert known_poses(16, output_box=16).final_maps()[0].shape == (16, 16, 16)
    with pytest.raises(ValueError, match=r"particles\.star: box 64: choose an even size from 8 to the images' 32"):
        known_poses(16, output_box=64)


def test_the_reassignment_band_is_validated(tiny_dataset):
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="reassign_max_freq"):
            ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), reassign_max_freq=bad).validate()


def test_restart_gap_is_the_lowest_losss_lead_over_the_others_median():
    from napari_semiamort.run.restarts import restart_gap

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
    assert f"kept restart {chosen + 1} of 3 (lowest loss, " in out
    assert run.step_count == run.total_steps == 3 + 2  # three restarts of one step, then epochs 2 and 3
    resumed = Reconstruction.resume(tmp_path, epochs=4)
    assert resumed.total_steps == 3 + 3
    assert [s for s in resumed][-1].progress == 1.0 and resumed.step_count == resumed.total_steps
