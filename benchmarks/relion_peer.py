"""RELION 3.1's SGD initial model (benchmarks/run.py's settings) on any simulated set, stopped and resumed
across calls: for the long peer runs a 2-core machine needs several sessions for (7PBL realistic: ~2 h).

  python benchmarks/relion_peer.py SIM OUT --limit 1500        # start (or, with OUT/result.json, continue)

SIM is a `semiamort simulate` folder (particles.star, truth.mrc); OUT keeps RELION's iterations and
result.json (the times of every segment, the FSC = 0.5 and pose errors per written iteration, scored as
benchmarks/run.py scores them). A call with OUT/result.json present continues RELION from its last optimiser
file; a finished run is only scored again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run import mask_diameter, run_relion

from napari_semiamort.data.mrc import read_map


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sim", type=Path, help="a simulated set: particles.star, truth.mrc")
    p.add_argument("out", type=Path, help="RELION's folder and result.json (kept between calls)")
    p.add_argument("--limit", type=float, default=None, help="seconds after which this call stops RELION")
    p.add_argument("--centred", action="store_true", help="no translational search (centred particles)")
    args = p.parse_args()
    truth = args.sim / "truth.mrc"
    volume, pixel = read_map(truth)
    result_file = args.out / "result.json"
    previous = json.loads(result_file.read_text()) if result_file.is_file() else None
    diameter = previous["mask_diameter_A"] if previous else mask_diameter(truth)
    result = run_relion(args.sim, args.out, truth, volume.shape[0], pixel, diameter, shifted=not args.centred,
                        limit_s=args.limit, previous=previous, resume=previous is not None)
    args.out.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2))
    last = result["curve"][-1] if result["curve"] else {}
    print(f"RELION: {len(result['curve'])} iterations scored, complete {result['complete']}; last: "
          f"{ {k: last.get(k) for k in ('iteration', 'fsc05_A', 'fsc05_masked_A', 'median_error')} }")


if __name__ == "__main__":
    main()
