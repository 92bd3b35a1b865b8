"""Export a run's results for another program.

Examples:

  semiamort export chimerax run1             writes run1/chimerax.cxc
  semiamort export chimerax run1 --open      ... and opens it in ChimeraX (when `chimerax` is on PATH)
  semiamort export chimerax run1 --force     replaces an existing run1/chimerax.cxc

The script opens map.mrc (and half1.mrc / half2.mrc, hidden, when the run has them) with the voxel size
from the map header and a surface level that separates particle from solvent (Otsu's threshold).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=("chimerax",), help="what to export for")
    p.add_argument("run_dir", help="a run folder (with map.mrc)")
    p.add_argument("--open", action="store_true", help="open the script in ChimeraX")
    p.add_argument("--force", action="store_true", help="replace an existing script")


def main(args: argparse.Namespace) -> int:
    from ..run.outputs import chimerax_script

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    script = chimerax_script(run_dir, force=args.force)
    print(f"ChimeraX script: {script}")
    if args.open:
        exe = shutil.which("chimerax") or shutil.which("ChimeraX")
        if exe is None:
            raise FileNotFoundError("chimerax is not on PATH; open the script from ChimeraX (File > Open)")
        subprocess.Popen([exe, str(script)])
    return 0
