"""Do stage-1 starts that found the structure agree with each other? (issue 18; run/restarts.py)

  python benchmarks/restart_agreement.py SIM_DIR [SIM_DIR ...] [--starts 6] [--set KEY=VALUE ...] [--out FILE]

For each simulated set (``semiamort simulate`` output: particles.star with the true poses, junk.txt if any),
trains ``--starts`` initialisations for ``restart_epochs`` epochs each (the run's defaults otherwise; every start
trained: ``restart_margin 0``), then reports per start its loss and its good particles' median pose error
against the truth, and per pair of starts the median / mean angle between their poses after alignment (one
rotation, either hand), as ``RestartPolicy`` compares them, and with one start's poses shuffled among the images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from napari_semiamort.metrics.alignment import align_poses
from napari_semiamort.run import Reconstruction, ReconstructionConfig


def starts(sim: Path, n: int, overrides: dict | None = None) -> dict:
    star = sim / "particles.star"
    run = Reconstruction(ReconstructionConfig(particles=str(star), restarts=n, max_restarts=n, restart_margin=0.0,
                                              threads=1, **(overrides or {})))
    kept: list[tuple[float, torch.Tensor]] = []
    record = run.restarts.record

    def keep(loss, state):
        kept.append((loss, state["poses"].clone()))
        record(loss, state)

    run.restarts.record = keep
    for snap in run:
        if snap.restart is None:  # the restarts are over
            break
    junk = sim / "junk.txt"
    good = np.setdiff1d(np.arange(len(run.data)), np.loadtxt(junk, dtype=np.int64, ndmin=1) if junk.is_file() else [])
    g, ref = torch.from_numpy(good), run.data.reference_rotations
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(good)))
    truth = [align_poses(p[g], ref[g]).median_error for _, p in kept]
    out = {"losses": [x for x, _ in kept], "truth_median_deg": truth, "pairs": {}, "chosen": run.restarts.chosen}
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            a, b = kept[i][1][g], kept[j][1][g]
            al = align_poses(a, b)
            out["pairs"][f"{i}-{j}"] = {"median": al.median_error, "mean": al.mean_error, "mirrored": al.mirrored,
                                        "shuffled_median": align_poses(a, b[perm]).median_error}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sims", nargs="+", type=Path)
    p.add_argument("--starts", type=int, default=6)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="configuration fields for every start, e.g. switch_epoch=10 restart_epochs=7 (JSON values)")
    p.add_argument("--out")
    args = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = {str(s): {"overrides": overrides, **starts(s, args.starts, overrides)} for s in args.sims}
    for name, r in rows.items():
        print(name, json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
