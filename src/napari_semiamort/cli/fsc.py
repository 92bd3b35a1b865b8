"""Fourier shell correlation between two maps, and pose errors against known poses.

Examples:

  semiamort fsc run1/map.mrc sim/truth.mrc
  semiamort fsc run1/map.mrc sim/truth.mrc --poses run1/poses.star --reference-poses sim/particles.star
  semiamort fsc half1.mrc half2.mrc --csv fsc.csv

With --poses and --reference-poses, the run's frame (and hand: ab-initio runs land in either) is aligned
to the reference from the poses, the first map is rotated into the reference frame before the FSC, and
the mean and median pose errors are printed.
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("map1", help="MRC map (the run's)")
    p.add_argument("map2", help="MRC map (the reference)")
    p.add_argument("--poses", help="STAR with the run's poses (same particles and order as the reference)")
    p.add_argument("--reference-poses", help="STAR with the true poses")
    p.add_argument("--pixel-size", type=float, help="Å/px (default: map2's header)")
    p.add_argument("--csv", help="write the curve as CSV")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data.mrc import read_map
    from ..data.star import read_star
    from ..metrics.alignment import align_poses, rotate_map
    from ..metrics.fsc import fsc, resolution_at

    m1, _ = read_map(args.map1)
    m2, voxel = read_map(args.map2)
    if m1.shape != m2.shape:
        raise ValueError(f"{args.map1}: box {m1.shape[0]} differs from {args.map2}'s {m2.shape[0]}")
    pixel = args.pixel_size or voxel
    if pixel <= 0:
        raise ValueError(f"{args.map2}: no voxel size in the header; give --pixel-size")
    v1 = torch.from_numpy(m1)
    if bool(args.poses) != bool(args.reference_poses):
        raise ValueError("give both --poses and --reference-poses, or neither")
    if args.poses:
        def rotations(path):
            table = read_star(path, require_stacks=False)
            if table.rotations is None:
                raise ValueError(f"{path}: no angles (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)")
            return torch.from_numpy(table.rotations)
        est, ref = rotations(args.poses), rotations(args.reference_poses)
        if est.shape != ref.shape:
            raise ValueError(f"{args.poses}: {len(est)} particles, but {args.reference_poses} has {len(ref)}")
        al = align_poses(est, ref)
        v1 = rotate_map(v1, al.transform)
        print(f"pose error after alignment: mean {al.mean_error:.2f}°  median {al.median_error:.2f}°  "
              f"({'mirror hand' if al.mirrored else 'same hand'})")
    curve = fsc(v1, torch.from_numpy(m2))
    size = m1.shape[0]
    r05, r0143 = (resolution_at(curve, size, pixel, t) for t in (0.5, 0.143))
    print(f"FSC=0.5: {r05:.2f} Å   FSC=0.143: {r0143:.2f} Å   (Nyquist {2 * pixel:.2f} Å)")
    if args.csv:
        shells = np.arange(len(curve))
        freq = shells / (size * pixel)
        np.savetxt(args.csv, np.stack([shells, freq, curve], 1), delimiter=",",
                   header="shell,frequency_per_angstrom,fsc", comments="", fmt=["%d", "%.6f", "%.6f"])
    return 0
