"""Fourier shell correlation between two maps, and pose errors against known poses.

Examples:

  semiamort fsc run1/map.mrc sim/truth.mrc                  (the maps aligned to each other: either hand)
  semiamort fsc run1/map.mrc sim/truth.mrc --poses run1/poses.star --reference-poses sim/particles.star
  semiamort fsc run1/map.mrc sim/truth.mrc --mask-diameter 260
  semiamort fsc run1/half1.mrc run1/half2.mrc --halves --csv fsc.csv
  semiamort fsc map_a.mrc map_b.mrc --no-align                (the maps' frames compared as they are)

Without poses, the first map is aligned to the second from the maps alone: an ab-initio map lands in any frame
and either hand, so the rotation (or rotation and mirror) that matches the maps best is searched over all of
SO(3) on their Fourier amplitudes and refined, then the origin is fitted; the output names the rotation, the
hand and the shift applied. --no-align compares the maps' frames as they are (only the origin fitted).

With --poses and --reference-poses, the run's frame (and hand: ab-initio runs land in either) is aligned
to the reference from the poses, the first map is rotated into the reference frame before the FSC, and
the mean and median pose errors are printed. The first map's origin is then fitted to the second's (where
shifts are estimated a map's origin is arbitrary), as the run's own metrics do: the figures are those the
run logs for the same map. With --halves the two maps are a run's half maps: they share their frame and
origin, so they are compared as they are (the run's own fsc_halves), 0.143 being the threshold to read.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when the command runs
    import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("map1", help="MRC map (the run's)")
    p.add_argument("map2", help="MRC map (the reference)")
    p.add_argument("--poses", help="STAR with the run's poses (same particles and order as the reference)")
    p.add_argument("--reference-poses", help="STAR with the true poses")
    p.add_argument("--pixel-size", type=float, help="Å/px (default: map2's header)")
    p.add_argument("--mask-diameter", type=float,
                   help="Å: also the FSC within a soft spherical mask of this diameter (as the run's metrics)")
    p.add_argument("--halves", action="store_true",
                   help="the maps are one run's half maps: no origin fit, no poses (the CSV column is fsc_halves)")
    p.add_argument("--csv", help="write the curve as CSV (the columns of a run's fsc.csv)")
    p.add_argument("--no-align", dest="align", action="store_false",
                   help="without poses: compare the maps' frames as they are (no rotation or mirror searched)")


def _rotations(path: str):
    import torch

    from ..data.star import read_star

    table = read_star(path, require_stacks=False)
    if table.rotations is None:
        raise ValueError(f"{path}: no angles (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)")
    return torch.from_numpy(table.rotations)


def _aligned(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """``m1`` rotated (and mirrored) onto ``m2`` (:func:`~..metrics.map_alignment.align_maps`); says how."""
    from ..metrics.alignment import rotate_map
    from ..metrics.map_alignment import align_maps

    al = align_maps(m1, m2)
    x, y, z = al.axis
    hand = "mirrored (the other hand: inverted through the centre)" if al.mirrored else "same hand"
    print(f"maps aligned: map1 rotated by {al.angle_deg:.2f}° about ({x:+.3f}, {y:+.3f}, {z:+.3f}), {hand}; "
          f"correlation {al.correlation:.3f}")
    return rotate_map(m1, al.transform)


def main(args: argparse.Namespace) -> int:
    import torch

    from ..data.fsc_csv import write_fsc_csv
    from ..data.mrc import read_map
    from ..metrics.truth import score_against_truth

    m1, _ = read_map(args.map1)
    m2, voxel = read_map(args.map2)
    if m1.shape != m2.shape:
        raise ValueError(f"{args.map1}: box {m1.shape[0]} differs from {args.map2}'s {m2.shape[0]}")
    pixel = args.pixel_size or voxel
    if pixel <= 0:
        raise ValueError(f"{args.map2}: no voxel size in the header; give --pixel-size")
    if args.halves and args.poses:
        raise ValueError("--halves compares a run's two half maps: they need no --poses")
    if bool(args.poses) != bool(args.reference_poses):
        raise ValueError("give both --poses and --reference-poses, or neither")
    est = ref = None
    if args.poses:
        est, ref = _rotations(args.poses), _rotations(args.reference_poses)
        if est.shape != ref.shape:
            raise ValueError(f"{args.poses}: {len(est)} particles, but {args.reference_poses} has {len(ref)}")
    m1 = torch.from_numpy(m1)
    if args.align and est is None and not args.halves:
        m1 = _aligned(m1, torch.from_numpy(m2))
    radius = args.mask_diameter / 2 / pixel if args.mask_diameter else None
    score = score_against_truth(m1, torch.from_numpy(m2), pixel, est, ref, mask_radius_px=radius,
                                fit_origin=not args.halves)
    if score.poses is not None:
        al = score.poses
        print(f"pose error after alignment: mean {al.mean_error:.2f}°  median {al.median_error:.2f}°  "
              f"({'mirror hand' if al.mirrored else 'same hand'})")
    if not args.halves:
        x, y, z = score.offset_px
        print(f"origin fitted: map1 moved by {score.offset_norm_px:.2f} voxels ({x:+.2f}, {y:+.2f}, {z:+.2f} x, y, z)")
    print(f"FSC=0.5: {score.resolution_05:.2f} Å   FSC=0.143: {score.resolution_0143:.2f} Å   "
          f"(Nyquist {2 * pixel:.2f} Å)")
    name = "halves" if args.halves else "reference"
    curves = {name: score.curve}
    if score.masked_curve is not None:
        print(f"within the mask: FSC=0.5: {score.resolution_05_masked:.2f} Å   "
              f"FSC=0.143: {score.resolution_0143_masked:.2f} Å")
        curves[f"{name}_masked"] = score.masked_curve
    if args.csv:
        write_fsc_csv(args.csv, curves, m1.shape[0], pixel)
    return 0
