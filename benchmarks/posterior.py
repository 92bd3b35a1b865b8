"""Time to compute one particle's pose posterior (768 HEALPix directions × 36 in-plane angles, box 64).

  python benchmarks/posterior.py [--box 64] [--nside 8] [--inplane 36] [--particles 20] [--device auto]

Simulates the bundled ribosome, then times ``pose_posterior`` per particle (the likelihood grid, the
marginalisation and the heads' candidates) after one warm-up, and the likelihood grid alone. The goal on
a 2-core CPU is under 1 s per particle.
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
from napari_semiamort.run.posterior import direction_grid, pose_posterior
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--nside", type=int, default=8)
    p.add_argument("--inplane", type=int, default=36)
    p.add_argument("--particles", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--out")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=200, box=args.box, seed=0))
        run = Reconstruction(ReconstructionConfig(particles=str(Path(tmp) / "particles.star"), device=args.device))
        _, rot = direction_grid(args.nside)
        angles = torch.arange(args.inplane, dtype=torch.float64) * (2 * torch.pi / args.inplane)
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
        pose_posterior(run, 0, args.nside, args.inplane)  # warm-up
        sync()
        t0 = time.perf_counter()
        for i in range(args.particles):
            run.log_likelihood_grid(i, rot, angles)
        sync()
        grid = (time.perf_counter() - t0) / args.particles
        t0 = time.perf_counter()
        for i in range(args.particles):
            pose_posterior(run, i, args.nside, args.inplane)
        sync()
        full = (time.perf_counter() - t0) / args.particles
    n = 12 * args.nside**2
    print(f"box {args.box}, {n} directions × {args.inplane} in-plane angles on {run.device} "
          f"({torch.get_num_threads()} threads): likelihood grid {1e3 * grid:.0f} ms, whole posterior "
          f"(+ candidates, alignment to the truth) {1e3 * full:.0f} ms per particle")
    if args.out:
        Path(args.out).write_text(json.dumps({"box": args.box, "directions": n, "inplane": args.inplane,
                                              "device": str(run.device), "grid_s": grid, "posterior_s": full},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
