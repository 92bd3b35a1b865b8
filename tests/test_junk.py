"""Junk (issue 18, item 5): images that fit no view are found from their detection scores, stop pulling the
volume, are left out of the map, and are marked in the STAR files a user selects on."""

import numpy as np
import torch

from napari_semiamort.data.star import read_star_columns
from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.junk import flag_junk
from napari_semiamort.run.outputs import write_outputs
from napari_semiamort.run.passes import pose_table
from napari_semiamort.run.stage2 import autodecode_step


def test_a_separate_low_population_is_flagged_and_one_population_is_not():
    rng = np.random.default_rng(0)
    good, junk = rng.normal(12.0, 2.0, 900), rng.normal(5.5, 1.0, 100)
    flags = flag_junk(np.concatenate([good, junk]))
    assert flags.flagged[900:].mean() >= 0.95 and flags.flagged[:900].mean() <= 0.01
    assert 5.5 < flags.threshold < 12 and flags.separation > 2
    # one population (a clean set; its tails included): nothing flagged
    assert not flag_junk(rng.normal(12.0, 2.0, 1000)).flagged.any()
    assert not flag_junk(rng.standard_t(5, 1000) + 12).flagged.any()
    # a lower population that is most of the set is not junk
    assert not flag_junk(np.concatenate([rng.normal(12, 2, 300), rng.normal(5, 1, 700)])).flagged.any()
    # an image whose score is not a number is junk
    scores = np.concatenate([good, junk, [np.nan]])
    assert flag_junk(scores).flagged[-1]


def _run(tiny_dataset, **kw) -> Reconstruction:
    return Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2, threads=1,
                                               **kw))


def test_flagged_images_do_not_pull_the_volume(tiny_dataset):
    """One stage-2 step with two images flagged: whatever those images hold, the volume steps the same."""
    steps = []
    for garbage in (False, True):
        run = _run(tiny_dataset)
        run.state.table = pose_table(run.config, run.size, run.state.poses.clone())
        idx = torch.arange(8)
        fr = run.frequencies(1.0)
        images = run.data.read(idx.numpy())
        if garbage:
            images[:2] = torch.randn(2, run.size, run.size, generator=torch.Generator().manual_seed(1)) * 50
        keep = torch.ones(8, dtype=torch.bool)
        keep[:2] = False
        autodecode_step(run.model, run.state.table, run.source.batch(idx, fr, images), idx, fr, 1, run.opt_volume, keep)
        steps.append(run.volume.hartley().detach().clone())
    torch.testing.assert_close(steps[0], steps[1])


def test_the_outputs_mark_junk_and_leave_it_out_of_the_map(tiny_dataset, tmp_path):
    run = _run(tiny_dataset)
    run.poses = run.data.reference_rotations.clone()  # the true poses: a map worth comparing
    n = len(run.data)
    run.state.junk = torch.zeros(n, dtype=torch.bool)
    whole = run.final_maps()[0]
    run.state.junk[:100] = True
    out = write_outputs(run, tmp_path)
    cols = read_star_columns(out["poses"])
    np.testing.assert_array_equal(cols["rlnSelected"], np.r_[np.zeros(100), np.ones(n - 100)])
    kept = read_star_columns(out["poses_kept"])
    assert len(kept["rlnImageName"]) == n - 100
    np.testing.assert_array_equal(kept["rlnImageName"], cols["rlnImageName"][100:])
    without = run.final_maps()[0]
    assert not np.allclose(whole, without)  # the flagged images are not in the map
    by_hand = run.backproject(np.arange(100, n))
    np.testing.assert_allclose(without, by_hand, rtol=1e-5, atol=1e-6 * np.abs(by_hand).max())


def test_the_junk_score_is_the_share_of_the_prediction_an_image_holds(tiny_dataset):
    """The fitted amplitude: 1 for the prediction itself, its scale for a scaled copy, 0 for an image that holds
    none of it (whatever the CTF lets through: unlike the matched filter, it does not grow with the signal)."""
    run = _run(tiny_dataset)
    idx = torch.arange(6)
    fr = run.frequencies(1.0)
    batch = run.source.batch(idx, fr)
    poses = run.data.reference_rotations[idx]
    pred = run.model.predict(poses, None, batch.ctf, fr)
    scale = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.0, 0.25])[:, None]
    got = run.model.amplitude(poses, None, pred * scale, batch.ctf, fr)
    torch.testing.assert_close(got, scale[:, 0], rtol=1e-4, atol=1e-6)
    # the same amplitude whatever the prediction's strength (a weaker CTF, a fainter map)
    faint = run.model.amplitude(poses, None, 0.1 * pred * scale, 0.1 * batch.ctf, fr)
    torch.testing.assert_close(faint, scale[:, 0], rtol=1e-4, atol=1e-6)
