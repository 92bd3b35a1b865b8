set -o pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
S="python3 -m napari_semiamort.cli.main"
mkdir -p $OUT/r
$S simulate .gpu/3KPR_TCR_HLA.cif.gz -o /tmp/s128 --n 2000 --box 128 --snr 0.1 --seed 0 --device cuda --force >/dev/null
$S simulate .gpu/3KPR_TCR_HLA.cif.gz -o /tmp/s192 --n 2000 --box 192 --snr 0.1 --seed 0 --device cuda --force >/dev/null
cp /tmp/s192/particles.star $OUT/r/s192_particles.star; cp /tmp/s192/simulation.json $OUT/r/s192_simulation.json
echo "sims $(($(date +%s) - T0)) s"
run() { n=$1; shift; t=$(date +%s); left=$((300 - ($(date +%s) - T0))); [ $left -lt 30 ] && { echo "$n skipped"; return; }
  timeout $left $S reconstruct "$@" -o /tmp/r/$n --force --mask-diameter 220 --device cuda > $OUT/r/$n.log 2>&1
  echo "$n: rc $?, $(($(date +%s) - t)) s" | tee -a $OUT/r/walls.txt
  mkdir -p $OUT/r/$n; cp /tmp/r/$n/{map.mrc,poses.star,metrics.jsonl,config.json} $OUT/r/$n/ 2>/dev/null; }
run box96 /tmp/s128/particles.star --box 96
run box192 /tmp/s192/particles.star
tar czf $OUT/r.tgz -C $OUT r && rm -rf $OUT/r
echo "script $(($(date +%s) - T0)) s"
