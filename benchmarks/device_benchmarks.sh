#!/usr/bin/env bash
# The GPU part of issue 6, as one device call: our throughput and peak memory per stage for M = 1, 7, 15 at
# box 64 and 128 on the GPU, then the paper's Table 2 setting (50,000 images, box 128, M = 7, one epoch per
# stage; VGG16 features, then our light encoder). Results: $OUT/results.json (merge its rows into
# docs/benchmarks.md); the simulated data stay in /tmp (3.3 GB).
# Needs the wheels the GPU image lacks in .whl/ (mrcfile, starfile, gemmi; see docs/performance.md).
set -o pipefail
OUT=${OUT:-/tmp/device-bench}
mkdir -p "$OUT" /tmp/bench
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 200 python3 benchmarks/run.py --suite full --only throughput --out /tmp/bench 2>&1 | tee "$OUT/throughput.log"
timeout 420 python3 benchmarks/run.py --suite full --only paper --paper-n "${PAPER_N:-50000}" --out /tmp/bench 2>&1 \
  | tee "$OUT/paper.log"
cp /tmp/bench/full/results.json "$OUT/results.json"
