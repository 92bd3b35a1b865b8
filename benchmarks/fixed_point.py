"""Is a finished run's pose error set by its map? Local refinement under the run's own maps and under the true poses'
maps, and map.mrc's estimator with and without a local spread of poses (issue 18; docs/results.md, "Session 19").

    python benchmarks/fixed_point.py CASE_DIR --model MODEL     # CASE_DIR: a --keep folder (sim/ and run/)

``CASE_DIR`` holds a `semiamort simulate` folder ``sim`` (particles.star with the true poses and shifts,
truth.mrc, junk.txt) and a finished run of it ``run``; ``--model`` (the atomic model simulated) takes the pose errors
modulo its point group. For the good particles (junk left out) it reports:

* **under which map the poses improve**: from the run's poses (its frame aligned to the truth's, the true shifts),
  ``--rounds`` rounds of a local step: each image's pose moved to its posterior mean over a 3×3×3 grid of axis-angle
  turns ``--step`` degrees apart (the likelihood the run's noise model gives, a flat prior) under the polish's map
  of the *other* half set (:func:`napari_semiamort.run.polish.polish_reference`), built once from the true poses
  and, separately, rebuilt each round from the current poses (the run's own fixed point). Where the poses go to the
  true poses' floor under the first and stay under the second, the map, not the search or the steps, holds them;
* the posterior's spread (its median 3D standard deviation over the grid, degrees) against the actual errors: a
  posterior much narrower than the errors is overconfident, the map's own errors unaccounted for;
* **map.mrc's estimator**: the map of the run's final poses as map.mrc makes it (its modes), inserted at the kept
  pose alone, and spread over the same grid by each image's posterior weights and uniformly, each scored as the
  panel scores it (FSC = 0.5 with the truth, aligned); and the true poses' map (the criterion's ceiling) hard and
  spread uniformly. A spread that improves both alike is a better estimator of the map, not a better pose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from molecules import good_particles  # noqa: E402
from search_moves import error_to_truth, parser, report  # noqa: E402

from napari_semiamort.data.mrc import read_map  # noqa: E402
from napari_semiamort.metrics.alignment import align_poses  # noqa: E402
from napari_semiamort.metrics.truth import score_against_truth  # noqa: E402
from napari_semiamort.physics.so3 import exp_so3  # noqa: E402
from napari_semiamort.run import Reconstruction, polish  # noqa: E402
from napari_semiamort.run.maps import insert  # noqa: E402
from napari_semiamort.sim.atoms import chain_symmetry  # noqa: E402

_P = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def local_grid(step_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 27 axis-angle turns `(27, 3)` of a 3×3×3 grid ``step_deg`` apart (the identity in the middle, row 13)
    and their rotations `(27, 3, 3)`."""
    r = np.arange(-1, 2) * np.deg2rad(step_deg)
    turns = torch.tensor(np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3), dtype=torch.float32)
    return turns, exp_so3(turns)


@torch.no_grad()
def grid_nll(run, poses: torch.Tensor, shifts: torch.Tensor | None, maps, split: np.ndarray,
             turns: torch.Tensor) -> torch.Tensor:
    """`(N, K)` negative log-likelihood (nats, the run's noise model, its full band) of each image at its pose
    turned by each of ``turns`` `(K, 3, 3)`, under the other half set's map of ``maps``."""
    fr = run.bank.at(run.config.max_freq)
    k, out = len(turns), torch.zeros(len(poses), len(turns))
    for h in (1, 2):
        run.model.volume.set_from_map(maps.halves[2 - h].to(run.device))
        ids = np.flatnonzero(split == h)
        for s in range(0, len(ids), 64):
            idx = torch.from_numpy(ids[s : s + 64])
            batch = run.source.batch(idx, fr)
            cand = (turns[None] @ poses[idx][:, None]).reshape(-1, 3, 3)
            sh = None if shifts is None else shifts[idx].repeat_interleave(k, 0)
            loss = run.model.exact_loss(cand.to(run.device), None if sh is None else sh.to(run.device),
                                        batch.obs.repeat_interleave(k, 0), batch.ctf.repeat_interleave(k, 0), fr)
            out[idx] = loss.reshape(-1, k).cpu() * len(fr)
    return out


def posterior(nll: torch.Tensor) -> torch.Tensor:
    """`(N, K)` weights: the likelihood normalised over the grid (a flat prior)."""
    return torch.softmax(-(nll - nll.min(1, keepdim=True).values), 1)


def refine_rounds(run, poses, shifts, split, turns, rotations, rounds: int, fixed_maps, error, good) -> list[float]:
    """``rounds`` posterior-mean steps from ``poses``; the maps ``fixed_maps`` throughout, or (None) the polish's
    maps of the current poses rebuilt each round. Returns the good particles' median error after each round."""
    st, out = run.state, []
    for _ in range(rounds):
        st.poses, st.shifts, st.modes = poses, shifts, None
        maps = fixed_maps or polish.rebuilder(run.source, st, split, run.config.mask_diameter)()
        w = posterior(grid_nll(run, poses, shifts, maps, split, rotations))
        poses = exp_so3(w @ turns) @ poses
        out.append(round(float(np.median(error(poses)[good])), 2))
    return out


