"""The run's verdict (issue 18, item 8): the share of the images' signal the map explains at their poses is ~1
for the right map at the right poses, and low for a blob or for poses that do not belong to the images; the
messages name what was found and what to try."""

import numpy as np
import pytest
import torch

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.schedule import BAND_SNR, WIDER_BY, supported_band
from napari_semiamort.run.verdict import (
    DOUBTFUL_BELOW,
    DOUBTFUL_BELOW_STAGE1,
    DOUBTFUL_JUNK,
    FAILED_BELOW,
    FIRST_SHELL,
    MIN_SIGNAL,
    explained_signal,
    judge,
    verdict_message,
)
from truth_scale import at_truth


def _spherical_average(volume: torch.Tensor) -> torch.Tensor:
    """The map averaged over every rotation about the box centre: a round blob with the map's radial profile."""
    n = volume.shape[-1]
    k = torch.arange(n) - n // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).round().long()
    sums = torch.zeros(int(r.max()) + 1).index_add_(0, r.flatten(), volume.flatten().float())
    counts = torch.zeros_like(sums).index_add_(0, r.flatten(), torch.ones(r.numel()))
    return (sums / counts)[r]


@pytest.fixture(scope="module")
def run_at_truth(tiny_dataset):
    """The tiny set's run with its volume set to the truth, scaled to the images, at the true poses."""
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), heads=2, threads=1, shifts="no")
    run = Reconstruction(cfg)
    truth = at_truth(run, tiny_dataset, n_fit=128)
    with torch.no_grad():
        run.volume.set_from_map(truth)
    run.poses = run.data.reference_rotations.clone()
    return run, truth


def test_the_right_map_at_the_right_poses_explains_the_signal_a_blob_or_wrong_poses_do_not(run_at_truth):
    run, truth = run_at_truth
    fr = run.frequencies(1.0)
    right = explained_signal(run.model, run.source, run.state, fr, seed=0)
    first, last = right.shells
    assert first == FIRST_SHELL and last > first + 3  # SNR 1 at box 32: signal well beyond shell 4
    assert np.all(right.signal[first : last + 1] >= MIN_SIGNAL)
    assert right.fraction > 0.9  # measured 0.99
    final = judge(run.model, run.source, run.state, fr, 0, final=True)
    assert final["verdict"] == "found"
    # stage 1's verdict is judged within 0.4 of Nyquist (6 px at box 32), where its thresholds were measured
    stage1 = judge(run.model, run.source, run.state, fr, 0, final=False)
    width = run.source.size * run.data.pixel_size
    assert stage1["explained_resolution_A_stage1"][1] == pytest.approx(width / 6, abs=0.01)
    assert final["explained_resolution_A"][1] == pytest.approx(width / last, abs=0.01) and last > 6
    assert stage1["verdict_stage1"] == "found"

    true_poses = run.poses.clone()
    try:  # the right map, every image at another image's pose
        run.poses = true_poses[torch.from_numpy(np.random.default_rng(1).permutation(len(true_poses)))]
        shuffled = explained_signal(run.model, run.source, run.state, fr, seed=0)
        assert shuffled.fraction < FAILED_BELOW  # measured 0.01
    finally:
        run.poses = true_poses
    try:  # a round blob with the map's radial profile, at the true poses
        with torch.no_grad():
            run.volume.set_from_map(_spherical_average(truth))
        blob = explained_signal(run.model, run.source, run.state, fr, seed=0)
        assert blob.fraction < FAILED_BELOW  # measured 0.06
        record = judge(run.model, run.source, run.state, fr, 0, final=False)
        assert record["verdict_stage1"] == "failed" and record["starts_agreed_stage1"] is None
    finally:
        with torch.no_grad():
            run.volume.set_from_map(truth)


def test_junk_is_left_out_and_too_much_of_it_makes_the_verdict_doubtful(run_at_truth):
    """Images the run flagged as junk do not count. With half the images at scrambled poses and none flagged the
    pooled correlation halves (the share ~1/4); flagged, the rest is the right map's, but half the images left
    out as junk is more than the verdict lets pass (particles at wrong poses look like junk)."""
    run, _ = run_at_truth
    fr = run.frequencies(1.0)
    true_poses = run.poses.clone()
    bad = torch.zeros(len(true_poses), dtype=torch.bool)
    bad[::2] = True
    try:
        scrambled = true_poses.clone()
        scrambled[bad] = true_poses[bad].flip(0)
        run.poses = scrambled
        mixed = explained_signal(run.model, run.source, run.state, fr, seed=0)  # none flagged yet
        run.state.junk = bad
        kept = explained_signal(run.model, run.source, run.state, fr, seed=0)
        record = judge(run.model, run.source, run.state, fr, 0, final=True)
    finally:
        run.poses, run.state.junk = true_poses, None
    assert abs(mixed.fraction - 0.25) < 0.08 and mixed.junk == 0  # measured 0.27
    assert kept.fraction > 0.9 and kept.junk == 0.5 > DOUBTFUL_JUNK  # measured 0.996
    assert record["verdict"] == "doubtful" and record["explained_junk"] == 0.5
    assert "; 50 % of the images were left out as junk (junk, or particles" in verdict_message(record)


