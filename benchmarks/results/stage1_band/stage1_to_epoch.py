"""Stage-1 experiment: D=DATA_DIR/ python stage1_to_epoch.py NAME '{"overrides": ...}' [until_epoch]

DATA_DIR holds particles.star and truth.mrc (default: the full128 suite's data)."""
import json
import os
import sys
import time

from napari_semiamort.run import Reconstruction, ReconstructionConfig

D = os.environ.get("D", "/work/main/benchmarks/results/full128/data_shift0/")
name, over = sys.argv[1], json.loads(sys.argv[2])
until = int(sys.argv[3]) if len(sys.argv) > 3 else 15
cfg = ReconstructionConfig(particles=D + "particles.star", mask_diameter=220, reference_map=D + "truth.mrc",
                           threads=1, **over)
cfg.epochs = max(cfg.epochs, until)
run = Reconstruction(cfg)
print(name, over, "box", run.size, "encoder", run.encoder_size, flush=True)
t0 = time.time()
for snap in run:
    if snap.epoch_end:
        m = snap.metrics
        print(f"{name} r{m.get('restart','-')} ep{m['epoch']:3d} {m['stage'][:4]} loss {m['loss']:.4f} "
              f"band {m.get('band_fraction', 0):.3f} chg {m.get('pose_change_deg', 0):6.2f} "
              f"err {m['pose_error_mean_deg']:6.2f}/{m['pose_error_median_deg']:6.2f} "
              f"fsc {m.get('fsc_0.5_angstrom_masked', 0):6.2f} T {time.time()-t0:.0f}", flush=True)
        if m["epoch"] >= until and snap.restart is None:
            break
