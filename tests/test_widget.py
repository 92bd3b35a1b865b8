"""The Reconstruction dock widget driven end to end (headless, under Xvfb): knobs, Start, live layers,
Pause/Resume, Stop, export, errors, and a clean shutdown."""

import json
import threading
import time

import mrcfile
import numpy as np
import pytest

from napari_semiamort._qt.widget import CANDIDATES, VOLUME, WINNERS, ReconstructionWidget
from napari_semiamort.run.fields import dock_wording
from napari_semiamort.run.verdict import verdict_message

pytestmark = pytest.mark.usefixtures("no_worker_outlives_its_test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, ribosome_images):
    return ribosome_images(tmp_path_factory.mktemp("tiny"), n_particles=256, box=24, snr=1.0, seed=3)


def _widget(make_napari_viewer, tiny, tmp_path, epochs=40):
    viewer = make_napari_viewer(strict_qt=True)  # fails the test if a widget outlives the viewer
    w = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(w, name="semiamort")
    form = w.form  # the fields' widgets, as a user sets them
    form["particles"].value = tiny / "particles.star"
    form["stage1"].value = "heads"  # the encoder's heads: 4 candidates per watched particle
    form["heads"].value = 4
    form["switch_epoch"].value = 2
    form["epochs"].value = epochs
    form["batch_size"].value = 32
    form["device"].value = "cpu"
    form["watch"].value = "0 5"
    w.outdir.setText(str(tmp_path / "run"))
    return viewer, w


def _run_collecting_notifications(w, qtbot) -> list[str]:
    """Start the widget's run, wait for its worker to end, and return napari's notifications meanwhile."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        w.start()
        qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    return [str(n.message) for n in seen]


def test_start_pause_resume_stop_and_export(make_napari_viewer, tiny, tmp_path, qtbot):
    viewer, w = _widget(make_napari_viewer, tiny, tmp_path)
    assert w.config().heads == 4 and w.config().device == "cpu" and w.config().watch == [0, 5]
    assert w.config().stage2_batch_size is None  # as stage 1
    w.form["stage2_batch_size"].value = 48
    assert w.config().stage2_batch_size == 48
    w.form["stage2_batch_size"].value = 0
    first_candidates = []  # the layer as it first appears: the run may be past the switch when it is checked
    viewer.layers.events.inserted.connect(
        lambda e: first_candidates.append(e.value.data.shape) if e.value.name == CANDIDATES else None)
    w.start()
    qtbot.waitUntil(lambda: VOLUME in viewer.layers, timeout=30_000)
    first = np.array(viewer.layers[VOLUME].data)
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[VOLUME].data, first), timeout=30_000)
    assert viewer.layers[VOLUME].scale[0] == pytest.approx(w.info.pixel_size)
    assert viewer.dims.ndisplay == 3
    # candidates: one row per watched particle, the particle then its 4 heads' projections, winners framed
    qtbot.waitUntil(lambda: CANDIDATES in viewer.layers, timeout=30_000)
    assert first_candidates == [(2 * 28, 5 * 28)]
    frame = viewer.layers[WINNERS].data
    assert frame.shape == viewer.layers[CANDIDATES].data.shape
    assert frame[:28, 28:].sum() > 0 and frame[:28, :28].sum() == 0
    # a watch list changed mid-run reaches the worker through its control: a third row appears
    w.form["watch"].value = "0 5 9"
    w.form["watch"].native.editingFinished.emit()
    qtbot.waitUntil(lambda: viewer.layers[CANDIDATES].data.shape[0] == 3 * 28, timeout=30_000)
    qtbot.waitUntil(lambda: len(w.plots.history) >= 2, timeout=30_000)
    # contrast limits the user sets are kept while the map updates
    viewer.layers[VOLUME].contrast_limits = (0.001, 0.002)
    before = np.array(viewer.layers[VOLUME].data)
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[VOLUME].data, before), timeout=30_000)
    epoch_now = len(w.plots.history)
    qtbot.waitUntil(lambda: len(w.plots.history) > epoch_now, timeout=30_000)  # past an epoch end too
    assert tuple(viewer.layers[VOLUME].contrast_limits) == pytest.approx((0.001, 0.002))

    with qtbot.waitSignal(w.worker.paused, timeout=30_000):  # the step in flight (or a pass) finishes first
        w.pause()
    paused_at = w.progress.value()
    qtbot.wait(1000)
    assert w.progress.value() == paused_at and w.worker.is_paused
    w.resume()
    qtbot.waitUntil(lambda: w.progress.value() > paused_at, timeout=10_000)

    t0 = time.perf_counter()
    w.stop()
    qtbot.waitUntil(lambda: w.worker is None, timeout=2_000)
    assert time.perf_counter() - t0 < 2.0
    assert "stopped" in w.status.text() and w.start_button.isEnabled()
    run = tmp_path / "run"
    for name in ("map.mrc", "poses.star", "config.json", "chimerax.cxc"):
        assert (run / name).is_file(), name
    script = w.export_chimerax()
    assert script == run / "chimerax.cxc"
    with mrcfile.open(run / "map.mrc") as m:
        assert m.data.shape == (24, 24, 24) and float(m.voxel_size.x) == pytest.approx(w.info.pixel_size)
    assert not any(t.name == "semiamort-loader" for t in threading.enumerate())


def test_a_failing_run_is_reported_as_a_notification(make_napari_viewer, tmp_path, qtbot):
    viewer = make_napari_viewer()
    w = ReconstructionWidget(viewer)
    bad = tmp_path / "bad.star"
    bad.write_text("data_particles\n\nloop_\n_rlnImageName\n1@missing.mrcs\n")
    w.form["particles"].value = bad
    w.outdir.setText(str(tmp_path / "run"))
    messages = _run_collecting_notifications(w, qtbot)
    assert any("Reconstruction failed" in m and "missing.mrcs" in m for m in messages), messages
    assert "failed" in w.status.text()


def test_closing_the_widget_mid_run_stops_the_worker_and_keeps_the_results(make_napari_viewer, tiny, tmp_path,
                                                                           qtbot):
    from qtpy.QtCore import QThreadPool

    viewer, w = _widget(make_napari_viewer, tiny, tmp_path)
    w.start()
    qtbot.waitUntil(lambda: VOLUME in viewer.layers, timeout=30_000)
    viewer.window.remove_dock_widget(w)
    w.close()
    w.deleteLater()
    qtbot.wait(50)
    t0 = time.perf_counter()
    assert QThreadPool.globalInstance().waitForDone(5_000)  # the worker ends on its own: no quit needed
    assert time.perf_counter() - t0 < 5.0 and QThreadPool.globalInstance().activeThreadCount() == 0
    assert (tmp_path / "run" / "map.mrc").is_file()  # the worker wrote what it had reached
    epochs_done = len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert epochs_done < 40  # it stopped: it did not run to its end


def test_the_device_list_offers_auto_and_cpu_and_the_watch_button_adds_the_shown_particle(
        make_napari_viewer, tiny, tmp_path):
    viewer, w = _widget(make_napari_viewer, tiny, tmp_path)
    items = list(w.form["device"].choices)
    assert items[0] == "auto" and items[-1] == "cpu"
    (layer,) = viewer.open(str(tiny / "particles.star"), plugin="napari-semiamort")
    viewer.dims.set_current_step(0, 17)
    w.watch_shown_particle()
    assert w.config().watch == [0, 5, 17]
    viewer.dims.set_current_step(0, 30)
    for callback in layer.mouse_double_click_callbacks:  # a double click in the gallery
        callback(layer, None)
    assert w.config().watch == [0, 5, 17, 30]


def test_an_error_mid_run_is_notified_and_the_results_reached_are_kept(make_napari_viewer, tiny, tmp_path, qtbot,
                                                                        monkeypatch):
    from napari_semiamort.run.loop import Reconstruction

    training = Reconstruction.__iter__

    def broken(self):
        for snap in training(self):
            yield snap
            if snap.epoch_end and snap.epoch + 1 == 2:  # fails at the switch (epoch 3)
                raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Reconstruction, "__iter__", broken)
    viewer, w = _widget(make_napari_viewer, tiny, tmp_path)
    assert any("CUDA out of memory (simulated)" in m for m in _run_collecting_notifications(w, qtbot))
    run = tmp_path / "run"
    assert (run / "map.mrc").is_file() and (run / "poses.star").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the two stage-1 epochs reached


def test_shift_estimation_and_the_mask_reach_the_configuration(make_napari_viewer, tiny, tmp_path):
    _, w = _widget(make_napari_viewer, tiny, tmp_path)
    cfg = w.config()
    form = w.form
    assert cfg.shifts == "auto" and cfg.mask_diameter is None and form["shift_search"].enabled
    form["shifts"].value = "no"
    assert not form["shift_search"].enabled and not w.config().estimate_shifts
    form["shifts"].value = "yes"
    assert form["shift_search"].enabled
    form["shift_search"].value = 2
    form["mask_diameter"].value = 220.0
    cfg = w.config()
    assert cfg.shifts == "yes" and cfg.shift_search == 2 and cfg.mask_diameter == 220.0
    # the automatic switch (the default) offers its epochs; the fixed one does not
    assert cfg.switch == "auto" and form["switch_min_epoch"].enabled and form["switch_max_epoch"].enabled
    form["switch_max_epoch"].value = 18
    assert w.config().switch_max_epoch == 18
    form["switch"].value = "fixed"
    assert not form["switch_min_epoch"].enabled and not form["switch_max_epoch"].enabled
    assert w.config().switch == "fixed"


def test_the_advanced_section_reaches_the_configuration(make_napari_viewer, tiny, tmp_path):
    _, w = _widget(make_napari_viewer, tiny, tmp_path)
    assert w.config().spread_heads and w.config().invert == "auto" and w.config().output_box is None
    w.form["spread_heads"].value = False
    w.form["invert"].value = "no"
    w.form["output_box"].value = 16
    w.form["ctf_pkl"].value = tiny / "particles.star"  # any existing file: the config takes its absolute path
    cfg = w.config()
    assert not cfg.spread_heads and cfg.invert == "no" and cfg.output_box == 16
    assert cfg.ctf_pkl == str((tiny / "particles.star").resolve())


def test_a_downsampled_run_shows_its_final_map_at_the_images_box_and_scale(make_napari_viewer, tiny, tmp_path,
                                                                           qtbot):
    """With "Downsample to box" the live map is at the run's box and pixel size; the final map.mrc, made from
    the images at their own box, replaces it at its own voxel size: the same extent in Å."""
    viewer, w = _widget(make_napari_viewer, tiny, tmp_path, epochs=3)
    w.form["box"].value = 16
    assert w.config().box == 16
    notes = _run_collecting_notifications(w, qtbot)
    # the run's verdict in the dock (stage 1's was there from the switch), a warning where it failed or is doubtful
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert w.verdict.text() == dock_wording(verdict_message(last))
    assert w.verdict.text().startswith("verdict (the run): ")
    assert "--" not in w.verdict.text()  # its advice names the dock's fields
    warned = [n for n in notes if n.startswith("verdict (")]
    bad = ("failed", "doubtful")
    assert bool(warned) == (last["verdict"] in bad or last["verdict_stage1"] in bad)
    layer = viewer.layers[VOLUME]
    raw_px = w.info.raw_pixel_size
    assert w.info.box == 16 and w.info.pixel_size == pytest.approx(1.5 * raw_px)
    assert layer.data.shape == (24, 24, 24) and layer.scale[0] == pytest.approx(raw_px)
    with mrcfile.open(tmp_path / "run" / "map.mrc") as m:
        assert m.data.shape == (24, 24, 24) and float(m.voxel_size.x) == pytest.approx(raw_px, abs=1e-3)


def test_the_dock_shows_a_stage1_band_widened_from_the_data_until_the_verdict(make_napari_viewer, tiny, tmp_path):
    from napari_semiamort.run.session import RunInfo

    _, w = _widget(make_napari_viewer, tiny, tmp_path)
    info = dict(run_dir=tmp_path, n_particles=3000, skipped=0, box=64, pixel_size=8.31, raw_box=64,
                raw_pixel_size=8.31, map_box=64, inverted=False, device="cpu", epochs=25, epoch=0)
    line = "stage 1's band: to 19 Fourier px (28 Å), as far as the images' spectral SNR stays ≥ 0.05"
    w._on_yield(RunInfo(**info, stage1_band=line))
    assert w.verdict.text() == line and "3000 particles" in w.status.text()
    w._on_yield(RunInfo(**info))  # the default band: nothing to say
    assert w.verdict.text() == ""
