"""Default settings on several molecules: the table in docs/results.md, reproduced in one command.

  python benchmarks/molecules.py                        # the five molecules of docs/results.md (~17 min)
  python benchmarks/molecules.py --molecules 3KPR_TCR_HLA.cif.gz --n 3000
  python benchmarks/molecules.py --out results.json

For each atomic model in ../shared/data/structures: simulate (box, n, SNR 0.1, CTF, centred), reconstruct
with the default configuration, then align to the truth and report wall time, FSC = 0.5 / 0.143 against
the truth (and as a multiple of Nyquist) and the mean / median pose error. Extra reconstruction options
go after --, e.g. `-- --epochs 40 --switch-epoch 25`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_semiamort.cli.main import main as cli
from napari_semiamort.data.mrc import read_map
from napari_semiamort.metrics.truth import score_against_truth
from napari_semiamort.run.loop import Reconstruction

STRUCTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
DEFAULT = [
    "1igy_IgG1_antibody.cif",
    "4zxb_insulin_receptor_4Fab.cif",
    "3KPR_TCR_HLA.cif.gz",
    "8zpm_CXCR4_cryoEM.cif",
    "7pbl_RuvAB_HollidayJunction.pdb",
]


def run_one(model: Path, work: Path, n: int, box: int, extra: list[str]) -> dict:
    sim, run_dir = work / "sim", work / "run"
    t0 = time.perf_counter()
    cli(["simulate", str(model), "-o", str(sim), "--n", str(n), "--box", str(box), "--snr", "0.1"])
    cli(["reconstruct", str(sim / "particles.star"), "-o", str(run_dir), *extra])
    seconds = time.perf_counter() - t0
    run = Reconstruction.resume(run_dir)  # the final state, for poses and the map
    truth, pixel = read_map(sim / "truth.mrc")
    # scored as the run's own metrics and `semiamort fsc` score it: frame and hand from the poses, origin fitted
    s = score_against_truth(torch.from_numpy(run.volume_map()), torch.from_numpy(truth), pixel, run.poses,
                            run.data.reference_rotations)
    return {
        "molecule": model.name, "pixel_size": pixel, "seconds": seconds, "fsc_0.5": s.resolution_05,
        "fsc_0.143": s.resolution_0143, "fsc_0.5_over_nyquist": s.resolution_05 / (2 * pixel),
        "pose_error_mean": s.poses.mean_error, "pose_error_median": s.poses.median_error,
        "mirrored": s.poses.mirrored,
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", nargs="*", default=DEFAULT, help="file names in shared/data/structures")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = []
    for name in args.molecules:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_one(STRUCTURES / name, Path(tmp), args.n, args.box, extra))
        r = rows[-1]
        print(f"| {r['molecule']} | {r['pixel_size']:.2f} | {r['seconds'] / 60:.1f} min | {r['fsc_0.5']:.2f} Å "
              f"({r['fsc_0.5_over_nyquist']:.2f}×) | {r['pose_error_mean']:.2f}° / {r['pose_error_median']:.2f}° |",
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
