"""Reconstruct a map ab initio from particle images with unknown poses.

Examples:

  semiamort reconstruct particles.star -o run1
  semiamort reconstruct J24_particles.cs -o run2 --box 128 --halves
  semiamort reconstruct particles.mrcs --ctf-pkl ctf.pkl -o run3        (cryoDRGN inputs)
  semiamort reconstruct particles.star -o run1 --heads 15 --epochs 30 --switch-epoch 15 --device cuda
  semiamort reconstruct particles.star -o run1 --restarts 5 --restart-epochs 6 --max-restarts 8
  semiamort reconstruct --resume run1 --epochs 40

Inputs: a RELION STAR (3.0 to 5), a cryoSPARC .cs (its passthrough file is found when beside it), or an
MRC stack (.mrcs, .mrc, .mrcs.gz) with an optional cryoDRGN ctf.pkl. The run folder receives config.json,
metrics.jsonl (one line per epoch), checkpoint.pt (each epoch, each restart epoch and every 10 minutes; the one
before kept as checkpoint.prev.pt), map.mrc (and half1.mrc / half2.mrc with
--halves), map_masked.mrc and mask.mrc (the map within a soft sphere about the particle), poses.star (RELION
3.1; poses.cs too for a .cs input), fsc.csv / fsc.png and chimerax.cxc.
Restarts: the first --restart-epochs epochs are trained from --restarts initialisations (more, up to
--max-restarts, while no two agree and no loss stands out by --restart-margin); the run goes on from one whose
poses agree with another's (the lowest loss of those), else from the lowest loss. --restarts 1 turns them off.
Each option's value is named by its unit (Å, PX, EPOCHS, FRACTION_OF_NYQUIST, …) or lists its choices in braces.
Ctrl-C or SIGTERM stops at the next step: a checkpoint there (--resume goes on to the uninterrupted run's map),
the map and poses reached written, exit 130 / 143; a second one aborts at once. A run holds RUN_DIR/.semiamort.lock
while it runs: a second run (or --force) into a folder in use is refused. A step that would put a NaN or an Inf
into the model is rolled back and the learning rates halved (20 in a row end the run with what to check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..run.config import ReconstructionConfig
from ..run.fields import DATA, FIELDS, GROUPS, Field, to_value

# The value of each option of the table that takes a number or a path, named by its unit (the help shows
# ``--mask-diameter Å``); the options with choices show them instead. A field added without one fails
# tests/test_cli_help.py.
UNITS = {
    "pixel_size": "Å", "box": "PX", "mask_diameter": "Å", "shift_search": "PX", "shift_step": "PX",
    "reference_map": "MRC", "heads": "N", "encoder_lr": "LR", "volume_lr": "LR", "pose_lr": "LR",
    "switch_epoch": "EPOCH", "switch_min_epoch": "EPOCH", "switch_max_epoch": "EPOCH", "epochs": "EPOCHS",
    "batch_size": "IMAGES", "stage2_batch_size": "IMAGES", "device": "DEVICE", "seed": "N", "watch": "INDEX",
    "datadir": "DIR", "ctf_pkl": "PKL", "pose_pkl": "PKL", "passthrough": "CS", "output_box": "PX",
    "hidden": "UNITS", "inplane_search": "ANGLES", "volume_init_noise": "SCALE", "volume_lr_autodecode": "LR",
    "volume_lr_final_fraction": "FRACTION", "pose_steps": "STEPS", "shift_lr": "PX", "polish_epochs": "EPOCHS",
    "relax_symmetry": "CORRELATION", "reassign_epochs": "EPOCHS", "reassign_steps": "STEPS",
    "reassign_candidates": "N", "reassign_max_freq": "FRACTION_OF_NYQUIST", "restarts": "N",
    "restart_epochs": "EPOCHS", "max_restarts": "N", "restart_margin": "FRACTION", "stage1_maps_from": "EPOCH",
    "max_freq": "FRACTION_OF_NYQUIST", "stage2_ramp_epochs": "EPOCHS", "autoencode_min_freq": "FRACTION_OF_NYQUIST",
    "autoencode_max_freq": "FRACTION_OF_NYQUIST", "search_nside": "NSIDE", "search_inplane": "ANGLES",
    "max_shift": "FRACTION_OF_BOX", "threads": "N", "snapshot_every": "STEPS",
}
_DEFAULT_UNITS = {"Å": " Å", "PX": " px"}  # the units the default is stated in too: "(default: 3 px)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--outdir", metavar="RUN_DIR", help="run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="write into an existing run folder")
    groups = {g: p.add_argument_group(f"{g.lower()} options") for g in GROUPS}  # as the dock's sections
    for f in FIELDS:  # every setting of the run (run/fields.py)
        _add_field(groups[f.group], f)
    # the switch of the releases before --shifts (shifts were off by default then): scripts keep working
    groups[DATA].add_argument("--estimate-shifts", dest="shifts", action="store_const", const="yes",
                              help="the same as --shifts yes")


def _add_field(p, f: Field) -> None:
    """The option of one field of the table (``p``: a parser or an argument group): ``--flag VALUE`` with the
    value named by its unit (:data:`UNITS`) or its choices, a switch for a boolean, indices for a list."""
    if f.flag is None:
        p.add_argument(f.name, nargs="?", help=f.help)
        return
    text = f.flag_help or f.help
    if f.kind is bool:  # the switch sets the value that is not the default (--halves, --no-ctf)
        p.add_argument(f.flag, dest=f.name, action="store_const", const=not f.default, default=None,
                       help=text.replace("%", "%%"))  # argparse formats help with %
        return
    unit = UNITS.get(f.name)
    default = f.default_text() + (_DEFAULT_UNITS.get(unit, "") if f.default is not None else "")
    help_text = f"{text} (default: {default})".replace("%", "%%")
    if f.kind is list:
        p.add_argument(f.flag, dest=f.name, type=int, nargs="*", default=None, metavar=unit, help=help_text)
        return
    choices = f.choices if isinstance(f.choices, tuple) else None  # the devices are checked by the run
    p.add_argument(f.flag, dest=f.name, type=f.kind, choices=choices, default=None,
                   metavar=None if choices else unit, help=help_text)


def config_from_args(args: argparse.Namespace) -> ReconstructionConfig:
    """The configuration the options describe: the config's defaults where an option is not given, paths
    made absolute (validated)."""
    values = {}
    for f in FIELDS:
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = list(v) if f.kind is list else to_value(f, v)
    cfg = ReconstructionConfig(**values)
    cfg.validate()
    return cfg


def format_metrics(m: dict) -> str:
    parts = [f"restart {m['restart'] + 1}" if "restart" in m else "", f"epoch {m['epoch']:3d}", f"{m['stage']:10s}",
             f"loss {m['loss']:.5f}",
             f"{m['images_per_second']:7.0f} img/s"]
    if "pose_change_deg" in m:
        parts.append(f"pose change {m['pose_change_deg']:6.2f}°")
    if "stage1_epochs" in m:  # the switch to stage 2 (where the automatic rule put it)
        parts.append(f"switched after {m['stage1_epochs']} stage-1 epochs")
    if "shifts_kept" in m:  # the decision of shifts "auto" at the switch
        kept = "kept" if m["shifts_kept"] else "dropped, centred"
        drift = f", the map's drift {m['shift_drift_px']:.2f} px taken out" if m.get("shift_drift_px") else ""
        parts.append(f"shifts {kept} (median {m['shift_median_px']:.2f} px{drift})")
    if "junk_fraction" in m:
        parts.append(f"junk {100 * m['junk_fraction']:4.1f}%")
    if "symmetry_moved" in m:  # the polish's symmetry relaxation (run.polish.relax_to_mates)
        parts.append(f"pseudo-symmetry {m['symmetry_group']} mates ({m['symmetry_order']}-fold, "
                     f"{m['symmetry_correlation']:.2f}): {m['symmetry_moved']} moved"
                     + (f" in {m['symmetry_rounds']} rounds" if m.get("symmetry_rounds", 1) > 1 else ""))
    if "pose_error_mean_deg" in m:
        parts.append(f"pose error mean {m['pose_error_mean_deg']:6.2f}° median {m['pose_error_median_deg']:6.2f}°")
    if "fsc_0.5_angstrom" in m:
        parts.append(f"FSC=0.5 {m['fsc_0.5_angstrom']:.2f} Å")
    return "  ".join(p for p in parts if p)


def restart_choice(m: dict, tried: int) -> str:
    """The log line naming the restart kept, and why (``m``: the metrics holding the restarts' record)."""
    chosen, gap = m["chosen_restart"], 100 * m.get("restart_gap", float("nan"))
    agrees = m.get("restart_agrees_with", [])
    if agrees:
        pairs = m.get("restart_disagreement_deg", {})
        angle = min(pairs.get(f"{min(chosen, j) + 1}-{max(chosen, j) + 1}", float("nan")) for j in agrees)
        others = ", ".join(str(j + 1) for j in agrees)
        why = f"lowest loss; its poses agree with restart {others}'s within {angle:.0f}° median"
    else:
        why = f"lowest loss, {gap:.1f} % below the others' median; no other restart agrees with it"
    return f"kept restart {chosen + 1} of {tried} ({why})"


def train(run, run_dir: Path, quiet: bool = False) -> None:
    """Iterate a run to the end with a progress bar, then write its outputs. Ctrl-C or SIGTERM stops it after the
    step in progress (:mod:`~napari_semiamort.run.interrupt`): a checkpoint at that step and the map and poses
    reached are written, and the program exits with 130 (Ctrl-C) or 143 (SIGTERM)."""
    from tqdm import tqdm

    from ..run.interrupt import StopRequest, position
    from ..run.outputs import write_outputs
    from ..run.verdict import verdict_lines

    # The bar is for terminals; in a log file (nohup, a cluster job) the epoch lines alone are kept.
    bar = tqdm(total=run.total_steps, initial=run.step_count, unit="step", dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())
    last_restart = None
    with StopRequest() as stop:  # a signal only sets a flag, looked at between two steps
        try:
            for snap in run:
                if snap.total_steps != bar.total:  # restarts were added while none stood out
                    bar.total = snap.total_steps
                    bar.refresh()
                if last_restart is not None and snap.restart is None:
                    # the restarts' record; with one-step epochs a newer epoch's entry follows it already
                    last = next(m for m in reversed(run.history) if "chosen_restart" in m)
                    tried = len(last.get("restart_losses", ())) or run.config.restarts
                    bar.write(restart_choice(last, tried), file=sys.stdout)
                last_restart = snap.restart
                bar.update(1)
                bar.set_postfix(epoch=snap.epoch + 1, stage=snap.stage, loss=f"{snap.loss:.4f}")
                if snap.epoch_end:
                    bar.write(format_metrics(snap.metrics), file=sys.stdout)
                    for line, _ in verdict_lines(snap.metrics):  # stage 1's at the switch, the run's at its end
                        bar.write(line, file=sys.stdout)
                if stop.requested:
                    break
        finally:
            bar.close()
            if stop.requested:
                print(f"{stop.name}: stopped {position(run)}; checkpoint saved, writing the map and poses reached "
                      f"to {run_dir}", flush=True)
                run.save_checkpoint()
            write_outputs(run, run_dir)
        if stop.requested:
            print(f"map: {run_dir / 'map.mrc'}  poses: {run_dir / 'poses.star'}; to go on: semiamort reconstruct "
                  f"--resume {run_dir}", flush=True)
            raise SystemExit(stop.exit_code)


def main(args: argparse.Namespace) -> int:
    from ..run.folder import RunFolder
    from ..run.outputs import write_config

    if not args.resume and not (args.particles and args.outdir):
        raise ValueError("give a particle file (.star, .cs or .mrcs) and -o RUN_DIR (or --resume RUN_DIR)")
    run_dir = Path(args.resume or args.outdir)
    cfg = None if args.resume else config_from_args(args)  # the options checked before the folder is touched
    # the folder is this run's alone while it runs (run/folder.py); a --force clears it once the data are read
    with RunFolder(run_dir, new=cfg is not None, force=args.force) as folder:
        run = _resumed_run(args, folder) if cfg is None else _new_run(cfg, folder)
        write_config(run_dir, run.config.to_dict(), resumed=cfg is None)
        train(run, run_dir)
    print(f"map: {run_dir / 'map.mrc'}  poses: {run_dir / 'poses.star'}  ChimeraX: {run_dir / 'chimerax.cxc'}")
    junk = run.state.junk
    if junk is not None and bool(junk.any()):
        print(f"junk: {int(junk.sum())} of {len(junk)} images fit no view of the map and were left out of it "
              f"(rlnSelected 0 in poses.star; poses_kept.star holds the other {int((~junk).sum())})")
    return 0


def _resumed_run(args: argparse.Namespace, folder):
    """The run in ``folder`` (a :class:`~napari_semiamort.run.folder.RunFolder`, taken) from its checkpoint."""
    from ..devices import set_cpu_threads
    from ..run.loop import Reconstruction

    run_dir = folder.path
    # what does not change the training: the run's length, where it runs, and the maps' box
    overrides = {k: getattr(args, k) for k in ("epochs", "device", "threads", "output_box")
                 if getattr(args, k) is not None}
    threads = overrides.get("threads", _saved_threads(run_dir))
    set_cpu_threads(threads)  # before the run builds anything
    run = Reconstruction.resume(run_dir, **overrides)
    if threads is None:  # no readable config.json: the checkpoint's own setting
        set_cpu_threads(run.config.threads)
    folder.ready(run)
    where = "" if run.trial is None else f" in restart {run.trial + 1} (of the restarts' first epochs)"
    print(f"resuming {run_dir} at epoch {run.epoch + 1} of {run.end_epoch}{where}")
    return run


def _new_run(cfg: ReconstructionConfig, folder):
    """The run of ``cfg`` in ``folder`` (a :class:`~napari_semiamort.run.folder.RunFolder`, taken). Its data are
    read and checked before a previous run's results there are removed (``--force``): a start that fails leaves
    them as they were (and no empty run folder behind)."""
    from ..devices import set_cpu_threads
    from ..run.loop import Reconstruction
    from ..run.session import describe

    set_cpu_threads(cfg.threads)  # a process-wide setting: the program's, not the library's
    if cfg.threads is None and cfg.device in ("auto", "cpu"):  # the count chosen from the load, recorded:
        import torch  # a resume runs with the same (the same arithmetic order)

        cfg.threads = torch.get_num_threads()
    folder.check_inputs(cfg)  # before the data are read: an input the run would overwrite
    run = Reconstruction(cfg, run_dir=folder.path)  # writes nothing into the folder before its first epoch ends
    folder.ready(run)  # its stacks too, the free space; then a previous run's results removed
    print(_summary(describe(run, folder.path, with_handle=False)))
    return run


def _saved_threads(run_dir: Path) -> int | None:
    """The threads a run was started with (its config.json), for a resume that does not set them."""
    try:
        return ReconstructionConfig.load(run_dir / "config.json").threads
    except (OSError, ValueError):
        return None


def _summary(info) -> str:
    """One line on the data as the run sees them."""
    size = f"box {info.box}" + (f" (from {info.raw_box}; maps at box {info.map_box})"
                                if info.raw_box != info.box else "")
    skipped = (f", {info.skipped} skipped (unusable: NaN/Inf, constant, or bad CTF values; listed above)"
               if info.skipped else "")
    return (f"{info.n_particles} particles{skipped}, {size}, {info.pixel_size:.3f} Å/px, "
            f"{'inverted' if info.inverted else 'contrast as is'}, device {info.device}"
            + ("" if info.stage1_band is None else f"\n{info.stage1_band}"))
