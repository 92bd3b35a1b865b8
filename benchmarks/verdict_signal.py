"""What the run's verdict measures, on finished runs whose truth is known (issue 18, item 8; run/verdict.py).

  python benchmarks/verdict_signal.py RUN_DIR [RUN_DIR ...] [--out FILE]

For each run folder (with checkpoint.pt, on simulated particles with their true poses): the share of the images'
signal the run's map explains at their poses (``verdict.explained_signal``, at the band of the run's last epoch,
junk left out), its value per shell, and against it the run's pose errors (median and mean against the truth,
from the last epoch's metrics; the run needs ``--reference-map`` or a STAR with true poses) and the verdicts the
run recorded (runs from before the verdict have none). So the thresholds (``FAILED_BELOW``, ``DOUBTFUL_BELOW``)
can be checked against runs that failed and runs that worked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from napari_semiamort.metrics.alignment import align_poses
from napari_semiamort.run import Reconstruction
from napari_semiamort.run.verdict import explained_signal


def measure(run_dir: Path) -> dict:
    run = Reconstruction.resume(run_dir)
    st, sched = run.state, run.schedule
    stage = "autoencode" if st.switched_at is None else "autodecode"
    fr = run.frequencies(sched.band(max(st.epoch - 1, 0), stage, st.switched_at))
    e = explained_signal(run.model, run.source, st, fr, run.config.seed)
    last = st.history[-1] if st.history else {}
    out = {"run": str(run_dir), "particles": run.config.particles, "epochs": st.epoch,
           "explained_signal": e.fraction, "shells": list(e.shells),
           "per_shell": [None if not np.isfinite(x) else round(float(x), 3) for x in e.per_shell],
           "signal_fraction": [round(float(x), 3) for x in e.signal]}
    if run.data.reference_rotations is not None:  # the good particles' errors (junk has no true pose)
        good = np.ones(len(run.data), dtype=bool) if st.junk is None else ~st.junk.numpy()
        a = align_poses(st.poses[torch.from_numpy(good)], run.data.reference_rotations[torch.from_numpy(good)])
        out.update(pose_median_deg=a.median_error, pose_mean_deg=a.mean_error)
    for key in ("fsc_0.5_angstrom", "verdict", "verdict_stage1", "explained_signal_stage1", "starts_agreed"):
        if key in last or any(key in m for m in st.history):
            out[key] = next(m[key] for m in reversed(st.history) if key in m)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for d in args.runs:
        r = measure(d)
        rows.append(r)
        med, mean = (r.get(k, float("nan")) for k in ("pose_median_deg", "pose_mean_deg"))
        print(f"{str(d):45s} explained {r['explained_signal']:.3f} (shells {r['shells'][0]}-{r['shells'][1]})  "
              f"pose median {med:6.1f}° mean {mean:6.1f}°  verdict {r.get('verdict', '-')}  "
              f"stage 1 {r.get('verdict_stage1', '-')}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
