"""The switch from stage 1 to stage 2: fixed epochs against the automatic rule (issue 18, item 7).

  python benchmarks/switch_rule.py --out switch.json                       # 3 molecules × {5, 10, 15, 20, auto}
  python benchmarks/switch_rule.py --molecules 3KPR_TCR_HLA.cif.gz --switches 15 auto
  python benchmarks/switch_rule.py --conditions realistic --seeds 1

For each molecule (a panel structure, benchmarks/molecules.py) and condition, the images are simulated once
(kept under ``--work`` and reused by later calls), then reconstructed with the defaults and each
``--switch-epoch`` of ``--switches`` (25 epochs, as the default run) or ``--switch auto``, and scored against
the truth as the panel scores them: FSC = 0.5 of map.mrc, the good particles' pose errors modulo the model's
point group, the wall time of the reconstruction alone, the epoch the run switched at, the restarts it tried,
and the true poses' map (the ceiling) once per set. ``--tag`` names a call's runs (e.g. the code revision).
Extra reconstruction options go after --.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from molecules import CONDITIONS, scored_run, structure, true_pose_ceiling

from napari_semiamort.cli.main import main as cli
from napari_semiamort.data.mrc import read_map

MOLECULES = ["3KPR_TCR_HLA.cif.gz", "1igy_IgG1_antibody.cif", "8zpm_CXCR4_cryoEM.cif"]


def simulate(model: Path, sim: Path, n: int, box: int, condition: str, seed: int) -> None:
    if not (sim / "particles.star").is_file():
        cli(["simulate", str(model), "-o", str(sim), "--n", str(n), "--box", str(box), "--seed", str(seed),
             *CONDITIONS[condition]])


def reconstruct(model: Path, sim: Path, run_dir: Path, switch: str, seed: int, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    rule = ["--switch", "auto"] if switch == "auto" else ["--switch-epoch", switch]
    cli(["reconstruct", str(sim / "particles.star"), "-o", str(run_dir), "--seed", str(seed), "--force", *rule,
         *extra])
    seconds = time.perf_counter() - t0
    run, _, _, pixel, _, s = scored_run(sim, run_dir, model)
    restarts = next((len(m["restart_losses"]) for m in run.history if "restart_losses" in m), 1)
    return {"switch": switch, "switched_at": run.state.switched_at, "restarts": restarts, "seconds": seconds,
            "fsc_0.5": s.resolution_05,
            "pose_error_mean": s.poses.mean_error, "pose_error_median": s.poses.median_error,
            "pixel_size": pixel}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", nargs="*", default=MOLECULES)
    p.add_argument("--switches", nargs="+", default=["5", "10", "15", "20", "auto"])
    p.add_argument("--conditions", nargs="+", choices=sorted(CONDITIONS), default=["clean"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--work", default="switch-work", help="simulated sets and run folders (kept, reused)")
    p.add_argument("--tag", default="", help="a name for this call's rows and run folders (e.g. the revision)")
    p.add_argument("--out", help="append the rows to this JSON file")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else None
    rows = json.loads(out.read_text()) if out is not None and out.is_file() else []
    for name in args.molecules:
        model = structure(name)
        for condition in args.conditions:
            for seed in args.seeds:
                base = Path(args.work) / f"{Path(name).name.split('.')[0]}_{condition}_{seed}"
                sim = base / "sim"
                simulate(model, sim, args.n, args.box, condition, seed)
                truth, pixel = read_map(sim / "truth.mrc")
                junk = np.loadtxt(sim / "junk.txt", dtype=np.int64, ndmin=1) if (sim / "junk.txt").is_file() else []
                good = np.setdiff1d(np.arange(args.n), junk)
                ceiling = true_pose_ceiling(sim, good, truth, pixel)
                for switch in args.switches:
                    r = reconstruct(model, sim, base / f"run_{switch}{args.tag}", switch, seed, extra)
                    r.update(molecule=name, condition=condition, seed=seed, fsc_0_5_true_poses=ceiling,
                             tag=args.tag)
                    rows.append(r)
                    print(f"| {name} | {condition} | {seed} | {switch}{args.tag} | {r['switched_at']} | "
                          f"{r['restarts']} | "
                          f"{r['seconds'] / 60:.1f} min | {r['fsc_0.5']:.2f} Å (true poses {ceiling:.2f} Å) | "
                          f"{r['pose_error_mean']:.2f}° / {r['pose_error_median']:.2f}° |", flush=True)
                    if out is not None:
                        out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
