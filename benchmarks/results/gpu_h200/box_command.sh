set -o pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
S="python3 -m napari_semiamort.cli.main"
B=${BUDGET:-470}
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/r/gpu.txt
python3 -c "import torch; print(torch.__version__)" >> $OUT/r/gpu.txt
$S simulate .gpu/3KPR_TCR_HLA.cif.gz -o /tmp/s192 --n 2000 --box 192 --snr 0.1 --seed 0 --device cuda --force >/dev/null
$S simulate .gpu/3KPR_TCR_HLA.cif.gz -o /tmp/s128 --n 2000 --box 128 --snr 0.1 --seed 0 --device cuda --force >/dev/null
for s in s192 s128; do cp /tmp/$s/particles.star $OUT/r/${s}_particles.star; cp /tmp/$s/simulation.json $OUT/r/${s}_simulation.json; done
echo "sims $(($(date +%s) - T0)) s"
run() { n=$1; d=$2; shift 2; t=$(date +%s); left=$((B - ($(date +%s) - T0))); [ $left -lt 40 ] && { echo "$n skipped"; return; }
  timeout $left $S reconstruct /tmp/$d/particles.star --reference-map /tmp/$d/truth.mrc "$@" -o /tmp/r/$n --force --mask-diameter 220 --device cuda > $OUT/r/$n.log 2>&1
  echo "$n: rc $?, $(($(date +%s) - t)) s" | tee -a $OUT/r/walls.txt
  mkdir -p $OUT/r/$n; cp /tmp/r/$n/{map.mrc,poses.star,metrics.jsonl,config.json} $OUT/r/$n/ 2>/dev/null; }
run box192 s192
run box192_box128 s192 --box 128
run full128_box96 s128 --box 96
run full128_maxfreq06 s128 --max-freq 0.6
tar czf $OUT/r.tgz -C $OUT r && rm -rf $OUT/r
echo "script $(($(date +%s) - T0)) s"
# The tarball of maps was over the device's size limit; metrics, FSC, configs and poses were fetched from the
# warm machine's /tmp/r in a second call. A third call on the same machine ran the last run alone:
#   python3 -m napari_semiamort.cli.main reconstruct /tmp/s128/particles.star --reference-map /tmp/s128/truth.mrc \
#     --max-freq 0.6 -o /tmp/r/full128_maxfreq06 --force --mask-diameter 220 --device cuda
