"""The Qt-free session that a program (the plugin's dock) drives a run through: run info first, snapshots that
carry what a viewer needs, watch-list changes and stop through the control, outputs at the end, and posteriors
from the run in memory or from its checkpoint."""


import pytest

from napari_semiamort.run.config import ReconstructionConfig
from napari_semiamort.run.session import Control, RunInfo, posterior_from_checkpoint, train
from napari_semiamort.run.snapshot import Snapshot


@pytest.fixture(scope="module")
def star(tmp_path_factory, ribosome_images):
    out = ribosome_images(tmp_path_factory.mktemp("sim"), n_particles=200, box=32, snr=1.0, seed=7)
    return out / "particles.star"


def _config(star, **kw) -> ReconstructionConfig:
    base = dict(particles=str(star), epochs=2, switch_epoch=1, stage1="heads", heads=2, restarts=1, reassign_epochs=0,
                batch_size=32, device="cpu", watch=[0, 1])
    return ReconstructionConfig(**{**base, **kw})


def test_a_run_yields_its_info_then_snapshots_and_takes_a_new_watch_list_through_the_control(star, tmp_path):
    control = Control()
    items = train(_config(star), tmp_path / "run", control)
    info = next(items)
    assert isinstance(info, RunInfo)
    assert (info.n_particles, info.box, info.epochs, info.epoch, info.device) == (200, 32, 2, 0, "cpu")
    assert info.pixel_size > 0 and info.run_dir == tmp_path / "run" and info.handle is not None
    first = next(items)
    assert isinstance(first, Snapshot) and first.box == 32 and first.pixel_size == pytest.approx(info.pixel_size)
    control.set_watch([5, 9])  # between steps: the next full snapshot watches these
    full = next(s for s in items if s.volume is not None)
    assert [w.index for w in full.watched] == [5, 9]
    assert full.epoch_end and len(full.history) == 1 and full.history[-1]["epoch"] == 1
    rest = list(items)  # to the end: the outputs are written
    assert rest[-1].epoch_end and rest[-1].epoch + 1 == 2
    for name in ("map.mrc", "poses.star", "config.json", "checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file(), name


def test_stop_ends_the_run_after_the_step_in_progress_and_keeps_what_it_reached(star, tmp_path):
    control = Control()
    items = train(_config(star, epochs=4, switch_epoch=2), tmp_path / "run", control)
    next(items)
    next(items)
    control.stop = True
    assert list(items) == []  # nothing after the step that saw the stop
    assert (tmp_path / "run" / "map.mrc").is_file() and (tmp_path / "run" / "poses.star").is_file()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped within the first epoch


def test_posteriors_asked_through_the_control_then_from_the_handle_and_from_the_checkpoint(star, tmp_path):
    from napari_semiamort.run.posterior import PosePosterior

    control = Control()
    control.ask_posterior(3, live=False)  # once, at the first full snapshot
    run_dir = tmp_path / "run"
    items = list(train(_config(star), run_dir, control))
    posteriors = [x for x in items if isinstance(x, PosePosterior)]
    assert [p.index for p in posteriors] == [3] and control.posterior is None
    k = next(i for i, x in enumerate(items) if x is posteriors[0])
    assert items[k - 1].volume is not None  # computed after a full snapshot
    again = items[0].handle.posterior(4)  # the run in memory, after its worker ended
    assert again.index == 4 and len(again.candidates) == 2
    info, post = posterior_from_checkpoint(run_dir, 6)
    assert post.index == 6 and info.box == 32 and info.epoch == 2 and info.run_dir == run_dir
