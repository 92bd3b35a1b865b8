"""Stage 2 of the full128 run from one stage-1 checkpoint, with config overrides; map.mrc scored like run.py.

  semiamort reconstruct benchmarks/results/full128/data_shift0/particles.star -o /tmp/exp/s1_128 --force \
      --mask-diameter 220 --reference-map benchmarks/results/full128/data_shift0/truth.mrc --epochs 15
  python benchmarks/results/full128/reassign_band.py NAME '{"reassign_max_freq": 1.0}'

Run from the project root. Each run copies /tmp/exp/s1_128 to /tmp/exp/NAME, resumes it to epoch 25 and
appends a JSON line to /tmp/exp/stage2_variants.jsonl (collected in reassign_band.json).
"""

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")
from run import score  # noqa: E402

from napari_semiamort.cli.reconstruct import train  # noqa: E402
from napari_semiamort.run import Reconstruction  # noqa: E402

name, overrides = sys.argv[1], json.loads(sys.argv[2])
src, dst = Path("/tmp/exp/s1_128"), Path(f"/tmp/exp/{name}")
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst)
t0 = time.perf_counter()
run = Reconstruction.resume(dst, epochs=25, **overrides)
train(run, dst, quiet=True)
wall = time.perf_counter() - t0
data = Path("benchmarks/results/full128/data_shift0")
s = score(dst / "map.mrc", dst / "poses.star", data / "particles.star", data / "truth.mrc", 220.0)
ms = [json.loads(line) for line in open(dst / "metrics.jsonl")][-10:]
epochs = [(m["epoch"], round(m["seconds"], 1), round(m["pose_error_mean_deg"], 2), round(m["pose_error_median_deg"], 2),
           m.get("reassigned")) for m in ms]
keys = ("fsc05_masked_A", "fsc05_A", "fsc_outer_masked", "pose_mean_deg", "pose_median_deg")
out = {"name": name, "overrides": overrides, "stage2_wall_s": round(wall, 1), "epochs": epochs,
       **{k: s.get(k) for k in keys}}
print(json.dumps(out))
with open("/tmp/exp/stage2_variants.jsonl", "a") as fh:
    fh.write(json.dumps(out) + "\n")
