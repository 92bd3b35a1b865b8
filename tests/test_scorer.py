"""The image model scores poses: its in-plane and shift search agrees with the exact loss, and the posterior
grid compares each image at its shift."""

import pytest
import torch

from napari_semiamort.physics.so3 import random_rotations
from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.scorer import about_z, square_grid


def test_the_noise_weights_are_one_over_each_frequencys_shell_variance(tiny_dataset):
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                                              stage1="heads", heads=2, threads=1))
    fr = run.frequencies(0.5)
    w = run.model.inv_var(fr)
    assert w.shape == (len(fr),)
    torch.testing.assert_close(w, 1.0 / run.noise.variance[fr.shells])


def test_stage1_shift_search_scores_equal_the_shifted_predictions_loss(tiny_dataset):
    """The shift search's scores are the Gaussian loss of the prediction turned by each in-plane angle and
    shifted by each grid shift. At 0° and 90° the turned frequencies fall on the pixel grid, so the
    resampling trick is exact there and the two must agree to rounding: this pins the shift's sign."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), stage1="heads", heads=2, threads=1,
                               shifts="yes", shift_search=2)
    run = Reconstruction(cfg)
    model, grid, inplane = run.model, square_grid(2, 1), run.stage1.inplane
    assert grid.shape == (25, 2) and inplane.shape == (cfg.inplane_search, 3, 3)
    idx = torch.arange(4)
    fr = run.frequencies(run.stage1_band(0))
    batch = run.source.batch(idx, fr)
    rot = random_rotations(8, torch.Generator().manual_seed(0)).reshape(4, 2, 3, 3)
    with torch.no_grad():
        scores = model.inplane_scores(run.volume.slice(fr.grid, rot), batch, idx, fr, inplane, grid)
        assert scores.shape == (4, 2, cfg.inplane_search, 25)

        def loss(r, s):
            return model.loss(model.predict(r, s.expand(4, 2, 2), batch.ctf[:, None], fr), batch.obs[:, None], fr)

        for k in (0, cfg.inplane_search // 4):  # 0° and 90°
            for j in (0, 7, 12, 18):  # (−2, −2), (0, −1), (0, 0), (1, 1) pixels
                exact = loss(inplane[k] @ rot, grid[j])
                assert torch.allclose(scores[:, :, k, j], exact, rtol=1e-4, atol=1e-6), (k, j)
        # and a wrong sign would not pass: the opposite shift's loss is far from the score, compared with
        # the agreement above
        right, wrong = loss(rot, grid[18]), loss(rot, -grid[18])
        err = (scores[:, :, 0, 18] - right).abs().max()
        assert (scores[:, :, 0, 18] - wrong).abs().max() > 100 * err
        # without shifts, the in-plane scores are the unshifted loss
        plain = model.inplane_scores(run.volume.slice(fr.grid, rot), batch, idx, fr, inplane)
        assert torch.allclose(plain[..., 0], loss(rot, torch.zeros(2)), rtol=1e-4, atol=1e-6)


def test_the_posterior_grid_compares_the_image_at_its_estimated_shift(tiny_dataset):
    """With shifts estimated, ``log_likelihood_grid`` scores the image at the run's shift for it: at 0°
    in-plane (exact resampling) it is minus the shifted prediction's summed loss, not the unshifted one's."""
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), stage1="heads", heads=2,
                                              threads=1, shifts="yes"))
    run.shifts[5] = torch.tensor([1.5, -2.0])
    rot = random_rotations(3, torch.Generator().manual_seed(2))
    grid = run.log_likelihood_grid(5, rot, torch.zeros(1))  # (3, 1)
    fr = run.frequencies(1.0)
    batch = run.source.batch(torch.tensor([5]), fr)
    with torch.no_grad():
        def loglik(shift):
            pred = run.model.predict(rot[None], shift.expand(1, 3, 2), batch.ctf[:, None], fr)
            return -run.model.loss(pred, batch.obs[:, None], fr)[0] * len(fr)
        right, unshifted = loglik(run.shifts[5]).to(torch.float64), loglik(torch.zeros(2)).to(torch.float64)
    err = (grid[:, 0] - right).abs().max()
    assert err <= 1e-4 * right.abs().max()
    assert (grid[:, 0] - unshifted).abs().max() > 100 * err


def test_in_plane_turns_are_rotations_about_the_beam():
    turns = about_z(torch.tensor([0.0, torch.pi / 2]))
    torch.testing.assert_close(turns[0], torch.eye(3))
    torch.testing.assert_close(turns[1] @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(turns[1][2], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("loss", ["gaussian", "l1"])
def test_the_exact_loss_prefers_the_true_pose_under_the_true_map(tiny_dataset, loss):
    from napari_semiamort.data.mrc import read_map

    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                                              stage1="heads", heads=2, threads=1,
                                              loss=loss))
    truth, _ = read_map(tiny_dataset / "truth.mrc")
    idx = torch.arange(32)
    fr = run.frequencies(0.5)
    batch = run.source.batch(idx, fr)
    true = run.data.reference_rotations[idx]
    other = random_rotations(32, torch.Generator().manual_seed(4))
    with torch.no_grad():  # the truth at the images' scale (least squares at the true poses)
        run.volume.set_from_map(torch.from_numpy(truth))
        pred = run.model.predict(true, None, batch.ctf, fr)
        run.volume.set_from_map(float((pred * batch.obs).sum() / (pred * pred).sum()) * torch.from_numpy(truth))
        good = run.model.exact_loss(true, None, batch.obs, batch.ctf, fr)
        bad = run.model.exact_loss(other, None, batch.obs, batch.ctf, fr)
    assert float((good < bad).float().mean()) > 0.9


def test_the_coarse_shift_grid_refined_finds_each_images_shift(tmp_path):
    """Stage 1 scores shifts on a grid of step 2 px and refines the winner over the ±1 px around it by exact
    slices: at the true poses under the true map, that finds each image's shift to the nearest pixel, as the
    full 1-px grid does; and the refinement returns the best of its 3 × 3 trials."""
    from conftest import simulate_ribosome
    from napari_semiamort.data.star import read_star
    from truth_scale import at_truth

    data = simulate_ribosome(tmp_path, n_particles=200, box=32, snr=1.0, seed=5, max_shift=3)
    run = Reconstruction(ReconstructionConfig(particles=str(data / "particles.star"),
                                              stage1="heads", heads=2, threads=1,
                                              shifts="yes"))
    stage1 = run.stage1
    assert stage1.shift_grid.shape == (9, 2) and float(stage1.shift_grid.abs().max()) == 2.0
    at_truth(run, data)  # leaves the volume at the (unscaled) truth
    truth = torch.as_tensor(read_star(data / "particles.star", require_stacks=False).origins / run.data.pixel_size,
                            dtype=torch.float32)
    idx = torch.arange(200)
    fr = run.frequencies(run.stage1_end)
    batch = run.source.batch(idx, fr)
    rot = run.data.reference_rotations[idx].to(torch.float32)[:, None]  # (B, 1, 3, 3)
    identity = torch.eye(3)[None]
    with torch.no_grad():
        slices = run.volume.slice(fr.grid, rot)
        coarse = run.model.inplane_scores(slices, batch, idx, fr, identity, stage1.shift_grid)[:, 0, 0].argmin(-1)
        best, found = stage1._refine(rot, stage1.shift_grid[coarse][:, None], batch, fr)
        fine = run.model.inplane_scores(slices, batch, idx, fr, identity, square_grid(3, 1))[:, 0, 0].argmin(-1)
    found = found[:, 0]
    assert float((found - truth).abs().max()) <= 1.0  # every image within a pixel of its shift on each axis
    assert float(((found - truth).norm(dim=1) <= 0.75).float().mean()) > 0.9  # the nearest pixel, nearly all
    assert float((found == square_grid(3, 1)[fine]).all(1).float().mean()) > 0.9  # as the full grid
    trials = (stage1.shift_grid[coarse][:, None] + stage1.shift_offsets).clamp(-3, 3)  # (B, 9, 2)
    with torch.no_grad():
        exact = run.model.loss(run.model.predict(rot.expand(-1, 9, -1, -1), trials, batch.ctf[:, None], fr),
                               batch.obs[:, None], fr)
    torch.testing.assert_close(best[:, 0], exact.min(1).values)
    # step 1: every whole pixel on the grid, nothing left to refine
    full = Reconstruction(ReconstructionConfig(particles=str(data / "particles.star"),
                                               stage1="heads", heads=2, threads=1,
                                               shifts="yes", shift_step=1)).stage1
    assert torch.equal(full.shift_grid, square_grid(3, 1)) and full.shift_offsets.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(("reach", "step"), [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2), (2, 3), (3, 3), (5, 3), (3, 4)])
def test_the_coarse_shift_grid_and_its_refinement_reach_every_whole_pixel(tiny_dataset, reach, step):
    """Every whole-pixel shift within ±reach is a grid point plus one of the refinement's offsets, whatever the
    step (at step 4 and reach 3 the grid is {0} alone: the offsets must reach ±3)."""
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"),
                                              stage1="heads", heads=2, threads=1,
                                              shifts="yes", shift_search=reach, shift_step=step, max_shift=0.2))
    stage1 = run.stage1
    assert stage1.shift_reach == reach
    reached = (stage1.shift_grid[:, None] + stage1.shift_offsets[None]).clamp(-reach, reach).reshape(-1, 2)
    assert {tuple(x) for x in reached.tolist()} == {tuple(x) for x in square_grid(reach, 1).tolist()}


@pytest.mark.parametrize("shifted", [False, True])
def test_every_in_plane_turn_compares_the_whole_image(tiny_dataset, shifted):
    """A pose's score holds the image's own norm, the same at every in-plane turn: with nothing predicted (a zero
    volume), every turn of every direction scores the zero prediction's exact loss. The resampled image's norm
    varies with the turn (bilinear resampling averages noise away between the pixel grid's points), and scoring
    with it favoured off-grid turns over the signal at wide bands (the true map's best grid pose on realistic 8ZPM:
    60.8° median error at Nyquist with it, 5.0° without)."""
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), stage1="heads", heads=2,
                                              threads=1, shifts="yes"))
    idx, fr = torch.arange(6), run.frequencies(1.0)
    batch = run.source.batch(idx, fr)
    rot = random_rotations(5, torch.Generator().manual_seed(3))
    inplane = about_z(torch.linspace(0, 2 * torch.pi, 37)[:-1])
    shifts = torch.tensor([[1.0, -2.0]]).expand(6, 2) if shifted else None
    with torch.no_grad():
        zero = torch.zeros_like(run.volume.slice(fr.grid, rot))  # (5, P): nothing predicted
        nothing = run.model.loss(torch.zeros_like(batch.obs), batch.obs, fr)  # (B,)
        grid = run.model.grid_scores(zero, batch, idx, fr, inplane, shifts)  # (B, 5, 36)
        turns = run.model.inplane_scores(zero[None].expand(6, -1, -1), batch, idx, fr, inplane,
                                         None if shifts is None else square_grid(1, 1))
    torch.testing.assert_close(grid, nothing[:, None, None].expand_as(grid), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(turns, nothing.reshape(6, *[1] * (turns.dim() - 1)).expand_as(turns), rtol=1e-5,
                               atol=1e-7)
