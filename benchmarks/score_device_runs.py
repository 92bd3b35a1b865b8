"""Score our whole runs made on the device machine (device_benchmarks.sh, part "ours") against the suites'
truth here, as benchmarks/run.py scores ours.

  python benchmarks/score_device_runs.py DEVICE_OUT/ours benchmarks/results/gpu_h100/ours_runs.json

DEVICE_OUT/ours holds walls.txt (one line per run: ``NAME: rc RC, SECONDS s``) and a folder per run with
map.mrc, poses.star, metrics.jsonl and config.json. The data a run used is named by its config's particles
path (/tmp/sim/SET/particles.star); SET is found here as benchmarks/results/<suite>/data_shift<S>.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from napari_semiamort.data.star import read_star

sys.path.insert(0, str(Path(__file__).parent))
from run import score  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# the device script's data sets → this machine's copies (simulated with the same command and seed)
DATA = {"full128": RESULTS / "full128" / "data_shift0", "full_shift0": RESULTS / "full" / "data_shift0",
        "full_shift3": RESULTS / "full" / "data_shift3"}


def main(runs: Path, out: Path) -> None:
    walls = {}
    for line in (runs / "walls.txt").read_text().splitlines():
        m = re.match(r"(\S+): rc (\d+), ([\d.]+) s", line)
        if m:
            walls[m[1]] = {"rc": int(m[2]), "wall_s": float(m[3])}
    rows = []
    for name, w in walls.items():
        d = runs / name
        config = json.loads((d / "config.json").read_text())
        cfg = config.get("config", config)
        name_of_set = Path(cfg["particles"]).parent.name
        data = DATA[name_of_set]
        # the device's own truth (same seed: the same poses as here, which is checked)
        truth_star = runs / f"{name_of_set}.particles.star"
        if not truth_star.is_file():
            truth_star = data / "particles.star"
        theirs = read_star(truth_star, require_stacks=False).rotations
        here = read_star(data / "particles.star", require_stacks=False).rotations
        same = theirs.shape == here.shape and float(np.abs(theirs - here).max()) < 1e-6
        metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        switch = next((m for m in metrics if m["epoch"] == cfg["switch_epoch"] and "restart" not in m), None)
        row = {"run": name, **w, "data": str(data.relative_to(RESULTS.parent.parent)),
               "stage2_batch_size": cfg.get("stage2_batch_size"),
               "shifts": cfg.get("shifts", "yes" if cfg.get("estimate_shifts") else "no"),  # older runs: a boolean
               "epochs_done": max(m["epoch"] for m in metrics),
               "stage1_s": sum(m["seconds"] for m in metrics if m["stage"] == "autoencode"),
               "stage2_s": sum(m["seconds"] for m in metrics if m["stage"] == "autodecode"),
               "switch_pose_median_deg": switch and switch["pose_error_median_deg"],
               "same_poses_as_here": same}
        if (d / "map.mrc").is_file():
            row.update(score(d / "map.mrc", d / "poses.star", truth_star, data / "truth.mrc", 220.0))
        rows.append(row)
        print(json.dumps(row))
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
