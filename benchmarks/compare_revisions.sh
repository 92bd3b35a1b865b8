#!/usr/bin/env bash
# Same seed, same data, two revisions side by side: the demo (its poses and map compared byte for byte) and
# `benchmarks/run.py --suite full --only ours` (its figures and times), one after the other on this machine.
#
#   benchmarks/compare_revisions.sh REV [OUT]      # REV: the baseline (a commit); the working tree is the other
#
# The baseline is checked out in a git worktree (OUT/base-src) and run with the same Python environment
# (.venv), its package first on PYTHONPATH. Run it on a quiet machine: the times are compared as ratios.
# COMPARE_ONLY=1: compare what an earlier call left in OUT, without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: benchmarks/compare_revisions.sh REV [OUT]}
OUT=$(realpath -m "${2:-/tmp/semiamort-compare}")
PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, the virtual environment's own
mkdir -p "$OUT"
if [ ! -d "$OUT/base-src" ]; then git worktree add --detach "$OUT/base-src" "$REV" >/dev/null; fi
# benchmarks/run.py finds ../shared from its own folder: the worktree needs it beside it too
[ -e "$OUT/shared" ] || ln -s "$(realpath ../shared)" "$OUT/shared"
for side in $([ -n "${COMPARE_ONLY:-}" ] || echo base new); do
  src=$([ $side = base ] && echo "$OUT/base-src" || pwd)
  echo "== $side: $src at $(git -C "$src" rev-parse --short HEAD)"
  t0=$(date +%s.%N)
  PYTHONPATH="$src/src" $PY -m napari_semiamort.cli.main demo -o "$OUT/demo-$side" --force > "$OUT/demo-$side.log" 2>&1
  echo "demo_wall_s=$(echo "$(date +%s.%N) - $t0" | bc)" > "$OUT/demo-$side.time"
  (cd "$src" && PYTHONPATH="$src/src" "$PY" benchmarks/run.py --suite full --only ours --out "$OUT/bench-$side" \
      > "$OUT/bench-$side.log" 2>&1)
done
$PY - "$OUT" <<'EOF'
import json, platform, os, sys
from pathlib import Path

import mrcfile
import numpy as np

out = Path(sys.argv[1])
print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}")
maps = [mrcfile.read(out / f"demo-{s}" / "run" / "map.mrc") for s in ("base", "new")]
# each particle's row without its image name (the two demos' folders differ)
stars = [[line.split(" ", 1)[1] for line in (out / f"demo-{s}" / "run" / "poses.star").read_text().splitlines()
          if "@" in line.split(" ", 1)[0]] for s in ("base", "new")]
same = lambda a, b: "identical" if a else "DIFFERENT"  # noqa: E731
print(f"demo map.mrc: {same(np.array_equal(*maps), 0)} (max |diff| {np.abs(maps[0] - maps[1]).max():.3g})")
print(f"demo poses.star: {len(stars[0])} rows, angles, origins and CTF {same(stars[0] == stars[1], 0)}")
wall = {s: float((out / f"demo-{s}.time").read_text().split("=")[1]) for s in ("base", "new")}
print(f"demo wall: base {wall['base']:.0f} s, new {wall['new']:.0f} s, new/base {wall['new'] / wall['base']:.2f}")
for s in ("base", "new"):
    print(f"demo {s}: " + " | ".join(l.strip() for l in (out / f"demo-{s}.log").read_text().splitlines()
                                      if l.startswith(("FSC=0.5", "pose error m")))) 
res = {s: json.loads((out / f"bench-{s}" / "full" / "results.json").read_text()) for s in ("base", "new")}
keys = ("wall_s", "peak_rss_mb", "fsc05_masked_A", "fsc_outer_masked", "fsc05_A", "pose_mean_deg", "pose_median_deg")
for q_base, q_new in zip(res["base"]["quality"], res["new"]["quality"], strict=True):
    a = next(r for r in q_base["results"] if r["tool"] == "napari-semiamort")
    b = next(r for r in q_new["results"] if r["tool"] == "napari-semiamort")
    print(f"full suite, shifts ±{q_base['shift_px']:g} px:")
    for k in keys:
        ratio = f"  new/base {b[k] / a[k]:.3f}" if a[k] else ""
        print(f"  {k:18s} base {a[k]:10.4g}  new {b[k]:10.4g}{ratio}")
EOF
