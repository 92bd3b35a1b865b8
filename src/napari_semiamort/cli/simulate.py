"""Simulate a particle stack with known poses from an MRC map or an atomic model (PDB/mmCIF).

Examples:

  semiamort simulate model.cif -o sim --n 3000 --box 64 --snr 0.1
  semiamort simulate map.mrc -o sim --n 10000 --box 128 --max-shift 4 --no-ctf

  semiamort simulate model.cif -o sim --realistic --snr 0.05 --ctf-table empiar10028_ctf.pkl
  semiamort simulate model.cif -o sim --realistic --junk 0.15 --junk-kind other --junk-source other.cif

Writes particles.mrcs, particles.star (RELION 3.1, with the true angles and origins), truth.mrc,
simulation.json, and junk.txt (the 0-based indices of the junk images) when there are any. Noise is Gaussian;
SNR is the mean variance of the noise-free particle images (CTF, envelope and scale applied; over the whole
box; junk images left out) divided by the noise variance. Defocus is uniform in [--defocus-min,
--defocus-max] with up to --astigmatism of |U − V|, unless --ctf-table gives real values.

Realistic data (each option on its own, or --realistic for all with the values in brackets):
  --noise-falloff B   the noise power falls with frequency as 0.1 + exp(−B k²/4) (k in 1/Å), as real
                      micrographs' does (ice and carbon at low frequencies, the detector's MTF) [400 Å²]
  --bfactor B         the signal's envelope exp(−B k²/4) (beam-induced motion, radiation damage, the
                      microscope's coherence); the STAR does not state it, as real data do not [100 Å²]
  --ctf-table FILE    each image's defocus, astigmatism, voltage, Cs, amplitude contrast and phase shift
                      drawn (with replacement) from a real data set's table: a cryoDRGN ctf.pkl, a RELION
                      particle STAR or a cryoSPARC .cs [none: the uniform ranges]
  --scale-spread S    each image's signal times exp(N(0, S²)): ice thickness and dose vary [0.1]
  --junk F            this fraction of images hold no particle of the molecule [0.1]; --junk-kind ice (noise
                      alone) or other (projections of --junk-source, another model or map)
  --max-shift P       in-plane shifts, uniform in ± P pixels [3]
The draws these options make come from a generator of their own: the poses, shifts and noise of a
simulation with the same seed stay as they were.
"""

from __future__ import annotations

import argparse

# --realistic: the values the help text gives in brackets
REALISTIC = {"noise_falloff": 400.0, "bfactor": 100.0, "scale_spread": 0.1, "junk_fraction": 0.1, "max_shift": 3.0}


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
    p.add_argument("--max-shift", type=float, help="origins uniform in ± this many pixels (default 0)")
    p.add_argument("--realistic", action="store_true",
                   help="noise falling with frequency, a B-factor, scale spread, 10%% junk and ±3 px shifts (each "
                        "overridable by its own option; see above)")
    p.add_argument("--noise-falloff", type=float, help="Å²: noise power 0.1 + exp(−B k²/4) (default 0: white)")
    p.add_argument("--bfactor", type=float, help="Å²: the signal's envelope exp(−B k²/4) (default 0)")
    p.add_argument("--ctf-table", help="a real CTF table to draw each image's CTF from (.pkl, .star or .cs)")
    p.add_argument("--scale-spread", type=float, help="σ of each image's log signal scale (default 0)")
    p.add_argument("--junk", type=float, help="fraction of junk images (default 0)")
    p.add_argument("--junk-kind", choices=("ice", "other"), default="ice",
                   help="ice: noise alone (default); other: projections of --junk-source")
    p.add_argument("--junk-source", help="MRC map or atomic model of the junk molecule (--junk-kind other)")
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
    if args.junk_source and args.junk_kind != "other":
        raise ValueError("--junk-source is the molecule of --junk-kind other")

    def pick(value, realistic):  # an option given wins; else the --realistic value; else off
        return value if value is not None else realistic if args.realistic else 0.0

    cfg = SimulationConfig(
        n_particles=args.n, box=args.box, pixel_size=args.pixel_size, snr=args.snr, ctf=not args.no_ctf,
        defocus_min=args.defocus_min, defocus_max=args.defocus_max, astigmatism_max=args.astigmatism,
        max_shift=pick(args.max_shift, REALISTIC["max_shift"]), seed=args.seed, ctf_table=args.ctf_table,
        noise_falloff=pick(args.noise_falloff, REALISTIC["noise_falloff"]),
        bfactor=pick(args.bfactor, REALISTIC["bfactor"]),
        scale_spread=pick(args.scale_spread, REALISTIC["scale_spread"]),
        junk_fraction=pick(args.junk, REALISTIC["junk_fraction"]), junk_kind=args.junk_kind,
        junk_source=args.junk_source,
    )
    info = simulate_dataset(args.source, args.outdir, cfg, force=args.force, device=select_device(args.device))
    junk = f", {info['junk_count']} of them junk (junk.txt)" if info["junk_count"] else ""
    print(f"{args.n} images of {args.box} px at {info['pixel_size']:.3f} Å/px, SNR {args.snr}{junk}: "
          f"{args.outdir}/particles.star, truth.mrc")
    return 0
