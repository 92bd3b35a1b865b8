"""Stage 2's polish (run.polish): the last epochs refine every pose against the regularised map the images make."""

import numpy as np
import pytest
import torch

from napari_semiamort.metrics.alignment import align_poses
from napari_semiamort.physics.so3 import exp_so3
from napari_semiamort.run import Reconstruction, ReconstructionConfig, passes
from napari_semiamort.run.polish import polish_split


def _from_turned_truth(tiny_dataset, seed: int, polish_epochs: int, turn_deg: float = 4.0, epochs: int = 3):
    """``epochs`` stage-2 epochs from the true poses each turned by ``turn_deg`` about a seeded random axis, with the
    map those poses give: polish epochs, or (``polish_epochs`` 0) stage 2's own. The median errors before and
    after, and the run."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1, epochs=epochs + 1,
                               switch_epoch=0,
                               restarts=1, stage2_ramp_epochs=0, reassign_epochs=0, polish_epochs=polish_epochs,
                               seed=seed)
    run = Reconstruction(cfg)
    true = run.data.reference_rotations.to(torch.float32)
    axis = torch.randn(len(true), 3, generator=torch.Generator().manual_seed(seed))
    run.poses = (exp_so3(axis / axis.norm(dim=1, keepdim=True) * np.deg2rad(turn_deg)).float() @ true).contiguous()
    with torch.no_grad():
        run.volume.set_from_map(torch.from_numpy(run.backproject(np.arange(len(true)))))
    run.state.table = passes.pose_table(cfg, run.size, run.poses.clone(), None)
    run.state.switched_at, run.state.epoch = 0, 1
    before = align_poses(run.poses, true).median_error
    for _ in run:
        pass
    return before, align_poses(run.poses, true).median_error, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polish_epochs_bring_turned_poses_in_further_than_stage_2s_own_epochs(tiny_dataset, seed):
    """Measured from 4.45° (seeds 0–2): three polish epochs 1.32–1.34°, three of stage 2's 1.51–1.59° (the
    margin halved)."""
    before, polished, run = _from_turned_truth(tiny_dataset, seed, polish_epochs=3)
    _, trained, _ = _from_turned_truth(tiny_dataset, seed, polish_epochs=0)
    assert polished < 0.35 * before
    assert polished < trained - 0.09
    record = run.history[-1]
    assert record["stage"] == "autodecode" and record["polish_shells_kept"] >= 8  # of 16: SNR 1 agrees far out
    assert 2 * run.data.pixel_size - 0.01 <= record["polish_halves_fsc_0143_A"] < 3 * run.data.pixel_size
    # the decoder shows the polish's map: the snapshots, the verdict and the final metrics see what the poses saw
    assert run.reference is not None


def test_the_polish_weighs_the_particles_own_halves_or_a_seeded_split():
    given = np.array([1, 2, 2, 1, 1])
    assert polish_split(given, 5, 0) is given
    split = polish_split(None, 1001, 3)
    assert set(np.unique(split)) == {1, 2} and abs(int((split == 2).sum()) - 500) == 0
    np.testing.assert_array_equal(split, polish_split(None, 1001, 3))
    assert not np.array_equal(split, polish_split(None, 1001, 4))


def test_the_polish_map_is_masked_about_the_particle_or_the_users_diameter(tiny_dataset):
    """The solvent beyond a soft sphere about the particle is zero in the polish's map (a pose fitted to the solvent's
    noise fits its own image's noise there); where no sphere with a 4-voxel margin and edge fits (the tiny set's
    80S fills its box), the map is left whole."""
    from napari_semiamort.run.polish import polish_reference

    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1, restarts=1))
    true, n, px = run.data.reference_rotations.to(torch.float32), len(run.data), run.data.pixel_size
    keep, split = np.ones(n, bool), polish_split(None, n, 0)
    whole, record, _ = polish_reference(run.source, true, None, keep, split)
    assert "polish_mask_radius_A" not in record
    masked, record, halves = polish_reference(run.source, true, None, keep, split, diameter=12 * px)
    assert record["polish_mask_radius_A"] == pytest.approx(10 * px, abs=0.1)  # 6 voxels + the 4-voxel margin
    g = torch.arange(32, dtype=torch.float64) - 16
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    r = (x**2 + y**2 + z**2).sqrt()  # the particle sits within a voxel of the box centre
    assert float(masked[r > 15.5].abs().max()) == 0.0
    assert max(float(h[r > 15.5].abs().max()) for h in halves) == 0.0  # the halves' maps masked alike
    torch.testing.assert_close(masked[r < 8.5], whole[r < 8.5])


def test_the_view_search_judges_each_half_sets_images_under_the_other_halfs_map(monkeypatch):
    """Under the whole set's map an image's own noise holds it in its view: each half's images are searched under
    the other half's map, each image once, into one record of modes that every image's row fills; the maps are
    then rebuilt from the modes (kept in the state) and the whole map goes back into the model; without shifts
    there is no search."""
    from types import SimpleNamespace

    from napari_semiamort.run import polish

    whole, half1, half2, rebuilt_whole = (torch.full((2, 2, 2), float(v)) for v in range(4))
    maps = polish.PolishMaps(whole, {"polish_shells_kept": 5}, (half1, half2))
    rebuilt = polish.PolishMaps(rebuilt_whole, {"polish_shells_kept": 6}, (half1, half2))
    volume = SimpleNamespace(current=None)
    volume.set_from_map = lambda m: setattr(volume, "current", m)
    model = SimpleNamespace(volume=volume, device=torch.device("cpu"))
    calls, moves = [], {}

    def reassign(model, stage1, source, state, bands, config, search, images, modes):
        calls.append((float(model.volume.current[0, 0, 0]), images.tolist()))
        modes.weights[images] = torch.tensor([0.5, 0.25 * len(calls), 0.5 - 0.25 * len(calls)])
        return moves.get(len(calls), 0)

    monkeypatch.setattr(passes, "reassign", reassign)
    monkeypatch.setattr(polish, "JointShiftSearch", lambda *a, **k: "search")
    state = SimpleNamespace(table=SimpleNamespace(shifts=torch.zeros(6, 2)), modes=None, poses=torch.eye(3).repeat(
        6, 1, 1), shifts=torch.zeros(6, 2))
    split = np.array([1, 2, 1, 2, 2, 1])
    cfg = ReconstructionConfig()
    moves[1] = 2  # half 1's images: two move
    out = polish.search_views_and_shifts(model, None, None, state, (None, None), cfg, maps, split, lambda: rebuilt)
    assert calls == [(2.0, [0, 2, 5]), (1.0, [1, 3, 4])]  # half 1 under half 2's map, then the other way
    assert out.volume is rebuilt_whole and volume.current is rebuilt_whole
    assert out.record == {"polish_shells_kept": 6, "polish_moved": 2}
    assert state.modes.rotations.shape == (6, polish.SOFT_MODES, 3, 3) and state.modes.shifts.shape == (6, 3, 2)
    torch.testing.assert_close(state.modes.weights[:, 1], torch.tensor([0.25, 0.5, 0.25, 0.5, 0.5, 0.25]))
    calls.clear()
    moves.clear()
    out = polish.search_views_and_shifts(model, None, None, state, (None, None), cfg, maps, split, lambda: rebuilt)
    assert len(calls) == 2 and out.volume is rebuilt_whole and out.record["polish_moved"] == 0
    calls.clear()
    centred = SimpleNamespace(table=SimpleNamespace(shifts=None))
    assert polish.search_views_and_shifts(model, None, None, centred, (None, None), cfg, maps, split, None) is maps
    assert calls == []


def test_the_views_are_searched_at_every_other_polish_epoch_from_the_first(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1, epochs=5, switch_epoch=1,
                               switch="fixed", restarts=1, stage2_ramp_epochs=0, reassign_epochs=0, polish_epochs=3,
                               shifts="yes", heads=2, batch_size=250)
    run = Reconstruction(cfg)
    for _ in run:
        pass
    polished = [m["epoch"] for m in run.history if "polish_shells_kept" in m]
    searched = [m["epoch"] for m in run.history if "polish_moved" in m]
    assert polished == [3, 4, 5] and searched == [3, 5]  # the polish's first and third epochs (1-based epochs)


def test_stage1_starts_its_epochs_from_the_map_its_poses_make_from_the_configured_epoch(tiny_dataset):
    """``stage1_maps_from``: from that (0-based) stage-1 epoch on, each stage-1 epoch starts from the regularised map
    of the images at their current poses (an EM M-step), recorded as the half sets' FSC; never before, never in
    stage 2, and never with 0; a run folder's config from before it keeps the volume's steps alone."""
    def stage1_map_epochs(maps_from: int) -> list[int]:
        cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1, epochs=5, switch_epoch=4,
                                   switch="fixed", restarts=1, heads=2, batch_size=250, stage1_maps_from=maps_from)
        run = Reconstruction(cfg)
        for _ in run:
            pass
        return [m["epoch"] for m in run.history if "stage1_map_fsc_0143_A" in m]

    assert stage1_map_epochs(2) == [3, 4]  # 1-based epochs: the third and fourth, the last of stage 1's four
    assert stage1_map_epochs(0) == []
    legacy = {k: v for k, v in ReconstructionConfig().to_dict().items() if k != "stage1_maps_from"}
    assert ReconstructionConfig.from_dict(legacy).stage1_maps_from == 0
    assert ReconstructionConfig().stage1_maps_from > 0  # on by default
    with pytest.raises(ValueError, match="stage1_maps_from"):
        ReconstructionConfig(stage1_maps_from=-1).validate()


def test_stage1s_map_sets_the_band_to_the_regularised_map_of_the_images_at_their_poses(tiny_dataset):
    """The M-step sets the decoder's coefficients within the band (its shell + 1) to those of the polish's regularised
    map of the kept images at their current poses (their frequencies inserted up to the shell + 2) and keeps the
    rest: from the true poses, a band that agrees with the truth far better than the random start it replaced."""
    from napari_semiamort.metrics.fsc import fsc
    from napari_semiamort.physics.fourier import hartley_centered, radial_frequency_index_3d
    from napari_semiamort.run.polish import polish_reference, stage1_map

    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1, restarts=1))
    n, shell = len(run.data), 8
    run.poses = run.data.reference_rotations.to(torch.float32).contiguous()
    truth = torch.from_numpy(run.backproject(np.arange(n))).float()
    start = run.volume.hartley().detach().clone()
    before = fsc(run.volume.real_space().detach(), truth)[1 : shell + 1].mean()
    record = stage1_map(run.model, run.source, run.state, run.config, run.data.half, shell)
    expected = polish_reference(run.source, run.poses, None, np.ones(n, bool), polish_split(None, n, 0),
                                radius=shell + 2).volume
    inside = radial_frequency_index_3d(run.size) <= shell + 1
    now = run.volume.hartley().detach()
    want = hartley_centered(expected.float(), 3)
    torch.testing.assert_close(now[inside], want[inside], atol=1e-4 * float(want.abs().max()), rtol=1e-3)
    floor = 2e-8 * float(now.abs().max())  # the coefficients' floor (1e-8 of the largest) and exp(log) round-off
    torch.testing.assert_close(now[~inside], start[~inside], rtol=1e-5, atol=floor)
    after = fsc(run.volume.real_space().detach(), truth)[1 : shell + 1].mean()
    assert after > max(0.9, before + 0.3)
    assert 2 * run.data.pixel_size - 0.01 <= record["stage1_map_fsc_0143_A"] < 4 * run.data.pixel_size


def test_weighted_insertion_counts_each_image_by_its_weight(tiny_dataset):
    """Weights 1 and 0 give the map of the weighted images alone; one weight for all leaves the map as it is (the
    weight cancels between the sums), unlike doubling some images."""
    from napari_semiamort.run.maps import insert

    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1))
    poses, n = run.data.reference_rotations.to(torch.float32), 200
    which = np.arange(n)
    half = torch.from_numpy((np.arange(len(run.data)) % 2 == 0).astype(np.float32))
    alone = insert(run.source, poses, None, which[::2]).volume()
    torch.testing.assert_close(insert(run.source, poses, None, which, weights=half).volume(), alone)
    plain = insert(run.source, poses, None, which).volume()
    same = torch.full((len(run.data),), 0.3)
    torch.testing.assert_close(insert(run.source, poses, None, which, weights=same).volume(), plain, rtol=1e-4,
                               atol=1e-4 * float(plain.abs().max()))
    assert not torch.allclose(insert(run.source, poses, None, which, weights=1 + half).volume(), plain)


def test_a_long_final_map_says_how_far_it_is(tiny_dataset, monkeypatch, caplog):
    """The final maps of many images log their progress every tenth of the way (issue 20: 18 silent minutes at
    200,000 images); the polish's own insertions, unnamed, stay silent."""
    import logging

    from napari_semiamort.run import maps

    monkeypatch.setattr(maps, "PROGRESS_FROM", 100)
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1))
    poses = run.data.reference_rotations.to(torch.float32)
    with caplog.at_level(logging.INFO, logger="napari_semiamort"):
        maps.insert(run.source, poses, None, np.arange(1000), batch=50, progress="map.mrc")
        maps.insert(run.source, poses, None, np.arange(1000), batch=50)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("map.mrc: ")]
    assert [line.split(" images")[0] for line in lines] == [f"map.mrc: {k:,} of 1,000" for k in range(100, 1001, 100)]
    assert sum("images inserted" in r.getMessage() for r in caplog.records) == 10  # the unnamed one: silent


