"""Screenshots of the plugin during a live run, for the README and docs/plugin.md.

  xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--out docs/images]

Opens napari (shown: screenshots of a hidden viewer are black), loads the demo sample (1,000 simulated
ribosome images with their ground truth), opens the Reconstruction dock, starts a run, and after the
switch to auto-decoding saves: the whole window (volume, candidates, plots), the volume alone, and the
candidates montage; then the map and a particle's posterior sphere, framed; the finished run folder reopened in
a fresh viewer (Open run…) with a posterior from its checkpoint; and the dock refusing an impossible setting.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _wait(app, until, settle: int = 20) -> None:
    while not until():
        app.processEvents()
        time.sleep(0.02)
    for _ in range(settle):
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "images"))
    p.add_argument("--epochs", type=int, default=25, help="the dock's default")
    p.add_argument("--stage1-shot", type=int, default=8, help="the stage-1 epoch whose candidates are shown")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari

    from napari_semiamort._qt.widget import CANDIDATES, VOLUME, ReconstructionWidget

    viewer = napari.Viewer(show=True, title="napari-semiamort")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-semiamort", "demo-ribosome")
    widget = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Ab-initio reconstruction", area="right")
    widget.form.set_values(epochs=args.epochs, watch=[0, 1, 2])
    run_dir = Path(tempfile.mkdtemp(prefix="semiamort-screenshots-")) / "run"
    widget.outdir.setText(str(run_dir))
    app = napari.qt.get_qapp()
    widget.start()
    stage1_shot = False
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.01)
        snap = widget.last_snapshot
        if (not stage1_shot and snap is not None and snap.restart is None and snap.epoch >= args.stage1_shot
                and snap.stage == "autoencode" and CANDIDATES in viewer.layers):
            # stage 1: each watched particle next to its M heads' candidate projections, the winner framed;
            # the first dozen columns, zoomed
            viewer.layers[VOLUME].visible = False
            viewer.dims.ndisplay = 2
            px, size = snap.pixel_size, snap.box
            step = (size + 4) * px
            rows = viewer.layers[CANDIDATES].data.shape[0] / (size + 4)
            viewer.scene.camera.center = (rows * step / 2, (size + 8) * px + 6 * step)
            viewer.scene.camera.zoom = viewer.window._qt_viewer.canvas.size[0] / (12.5 * step)
            app.processEvents()
            viewer.screenshot(str(out / "plugin-stage1-candidates.png"), canvas_only=True)
            viewer.layers[VOLUME].visible = True
            viewer.dims.ndisplay = 3
            stage1_shot = True
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    viewer.layers["demo particles"].visible = False
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (15, -30, 60)
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(out / "plugin-window.png"), canvas_only=False)
    viewer.layers[CANDIDATES].visible = False
    viewer.layers["semiamort winners"].visible = False
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(out / "plugin-volume.png"), canvas_only=True)
    viewer.layers[VOLUME].visible = False
    viewer.layers[CANDIDATES].visible = True
    viewer.layers["semiamort winners"].visible = True
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(out / "plugin-candidates.png"), canvas_only=True)
    # the pose posterior of particle 0 on a sphere beside the map, and in the plots dock
    viewer.layers[CANDIDATES].visible = False
    viewer.layers["semiamort winners"].visible = False
    viewer.layers[VOLUME].visible = True
    widget.posterior_particle.setValue(0)
    widget.show_posterior()
    while "semiamort posterior" not in viewer.layers:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (0, 30, 70)
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(out / "plugin-posterior.png"), canvas_only=False)
    widget.plots.figure.savefig(out / "plugin-plots.png", facecolor=widget.plots.figure.get_facecolor())
    viewer.reset_view(reset_camera_angle=False)  # Home in 3D: the map and the sphere framed
    app.processEvents()
    viewer.screenshot(str(out / "plugin-framed.png"), canvas_only=True)
    print(f"screenshots in {out}: {widget.status.text()}")
    viewer.close()
    reopened(app, run_dir, out)


def reopened(app, run_dir: Path, out: Path) -> None:
    """A fresh viewer: the finished run folder opened from its checkpoint, a posterior, and a refused value."""
    import napari

    from napari_semiamort._qt.widget import ReconstructionWidget

    viewer = napari.Viewer(show=True, title="napari-semiamort")
    viewer.window._qt_window.resize(1600, 1000)
    widget = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Ab-initio reconstruction", area="right")
    widget.open_run(run_dir)
    _wait(app, lambda: widget.status.state == "opened")
    widget.posterior_particle.setValue(1)
    widget.show_posterior()
    _wait(app, lambda: "semiamort posterior" in viewer.layers)
    viewer.scene.camera.angles = (0, 30, 70)
    viewer.reset_view(reset_camera_angle=False)
    app.processEvents()
    viewer.screenshot(str(out / "plugin-reopened.png"), canvas_only=False)
    widget.form.set_values(switch="fixed", switch_epoch=12, epochs=10)  # fewer epochs than stage 1's
    _wait(app, lambda: True)
    widget.grab().save(str(out / "plugin-refused.png"))
    print(f"reopened: {widget.status.text()}; refused: {widget.reason.text()}")
    viewer.close()


if __name__ == "__main__":
    main()
