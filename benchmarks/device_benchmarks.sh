#!/usr/bin/env bash
# The GPU part of issue 6, as one device call of at most ~9.5 min:
#   1. our throughput and peak memory per stage for M = 1, 7, 15 at box 64 and 128 on the GPU;
#   2. the paper's Table 2 setting (50,000 images, box 128, M = 7, one epoch per stage; VGG16 features, then
#      our light encoder);
#   3. with the time left, cryoDRGN's abinit_homo_old on the full suite's ±3 px data (its default 7 × 7 shift
#      grid per pose, too slow for the 2-core CPU), scored like the CPU runs.
#   4. ("ours", not in the default) our whole default run on the suites' data (see below).
# PARTS picks some of them (default "throughput paper cryodrgn"), PAPER_BACKBONES the encoders of part 2
# (default "vgg16 light"). Seen on an H100 on 2026-11-26: part 1 took ~80 s; part 2 at 50,000 images about
# 3 min per backbone, the simulation on the GPU included; part 3 about 2.5 min with its scoring (search
# epochs 10-15 s, the others under 1 s). 15 min of device time, the start included, holds all three parts
# with one backbone, or parts 2 and 3 then a second call for the other backbone.
# Results: $OUT/results.json (parts 1–2) and $OUT/results_cryodrgn.json (part 3); merge them into
# docs/benchmarks.md. The simulated data stay in /tmp (3.3 GB).
# Needs the wheels the GPU image lacks in .whl/ (mrcfile, starfile, gemmi; see docs/performance.md), for
# part 3 also .whl/cryodrgn/ (cryodrgn 4.3.1, igraph, texttable; the rest of its imports are in the image)
# and the suite's data: carry .whl and benchmarks/results/full/data_shift3.
set -o pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-560}  # seconds for the whole script
OUT=${OUT:-/tmp/device-bench}
mkdir -p "$OUT" /tmp/bench /tmp/bench-cryodrgn/full
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
PARTS=${PARTS:-throughput paper cryodrgn}
data=benchmarks/results/full/data_shift3
cryodrgn=no  # part 3 asked for, and its wheels and data carried
if [[ " $PARTS " == *" cryodrgn "* ]] && ls .whl/cryodrgn/cryodrgn-*.whl >/dev/null 2>&1 \
  && [ -f "$data/particles.mrcs" ]; then cryodrgn=yes; fi
if [[ " $PARTS " == *" throughput "* ]]; then
  timeout 150 python3 benchmarks/run.py --suite full --only throughput --out /tmp/bench 2>&1 | tee "$OUT/throughput.log"
  cp /tmp/bench/full/results.json "$OUT/results.json"
fi
if [[ " $PARTS " == *" paper "* ]]; then
  left=$((BUDGET - ($(date +%s) - T0) - 20))
  [ "$cryodrgn" = yes ] && left=$((left - 220))  # cryoDRGN's 30 epochs and their scoring
  if [ "$left" -gt 60 ]; then
    timeout "$left" python3 benchmarks/run.py --suite full --only paper --paper-n "${PAPER_N:-50000}" \
      --paper-backbones ${PAPER_BACKBONES:-vgg16 light} --out /tmp/bench 2>&1 | tee "$OUT/paper.log"
    cp /tmp/bench/full/results.json "$OUT/results.json"
  else
    echo "no time left for the paper's setting ($left s)"
  fi
fi

if [ "$cryodrgn" = yes ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/cryodrgn/*.whl || exit 1
  # cryoDRGN's own entry point imports every command (and their analysis packages); this runs one, as it does
  cat >/tmp/cryodrgn <<'PY'
#!/usr/bin/env python3
import argparse, importlib, sys
command = importlib.import_module(f"cryodrgn.commands.{sys.argv[1]}")
parser = argparse.ArgumentParser(prog=f"cryodrgn {sys.argv[1]}")
command.add_args(parser)
command.main(parser.parse_args(sys.argv[2:]))
PY
  chmod +x /tmp/cryodrgn
  cp -r "$data" /tmp/bench-cryodrgn/full/
  left=$((BUDGET - ($(date +%s) - T0) - 45))  # 45 s for the scoring after the stop
  echo "cryoDRGN on the ±3 px data, for at most $left s"
  if [ "$left" -gt 60 ]; then
    timeout $((left + 45)) python3 benchmarks/run.py --suite full --shifts 3 --only cryodrgn --cryodrgn /tmp/cryodrgn \
      --cryodrgn-epochs 30 --peer-limit "$left" --out /tmp/bench-cryodrgn 2>&1 | tee "$OUT/cryodrgn.log"
    cp /tmp/bench-cryodrgn/full/results.json "$OUT/results_cryodrgn.json"
    cp /tmp/bench-cryodrgn/full/cryodrgn_shift3/cryodrgn.log "$OUT/cryodrgn_run.log"
  fi
fi
if [[ " $PARTS " == *" ours "* ]]; then
  # 4. our whole default run on the GPU, on the suites' data simulated here (the same seeds, so the same poses,
  # CTFs and noise draws; the projections computed on the GPU): full128 (box 128), then the full suite's ±3 px
  # and centred data, the centred data again with --stage2-batch-size 256. Each run's map, poses and metrics
  # come back in $OUT/ours.tgz (ours/NAME); unpack it and score them with benchmarks/score_device_runs.py ours.
  # Needs .gpu/3KPR_TCR_HLA.cif.gz (an ignored folder: copy it from ../shared/data/structures). On an H100 the
  # four runs took 102, 58, 57 and 53 s, the simulations ~20 s.
  mkdir -p "$OUT/ours"
  simulate() {  # name box shift
    [ -f "/tmp/sim/$1/truth.mrc" ] || python3 -m napari_semiamort.cli.main simulate .gpu/3KPR_TCR_HLA.cif.gz -o "/tmp/sim/$1" \
      --n "${OURS_N:-2000}" --box "$2" --snr 0.1 --max-shift "$3" --seed 0 --device "${DEVICE:-cuda}" --force >/dev/null
    cp "/tmp/sim/$1/particles.star" "$OUT/ours/$1.particles.star"  # the truth the runs are scored against
  }
  ours() {  # name data extra-args...
    local name=$1 data=$2; shift 2
    local left=$((BUDGET - ($(date +%s) - T0) - 10))
    if [ "$left" -lt 60 ]; then echo "$name: no time left ($left s)"; return; fi
    local t=$(date +%s.%N)
    timeout "$left" python3 -m napari_semiamort.cli.main reconstruct "/tmp/sim/$data/particles.star" -o "/tmp/ours/$name" \
      --force --mask-diameter 220 --reference-map "/tmp/sim/$data/truth.mrc" --device "${DEVICE:-cuda}" $OURS_EXTRA "$@" \
      > "$OUT/ours/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc, $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s" | tee -a "$OUT/ours/walls.txt"
    mkdir -p "$OUT/ours/$name"
    cp /tmp/ours/$name/{map.mrc,poses.star,metrics.jsonl,config.json} "$OUT/ours/$name/" 2>/dev/null
  }
  simulate full128 128 0 && ours full128_defaults full128
  simulate full_shift3 64 3 && ours full_shift3 full_shift3 --estimate-shifts
  simulate full_shift0 64 0 && ours full_shift0_bs64 full_shift0 && ours full_shift0_bs256 full_shift0 --stage2-batch-size 256
  # one file: the device call returns only a few files (26 November: 8 of 27 came back)
  tar czf "$OUT/ours.tgz" -C "$OUT" ours && rm -rf "$OUT/ours"
fi
echo "script: $(($(date +%s) - T0)) s"
