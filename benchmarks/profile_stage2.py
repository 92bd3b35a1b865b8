"""Where a stage-2 step's time goes: torch's profiler over 5 steps at box 64, batch 64 (default config).

  python benchmarks/profile_stage2.py [--box 64] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=1024, box=args.box, seed=0))
        run = Reconstruction(ReconstructionConfig(particles=str(Path(tmp) / "particles.star"), restarts=1))
        run.state.epoch = run.config.switch_epoch
        run.switch()
        bs = run.config.batch_size
        for s in range(3):  # warm-up
            run.train_step(torch.arange(s * bs, (s + 1) * bs))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for s in range(args.steps):
                run.train_step(torch.arange(s * bs, (s + 1) * bs))
        t0 = time.perf_counter()
        for s in range(10):
            run.train_step(torch.arange(s * bs, (s + 1) * bs))
        step = (time.perf_counter() - t0) / 10
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"stage-2 step: {1e3 * step:.0f} ms at box {args.box}, batch {bs} ({bs / step:.0f} images/s)")


if __name__ == "__main__":
    main()