def _record(level, fraction, agreed, final=True):
    key = "" if final else "_stage1"
    return {f"verdict{key}": level, f"explained_signal{key}": fraction, f"explained_resolution_A{key}": [70.4, 14.1],
            f"starts_agreed{key}": agreed, f"explained_junk{key}": 0.0}


def test_the_messages_name_the_verdict_the_signal_and_what_to_try():
    found = verdict_message(_record("found", 0.93, True))
    assert found.startswith("verdict (the run): a structure was found: the map explains 93 %")
    assert "70–14 Å" in found and "two independent starts reached the same poses" in found
    assert "the map explains all of the images' signal" in verdict_message(_record("found", 1.01, True))
    assert "not confirmed: no two independent starts" in verdict_message(_record("found", 0.9, False))
    assert "start" not in verdict_message(_record("found", 0.9, None))  # one start: nothing to confirm
    failed = verdict_message(_record("failed", 0.12, False, final=False), final=False)
    assert failed.startswith("verdict (stage 1): FAILED, the map is a blob") and "--restarts" in failed
    assert f"≥ {100 * DOUBTFUL_BELOW_STAGE1:.0f} % at the switch" in failed
    assert f"≥ {100 * DOUBTFUL_BELOW:.0f} %;" in verdict_message(_record("failed", 0.12, False))
    doubtful = verdict_message(_record("doubtful", 0.74, False))
    assert "DOUBTFUL" in doubtful and "74 %" in doubtful and "--shifts yes" in doubtful
    assert "cannot judge" in verdict_message(_record("unknown", float("nan"), None))
    assert verdict_message({"loss": 0.5}) is None and verdict_message(_record("found", 0.9, True), final=False) is None
    # where the images carry signal beyond stage 1's band, the advice names the band they support
    assert "--autoencode-max-freq" not in failed
    wider = verdict_message({**_record("failed", 0.12, False), "wider_band": 0.56})
    assert "try a wider stage-1 band (--autoencode-max-freq 0.56" in wider
    assert "--autoencode-max-freq" not in verdict_message({**_record("found", 0.93, True), "wider_band": 0.56})
    unknown = verdict_message({**_record("unknown", float("nan"), None), "wider_band": 0.63})
    assert unknown.endswith("Try a wider stage-1 band (--autoencode-max-freq 0.63: the images carry signal beyond "
                            "stage 1's band)")


def test_the_band_the_data_support_ends_where_two_shells_in_a_row_fall_below_the_mark():
    def signal(snr):  # spectral SNR per shell → the signal fraction S/(S+N) the verdict measures
        snr = np.asarray(snr, dtype=float)
        return snr / (1 + snr)

    shells = [2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.08, 0.06, 0.04, 0.03, 0.2]  # two below at 8-9: the band ends at 7
    assert supported_band(signal(shells)) == 7
    shells[9] = 0.2  # one shell below between two above (a thin particle's dip) does not end it
    assert supported_band(signal(shells)) == 10
    assert supported_band(signal([1.0] * 4 + [BAND_SNR] * 3 + [0.0])) == 6  # the mark itself counts
    assert supported_band(signal([1.0] * 4 + [0.01, 0.01, 1.0])) == 0  # nothing from FIRST_SHELL on
    assert supported_band(signal([1.0] * 4 + [0.5, np.nan, 0.5])) == 4  # a shell without images ends it


def test_the_record_holds_a_wider_band_only_where_the_signal_reaches_well_beyond_stage_1s(run_at_truth):
    run, _ = run_at_truth
    fr = run.frequencies(1.0)
    # the tiny set (SNR 1, box 32) carries signal to the edge: far beyond a 0.4 band (6 px), not beyond 0.9
    supported = supported_band(explained_signal(run.model, run.source, run.state, fr, seed=0).signal)
    assert supported >= 6 + WIDER_BY
    narrow = judge(run.model, run.source, run.state, fr, 0, final=True, stage1_band=0.4)
    assert narrow["wider_band"] == pytest.approx(supported / 16, abs=0.005)
    assert judge(run.model, run.source, run.state, fr, 0, final=True, stage1_band=0.9)["wider_band"] is None
    assert "wider_band_stage1" in judge(run.model, run.source, run.state, fr, 0, final=False, stage1_band=0.4)
    assert "wider_band" not in judge(run.model, run.source, run.state, fr, 0, final=True)  # no band given
