set -o pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
S="python3 -m napari_semiamort.cli.main"
mkdir -p $OUT/m/box192_box128
$S simulate .gpu/3KPR_TCR_HLA.cif.gz -o /tmp/s192 --n 2000 --box 192 --snr 0.1 --seed 0 --device cuda --force >/dev/null
echo "sim $(($(date +%s) - T0)) s"
t=$(date +%s)
timeout $((${BUDGET:-170} - ($(date +%s) - T0))) $S reconstruct /tmp/s192/particles.star --reference-map /tmp/s192/truth.mrc --box 128 -o /tmp/r/b --force --mask-diameter 220 --device cuda > $OUT/m/box192_box128/run.log 2>&1
echo "box192_box128: rc $?, $(($(date +%s) - t)) s" | tee $OUT/m/walls.txt
cp /tmp/r/b/{metrics.jsonl,config.json,fsc.csv} $OUT/m/box192_box128/ 2>/dev/null
cd $OUT && tar czf m.tgz m && rm -rf m
