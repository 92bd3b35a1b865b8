"""The passes between epochs, as functions of the image model and the state: the switch to stage 2, the
reassignment and the recentring."""

import time

import numpy as np
import pytest
import torch

from napari_semiamort.data.mrc import read_map
from napari_semiamort.metrics.density import density_centre
from napari_semiamort.physics.so3 import random_rotations
from napari_semiamort.run import Reconstruction, ReconstructionConfig, passes
from truth_scale import at_truth


def test_recentring_moves_volume_and_shifts_together_and_keeps_the_fit(tiny_dataset):
    """A volume off the box centre by c and the images' shifts explain the data as well as the centred
    volume with shifts − (R c)_xy: recentring must leave each image's loss where it was (a wrong sign or
    axis order would not) and put the density at the centre."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), stage1="heads", heads=2, threads=1,
                               shifts="yes", switch_epoch=0)
    run = Reconstruction(cfg)
    run.poses = run.data.reference_rotations.to(torch.float32).clone()
    truth = at_truth(run, tiny_dataset)
    run.volume.set_from_map(torch.roll(truth, shifts=(1, -2, 2), dims=(0, 1, 2)))  # (z, y, x) = (1, −2, 2)
    c_true = torch.tensor([2.0, -2.0, 1.0], dtype=torch.float64)  # (x, y, z)
    # the shifts that make the off-centre volume fit the centred images: + (R c)_xy
    run.shifts = (run.poses[:, :2, :].to(torch.float64) @ c_true).to(torch.float32)
    idx = torch.arange(64)
    fr = run.frequencies(1.0)
    batch = run.source.batch(idx, fr)

    def loss(shifts):
        with torch.no_grad():
            return run.model.exact_loss(run.poses[idx], shifts, batch.obs, batch.ctf, fr)

    before, centred = loss(run.shifts[idx]), loss(torch.zeros(64, 2))
    assert float((centred > 1.5 * before).float().mean()) > 0.9  # the shifts matter to this volume
    run.state.table = passes.pose_table(cfg, run.size, run.poses, run.shifts.clone())  # stage 2's copy moves too
    moved = passes.recentre(run.model, run.state, run.opt_volume)
    torch.testing.assert_close(run.table.shifts, run.shifts)
    assert abs(moved - float(c_true.norm())) < 0.15
    assert float(density_centre(run.volume.real_space()).norm()) < 0.1
    after = loss(run.shifts[idx])
    # the same fit, to a small fraction of what dropping the shifts costs
    assert float((after - before).abs().max()) < 0.05 * float((centred - before).abs().mean())
    assert float(run.shifts.abs().max()) < 0.2  # the truth's images are centred: nothing is left to shift
    assert passes.recentre(run.model, run.state, run.opt_volume) < passes.RECENTRE_MIN_PX  # and stays put


def _scored(run, fr):
    """Each image's loss at its current pose, over the whole set."""
    out = []
    for idx in passes.chunks(len(run.data), run.config, run.device):
        batch = run.source.batch(idx, fr)
        with torch.no_grad():
            out.append(run.model.exact_loss(run.poses[idx], None, batch.obs, batch.ctf, fr))
    return torch.cat(out)


def test_the_switch_starts_each_image_from_the_better_of_its_candidate_and_its_last_pose(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                               stage1="heads", heads=3, threads=1, batch_size=200,
                               shifts="no")
    run = Reconstruction(cfg)
    run.volume.set_from_map(at_truth(run, tiny_dataset))
    true = run.data.reference_rotations.clone()
    wrong = random_rotations(len(true), torch.Generator().manual_seed(5))
    run.poses = torch.where((torch.arange(len(true)) % 2 == 0)[:, None, None], true, wrong)  # half right
    fr = run.frequencies(run.stage1_end)
    before = _scored(run, fr)
    passes.switch_to_autodecode(run.model, run.stage1, run.source, run.state, fr, cfg)
    after = _scored(run, fr)
    assert bool((after <= before + 1e-6).all())  # never worse than the pose it had
    assert torch.equal(run.poses[::2], true[::2]) or bool((after[::2] <= before[::2]).all())
    torch.testing.assert_close(run.table.rotations, run.poses)  # stage 2 starts from them


