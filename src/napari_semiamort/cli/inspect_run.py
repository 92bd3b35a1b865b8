"""Question a run's pose inference: posterior maps of chosen particles and head specialisation, as PNGs.

Examples:

  semiamort inspect run1 --particles 12 40
  semiamort inspect run1 --particles 0 --nside 16 --inplane 72 -o run1/inspect

For each particle: a Mollweide map of the log posterior of its view direction under the run's current
map (HEALPix grid × in-plane angles, in-plane marginalised), with stage 1's candidates (the grid's best poses,
or with ``--stage1 heads`` each encoder head's; the best ringed), the run's pose, the true pose when the
particles' file has one (simulated data), and the path the pose took over the epochs (particles the run
watched). For a run with heads, also head_specialization.png: which head wins which view directions. The run
is read from its last checkpoint; nothing in it changes.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (with checkpoint.pt)")
    p.add_argument("--particles", type=int, nargs="+", default=None,
                   help="particle indices (0-based; default: the run's watched particles)")
    p.add_argument("--nside", type=int, default=8, help="HEALPix resolution (8: 768 directions, 7.3°)")
    p.add_argument("--inplane", type=int, default=36, help="in-plane angles (36: every 10°)")
    p.add_argument("-o", "--outdir", help="folder for the PNGs (default RUN_DIR/inspect)")
    p.add_argument("--device", default=None, help="device for the likelihoods (default: the run's)")


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from ..devices import set_cpu_threads
    from ..run.figures import posterior_figure, specialization_figure
    from ..run.loop import Reconstruction
    from ..run.posterior import head_specialization, pose_posterior, reference_in_run_frame

    run_dir = Path(args.run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt (is it a run folder?)")
    overrides = {"device": args.device} if args.device else {}
    run = Reconstruction.resume(run_dir, cache_images=False, **overrides)  # a few images are read, not all
    set_cpu_threads(run.config.threads)  # the run's own setting, as when it trained
    out = Path(args.outdir) if args.outdir else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    particles = args.particles if args.particles is not None else list(run.config.watch)
    truth = reference_in_run_frame(run)
    for i in particles:
        post = pose_posterior(run, i, args.nside, args.inplane, truth=truth)
        png = posterior_figure(post, out / f"posterior_{i:06d}.png")
        extra = ""
        if post.truth is not None:
            err = np.degrees(np.arccos(np.clip(post.mode @ post.truth, -1, 1)))
            extra = f", {err:.1f}° from the truth"
        which = "winning head" if run.config.stage1 == "heads" else "best grid candidate"
        print(f"particle {i}: mode at tilt {np.degrees(np.arccos(post.mode[2])):.1f}°, {which} "
              f"{post.winner + 1} of {len(post.candidates)}{extra}: {png}")
    if run.config.stage1 != "heads":
        print("head specialisation: none (stage 1 ran on the grid, without an encoder's heads; --stage1 heads)")
        return 0
    png = specialization_figure(head_specialization(run), out / "head_specialization.png")
    print(f"head specialisation: {png}")
    return 0
