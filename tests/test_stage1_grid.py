"""Stage 1 by projection matching (``stage1="grid"``, issue 18): each image's best poses on the global search's
grid under the current volume, the volume trained on their posterior."""

import torch

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.stage1 import GridEM, MultiHeadWTA
from test_search import _images_at


def _run(tiny_dataset, **kw) -> Reconstruction:
    return Reconstruction(ReconstructionConfig(**{"particles": str(tiny_dataset / "particles.star"), "threads": 1,
                                                  "stage1": "grid", **kw}))


def test_the_grid_strategy_is_chosen_by_the_config(tiny_dataset):
    assert isinstance(_run(tiny_dataset).stage1, GridEM)
    assert isinstance(_run(tiny_dataset, stage1="heads", heads=2).stage1, MultiHeadWTA)


def test_a_step_takes_the_grid_poses_and_shifts_the_images_were_made_at_and_trains_the_volume_on_them(tiny_dataset):
    """Images of the volume at grid poses (in-plane turns of 90°: the image's resampling is exact) and whole-pixel
    shifts: a step's poses and shifts are those, the candidates rank them first, and the volume's step lowers
    the loss at those poses."""
    run = _run(tiny_dataset, search_nside=2, search_inplane=4, shifts="yes", shift_search=2)
    model, fr, em = run.model, run.frequencies(0.5), run.stage1
    gen = torch.Generator().manual_seed(5)
    d = torch.randint(len(em.search.directions), (8,), generator=gen)
    k = torch.randint(4, (8,), generator=gen)
    truth = em.search.inplane[k] @ em.search.directions[d]
    shifts = torch.randint(-2, 3, (8, 2), generator=gen).float()
    idx = torch.arange(8)
    batch = run.source.batch(idx, fr, _images_at(run, truth, shifts))
    # the directions are ranked at the images' current shifts: a pixel off in x for half of them
    start = shifts + torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat(4, 1)
    cand = em.candidates(batch, idx, fr, start)
    torch.testing.assert_close(cand.rotations[:, 0], truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(cand.shifts[:, 0], shifts)
    assert torch.all(cand.scores[:, 0] <= cand.scores[:, 1])
    # the images are the volume's own projections: perturb the volume so that a step has something to fit
    with torch.no_grad():
        for p in model.volume.parameters():
            p.mul_(0.8)
        before = model.exact_loss(truth, shifts, batch.obs, batch.ctf, fr).mean()
    result = em.step(batch, idx, fr, run.opt_volume, start)
    torch.testing.assert_close(result.rotations, truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.shifts, shifts)
    with torch.no_grad():
        after = model.exact_loss(truth, shifts, batch.obs, batch.ctf, fr).mean()
    assert after < before


def test_with_centred_particles_no_shift_is_searched(tiny_dataset):
    run = _run(tiny_dataset, search_nside=1, search_inplane=4, shifts="no")
    em, fr, idx = run.stage1, run.frequencies(0.4), torch.arange(4)
    assert not em.searches_shifts
    cand = em.candidates(run.source.batch(idx, fr), idx, fr, None)
    assert cand.shifts is None and cand.rotations.shape == (4, em.top, 3, 3)


def test_a_stage_1_step_moves_no_coefficient_beyond_its_band(tiny_dataset):
    """The voxels just beyond the band are reached by the slice's interpolation with small weights; left to Adam
    they random-walk (the shell beyond the band grew to 400x its trend over four epochs at one band). A step at
    the band moves the volume within it and leaves every coefficient beyond it as it was, in both strategies."""
    from napari_semiamort.physics.fourier import radial_frequency_index_3d

    for kw in ({}, {"stage1": "heads", "heads": 2}):
        run = _run(tiny_dataset, **kw)
        fr = run.frequencies(0.5)
        band = int(fr.shells.max())
        idx = torch.arange(16)
        before = [p.detach().clone() for p in (run.volume.mantissa, run.volume.exponent)]
        for _ in range(3):
            run.stage1.step(run.source.batch(idx, fr), idx, fr, run.opt_volume, None)
        shells = radial_frequency_index_3d(run.size)
        for old, new in zip(before, (run.volume.mantissa, run.volume.exponent), strict=True):
            assert torch.equal(new.detach()[shells > band], old[shells > band])
            assert not torch.equal(new.detach()[shells <= band], old[shells <= band])
