"""Export a run's results for another program.

Examples:

  semiamort export chimerax run1             writes run1/chimerax.cxc
  semiamort export chimerax run1 --open      ... and opens it in ChimeraX (when `chimerax` is on PATH)
  semiamort export cryosparc run1            writes run1/poses.cs (alignments3D) from run1/poses.star
  semiamort export cryodrgn run1             writes run1/ctf.pkl and run1/pose.pkl from run1/poses.star

The ChimeraX script opens map.mrc (and half1.mrc / half2.mrc, hidden, when the run has them) with the
voxel size from the map header and a surface level that separates particle from solvent (Otsu's
threshold). Nothing that exists is replaced without --force.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=("chimerax", "cryosparc", "cryodrgn"), help="what to export for")
    p.add_argument("run_dir", help="a run folder (with map.mrc and poses.star)")
    p.add_argument("--open", action="store_true", help="chimerax: open the script in ChimeraX")
    p.add_argument("--force", action="store_true", help="replace existing files")


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if args.target == "chimerax":
        from ..run.outputs import chimerax_script

        script = chimerax_script(run_dir, force=args.force)
        print(f"ChimeraX script: {script}")
        if args.open:
            exe = shutil.which("chimerax") or shutil.which("ChimeraX")
            if exe is None:
                raise FileNotFoundError("chimerax is not on PATH; open the script from ChimeraX (File > Open)")
            subprocess.Popen([exe, str(script)])
        return 0
    from ..data.star import read_star

    star = run_dir / "poses.star"
    table = read_star(star, require_stacks=False)
    if table.rotations is None:
        raise ValueError(f"{star}: no poses to export")
    if args.target == "cryosparc":
        from ..data.cryosparc import write_cs

        table.uid = _original_uids(run_dir, table)
        print(f"cryoSPARC particles: {write_cs(run_dir / 'poses.cs', table, force=args.force)}")
        return 0
    from ..data.cryodrgn import write_ctf_pkl, write_pose_pkl

    box = table.box
    targets = [run_dir / "pose.pkl"] + ([run_dir / "ctf.pkl"] if table.ctf is not None else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:  # checked before writing either: never a mixed pair
        raise FileExistsError(f"{', '.join(existing)}: exists; pass --force to overwrite")
    if table.ctf is not None:
        print(f"cryoDRGN CTF: {write_ctf_pkl(run_dir / 'ctf.pkl', table.ctf, box, table.pixel_size, force=args.force)}")
    pose = write_pose_pkl(run_dir / "pose.pkl", table.rotations, table.origins, box, table.pixel_size, force=args.force)
    print(f"cryoDRGN poses: {pose}")
    return 0


def _original_uids(run_dir: Path, table):
    """The cryoSPARC uids of the run's particles when the run read a ``.cs`` (matched by image), else None."""
    import json

    import numpy as np

    cfg = run_dir / "config.json"
    if not cfg.is_file():
        return None
    config = json.loads(cfg.read_text()).get("config", {})
    particles = config.get("particles", "")
    if not particles.lower().endswith(".cs") or not Path(particles).is_file():
        return None
    from ..data.cryosparc import read_cs

    src = read_cs(particles, datadir=config.get("datadir"), require_stacks=False)
    key = {(str(src.stacks[s].resolve()), int(i)): u
           for s, i, u in zip(src.stack_index, src.image_index, src.uid, strict=True)}
    uids = [key.get((str(table.stacks[s].resolve()), int(i))) for s, i in zip(table.stack_index, table.image_index,
                                                                              strict=True)]
    return None if any(u is None for u in uids) else np.asarray(uids, dtype=np.uint64)
