"""The full128 images with our defaults and with poses inferred at --box 96 (maps still at box 128), one after
the other in this one command, each scored like benchmarks/run.py scores ours.

  python benchmarks/results/full128/box96_cpu.py      # from the project root; ~11 min on 2 CPU cores

Writes benchmarks/results/full128/box96_cpu.json.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")
from run import score, semiamort, sh  # noqa: E402

HERE = Path("benchmarks/results/full128")
DATA = HERE / "data_shift0"
rows = []
for name, extra in (("defaults", []), ("box96", ["--box", "96"])):
    out = Path(f"/tmp/exp/full128_{name}")
    t0 = time.time()
    wall, peak = sh(semiamort("reconstruct", str(DATA / "particles.star"), "-o", str(out), "--force",
                              "--reference-map", str(DATA / "truth.mrc"), "--mask-diameter", "220", *extra),
                    log=HERE / f"cpu_{name}.log")
    final = score(out / "map.mrc", out / "poses.star", DATA / "particles.star", DATA / "truth.mrc", 220.0)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = next((m["time"] - t0 for m in metrics if (m.get("fsc_0.5_angstrom_masked") or 99) <= 10.16), None)
    rows.append({"run": name, "args": extra, "wall_s": round(wall, 1), "peak_rss_mb": round(peak),
                 "first_below_10.16A_s": first and round(first, 1),
                 **{k: final.get(k) for k in ("fsc05_masked_A", "fsc05_A", "fsc_outer_masked", "pose_mean_deg",
                                              "pose_median_deg")}})
    print(json.dumps(rows[-1]), flush=True)
ratio = round(rows[1]["wall_s"] / rows[0]["wall_s"], 3)
result = {"machine": "2-core AMD EPYC, torch 2.13.0+cpu, default threads; one run at a time",
          "data": str(DATA), "runs": rows, "wall_ratio_box96_over_defaults": ratio}
(HERE / "box96_cpu.json").write_text(json.dumps(result, indent=1))