def test_an_image_spread_over_its_modes_is_inserted_at_each_by_its_weight(tiny_dataset):
    """The first mode is the image's pose as it is now (refined since the search), not the pose stored with the
    modes; all weight there gives the plain map. Half the weight on a wrong view gives a map between the right
    poses' and the wrong ones' (FSC with the true-pose map over the band), and slots at weight 0 add nothing."""
    from napari_semiamort.metrics.fsc import fsc
    from napari_semiamort.physics.so3 import random_rotations
    from napari_semiamort.run.maps import insert, insert_modes
    from napari_semiamort.run.state import Modes

    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1))
    n = len(run.data)
    which = np.arange(n)
    true = run.data.reference_rotations.to(torch.float32).contiguous()
    wrong = random_rotations(n, generator=torch.Generator().manual_seed(3))
    plain = insert(run.source, true, None, which).volume()
    stored = Modes(torch.stack([wrong, wrong, true], 1), None, torch.tensor([[1.0, 0.0, 0.0]]).repeat(n, 1))
    torch.testing.assert_close(insert_modes(run.source, true, None, which, modes=stored).volume(), plain)
    halfway = stored._replace(weights=torch.tensor([[0.5, 0.5, 0.0]]).repeat(n, 1))
    mixed = insert_modes(run.source, true, None, which, modes=halfway).volume()
    bad = insert(run.source, wrong, None, which).volume()
    band = slice(1, run.size // 2)
    score = {name: float(fsc(v, plain)[band].mean()) for name, v in (("mixed", mixed), ("bad", bad))}
    assert score["bad"] + 0.2 < score["mixed"] < 0.99