def test_the_reassignment_moves_only_images_whose_candidate_scores_better(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                               stage1="heads", heads=4, threads=1, batch_size=200,
                               reassign_candidates=2, reassign_steps=3, shifts="no")
    run = Reconstruction(cfg)
    run.volume.set_from_map(at_truth(run, tiny_dataset))
    run.poses = random_rotations(len(run.data), torch.Generator().manual_seed(6))
    run.state.table = passes.pose_table(cfg, run.size, run.poses)
    s = run.schedule
    bands = (run.frequencies(s.stage1_end), run.frequencies(s.reassign_band(None)), run.frequencies(s.stage2_band))
    old = run.poses.clone()
    before = _scored(run, bands[2])
    moved = passes.reassign(run.model, run.stage1, run.source, run.state, bands, cfg)
    after = _scored(run, bands[2])
    changed = (run.poses - old).flatten(1).abs().amax(1) > 0
    assert moved == int(changed.sum()) > 0
    assert bool((after[changed] < before[changed]).all())  # each move is an improvement
    assert torch.equal(after[~changed], before[~changed])
    torch.testing.assert_close(run.table.rotations, run.poses)


@pytest.mark.parametrize("band", [None, 1.0], ids=["stage1-band", "full-band"])
def test_reassignment_refines_in_its_band_competes_in_stage_twos_and_is_timed(tiny_dataset, band, monkeypatch):
    """The candidates are refined (pose steps: the volume's transform held fixed) in the reassignment band,
    and compete in stage 2's; the epoch's seconds include the pass."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=1, heads=4,
                               threads=1, restarts=1, reassign_epochs=3, reassign_max_freq=band)
    run = Reconstruction(cfg)
    refined, compared, spent = set(), set(), []
    predict, reassign = run.model.predict, passes.reassign

    def recording_predict(rotations, shifts, ctf, fr, hartley=None):
        if spent and spent[-1] is None:  # inside the reassignment
            (refined if hartley is not None else compared).add(fr.fraction)
        return predict(rotations, shifts, ctf, fr, hartley=hartley)

    def timed_reassign(*args):
        spent.append(None)
        t0 = time.perf_counter()
        moved = reassign(*args)
        spent[-1] = time.perf_counter() - t0
        return moved

    monkeypatch.setattr(run.model, "predict", recording_predict)
    monkeypatch.setattr(passes, "reassign", timed_reassign)
    ends = [s.metrics for s in run if s.epoch_end]
    assert [m.get("reassigned") is not None for m in ends] == [False, False, True]
    want = round(run.stage1_end if band is None else band, 4)
    assert refined == {want}
    assert compared == {cfg.max_freq}
    if band is None:
        assert len(run.frequencies(want)) < len(run.frequencies(cfg.max_freq))
    assert len(spent) == 1 and ends[-1]["seconds"] >= spent[0]


def test_the_global_search_brings_images_back_from_poses_the_encoder_cannot_leave(tiny_dataset):
    """Under the true map, images started at random poses with an untrained encoder: the reassignment with the
    grid's poses among the candidates brings most of them within 10° of their true pose; without it most stay
    lost. Both from the same start."""
    from napari_semiamort.physics.so3 import geodesic_distance

    errors = {}
    for search in (True, False):
        cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), stage1="heads", heads=4, threads=1,
                                   batch_size=200, reassign_candidates=2, reassign_steps=10, global_search=search,
                                   shifts="no")
        run = Reconstruction(cfg)
        assert (run.search is not None) == search
        run.volume.set_from_map(at_truth(run, tiny_dataset))
        run.poses = random_rotations(len(run.data), torch.Generator().manual_seed(6))
        run.state.table = passes.pose_table(cfg, run.size, run.poses)
        s = run.schedule
        bands = (run.frequencies(s.stage1_end), run.frequencies(s.reassign_band(None)), run.frequencies(s.stage2_band))
        passes.reassign(run.model, run.stage1, run.source, run.state, bands, cfg, run.search)
        errors[search] = torch.rad2deg(geodesic_distance(run.poses, run.data.reference_rotations))
    # measured: 94 % against 29 % (medians 4.7° and 37°)
    assert (errors[True] < 10).float().mean() > 0.85
    assert (errors[False] < 10).float().mean() < 0.5


def test_at_the_switch_the_global_searchs_best_pose_competes(tiny_dataset):
    """Under the true map, from random last poses and an untrained encoder: with the global search most images
    start stage 2 within 20° of their true pose (the grid steps by 15°); without it, few do."""
    from napari_semiamort.physics.so3 import geodesic_distance

    near = {}
    for search in (True, False):
        cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), stage1="heads", heads=4, threads=1,
                                   batch_size=200, global_search=search, shifts="no")
        run = Reconstruction(cfg)
        run.volume.set_from_map(at_truth(run, tiny_dataset))
        run.poses = random_rotations(len(run.data), torch.Generator().manual_seed(6))
        passes.switch_to_autodecode(run.model, run.stage1, run.source, run.state,
                                    run.frequencies(run.schedule.stage1_end), cfg, run.search)
        err = torch.rad2deg(geodesic_distance(run.poses, run.data.reference_rotations))
        near[search] = float((err < 20).float().mean())
    assert near[True] > 0.85 and near[False] < 0.3, near  # measured: 94 % against 10 %


@pytest.mark.parametrize(("spread", "kept"), [(0.0, False), (0.3, False), (3.0, True)])
def test_shifts_auto_keeps_the_shifts_only_for_off_centre_particles(tiny_dataset, spread, kept):
    """At the switch, shifts "auto" keeps estimating the shifts when stage 1 found the particles off centre
    (median |shift| ≥ 0.5 px); else the shifts are dropped and no longer searched: stage 2's table, its
    candidates and the outputs' origins are centred from then on."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                               stage1="heads", heads=2, threads=1, switch_epoch=0)
    run = Reconstruction(cfg)
    assert cfg.shifts == "auto" and run.stage1.searches_shifts and run.stage1.shift_reach == 3
    g = torch.Generator().manual_seed(3)
    start = spread * (2 * torch.rand(len(run.data), 2, generator=g) - 1)  # uniform in ±spread
    run.shifts = start.clone()
    # before any stage-1 epoch: nothing searched, kept (the switch's record says when it came, no decision)
    notes = run.switch()
    assert notes["stage1_epochs"] == 0 and "shifts_kept" not in notes and run.shifts is not None
    run.state.epoch, run.state.table, run.shifts = 1, None, start.clone()  # as after one stage-1 epoch
    notes = run.switch()
    assert notes["shifts_kept"] is kept
    assert notes["shift_median_px"] == pytest.approx(float(notes["shift_median_px"]), abs=1e-3)
    assert (run.shifts is not None) is kept and (run.table.shifts is not None) is kept
    assert run.stage1.searches_shifts is kept
    idx = torch.arange(8)
    cand = run.candidates(idx, run.stage1_end)
    assert (cand.shifts is not None) is kept
    assert passes.reassign(run.model, run.stage1, run.source, run.state,
                           (run.frequencies(run.stage1_end),) * 3, cfg, run.search) >= 0  # runs either way
    assert (run.shifts is not None) is kept
    # "yes" keeps them whatever they are
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                                              stage1="heads", heads=2, threads=1,
                                              switch_epoch=0, shifts="yes"))
    notes = run.switch()
    assert notes["stage1_epochs"] == 0 and "shifts_kept" not in notes
    assert run.shifts is not None and run.stage1.searches_shifts


