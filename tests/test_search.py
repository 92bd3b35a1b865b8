"""The global pose search (issue 18): its batched scores equal the per-image ones, and on images made from the
volume at grid poses it finds those poses and shifts."""

import torch

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.search import GridSearch, grid_for_band


def _run(tiny_dataset, **kw) -> Reconstruction:
    return Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2, threads=1,
                                               **kw))


def test_grid_scores_equal_the_in_plane_scores_of_each_image(tiny_dataset):
    """One slice per direction shared by the batch gives each image's in-plane scores; with a shift per image,
    each image's row equals the shift search's score at that shift."""
    run = _run(tiny_dataset)
    model, fr = run.model, run.frequencies(0.4)
    idx = torch.arange(5)
    batch = run.source.batch(idx, fr)
    grid = GridSearch(1, 8, model.device)
    with torch.no_grad():
        slices = model.volume.slice(fr.grid, grid.directions[None])[0]  # (12, P)
        batched = model.grid_scores(slices, batch, idx, fr, grid.inplane)
        each = model.inplane_scores(slices[None].expand(5, -1, -1), batch, idx, fr, grid.inplane)
        torch.testing.assert_close(batched, each, rtol=1e-4, atol=1e-6)
        shifts = torch.tensor([[1.0, -2.0], [0.0, 0.0], [-1.0, 1.0], [2.0, 2.0], [0.5, -0.5]])
        shifted = model.grid_scores(slices, batch, idx, fr, grid.inplane, shifts)
        for b in range(5):
            one = model.inplane_scores(slices[None], batch.part(b, b + 1), idx[b : b + 1], fr, grid.inplane,
                                       shifts[b : b + 1])[..., 0]
            torch.testing.assert_close(shifted[b : b + 1], one, rtol=1e-4, atol=1e-6)
        assert (shifted - batched).abs().max() > 1e-3  # the shifts do change the scores


def _images_at(run: Reconstruction, rotations: torch.Tensor, shifts: torch.Tensor | None) -> torch.Tensor:
    """Noise-free images of the run's volume at ``rotations`` (and shifts), with the data's CTF, in the
    source's Hartley layout."""
    from napari_semiamort.physics.fourier import ihartley_centered

    model, size = run.model, run.size
    full = run.frequencies(1.0)
    idx = torch.arange(len(rotations))
    ctf = run.source.ctf(idx, full.per_pixel)
    with torch.no_grad():
        pred = model.predict(rotations, shifts, ctf, full)
    h = torch.zeros(len(idx), size * size)
    h[:, full.flat_index] = pred
    return ihartley_centered(h.reshape(-1, size, size), 2)


def test_the_search_finds_the_grid_poses_and_shifts_images_were_made_at(tiny_dataset):
    run = _run(tiny_dataset)
    model, fr = run.model, run.frequencies(0.5)
    # in-plane turns of 90°: the turned frequencies fall on the pixel grid, so the image's resampling is exact
    grid = GridSearch(2, 4, model.device, max_shift=2, top=3)
    gen = torch.Generator().manual_seed(3)
    d = torch.randint(len(grid.directions), (6,), generator=gen)
    k = torch.randint(4, (6,), generator=gen)
    truth = grid.inplane[k] @ grid.directions[d]
    shifts = torch.randint(-2, 3, (6, 2), generator=gen).float()
    # the directions are searched at each image's current shift, then the shifts at its 3 best poses: from
    # a current shift a pixel off in x for half the images, the true shift is found
    current = shifts + torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat(3, 1)
    idx = torch.arange(6)
    for sh, start in ((None, None), (shifts, current)):
        batch = run.source.batch(idx, fr, _images_at(run, truth, sh))
        found = grid.search(model, batch, idx, fr, start)
        torch.testing.assert_close(found.rotations[:, 0], truth, atol=1e-4, rtol=0)
        if sh is None:  # shifts not estimated (or no longer): none searched
            assert found.shifts is None
        else:
            torch.testing.assert_close(found.shifts[:, 0], sh)
        assert torch.all(found.scores[:, 0] <= found.scores[:, 1])  # best first


def test_grid_for_band_is_finer_for_a_wider_band():
    coarse, fine = grid_for_band(4), grid_for_band(16)
    assert coarse[0] <= fine[0] and coarse[1] < fine[1]
    assert fine[1] % 4 == 0


def test_the_joint_search_finds_view_and_shift_whatever_the_current_shift(tiny_dataset):
    """The polish's search (:class:`JointShiftSearch`) scores every grid pose at every shift of its grid: images
    made at grid poses and shifts up to 4 px are found exactly from current shifts at least 4 px off; centred
    particles (no shifts) get the plain grid search."""
    from napari_semiamort.run.search import JointShiftSearch

    run = _run(tiny_dataset)
    model, fr = run.model, run.frequencies(0.5)
    joint = JointShiftSearch(2, 4, model.device, max_shift=4, step=2.0, top=3)
    assert joint.shift_grid.shape == (25, 2) and float(joint.shift_grid.abs().max()) == 4.0
    gen = torch.Generator().manual_seed(5)
    d = torch.randint(len(joint.directions), (6,), generator=gen)
    k = torch.randint(4, (6,), generator=gen)
    truth = joint.inplane[k] @ joint.directions[d]
    shifts = 2 * torch.randint(-2, 3, (6, 2), generator=gen).float()
    current = -shifts.sign() * 2 + torch.where(shifts == 0, 4.0, 0.0) - shifts  # 4–6 px away, every image
    assert float((current - shifts).norm(dim=1).min()) >= 4
    idx = torch.arange(6)
    batch = run.source.batch(idx, fr, _images_at(run, truth, shifts))
    found = joint.search(model, batch, idx, fr, current)
    torch.testing.assert_close(found.rotations[:, 0], truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(found.shifts[:, 0], shifts)
    assert torch.all(found.scores[:, 0] <= found.scores[:, 1])
    centred = run.source.batch(idx, fr, _images_at(run, truth, None))
    plain = joint.search(model, centred, idx, fr, None)
    assert plain.shifts is None
    torch.testing.assert_close(plain.rotations[:, 0], truth, atol=1e-4, rtol=0)
