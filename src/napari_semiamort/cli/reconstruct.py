"""Reconstruct a map ab initio from particle images with unknown poses.

Examples:

  semiamort reconstruct particles.star -o run1
  semiamort reconstruct J24_particles.cs -o run2 --box 128 --halves
  semiamort reconstruct particles.mrcs --ctf-pkl ctf.pkl -o run3        (cryoDRGN inputs)
  semiamort reconstruct particles.star -o run1 --heads 15 --epochs 30 --switch-epoch 15 --device cuda
  semiamort reconstruct --resume run1 --epochs 40

Inputs: a RELION STAR (3.0 to 5), a cryoSPARC .cs (its passthrough file is found when beside it), or an
MRC stack (.mrcs, .mrc, .mrcs.gz) with an optional cryoDRGN ctf.pkl. The run folder receives config.json,
metrics.jsonl (one line per epoch), checkpoint.pt (each epoch), map.mrc (and half1.mrc / half2.mrc with
--halves), poses.star (RELION 3.1; poses.cs too for a .cs input), fsc.csv / fsc.png and chimerax.cxc.
Ctrl-C stops cleanly: the last checkpoint and the current map and poses are written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..run.config import ReconstructionConfig

# CLI flag → config field, for the knobs a user sets from the command line.
_KNOBS = {
    "heads": int, "backbone": str, "encoder_lr": float, "volume_lr": float, "volume_lr_autodecode": float,
    "pose_lr": float, "pose_steps": int, "epochs": int, "switch_epoch": int, "batch_size": int,
    "stage2_batch_size": int,
    "loss": str, "noise_model": str, "max_freq": float, "autoencode_min_freq": float, "autoencode_max_freq": float,
    "seed": int,
    "device": str, "threads": int, "max_shift": float, "shift_search": int,
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", nargs="?", help="particles: RELION .star, cryoSPARC .cs or an MRC stack")
    p.add_argument("-o", "--outdir", help="run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="write into an existing run folder")
    p.add_argument("--datadir", help="folder the STAR's image paths are relative to (default: the STAR's)")
    p.add_argument("--pixel-size", type=float, help="pixel size in Å (overrides the STAR)")
    p.add_argument("--no-ctf", action="store_true", help="ignore the CTF (data without CTF columns)")
    p.add_argument("--ctf-pkl", help="cryoDRGN ctf.pkl for a bare particle stack")
    p.add_argument("--pose-pkl", help="cryoDRGN pose.pkl with known poses (for the pose-error log only)")
    p.add_argument("--passthrough", help="cryoSPARC passthrough .cs (default: found beside the .cs)")
    p.add_argument("--box", type=int, help="downsample the images to this box by Fourier cropping to infer the "
                   "poses (faster); the maps are still made at the images' box (see --output-box)")
    p.add_argument("--output-box", type=int,
                   help="box of map.mrc and the half maps, made from the final poses (default: the images' box)")
    p.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                   help="contrast inversion for dark-on-light particles (default: auto, decided from the data)")
    p.add_argument("--mask-diameter", type=float, help="soft circular mask diameter in Å (default: none)")
    p.add_argument("--halves", action="store_true",
                   help="split the particles in two (rlnRandomSubset, else seeded) and write half maps + FSC")
    p.add_argument("--estimate-shifts", action="store_true", help="estimate in-plane shifts")
    p.add_argument("--reference-map", help="ground-truth map for FSC in the log (simulated data)")
    p.add_argument("--watch", type=int, nargs="*", help="particle indices whose candidates are snapshotted")
    defaults = ReconstructionConfig()
    special = {
        "stage2_batch_size": "default: --batch-size (256 runs stage 2 faster on a GPU)",
        "autoencode_min_freq": "stage-1 band at the start, as a fraction of Nyquist (default: 0.15, or 5 Fourier "
                               "pixels where that is less, i.e. at most the box's width / 5 in Å)",
        "autoencode_max_freq": "stage-1 band at the switch, as a fraction of Nyquist (default: 0.4, or 26 Fourier "
                               "pixels where that is less, i.e. at most the box's width / 26 in Å)",
    }
    for name, typ in _KNOBS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None,
                       help=special.get(name, f"default: {getattr(defaults, name)}"))


def config_from_args(args: argparse.Namespace) -> ReconstructionConfig:
    cfg = ReconstructionConfig(particles=str(Path(args.particles).resolve()))
    cfg.datadir = None if args.datadir is None else str(Path(args.datadir).resolve())
    cfg.pixel_size = args.pixel_size
    cfg.use_ctf = not args.no_ctf
    cfg.ctf_pkl = None if args.ctf_pkl is None else str(Path(args.ctf_pkl).resolve())
    cfg.pose_pkl = None if args.pose_pkl is None else str(Path(args.pose_pkl).resolve())
    cfg.passthrough = None if args.passthrough is None else str(Path(args.passthrough).resolve())
    cfg.box, cfg.invert, cfg.mask_diameter, cfg.halves = args.box, args.invert, args.mask_diameter, args.halves
    cfg.output_box = args.output_box
    cfg.estimate_shifts = args.estimate_shifts
    cfg.reference_map = None if args.reference_map is None else str(Path(args.reference_map).resolve())
    if args.watch is not None:
        cfg.watch = list(args.watch)
    for name in _KNOBS:
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    cfg.validate()
    return cfg


def format_metrics(m: dict) -> str:
    parts = [f"restart {m['restart'] + 1}" if "restart" in m else "", f"epoch {m['epoch']:3d}", f"{m['stage']:10s}",
             f"loss {m['loss']:.5f}",
             f"{m['images_per_second']:7.0f} img/s"]
    if "pose_change_deg" in m:
        parts.append(f"pose change {m['pose_change_deg']:6.2f}°")
    if "pose_error_mean_deg" in m:
        parts.append(f"pose error mean {m['pose_error_mean_deg']:6.2f}° median {m['pose_error_median_deg']:6.2f}°")
    if "fsc_0.5_angstrom" in m:
        parts.append(f"FSC=0.5 {m['fsc_0.5_angstrom']:.2f} Å")
    return "  ".join(p for p in parts if p)


def train(run, run_dir: Path, quiet: bool = False) -> None:
    """Iterate a run to the end with a progress bar; on Ctrl-C keep what was reached."""
    from tqdm import tqdm

    from ..run.outputs import write_outputs

    total = run.total_steps
    # The bar is for terminals; in a log file (nohup, a cluster job) the epoch lines alone are kept.
    bar = tqdm(total=total, initial=run.step_count, unit="step", dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())
    last_restart = None
    try:
        for snap in run:
            if snap.total_steps != bar.total:  # restarts were added while none stood out
                bar.total = snap.total_steps
                bar.refresh()
            if last_restart is not None and snap.restart is None:
                # the restarts' record; with one-step epochs a newer epoch's entry follows it already
                last = next(m for m in reversed(run.history) if "chosen_restart" in m)
                tried = len(last.get("restart_losses", ())) or run.config.restarts
                gap = 100 * last.get("restart_gap", float("nan"))
                bar.write(f"kept restart {last['chosen_restart'] + 1} of {tried} (lowest loss, "
                          f"{gap:.1f} % below the others' median)", file=sys.stdout)
            last_restart = snap.restart
            bar.update(1)
            bar.set_postfix(epoch=snap.epoch + 1, stage=snap.stage, loss=f"{snap.loss:.4f}")
            if snap.epoch_end:
                bar.write(format_metrics(snap.metrics), file=sys.stdout)
    except KeyboardInterrupt:
        bar.write(f"interrupted: writing the map and poses reached so far to {run_dir}")
        run.save_checkpoint()
        raise
    finally:
        bar.close()
        write_outputs(run, run_dir)


def main(args: argparse.Namespace) -> int:
    from ..run.loop import Reconstruction
    from ..run.outputs import RUN_OUTPUTS, write_config

    if args.resume:
        run_dir = Path(args.resume)
        # what does not change the training: the run's length, where it runs, and the maps' box
        overrides = {k: getattr(args, k) for k in ("epochs", "device", "threads", "output_box")
                     if getattr(args, k) is not None}
        run = Reconstruction.resume(run_dir, **overrides)
        print(f"resuming {run_dir} at epoch {run.epoch + 1} of {run.config.epochs}")
    else:
        if not args.particles or not args.outdir:
            raise ValueError("give a particle file (.star, .cs or .mrcs) and -o RUN_DIR (or --resume RUN_DIR)")
        run_dir = Path(args.outdir)
        if run_dir.exists() and any(run_dir.iterdir()) and not args.force:
            raise FileExistsError(f"{run_dir}: exists and is not empty; pass --force to write into it")
        cfg = config_from_args(args)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_OUTPUTS:  # --force: a previous run's results must not pass for this one's
            (run_dir / name).unlink(missing_ok=True)
        run = Reconstruction(cfg, run_dir=run_dir)
        d = run.data
        maps = d.check_box(cfg.output_box)
        size = f"box {run.size}" + (f" (from {d.raw_box}; maps at box {maps})" if d.raw_box != run.size else "")
        skipped = f", {len(d.skipped)} skipped (NaN/Inf)" if len(d.skipped) else ""
        print(f"{len(d)} particles{skipped}, {size}, {d.pixel_size:.3f} Å/px, "
              f"{'inverted' if d.sign < 0 else 'contrast as is'}, device {run.device}")
    write_config(run_dir, run.config.to_dict(), resumed=bool(args.resume))
    train(run, run_dir)
    print(f"map: {run_dir / 'map.mrc'}  poses: {run_dir / 'poses.star'}  ChimeraX: {run_dir / 'chimerax.cxc'}")
    return 0
