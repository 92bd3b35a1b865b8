"""What the polish's view search does to each image, against the truth (issue 18; docs/results.md, "Session 18").

    python benchmarks/search_moves.py SIM_DIR --turn 0.2          # the true poses, 20 % of them turned at random
    python benchmarks/search_moves.py SIM_DIR --run RUN_DIR       # a finished run's poses (its own folder)

``SIM_DIR`` is a `semiamort simulate` folder (particles.star with the true poses, truth.mrc, junk.txt); ``--model``
(the atomic model simulated) takes the errors modulo its point group (``chain_symmetry``). From the poses given
(the true ones and shifts, a seeded fraction ``--turn`` of them turned to random poses; or a run's, its frame
aligned to the truth's), the polish's maps are built and its view search runs once as a run's polish epoch
runs it (:func:`napari_semiamort.run.polish.search_views_and_shifts`: each half set's images under the other half's
map, candidates on stage 1's grid with shifts, refined, judged at the full band, the better on the loss moving).
For the good particles (junk left out) it reports how many moved, where to, and the evidence each move carried:

    T = <y − p, q − p> / ‖q − p‖

the image's residual at its old pose's prediction ``p`` projected onto the move to the new pose's ``q``, both under
the map the move was judged by, weighted by the run's noise model. With the old pose right, ``T`` is the noise's (a
standard normal variable for one candidate, larger for the best of a search); with the new one right, it has mean
``‖q − p‖``, the image's own evidence between the two poses. Moves are counted by class: *false* (from within
20° of the true pose to beyond), *recovered* (from beyond to within), *wrong to wrong*, *right to right*; and those
that brought the pose more than 10° closer to the truth or took it more than 10° further.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from molecules import good_particles, run_config, start_stage2_at  # noqa: E402

from napari_semiamort.metrics.alignment import align_poses  # noqa: E402
from napari_semiamort.physics.so3 import geodesic_distance, random_rotations  # noqa: E402
from napari_semiamort.run import Reconstruction, polish  # noqa: E402
from napari_semiamort.sim.atoms import chain_symmetry  # noqa: E402

_P = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
THRESHOLDS = (2.0, 3.0, 4.0, 4.5, 5.0)


def error_to_truth(run, good: np.ndarray, symmetry: torch.Tensor | None):
    """A function of poses `(N, 3, 3)` in the run's frame: each one's error (degrees) from its true pose, after the
    alignment of the run's poses to the truth (``align_poses``: ``est G ≈ ref``, mirrored ``P est P G ≈ ref``), the
    least over the truth's point group ``symmetry`` `(n, 3, 3)` when given (a C3 complex's mates are all right)."""
    ref = run.data.reference_rotations.double()
    al = align_poses(run.poses.double()[good], ref[good], symmetry)
    g = _P @ al.transform if al.mirrored else al.transform
    copies = ref[:, None] @ (torch.eye(3, dtype=torch.float64)[None] if symmetry is None else symmetry.double())[None]

    def error(rotations: torch.Tensor) -> np.ndarray:
        est = rotations.double()
        est = (_P @ est @ _P if al.mirrored else est) @ g
        return torch.rad2deg(geodesic_distance(est[:, None], copies).amin(1)).numpy()

    return error


def start_from_truth(sim: Path, seed: int, turn: float, extra: list[str]):
    """A run at the true poses and shifts, the fraction ``turn`` of them (seeded) turned to random poses."""
    cfg = run_config(sim, seed, ["--threads", "1", *extra])
    run = Reconstruction(cfg)
    truth = run.data.reference_rotations.to(torch.float32)
    g = torch.Generator().manual_seed(seed)
    turned = torch.rand(len(truth), generator=g) < turn
    start_stage2_at(run, torch.where(turned[:, None, None], random_rotations(len(truth), g), truth))
    run.state.switched_at = cfg.switch_epoch  # the candidates are proposed at stage 1's band at its (latest) switch
    return run


@torch.no_grad()
def evidence(run, maps, split: np.ndarray, moved: np.ndarray, old: tuple, fr) -> np.ndarray:
    """``T`` `(len(moved),)` of each moved image's move, under the map it was judged by (the other half's)."""
    out = np.zeros(len(moved))
    model, table = run.model, run.state.table
    for h in (1, 2):
        rows = np.flatnonzero(split[moved] == h)
        if not len(rows):
            continue
        model.volume.set_from_map(maps.halves[2 - h].to(model.device))
        idx = torch.from_numpy(moved[rows])
        batch, dev = run.source.batch(idx, fr), idx.to(model.device)
        old_s = None if old[1] is None else old[1][idx].to(model.device)
        new_s = None if table.shifts is None else table.shifts[dev]
        p = model.predict(old[0][idx].to(model.device), old_s, batch.ctf, fr)
        d = model.predict(table.rotations[dev], new_s, batch.ctf, fr) - p
        w = model.inv_var(fr)
        t = (w * (batch.obs - p) * d).sum(-1) / (w * d * d).sum(-1).clamp_min(1e-30).sqrt()
        out[rows] = t.cpu().numpy()
    return out


def measure(sim: Path, run_dir: Path | None, turn: float, seed: int, extra: list[str], model: Path | None) -> dict:
    torch.set_num_threads(1)
    run = Reconstruction.resume(run_dir, cache_images=False) if run_dir else start_from_truth(sim, seed, turn, extra)
    n = len(run.data)
    good = good_particles(sim, n)
    symmetry = torch.from_numpy(chain_symmetry(str(model))) if model else None
    error = error_to_truth(run, good, symmetry)
    st = run.state
    old = (st.table.rotations.detach().cpu().clone(),
           None if st.table.shifts is None else st.table.shifts.detach().cpu().clone())
    split = polish.polish_split(run.data.half, n, run.config.seed)
    maps = polish.rebuilder(run.source, st, split, run.config.mask_diameter)()
    bands = (run.bank.at(run.stage1_end), run.bank.at(run.config.max_freq))
    polish.search_views_and_shifts(run.model, run.stage1, run.source, st, bands, run.config, maps, split,
                                   lambda: maps)
    new = st.table.rotations.detach().cpu()
    before, after = error(old[0]), error(new)
    moved = good[(new[good] - old[0][good]).flatten(1).abs().amax(1).numpy() > 0]
    t = evidence(run, maps, split, moved, old, bands[1])
    b, a = before[moved], after[moved]
    classes = {"false": (b < 20) & (a >= 20), "recovered": (b >= 20) & (a < 20),
               "wrong_to_wrong": (b >= 20) & (a >= 20), "right_to_right": (b < 20) & (a < 20)}
    row = {"set": sim.name if sim.name != "sim" else sim.parent.name, "start": str(run_dir) if run_dir else
           f"true poses, {turn:.0%} turned", "good": len(good), "within_20_before": int((before[good] < 20).sum()),
           "moved": len(moved), "closer_by_10": int((a < b - 10).sum()), "further_by_10": int((a > b + 10).sum()),
           "median_error_before": round(float(np.median(before[good])), 2),
           "median_error_after": round(float(np.median(after[good])), 2)}
    for name, sel in classes.items():
        row[f"{name}_moves"] = int(sel.sum())
        if sel.any():
            row[f"{name}_T_pct_10_50_90"] = [round(float(v), 2) for v in np.percentile(t[sel], [10, 50, 90])]
            row[f"{name}_with_T_over"] = {str(z): int((sel & (t > z)).sum()) for z in THRESHOLDS}
    return row


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser, its docstring ``doc`` the help, with the options these diagnostics share: ``--model`` and
    ``--out``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc)
    p.add_argument("--model", type=Path, help="the atomic model simulated: errors modulo its point group")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    return p


def report(rows, out: Path | None) -> int:
    """Each row of the iterable ``rows`` as it comes: printed as one JSON line, and all so far written to ``out``."""
    done = []
    for row in rows:
        done.append(row)
        print(json.dumps(row), flush=True)
        if out:
            out.write_text(json.dumps(done, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("sims", nargs="+", type=Path, help="semiamort simulate folders")
    p.add_argument("--run", type=Path, help="a finished run of the (one) set: start from its poses")
    p.add_argument("--turn", type=float, default=0.2, help="from the true poses: the fraction turned at random")
    p.add_argument("--seed", type=int, default=0)
    args, extra = p.parse_known_args(argv)
    if args.run and len(args.sims) != 1:
        p.error("--run takes one simulated set")
    return report((measure(sim, args.run, args.turn, args.seed, extra, args.model) for sim in args.sims), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
