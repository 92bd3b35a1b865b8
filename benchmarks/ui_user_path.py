"""Does napari stay responsive on the path users take? The longest gap in the Qt event loop during a live run.

  xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/ui_user_path.py [--seconds 60] [--busy 0 2] [--out F]

The path a user takes (issue 19), the viewer shown: File → Open Sample (the demo's 1,000 particles and its
truth), Plugins → Ab-initio reconstruction (the dock opened through napari's plugin menu action), Start with the
dock's defaults (the particles filled in from the open layer). A 5 ms QTimer on the Qt main thread ticks
throughout; a gap between ticks is how long the event loop could not answer the user. Reported from the first
map on (``--seconds`` of a live run), for each ``--busy`` count of processes spinning on the CPU beside it
(``python -c 'while True: pass'``: a user's other work), with the run's images/s and how long Open Sample and the
dock took. The issue's goal: no gap over 250 ms in 60 s after the first map, quiet or with two busy processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLUGIN, WIDGET = "napari-semiamort", "Ab-initio reconstruction"


def _pump(app, until) -> None:
    while not until():
        app.processEvents()
        time.sleep(0.001)


def measure(seconds: float, busy: int, run_dir: Path) -> dict:
    import napari
    from qtpy.QtCore import QTimer

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        app = napari.qt.get_qapp()
        viewer = napari.Viewer(show=True)
        ticks: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(5)
        t0 = time.perf_counter()
        viewer.open_sample(PLUGIN, "demo-ribosome")  # File > Open Sample
        t1 = time.perf_counter()
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)  # Plugins > Ab-initio reconstruction
        t2 = time.perf_counter()
        widget.outdir.setText(str(run_dir))
        widget.start()
        _pump(app, lambda: "semiamort volume" in viewer.layers or widget.worker is None)
        first = time.perf_counter()
        progress0 = widget.progress.value()
        _pump(app, lambda: time.perf_counter() > first + seconds or widget.worker is None)
        last, progress1 = widget.last_snapshot, widget.progress.value()
        widget.stop()
        _pump(app, lambda: widget.worker is None)
        timer.stop()
        stacks_hidden = not viewer.layers["demo particles"].visible
        viewer.close()
    finally:
        for h in hogs:
            h.kill()
    t = np.asarray(ticks)
    gaps = np.diff(t[t >= first]) * 1e3
    return {"busy_processes": busy, "seconds": seconds, "open_sample_s": round(t1 - t0, 2),
            "open_dock_s": round(t2 - t1, 2), "first_map_after_start_s": round(first - t2, 1),
            "max_gap_ms": round(float(gaps.max()), 1), "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
            "median_gap_ms": round(float(np.median(gaps)), 2), "gaps_over_250ms": int((gaps > 250).sum()),
            "images_per_second": None if last is None else round(float(last.images_per_second), 1),
            "progress_per_mille": [progress0, progress1], "particle_stack_hidden_in_3d": stacks_hidden,
            "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="busy processes beside the run, per pass")
    p.add_argument("--out")
    args = p.parse_args()
    os.environ.setdefault("NAPARI_CONFIG", "")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for busy in args.busy:
            r = measure(args.seconds, busy, Path(tmp) / f"run{busy}")
            results.append(r)
            print(f"{busy} busy: longest gap {r['max_gap_ms']:.0f} ms, 99th percentile {r['p99_gap_ms']:.0f} ms, "
                  f"{r['gaps_over_250ms']} gaps over 250 ms in {args.seconds:.0f} s; {r['images_per_second']} img/s; "
                  f"Open Sample {r['open_sample_s']} s, dock {r['open_dock_s']} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
