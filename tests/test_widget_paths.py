"""The dock on the paths users take (issue 19): the particle stack never drawn as a volume and the map framed in
3D, a run folder reopened and resumed, impossible settings refused before Start, a bare stack with a ctf.pkl."""

import json

import numpy as np
import pytest

from napari_semiamort._qt.widget import SPHERE, VOLUME, ReconstructionWidget
from napari_semiamort.plugin.readers import read_particles_layer

pytestmark = pytest.mark.usefixtures("no_worker_outlives_its_test")


@pytest.fixture(scope="module")
def small(tmp_path_factory, ribosome_images):
    """300 images at box 24 (a particle stack deeper than the DEEP_STACK rule needs, like the demo's 1,000)."""
    return ribosome_images(tmp_path_factory.mktemp("small"), n_particles=300, box=24, snr=1.0, seed=5)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small):
    """A finished two-epoch run of ``small`` made by the CLI."""
    from napari_semiamort.cli.main import main

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["reconstruct", str(small / "particles.star"), "-o", str(run_dir), "--epochs", "2",
                 "--switch", "fixed", "--switch-epoch", "1", "--stage1", "heads", "--heads", "3",
                 "--batch-size", "32", "--threads", "1", "--watch", "0", "4"]) == 0
    return run_dir


def _dock(make_napari_viewer, particles=None):
    viewer = make_napari_viewer(strict_qt=True)
    w = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(w, name="semiamort")
    if particles is not None:
        w.form["particles"].value = particles
    for name, value in (("stage1", "heads"), ("heads", 3), ("switch", "fixed"), ("switch_epoch", 1),
                        ("epochs", 30), ("batch_size", 32), ("device", "cpu"), ("threads", 1)):
        w.form[name].value = value
    return viewer, w


def _map_in_view(viewer) -> tuple[float, float]:
    """The map's width on the canvas (canvas pixels) over the canvas's smaller side, and how far (in map
    widths) the camera's centre lies from the map's centre."""
    layer = viewer.layers[VOLUME]
    lo, hi = layer.extent.world
    width = float(np.max(hi - lo))
    centre = (lo + hi) / 2
    off = float(np.linalg.norm(np.asarray(viewer.scene.camera.center) - centre)) / width
    return width * viewer.scene.camera.zoom / float(np.min(viewer.canvas.viewbox_size(viewer.layers))), off


def test_the_map_is_framed_in_3d_and_the_particle_stack_is_never_drawn_as_a_volume(make_napari_viewer, small,
                                                                                     tmp_path, qtbot):
    viewer, w = _dock(make_napari_viewer)
    data, kwargs, _ = read_particles_layer(str(small / "particles.star"))[0]
    stack = viewer.add_image(data, **kwargs)  # the user opened the particles (File > Open) first
    assert w.form.value("particles") == str((small / "particles.star").resolve())
    w.form["snapshot_every"].value = 1
    w.outdir.setText(str(tmp_path / "run"))
    drawn_in_3d = []  # the stack's visibility whenever the view turns 3D
    viewer.dims.events.ndisplay.connect(lambda e: drawn_in_3d.append(stack.visible and viewer.dims.ndisplay == 3))
    w.start()
    qtbot.waitUntil(lambda: VOLUME in viewer.layers, timeout=60_000)
    assert viewer.dims.ndisplay == 3 and not stack.visible and drawn_in_3d == [False]
    fill, off = _map_in_view(viewer)
    assert 0.5 < fill <= 1.0 and off < 0.05  # the map fills most of the canvas, centred
    viewer.scene.camera.zoom *= 0.05  # the user zooms far out ...
    viewer.reset_view()  # ... then presses Home: in 3D, the map is framed again, not the whole scene
    assert _map_in_view(viewer)[0] == pytest.approx(fill, rel=1e-3)
    w.stop()
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    viewer.dims.ndisplay = 2  # back in 2D the stack shows again, as the user left it
    assert stack.visible
    viewer.dims.ndisplay = 3
    assert not stack.visible


def test_impossible_settings_disable_start_with_the_reason_in_the_docks_words(make_napari_viewer, small):
    viewer, w = _dock(make_napari_viewer)
    assert not w.start_button.isEnabled() and "particle file" in w.reason.text()
    w.form["particles"].value = small / "particles.star"
    assert w.start_button.isEnabled() and w.reason.text() == ""
    w.form["epochs"].value = 10
    w.form["switch_epoch"].value = 12
    assert not w.start_button.isEnabled()
    assert w.reason.text() == "invalid settings: “Switch epoch” must lie in [0, “Epochs”]"
    assert w.start_button.toolTip() == w.reason.text()
    w.form["epochs"].value = 12
    assert w.start_button.isEnabled() and w.reason.text() == ""