def test_shifts_auto_takes_a_drift_of_the_map_for_what_it_is(tiny_dataset):
    """Centred particles under a map that drifted by ``d``: every shift is ``(R_i d)_xy`` (the recentring hands
    the drift of the density centre to the shifts), median 1.2 px here, which the old rule kept (a centred tiny
    set's run kept them at 0.62 px, and its map correlated 0.47 with the truth). The decision takes the common
    move out: the shifts are dropped, and the map is moved by the drift so that the images' predictions at zero
    shift are the ones they had at their shifts."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                               stage1="heads", heads=2, threads=1, switch_epoch=0,
                               reference_map=str(tiny_dataset / "truth.mrc"))
    run = Reconstruction(cfg)
    truth, _ = read_map(tiny_dataset / "truth.mrc")
    with torch.no_grad():
        run.volume.set_from_map(torch.from_numpy(truth))
    g = torch.Generator().manual_seed(4)
    run.poses = random_rotations(len(run.data), g)
    drift = torch.tensor([0.9, -0.8, 0.8], dtype=torch.float64)
    noise = 0.1 * torch.randn(len(run.data), 2, generator=g)
    run.shifts = (run.poses.to(torch.float64)[:, :2, :] @ drift).float() + noise
    assert float(run.shifts.norm(dim=1).median()) > 1.0
    assert torch.allclose(passes.common_translation(run.shifts, run.poses), drift, atol=0.02)
    fr = run.frequencies(run.schedule.stage1_end)
    idx = torch.arange(16)
    batch = run.source.batch(idx, fr)
    with torch.no_grad():
        before = run.model.predict(run.poses[idx], run.shifts[idx] - noise[idx], batch.ctf, fr)
    run.state.epoch = 1  # as after a stage-1 epoch: the shifts were searched
    notes = passes.decide_shifts(run.state, run.stage1, run.model, run.opt_volume)
    assert notes["shifts_kept"] is False and notes["shift_median_px"] < 0.2 and notes["shift_drift_px"] > 1.4
    assert run.shifts is None and not run.stage1.searches_shifts
    with torch.no_grad():
        after = run.model.predict(run.poses[idx], None, batch.ctf, fr)
    assert float((after - before).norm() / before.norm()) < 0.05
    # off-centre particles are not a drift: the same test keeps them (the rule of the test above)
    run = Reconstruction(cfg)
    run.poses = random_rotations(len(run.data), g)
    run.shifts = (run.poses.to(torch.float64)[:, :2, :] @ drift).float() + 3 * (2 * torch.rand(len(run.data), 2,
                                                                                               generator=g) - 1)
    run.state.epoch = 1
    assert passes.decide_shifts(run.state, run.stage1, run.model, run.opt_volume)["shifts_kept"]


def test_shifts_auto_without_a_shift_search_takes_the_particles_as_centred(tiny_dataset):
    """"auto" decides from searched shifts: without the search (shift_search 0, or no in-plane search) the run
    estimates none (the heads' regressed shifts fail beyond ~1 px); "yes" still regresses them."""
    def config(**kw):
        return ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                                    stage1="heads", heads=2, threads=1, **kw)

    assert config().estimate_shifts
    assert not config(shift_search=0).estimate_shifts and not config(inplane_search=0).estimate_shifts
    assert config(shifts="yes", shift_search=0).estimate_shifts and not config(shifts="no").estimate_shifts
    assert Reconstruction(config(shift_search=0)).shifts is None