def spread_map(run, poses, shifts, which, weights: torch.Tensor, rotations) -> np.ndarray:
    """The map at the run's box of the images ``which``, each inserted at its pose turned by each of ``rotations``
    `(K, 3, 3)` with its weight ``weights`` `(N, K)`."""
    acc = None
    for k in range(len(rotations)):
        part = insert(run.source, rotations[k] @ poses, shifts, which, run.output_data(), weights=weights[:, k])
        acc = part if acc is None else acc.add_(part)
    return acc.volume().cpu().numpy()


def measure(case: Path, model: Path | None, step: float, rounds: int) -> dict:
    torch.set_num_threads(1)
    run = Reconstruction.resume(case / "run", cache_images=False)
    n = len(run.data)
    good = good_particles(case / "sim", n)
    symmetry = torch.from_numpy(chain_symmetry(str(model))) if model else None
    truth, pixel = read_map(case / "sim" / "truth.mrc")
    ref, st = run.data.reference_rotations, run.state
    error = error_to_truth(run, good, symmetry)
    final_poses, final_shifts, modes = st.poses.clone(), None if st.shifts is None else st.shifts.clone(), st.modes

    def fsc05(volume: np.ndarray, poses: torch.Tensor) -> float:
        s = score_against_truth(torch.from_numpy(volume), torch.from_numpy(truth), pixel, poses[good], ref[good],
                                symmetry=symmetry)
        return round(float(s.resolution_05), 2)

    row = {"case": case.name, "median_error": round(float(np.median(error(final_poses)[good])), 2)}
    turns, rotations = local_grid(step)
    split = polish.polish_split(run.data.half, n, run.config.seed)
    kept = np.flatnonzero(st.kept())
    true_poses = ref.to(torch.float32).clone()
    true_shifts = None if st.shifts is None else run.data.reference_shifts.clone()
    # the run's estimator: map.mrc as made (modes), hard, spread by posterior and uniformly
    row["map_as_made_A"] = fsc05(run.final_maps()[0], final_poses)
    st.modes = None
    row["map_hard_A"] = fsc05(run.final_maps()[0], final_poses)
    own = polish.rebuilder(run.source, st, split, run.config.mask_diameter)()
    w = posterior(grid_nll(run, final_poses, final_shifts, own, split, rotations))
    sd = ((w @ turns**2) - (w @ turns) ** 2).sum(1).clamp_min(0).sqrt()
    row["posterior_sd_deg_median"] = round(float(np.rad2deg(float(sd.median()))), 2)
    row["map_spread_posterior_A"] = fsc05(spread_map(run, final_poses, final_shifts, kept, w, rotations), final_poses)
    flat = torch.full_like(w, 1 / len(turns))
    row["map_spread_uniform_A"] = fsc05(spread_map(run, final_poses, final_shifts, kept, flat, rotations),
                                        final_poses)
    good_kept = np.intersect1d(good, kept)
    hard = insert(run.source, true_poses, true_shifts, good_kept, run.output_data()).volume().cpu().numpy()
    row["true_poses_hard_A"] = fsc05(hard, true_poses)
    row["true_poses_spread_uniform_A"] = fsc05(spread_map(run, true_poses, true_shifts, good_kept, flat, rotations),
                                               true_poses)
    # under which map the poses improve: from the run's poses in the truth's frame, at the true shifts
    al = align_poses(final_poses.double()[good], ref.double()[good], symmetry)
    g = _P @ al.transform if al.mirrored else al.transform
    start = ((_P @ final_poses.double() @ _P if al.mirrored else final_poses.double()) @ g).float()
    st.poses, st.shifts = true_poses, true_shifts
    true_maps = polish.rebuilder(run.source, st, split, run.config.mask_diameter)()
    st.poses = start
    truth_error = error_to_truth(run, good, symmetry)  # in the truth's frame now
    row["rounds_under_true_poses_maps"] = refine_rounds(run, start, true_shifts, split, turns, rotations, rounds,
                                                        true_maps, truth_error, good)
    row["rounds_under_own_maps"] = refine_rounds(run, start, true_shifts, split, turns, rotations, rounds, None,
                                                 truth_error, good)
    st.poses, st.shifts, st.modes = final_poses, final_shifts, modes
    return row


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("cases", nargs="+", type=Path, help="folders with sim/ and a finished run/ (molecules.py --keep)")
    p.add_argument("--step", type=float, default=4.0, help="the local grid's spacing (degrees)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    return report((measure(case, args.model, args.step, args.rounds) for case in args.cases), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