def test_a_bare_stack_with_a_ctf_pickle_runs_from_the_dock(make_napari_viewer, small, tmp_path, qtbot):
    from napari_semiamort.data.cryodrgn import write_ctf_pkl
    from napari_semiamort.data.star import read_star

    table = read_star(small / "particles.star")
    write_ctf_pkl(tmp_path / "ctf.pkl", table.ctf, table.box, table.pixel_size)
    viewer, w = _dock(make_napari_viewer, small / "particles.mrcs")
    w.form["epochs"].value = 1
    w.outdir.setText(str(tmp_path / "run"))
    errors = []
    w.start()  # without the pickle: the data cannot be read, and the message names the dock's field
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(lambda n: errors.append(str(n.message)))
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert w.status.state == "failed" and "“CTF pickle” (Advanced)" in w.status.text()
    assert "--ctf-pkl" not in w.status.text() and not (tmp_path / "run").exists()  # no empty run folder left
    w.form["ctf_pkl"].value = tmp_path / "ctf.pkl"
    w.start()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.status.state == "finished" and w.progress.value() == 1000
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["ctf_pkl"] == str((tmp_path / "ctf.pkl").resolve()) and saved["use_ctf"]
    assert (tmp_path / "run" / "map.mrc").is_file()


def test_a_finished_run_folder_opens_shows_a_posterior_and_resumes_for_one_epoch(make_napari_viewer, finished_run,
                                                                                  qtbot):
    viewer, w = _dock(make_napari_viewer)
    assert w.resume_button.isEnabled() is False
    w.open_run(finished_run)
    qtbot.waitUntil(lambda: w.status.state == "opened", timeout=30_000)
    assert VOLUME in viewer.layers and viewer.dims.ndisplay == 3
    assert w.form.value("epochs") == 2 and w.form.value("watch") == [0, 4]  # the run's own settings
    qtbot.waitUntil(lambda: len(w.plots.history) == 2, timeout=10_000)  # its curves, both epochs
    assert "epoch 2 of 2" in w.status.text() and w.resume_button.isEnabled()
    w.posterior_particle.setValue(4)
    w.show_posterior()
    qtbot.waitUntil(lambda: SPHERE in viewer.layers, timeout=30_000)
    assert viewer.layers[SPHERE].metadata["particle"] == 4
    assert _map_in_view(viewer)[1] < 1.0  # the sphere joined the framing: the map stays in view

    w.form["epochs"].value = 3
    w.resume_run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.status.state == "finished"
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epoch"] == 3
    assert len(json.loads((finished_run / "config.json").read_text())["resumed"]) == 1


def test_a_paused_run_says_so_and_its_progress_never_steps_back(make_napari_viewer, small, tmp_path, qtbot):
    viewer, w = _dock(make_napari_viewer, small / "particles.star")
    w.outdir.setText(str(tmp_path / "run"))
    seen = []
    w.progress.valueChanged.connect(seen.append)
    w.start()
    qtbot.waitUntil(lambda: w.progress.value() > 0, timeout=60_000)
    with qtbot.waitSignal(w.worker.paused, timeout=30_000):
        w.pause()
    assert w.status.state == "paused"
    held = w.progress.value()
    qtbot.wait(500)  # snapshots queued before the pause arrive: the state and the bar hold
    assert w.status.state == "paused" and w.progress.value() == held
    w.resume()
    assert w.status.state == "running"
    qtbot.waitUntil(lambda: w.progress.value() > held, timeout=30_000)
    w.stop()
    assert w.status.state == "stopping"
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert w.status.state == "stopped" and seen == sorted(seen)


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    import os

    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def test_fifty_starts_and_stops_leave_no_threads_and_no_growing_memory(make_napari_viewer, small, tmp_path, qtbot):
    import gc
    import threading

    viewer, w = _dock(make_napari_viewer, small / "particles.star")
    w.form["restarts"].value = 1

    def cycle(k: int) -> None:
        w.outdir.setText(str(tmp_path / f"run{k}"))
        w.start()
        qtbot.waitUntil(lambda: w.progress.value() > 0 or w.worker is None, timeout=60_000)
        w.stop()
        qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
        assert w.status.state in ("stopped", "finished"), w.status.text()

    for k in range(5):  # warm-up: imports, caches and napari's own layers settle
        cycle(k)
    gc.collect()
    threads, rss = threading.active_count(), _rss_mb()
    for k in range(5, 50):
        cycle(k)
    gc.collect()
    qtbot.wait(100)
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    # measured 10-31 MB over the 45 runs, not growing with them (1.0, 1.7, 11.8 MB after 10, 20, 30): the allocator's
    # arenas; runs kept alive would grow it steadily with the runs
    assert _rss_mb() - rss < 64
    assert all((tmp_path / f"run{k}" / "map.mrc").is_file() for k in range(50))


def test_the_dock_takes_the_run_folders_lock_a_folder_in_use_is_refused(make_napari_viewer, finished_run, qtbot):
    import subprocess
    import sys

    from napari_semiamort.run.folder import LOCK

    viewer, w = _dock(make_napari_viewer)
    holder = subprocess.Popen(  # a command-line run holds the folder
        [sys.executable, "-c", "import sys, time\nfrom napari_semiamort.run.folder import RunLock\n"
         "RunLock(sys.argv[1], command='semiamort reconstruct (the other)').acquire()\nprint('held', flush=True)\n"
         "time.sleep(120)", str(finished_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        w.outdir.setText(str(finished_run))
        w.form["epochs"].value = 3
        w.resume_run()
        qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
        assert w.status.state == "failed" and f"PID {holder.pid}" in w.status.text()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    done = len((finished_run / "metrics.jsonl").read_text().splitlines())
    w.form["epochs"].value = done + 1  # the other run gone: its lock is stale, taken over; the dock's own removed after
    w.resume_run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.status.state == "finished" and not (finished_run / LOCK).exists()
