"""What the divergence guard (run/guard.py) costs a training step: images/s with it and without, side by side.

  python benchmarks/guard_cost.py [--box 64] [--n 1000] [--steps 20] [--threads 1] [--out F]

The workload of benchmarks/threads.py (stage 1 at its widest band, then stage 2, the default configuration), timed
with the guard as the run has it and with the guard's step replaced by the optimisers' plain steps, in the same
process, each measured twice in alternating order (with, without, without, with) so that a drift of the machine
falls on both; the best of each pair is kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from importlib.resources import files
from pathlib import Path

import torch
from threads import time_steps

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.guard import DivergenceGuard
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

GUARDED = DivergenceGuard.step


def plain(self, loss, optimizers) -> bool:
    for opt in optimizers:
        opt.step()
    return True


def measure(star: Path, steps: int, threads: int, guarded: bool) -> dict:
    DivergenceGuard.step = GUARDED if guarded else plain
    cfg = ReconstructionConfig(particles=str(star), threads=threads, seed=0)
    run = Reconstruction(cfg)
    run.state.epoch = cfg.switch_epoch - 1
    s1 = time_steps(run, run.train_step, cfg.batch_size, steps)
    run.switch()
    s2 = time_steps(run, run.train_step, cfg.batch_size, steps)
    return {"stage1": s1, "stage2": s2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=args.n, box=args.box, seed=0))
        star = Path(tmp) / "particles.star"
        runs = {True: [], False: []}
        for guarded in (True, False, False, True):
            runs[guarded].append(measure(star, args.steps, args.threads, guarded))
    best = {g: {k: max(r[k] for r in rs) for k in ("stage1", "stage2")} for g, rs in runs.items()}
    rows = {k: {"with_guard": best[True][k], "without": best[False][k], "ratio": best[True][k] / best[False][k]}
            for k in ("stage1", "stage2")}
    print(f"box {args.box}, batch 64, {args.threads} thread(s), torch {torch.__version__}")
    for k, r in rows.items():
        print(f"{k}: {r['with_guard']:.0f} img/s with the guard, {r['without']:.0f} without: {r['ratio']:.3f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"box": args.box, "threads": args.threads, "results": rows}, indent=2)
                                  + "\n")


if __name__ == "__main__":
    main()
