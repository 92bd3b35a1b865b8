"""Steps per second of stage 1 and stage 2 with 1 and 2 torch intra-op threads, side by side.

  python benchmarks/threads.py [--box 64] [--n 1000] [--steps 20]

Simulates a small dataset from the bundled ribosome map, then times the same training steps with each
thread count (after two warm-up steps) in this one process, and prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import torch

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset


def time_steps(run: Reconstruction, step, batch: int, steps: int) -> float:
    n = len(run.data)
    for s in range(2):
        step(torch.arange(s * batch, (s + 1) * batch) % n)
    t0 = time.perf_counter()
    for s in range(steps):
        step(torch.arange(s * batch, (s + 1) * batch) % n)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=args.n, box=args.box, seed=0))
        results = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cfg = ReconstructionConfig(particles=str(Path(tmp) / "particles.star"), threads=threads)
            run = Reconstruction(cfg)
            run.state.epoch = cfg.switch_epoch - 1  # the widest stage-1 band: the most expensive stage-1 steps
            s1 = time_steps(run, run.train_step, cfg.batch_size, args.steps)
            run.switch()
            s2 = time_steps(run, run.train_step, cfg.batch_size, args.steps)
            results[threads] = {"stage1_images_per_s": s1, "stage2_images_per_s": s2}
    print(f"box {args.box}, batch 64, {torch.__version__}, {torch.get_num_interop_threads()} inter-op threads")
    for t, r in results.items():
        s1, s2 = r["stage1_images_per_s"], r["stage2_images_per_s"]
        print(f"{t} thread(s): stage 1 {s1:7.0f} img/s   stage 2 {s2:7.0f} img/s")
    for k in ("stage1_images_per_s", "stage2_images_per_s"):
        print(f"{k.split('_')[0]}: 2 threads / 1 thread = {results[2][k] / results[1][k]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"box": args.box, "results": results}, indent=2))


if __name__ == "__main__":
    main()
