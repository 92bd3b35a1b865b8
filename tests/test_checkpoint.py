"""Checkpoints: a run resumed from its folder continues exactly where it stopped, without reading every
image again, and a run can be questioned from its checkpoint alone."""

import numpy as np
import pytest
import torch

from napari_semiamort.data.dataset import ParticleDataset
from napari_semiamort.run import Reconstruction, ReconstructionConfig


def _config(tiny_dataset, **kw):
    settings = {"heads": 3, "threads": 1, "restarts": 2, "restart_epochs": 1, "switch_epoch": 2,
                "reassign_epochs": 1, "batch_size": 200, "halves": True, **kw}
    return ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), **settings)


@pytest.mark.parametrize("stage1", ["grid", "heads"])
def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one(tiny_dataset, tmp_path, stage1):
    whole = Reconstruction(_config(tiny_dataset, epochs=4, stage1=stage1))
    for _ in whole:
        pass
    first = Reconstruction(_config(tiny_dataset, epochs=3, stage1=stage1), run_dir=tmp_path)
    for _ in first:
        pass
    resumed = Reconstruction.resume(tmp_path, epochs=4)  # stage 2 by then: the pose table comes back too
    assert resumed.epoch == 3 and resumed.table is not None
    for _ in resumed:
        pass
    assert torch.equal(resumed.poses, whole.poses)
    assert np.array_equal(resumed.volume_map(), whole.volume_map())
    assert [m["loss"] for m in resumed.history] == [m["loss"] for m in whole.history]
    assert np.array_equal(resumed.data.half, whole.data.half)


def test_resuming_restores_the_scan_without_reading_every_image(tiny_dataset, tmp_path, monkeypatch):
    run = Reconstruction(_config(tiny_dataset, epochs=2, restarts=1, invert="yes"), run_dir=tmp_path)
    for _ in run:
        pass
    read: list[int] = []
    original = ParticleDataset.read_raw

    def counting(self, idx):
        read.append(len(idx))
        return original(self, idx)

    monkeypatch.setattr(ParticleDataset, "scan", lambda *a, **k: pytest.fail("resume scanned the images"))
    monkeypatch.setattr(ParticleDataset, "read_raw", counting)
    again = Reconstruction.resume(tmp_path, cache_images=False)
    assert sum(read) == 0  # nothing read to build it
    assert again.data.sign == run.data.sign == -1.0 and again.data.scanned
    assert np.array_equal(again.data.half, run.data.half)
    assert np.array_equal(again.volume_map(), run.volume_map()) and torch.equal(again.poses, run.poses)
    idx = torch.arange(5)
    torch.testing.assert_close(again.data.read(idx.numpy()), run.data.read(idx.numpy()))  # the same images


def test_a_checkpoint_from_another_particle_file_is_refused(tiny_dataset, tmp_path):
    from napari_semiamort.data.readers import open_dataset

    data = open_dataset(_config(tiny_dataset))
    state = {"sign": 1.0, "rows": np.arange(len(data) + 5), "skipped": np.zeros(0, np.int64), "half": None}
    with pytest.raises(ValueError, match="particles.star: the run's record names 1005 particles"):
        data.restore_scan(state)


def test_the_best_restart_is_kept_once_and_a_watch_change_reaches_the_checkpoint(tiny_dataset, tmp_path):
    run = Reconstruction(_config(tiny_dataset, epochs=3, watch=[0]), run_dir=tmp_path)
    run.set_watch([4, 9])  # as the dock's control channel does between steps
    for _ in run:
        pass
    assert run.restarts.best is None  # no second copy of the volume and its moments through stage 2
    assert len(run.restarts.losses) >= 2 and "chosen_restart" in run.history[0]
    assert Reconstruction.resume(tmp_path, cache_images=False).config.watch == [4, 9]  # what inspect shows
    assert sorted(run.paths) == [4, 9]


def test_switching_by_hand_gives_stage_2s_volume_step(tiny_dataset):
    run = Reconstruction(_config(tiny_dataset, restarts=1, epochs=4))
    assert run.opt_volume.param_groups[0]["lr"] == run.config.volume_lr
    run.switch()  # benchmarks and profilers time stage-2 steps this way
    assert run.opt_volume.param_groups[0]["lr"] == pytest.approx(run.config.volume_lr_autodecode)
    assert run.table is not None and np.isfinite(run.train_step(torch.arange(8)))


