"""What a run leaves in its folder: the map (and half maps), the poses for RELION (and cryoSPARC), the FSC
as CSV and PNG, the config, and a ChimeraX script that opens the maps."""

from __future__ import annotations

import csv
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.atomic import atomic_path
from ..data.fsc_csv import write_fsc_csv
from ..data.mrc import read_map, write_mrc
from ..data.star import write_star
from ..metrics.density import otsu_level
from ..metrics.fsc import fsc, resolution_at
from ..metrics.truth import score_against_truth
from .maps import masked

__all__ = ["RUN_OUTPUTS", "chimerax_script", "chimerax_text", "otsu_level", "write_config", "write_fsc",
           "write_outputs"]

# Every file a run writes in its folder (a new run with --force clears them first).
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "map.mrc", "map_masked.mrc",
               "mask.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "poses.star", "poses_kept.star", "poses.cs",
               "chimerax.cxc", "ctf.pkl", "pose.pkl", "skipped.csv")


def write_config(run_dir: Path, config_dict: dict, resumed: bool = False) -> Path:
    """``config.json``: the configuration with version, time and command line.

    A resumed run keeps the original record and adds the resume (time, command, version) to ``resumed``.
    """
    path = run_dir / "config.json"
    now = {
        "version": __version__,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    record = {**now, "config": config_dict}
    if resumed and path.is_file():
        record = json.loads(path.read_text())
        record["resumed"] = [*record.get("resumed", []), now]
        record["config"] = config_dict
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _finite_poses(run, run_dir: Path) -> np.ndarray:
    """The run's rotations `(N, 3, 3)` float64, or ``ValueError`` where a pose or a shift holds NaN or Inf."""
    rotations = run.poses.to(torch.float64).numpy()
    if not np.isfinite(rotations).all() or (run.shifts is not None and not bool(torch.isfinite(run.shifts).all())):
        raise ValueError(f"{run_dir}: the run's poses hold NaN or Inf; no poses or map written (the inputs are the "
                         "likely cause: CTF parameters, constant or NaN images, the learning rates)")
    return rotations


def _check_map(volume: np.ndarray, path: Path) -> None:
    """``ValueError`` for a map that holds NaN or Inf or is all zero: such a map is never written."""
    if not np.isfinite(volume).all() or not np.any(volume):
        raise ValueError(f"{path}: the map from the final poses is "
                         f"{'not finite' if not np.isfinite(volume).all() else 'all zero'}; not written (poses.star "
                         "is, for inspection)")


def write_skipped(run_dir: Path, data) -> Path | None:
    """``skipped.csv``: each input row the run left out (1-based, as the log lists them) and why (a NaN or
    constant image, an unusable CTF value, …); none written, and an earlier one removed, when none was skipped."""
    path = run_dir / "skipped.csv"
    reasons = getattr(data, "skip_reasons", None) or {}
    if not reasons:
        path.unlink(missing_ok=True)
        return None
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        table = csv.writer(fh)
        table.writerow(["input_row", "reason"])
        table.writerows([row + 1, why] for row, why in sorted(reasons.items()))
    return path


def write_fsc(run_dir: Path, curves: dict[str, np.ndarray], size: int, pixel_size: float) -> dict[str, Path]:
    """``fsc.csv`` (one column per curve, :func:`write_fsc_csv`) and ``fsc.png`` with the 0.143 and 0.5
    thresholds marked."""
    from matplotlib.figure import Figure  # no pyplot: no backend chosen, nothing process-wide set

    csv = write_fsc_csv(run_dir / "fsc.csv", curves, size, pixel_size)
    freq = np.arange(size // 2 + 1) / (size * pixel_size)
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    labels = {"halves": "half maps", "halves_masked": "half maps, masked", "reference": "vs reference map"}
    for name, c in curves.items():
        thr = 0.143 if name.startswith("halves") else 0.5
        r = resolution_at(c, size, pixel_size, thr)
        ax.plot(freq, c, label=f"{labels.get(name, name)}: {r:.1f} Å at {thr}")
    for thr in (0.143, 0.5):
        ax.axhline(thr, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, freq[-1])
    top = ax.twiny()  # resolution labels at round values
    top.set_xlim(ax.get_xlim())
    nice = [r for r in (200, 100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3, 2.5, 2) if 1 / r <= freq[-1]]
    top.set_xticks([1 / r for r in nice], [f"{r:g}" for r in nice])
    top.set_xlabel("resolution (Å)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    png = run_dir / "fsc.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    return {"fsc_csv": csv, "fsc_png": png}


def chimerax_script(run_dir: Path, force: bool = False) -> Path:
    """``RUN_DIR/chimerax.cxc``: opens ``map.mrc`` (and ``map_masked.mrc``, ``half1.mrc``/``half2.mrc`` when
    present, hidden) with the voxel size from the header and a surface level from :func:`otsu_level`."""
    out = Path(run_dir) / "chimerax.cxc"
    text = chimerax_text(run_dir)
    with atomic_path(out, force=force) as tmp:
        tmp.write_text(text)
    return out


def chimerax_text(run_dir: Path) -> str:
    """The text :func:`chimerax_script` writes for the run folder's maps as they are now."""
    run_dir = Path(run_dir)
    main = run_dir / "map.mrc"
    if not main.is_file():
        raise FileNotFoundError(f"{main}: no map in this run folder (has the run written its outputs?)")
    lines = [f"# ChimeraX script written by napari-semiamort {__version__}", f"# run folder: {run_dir.resolve()}"]
    maps = [main] + [run_dir / name for name in ("map_masked.mrc", "half1.mrc", "half2.mrc")
                     if (run_dir / name).is_file()]
    for model, path in enumerate(maps, start=1):
        data, voxel = read_map(path)
        level = otsu_level(data)
        enclosed = float((data > level).mean())
        lines += [
            f"# {path.name}: {data.shape[0]}^3 voxels of {voxel:.4f} A; level {level:.5g} encloses "
            f"{100 * enclosed:.1f}% of the box",
            f"open {shlex.quote(str(path.resolve()))}",
            f"volume #{model} voxelSize {voxel:.4f} level {level:.6g} style surface"
            + ("" if model == 1 else " transparency 0.5"),
        ]
        if model > 1:
            lines.append(f"hide #{model} models")
    lines += ["view", "lighting soft"]
    return "\n".join(lines) + "\n"


def write_outputs(run, run_dir: Path) -> dict[str, Path]:
    """Everything a finished (or interrupted) :class:`~napari_semiamort.run.Reconstruction` leaves."""
    data, run_dir = run.data, Path(run_dir)
    n = len(data)
    rotations = _finite_poses(run, run_dir)
    origins = np.zeros((n, 2)) if run.shifts is None else run.shifts.to(torch.float64).numpy() * data.pixel_size
    extra = {} if not run.config.halves or data.half is None else {"rlnRandomSubset": data.half}
    # The poses first: they are the run's result, and the maps below take a pass over the images at full size.
    # They refer to the original images: their pixel size and box, origins in Å.
    junk = run.state.junk
    if junk is not None:  # RELION selects on it: relion_star_handler --select rlnSelected --minval 1
        extra["rlnSelected"] = (~junk.numpy()).astype(np.int64)
    out = {"poses": write_star(run_dir / "poses.star", data.table, rotations, origins,
                               pixel_size=data.raw_pixel_size, box=data.raw_box, extra=extra, force=True)}
    if junk is not None and bool(junk.any()):
        keep = ~junk.numpy()
        out["poses_kept"] = write_star(run_dir / "poses_kept.star", data.table.subset(keep), rotations[keep],
                                       origins[keep], pixel_size=data.raw_pixel_size, box=data.raw_box,
                                       extra={k: v[keep] for k, v in extra.items()}, force=True)
    if Path(data.source).suffix.lower() == ".cs":
        from ..data.cryosparc import write_cs

        out["poses_cs"] = write_cs(run_dir / "poses.cs", data.table, rotations, origins, force=True)
    skipped = write_skipped(run_dir, data)
    if skipped is not None:
        out["skipped"] = skipped
    # The map and the half maps from the final poses (Run.final_maps), at the images' own box unless
    # output_box says otherwise; the decoder's volume stays in checkpoint.pt and is what the viewer showed
    # during training.
    maps_data = run.output_data()
    whole, *halves = run.final_maps(maps_data)
    _check_map(whole, run_dir / "map.mrc")
    out["map"] = write_mrc(run_dir / "map.mrc", whole, maps_data.pixel_size)
    found = masked(whole, maps_data.pixel_size, run.config.mask_diameter)
    mask = None if found is None else found[0]
    if mask is not None:  # the map within the polish's kind of mask, and the mask, for ChimeraX or relion_postprocess
        out["map_masked"] = write_mrc(run_dir / "map_masked.mrc", whole * mask, maps_data.pixel_size)
        out["mask"] = write_mrc(run_dir / "mask.mrc", mask, maps_data.pixel_size)
    else:  # none fits this map: an earlier write's (before a resume) must not pass for this map's
        for name in ("map_masked.mrc", "mask.mrc"):
            (run_dir / name).unlink(missing_ok=True)
    curves = {}
    if halves[0] is not None:
        for k, m in enumerate(halves, start=1):
            out[f"half{k}"] = write_mrc(run_dir / f"half{k}.mrc", m, maps_data.pixel_size)
        curves["halves"] = fsc(torch.from_numpy(halves[0]), torch.from_numpy(halves[1]))
        if mask is not None:  # within the sphere (no phase-randomised correction: the soft sphere is wide)
            h1, h2 = (torch.from_numpy(h * mask) for h in halves)
            curves["halves_masked"] = fsc(h1, h2)
    reference = run.reference_at(maps_data.box)
    if reference is not None and data.reference_rotations is not None:
        curves["reference"] = score_against_truth(torch.from_numpy(whole), reference, maps_data.pixel_size,
                                                  run.poses, data.reference_rotations).curve
    if curves:
        out.update(write_fsc(run_dir, curves, maps_data.box, maps_data.pixel_size))
    out["chimerax"] = chimerax_script(run_dir, force=True)
    return out