def test_soft_modes_keep_each_images_best_distinct_poses_with_their_posterior_weights():
    """The chosen pose first, then the best candidate in another mode (> SAME_MODE_DEG from those taken): one mode
    far ahead takes all the weight, two alike share it; candidates near a taken mode are that mode; an image with
    fewer distinct modes than slots fills them with its chosen pose at weight 0. Shifts follow their poses."""
    from napari_semiamort.physics.so3 import exp_so3

    def about_x(*deg):
        return exp_so3(torch.tensor([[np.deg2rad(d), 0.0, 0.0] for d in deg]))

    rot = torch.stack([about_x(0, 5, 90, 180)] * 3 + [about_x(0, 5, 10, 3)])  # (4, 4, 3, 3)
    shifts = torch.arange(16.0).reshape(4, 4, 1).repeat(1, 1, 2)
    nll = torch.tensor([[0.0, 0.0, 20.0, 20.0],  # the other modes 20 nats worse
                        [0.0, 0.0, 0.0, 30.0],  # a second mode (90°) as good
                        [5.0, 0.0, 0.0, 5.0],  # kept the 5° candidate: the 0° one is its own mode
                        [0.0, 1.0, 2.0, 3.0]])  # one mode only
    modes = passes.soft_modes(nll, rot, shifts, torch.tensor([0, 0, 1, 0]), 3)
    torch.testing.assert_close(modes.rotations[0], rot[0, [0, 2, 3]])
    torch.testing.assert_close(modes.rotations[2], rot[2, [1, 2, 3]])
    torch.testing.assert_close(modes.shifts[:3, :, 0], torch.tensor([[0.0, 2, 3], [4, 6, 7], [9, 10, 11]]))
    e20, e5 = np.exp(-20.0), np.exp(-5.0)
    expected = torch.tensor([[1, e20, e20], [1, 1, np.exp(-30.0)], [1, 1, e5], [1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(modes.weights, expected / expected.sum(1, keepdim=True))
    torch.testing.assert_close(modes.rotations[3], rot[3, [0, 0, 0]])
    assert passes.soft_modes(nll, rot, None, torch.tensor([0, 0, 1, 0]), 3).shifts is None