def test_a_run_whose_shifts_were_dropped_at_the_switch_resumes_centred(tiny_dataset, tmp_path):
    run = Reconstruction(_config(tiny_dataset, epochs=3, switch_epoch=1, restarts=1), run_dir=tmp_path)
    for snap in run:
        if snap.epoch_end and run.epoch == 1:
            break
    run.shifts = torch.zeros(len(run.data), 2)  # as stage 1 finds centred particles (one epoch is too few here)
    for snap in run:
        if snap.epoch_end and run.epoch == 2:
            break
    assert run.history[-1]["shifts_kept"] is False
    assert run.shifts is None and not run.stage1.searches_shifts
    resumed = Reconstruction.resume(tmp_path)
    assert resumed.shifts is None and not resumed.stage1.searches_shifts
    assert resumed.candidates(torch.arange(4), resumed.stage1_end).shifts is None
    for _ in resumed:
        pass
    assert resumed.shifts is None and resumed.epoch == 3


def test_a_checkpoint_written_before_stage_1_had_a_choice_resumes_with_its_heads(tiny_dataset, tmp_path):
    """Runs written before the grid became stage 1's default were trained by the encoder's heads: their config
    has no ``stage1``, and resuming or questioning them must not swap in the grid (and drop the encoder)."""
    from napari_semiamort.run.stage1 import MultiHeadWTA

    run = Reconstruction(_config(tiny_dataset, epochs=2, switch_epoch=1, restarts=1, stage1="heads"), run_dir=tmp_path)
    for _ in run:
        pass
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["config"]["stage1"]
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = Reconstruction.resume(tmp_path, cache_images=False)
    assert resumed.config.stage1 == "heads" and isinstance(resumed.stage1, MultiHeadWTA)
    for name, value in run.encoder.state_dict().items():
        assert torch.equal(resumed.encoder.state_dict()[name], value)


def test_a_run_stopped_in_its_polish_resumes_exactly_and_an_older_run_resumes_without_one(tiny_dataset, tmp_path):
    """The polish's map is rebuilt at each epoch's start from the checkpointed poses: a run stopped between polish
    epochs continues as the uninterrupted one. A checkpoint written before the polish existed (no
    ``polish_epochs`` in its config) resumes as it was planned: without one (and one written before the symmetry
    relaxation, without that)."""
    settings = {"epochs": 6, "stage2_ramp_epochs": 0, "polish_epochs": 2, "restarts": 1}
    whole = Reconstruction(_config(tiny_dataset, **settings))
    for _ in whole:
        pass
    assert "polish_shells_kept" in whole.history[4] and "polish_shells_kept" not in whole.history[3]
    first = Reconstruction(_config(tiny_dataset, **settings), run_dir=tmp_path / "run")
    for _ in first:
        if first.epoch == 5:  # stopped after the first polish epoch
            break
    resumed = Reconstruction.resume(tmp_path / "run")
    assert resumed.epoch == 5
    for _ in resumed:
        pass
    assert torch.equal(resumed.poses, whole.poses)
    assert [m["loss"] for m in resumed.history] == [m["loss"] for m in whole.history]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["modes"] is None  # no view search without shifts: no modes
    del state["config"]["polish_epochs"], state["config"]["relax_symmetry"]
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    older = Reconstruction.resume(tmp_path / "run", cache_images=False).config
    assert older.polish_epochs == 0 and older.relax_symmetry == 0  # nor the symmetry relaxation, added later


def test_the_modes_of_the_polishs_view_search_reach_the_checkpoint_and_the_resumed_runs_map(tiny_dataset, tmp_path):
    """With shifts estimated the polish's view search spreads each image over its modes: a run stopped after it
    resumes with the same modes, and its map (spread over them) is the uninterrupted run's."""
    settings = {"epochs": 6, "stage2_ramp_epochs": 0, "polish_epochs": 2, "restarts": 1, "shifts": "yes",
                "halves": False}
    whole = Reconstruction(_config(tiny_dataset, **settings))
    for _ in whole:
        pass
    assert whole.state.modes is not None and whole.state.modes.weights.shape == (len(whole.data), 3)
    first = Reconstruction(_config(tiny_dataset, **settings), run_dir=tmp_path / "run")
    for _ in first:
        if first.epoch == 5:
            break
    assert first.state.modes is not None
    resumed = Reconstruction.resume(tmp_path / "run")
    for mine, theirs in zip(resumed.state.modes, first.state.modes, strict=True):
        assert torch.equal(mine, theirs)
    for _ in resumed:
        pass
    assert torch.equal(resumed.state.modes.weights, whole.state.modes.weights)
    np.testing.assert_array_equal(resumed.final_maps()[0], whole.final_maps()[0])
