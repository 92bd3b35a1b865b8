"""Simulate a particle stack with known poses from an MRC map or an atomic model (PDB/mmCIF).

Examples:

  semiamort simulate model.cif -o sim --n 3000 --box 64 --snr 0.1
  semiamort simulate map.mrc -o sim --n 10000 --box 128 --max-shift 4 --no-ctf

Writes particles.mrcs, particles.star (RELION 3.1, with the true angles and origins), truth.mrc and
simulation.json. Noise is Gaussian and white; SNR is the variance of the noise-free CTF-modulated images
(over the whole box) divided by the noise variance. Defocus is uniform in [--defocus-min, --defocus-max]
with up to --astigmatism of |U − V|.
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    from ..sim.simulate import SimulationConfig

    d = SimulationConfig()
    p.add_argument("source", help="MRC map or atomic model (.pdb, .cif, optionally .gz)")
    p.add_argument("-o", "--outdir", required=True, help="folder to write into")
    p.add_argument("--n", type=int, default=d.n_particles, help=f"number of images (default {d.n_particles})")
    p.add_argument("--box", type=int, default=d.box, help=f"box size in pixels (default {d.box})")
    p.add_argument("--pixel-size", type=float, help="Å/px (default: the model fills 60%% of the box)")
    p.add_argument("--snr", type=float, default=d.snr, help=f"signal-to-noise ratio (default {d.snr})")
    p.add_argument("--no-ctf", action="store_true", help="no CTF")
    p.add_argument("--defocus-min", type=float, default=d.defocus_min, help="Å")
    p.add_argument("--defocus-max", type=float, default=d.defocus_max, help="Å")
    p.add_argument("--astigmatism", type=float, default=d.astigmatism_max, help="largest |U − V| in Å")
    p.add_argument("--max-shift", type=float, default=0.0, help="origins uniform in ± this many pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an earlier simulation in OUTDIR")
    p.add_argument("--device", default="cpu",
                   help="where to compute the projections: cpu (default), cuda, mps or auto; the seed's draws "
                        "are the same on every device")


def main(args: argparse.Namespace) -> int:
    from ..devices import select_device
    from ..sim.simulate import SimulationConfig, simulate_dataset

    if args.n < 1 or args.box < 8 or args.box % 2:
        raise ValueError("--n must be positive and --box an even number of at least 8")
    if args.snr <= 0:
        raise ValueError("--snr must be positive")
    cfg = SimulationConfig(
        n_particles=args.n, box=args.box, pixel_size=args.pixel_size, snr=args.snr, ctf=not args.no_ctf,
        defocus_min=args.defocus_min, defocus_max=args.defocus_max, astigmatism_max=args.astigmatism,
        max_shift=args.max_shift, seed=args.seed,
    )
    info = simulate_dataset(args.source, args.outdir, cfg, force=args.force, device=select_device(args.device))
    print(f"{args.n} images of {args.box} px at {info['pixel_size']:.3f} Å/px, SNR {args.snr}: "
          f"{args.outdir}/particles.star, truth.mrc")
    return 0
