"""A full-box (128) map by direct Fourier insertion of the original images with the poses that a `--box 64`
run estimated (its poses.star refers to the original images), scored like the benchmark. Run by hand on
2026-11-26 after `semiamort reconstruct DATA/particles.star -o /tmp/exp/b128_crop64 --box 64 --mask-diameter 220
--reference-map DATA/truth.mrc`; results in results_by_hand.json."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
DATA = ROOT / "benchmarks/results/full128/data_shift0"
s = bench.insert_with_poses(Path("/tmp/exp/b128_crop64/poses.star"), DATA / "particles.star",
                            Path("/tmp/exp/b128_fullbox.mrc"), DATA / "truth.mrc", 220.0)
print(json.dumps({k: s.get(k) for k in ("fsc05_masked_A", "fsc05_A", "fsc_outer_masked", "pose_mean_deg",
                                        "pose_median_deg")}))
