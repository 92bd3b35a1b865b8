"""Does the UI stay responsive during a live run? The longest gap in the Qt event loop, measured.

  xvfb-run -a python benchmarks/ui_latency.py [--seconds 30] [--n 1000] [--box 64] [--out results.json]

Opens napari with the Reconstruction widget, starts a run on a simulated dataset with a full snapshot
(volume + candidates) at every training step, and records the time between ticks of a 5 ms QTimer on the
Qt main thread: a gap is how long the event loop could not respond (the goal is under 100 ms). Two
passes: the viewer hidden (the cost of our code on the main thread) and shown (napari also redraws the
canvas; on a machine without a GPU that is Mesa's software OpenGL).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import numpy as np


def measure(star: Path, seconds: float, show: bool, out_dir: Path) -> dict:
    import napari
    from qtpy.QtCore import QTimer

    from napari_semiamort._qt.widget import ReconstructionWidget

    viewer = napari.Viewer(show=show)
    widget = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="semiamort")
    widget.form.set_values(particles=star, device="cpu", epochs=1000, snapshot_every=1)
    widget.outdir.setText(str(out_dir))
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    app = napari.qt.get_qapp()
    widget.start()
    end = time.perf_counter() + seconds
    first_volume = None
    while time.perf_counter() < end:
        app.processEvents()
        if first_volume is None and "semiamort volume" in viewer.layers:
            first_volume = time.perf_counter()
        time.sleep(0.001)
    steps = widget.progress.value()
    widget.stop()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    viewer.close()
    t = np.asarray(ticks)
    t = t[t >= (first_volume or t[0])]  # from the first live layer on: data loading is not a live update
    gaps = np.diff(t) * 1e3
    return {"shown": show, "seconds": seconds, "ticks": int(len(t)), "progress_per_mille": steps,
            "max_gap_ms": float(gaps.max()), "p99_gap_ms": float(np.percentile(gaps, 99)),
            "median_gap_ms": float(np.median(gaps)), "gaps_over_100ms": int((gaps > 100).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--out")
    args = p.parse_args()
    os.environ.setdefault("NAPARI_CONFIG", "")
    from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=args.n, box=args.box, seed=0))
        for k, show in enumerate((False, True)):
            r = measure(Path(tmp) / "particles.star", args.seconds, show, Path(tmp) / f"run{k}")
            results.append(r)
            print(f"viewer {'shown ' if show else 'hidden'}: longest event-loop gap {r['max_gap_ms']:.0f} ms, "
                  f"99th percentile {r['p99_gap_ms']:.0f} ms, median {r['median_gap_ms']:.1f} ms, "
                  f"{r['gaps_over_100ms']} gaps over 100 ms in {args.seconds:.0f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"box": args.box, "n": args.n, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
