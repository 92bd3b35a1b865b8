"""One panel case in one figure (issue 18, item 2): what the run gave against what the images allow.

Left, two rows of projections (along z, then along x), each scaled to its own range: the truth, the map the true
poses give from the same images (the ceiling: a perfect pose inference), and the run's ``map.mrc`` moved into the
truth's frame, hand and origin. Right, above: the FSC against the truth of the run's map and of the ceiling, with
the 0.5 line and the criterion's limit (1.25 × the ceiling's resolution); below: the good particles' pose errors
(modulo the molecule's point group) on a log scale, with their median and the criterion's limit (2 × the floor).

  python benchmarks/panel_figure.py SIM RUN MODEL -o case.png --condition realistic --seed 1   # a finished run
  python benchmarks/panel_figure.py KEEP/CASE/sim KEEP/CASE/run MODEL -o case.png --row rows.json  # molecules.py's

:func:`case_figure` is what ``benchmarks/molecules.py --figures DIR`` calls for each case.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["case_figure", "projections"]

AXES = {"z": 0, "x": 2}  # maps are (z, y, x): a projection along z sums axis 0


def projections(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The map's projections along z and along x (sums of its voxels), each as a 2-D image."""
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"a map has three axes, this one {v.ndim}")
    return {name: v.sum(axis=axis) for name, axis in AXES.items()}


def _shells_angstrom(curve: np.ndarray, size: int, pixel: float) -> np.ndarray:
    s = np.arange(len(curve), dtype=np.float64)
    return np.where(s > 0, size * pixel / np.maximum(s, 1), np.inf)


def case_figure(path: str | Path, row: dict, truth: np.ndarray, ceiling_map: np.ndarray, run_map: np.ndarray,
                run_curve: np.ndarray, ceiling_curve: np.ndarray, errors_deg: np.ndarray) -> Path:
    """Write the case's PNG at ``path`` (see the module's docstring). ``row`` is the case's panel row
    (molecules.py: molecule, condition, seed, pixel_size, fsc_0.5, fsc_0.5_true_poses, pose_floor_median,
    map_success, pose_success, seconds); the maps `(L, L, L)` share the truth's frame; the curves are FSC per
    shell against the truth; ``errors_deg`` the good particles' pose errors."""
    from matplotlib.figure import Figure

    path = Path(path)
    size, pixel = truth.shape[-1], float(row["pixel_size"])
    fig = Figure(figsize=(11, 4.6), dpi=80)
    grid = fig.add_gridspec(2, 5, width_ratios=[1, 1, 1, 0.25, 1.7], wspace=0.05, hspace=0.35)
    maps = {"truth": truth, "true poses' map": ceiling_map, "this run's map.mrc": run_map}
    for col, (label, volume) in enumerate(maps.items()):
        for r, (axis, image) in enumerate(projections(volume).items()):
            ax = fig.add_subplot(grid[r, col])
            ax.imshow(image, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"along {axis}", fontsize=9)
    ax = fig.add_subplot(grid[0, 4])
    shells = np.arange(len(run_curve)) / (size * pixel)  # 1/Å
    ax.plot(shells[1:], run_curve[1:], label=f"run {row['fsc_0.5']:.1f} Å", color="C0")
    ax.plot(shells[1:], ceiling_curve[1:], label=f"true poses {row['fsc_0.5_true_poses']:.1f} Å", color="C2", ls="--")
    ax.axhline(0.5, color="0.6", lw=0.8)
    ax.axvline(1 / (1.25 * row["fsc_0.5_true_poses"]), color="C3", lw=0.8, ls=":", label="1.25 × true poses'")
    ax.set_ylim(-0.1, 1.02)
    ax.set_xlabel("spatial frequency (1/Å)", fontsize=8)
    ax.set_ylabel("FSC against the truth", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower left")
    ax = fig.add_subplot(grid[1, 4])
    errors = np.clip(np.asarray(errors_deg, dtype=np.float64), 0.05, 180.0)
    ax.hist(errors, bins=np.logspace(np.log10(0.05), np.log10(180.0), 40), color="C0")
    ax.set_xscale("log")
    median, floor = float(np.median(errors_deg)), float(row["pose_floor_median"])
    ax.axvline(median, color="C0", lw=1.0, label=f"median {median:.2f}°")
    ax.axvline(2 * floor, color="C3", lw=0.8, ls=":", label=f"2 × floor {floor:.2f}°")
    ax.set_xlabel("pose error of the good particles (°)", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    verdict = "SUCCESS" if row["map_success"] and row["pose_success"] else (
        "map " + ("ok" if row["map_success"] else "FAILS") + ", poses " + ("ok" if row["pose_success"] else "FAILS"))
    fig.suptitle(f"{row['molecule']}, {row['condition']}, seed {row['seed']} ({pixel:.2f} Å/px, box {size}): "
                 f"{verdict}; {np.mean(errors_deg):.1f}° mean error; {row['seconds'] / 60:.1f} min", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _recorded_row(path: Path, molecule: str, condition: str, seed: int) -> dict:
    """The case's row in a molecules.py JSON (a list of rows, or rows under "rows")."""
    import json

    data = json.loads(path.read_text())
    rows = data if isinstance(data, list) else data.get("rows", [])
    for row in rows:
        if (row.get("molecule"), row.get("condition"), row.get("seed")) == (molecule, condition, seed):
            return row
    raise SystemExit(f"{path}: no row for {molecule}, {condition}, seed {seed}")


def main() -> None:
    from molecules import pose_floor_at_truth, scored_run, true_pose_score

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sim", type=Path, help="the simulated set's folder (particles.star, truth.mrc, junk.txt)")
    p.add_argument("run", type=Path, help="the finished run's folder")
    p.add_argument("model", type=Path, help="the atomic model the set was simulated from (its point group)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--condition", default="clean", choices=("clean", "realistic"))
    p.add_argument("--seed", type=int, default=0, help="the run's seed (the floor is measured with it)")
    p.add_argument("--row", type=Path, help="molecules.py's JSON holding this case: its floor and time are taken "
                   "from it instead of measuring the floor again")
    args = p.parse_args()
    run, g, truth, pixel, _, s = scored_run(args.sim, args.run, args.model)
    good = g.numpy()
    ceiling = true_pose_score(args.sim, good, truth, pixel)
    if args.row is not None:
        row = dict(_recorded_row(args.row, args.model.name, args.condition, args.seed))
    else:
        floor = pose_floor_at_truth(args.sim, good, truth, args.seed, [])
        row = {"molecule": args.model.name, "condition": args.condition, "seed": args.seed,
               "pose_floor_median": floor["pose_floor_median"],
               "seconds": sum(m.get("seconds", 0) for m in run.history)}
    row.update({"pixel_size": pixel, "fsc_0.5": s.resolution_05, "fsc_0.5_true_poses": ceiling.resolution_05})
    row["map_success"] = bool(s.resolution_05 <= 1.25 * ceiling.resolution_05
                              and (args.condition != "clean" or s.resolution_05 <= 3 * pixel))
    row["pose_success"] = bool(s.poses.median_error <= 2 * row["pose_floor_median"])
    case_figure(args.out, row, truth, ceiling.aligned.numpy(), s.aligned.numpy(), s.curve, ceiling.curve,
                s.poses.errors_deg)
    print(args.out)


if __name__ == "__main__":
    main()
