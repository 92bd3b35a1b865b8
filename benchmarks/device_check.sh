#!/usr/bin/env bash
# The GPU checks, as one device call (see docs/performance.md): the loader benchmark next to training on the
# GPU, the test suite with CUDA as the default device, and the demo's wall time and accuracy.
# Needs the wheels the GPU image lacks in .whl/ (mrcfile, starfile, gemmi; see docs/performance.md).
set -o pipefail
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
timeout 150 python3 benchmarks/loader.py --out "$OUT/loader_gpu.json" 2>&1 | tee "$OUT/loader.log"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -25 | tee "$OUT/pytest.log"
timeout 180 python3 -m napari_semiamort.cli.main demo -o /tmp/demo 2>&1 | tail -14 | tee "$OUT/demo.log"
