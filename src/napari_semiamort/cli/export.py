"""Export a run's results for another program.

Examples:

  semiamort export chimerax run1             writes run1/chimerax.cxc
  semiamort export chimerax run1 --open      opens run1/chimerax.cxc (the run wrote it) in ChimeraX
  semiamort export cryosparc run1            writes run1/poses.cs (alignments3D) from run1/poses.star
  semiamort export cryodrgn run1             writes run1/ctf.pkl and run1/pose.pkl from run1/poses.star

The ChimeraX script opens map.mrc (and half1.mrc / half2.mrc, hidden, when the run has them) with the
voxel size from the map header and a surface level that separates particle from solvent (Otsu's
threshold). A run writes the script itself: --open opens the one there as it is (saying so where it is not
what would be written now: edited, or written for other maps or another folder), and --force writes it
again. ChimeraX is looked for on PATH (chimerax, ChimeraX), then where its installers put it on macOS and
Windows. Nothing that exists is replaced without --force.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
from pathlib import Path

# Where ChimeraX's installers put it off PATH (macOS, Windows); of several versions the last-named wins.
CHIMERAX_INSTALLS = ("/Applications/ChimeraX*.app/Contents/MacOS/ChimeraX",
                     "C:/Program Files/ChimeraX*/bin/ChimeraX.exe")


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
        return _chimerax(run_dir, force=args.force, open_it=args.open)
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


def _chimerax(run_dir: Path, force: bool, open_it: bool) -> int:
    """Write ``RUN_DIR/chimerax.cxc`` (or, with ``open_it``, reuse it) and, with ``open_it``, open it in ChimeraX.

    A run writes its own script, so one is there already. ``open_it`` opens it, written again first where it is
    the run's own but stale (the folder moved, or another version wrote it), else as it is: it may hold the
    user's edits, which only ``force`` replaces.
    """
    from ..run.outputs import chimerax_script, chimerax_text

    script = run_dir / "chimerax.cxc"
    if force or not script.exists():
        print(f"ChimeraX script: {chimerax_script(run_dir, force=True)}")
        return _open_in_chimerax(script) if open_it else 0
    old, new = script.read_text(errors="replace"), chimerax_text(run_dir)
    kind, state = _script_state(old, new)
    if not open_it:
        hint = {"same": "opens it", "stale": "writes it again and opens it", "edited": "opens it as it is"}[kind]
        raise FileExistsError(f"{script}: exists; pass --force to overwrite it ({state}; --open {hint})")
    if kind == "stale":  # the run's own, unedited: nothing of the user's is lost in writing it again
        print(f"ChimeraX script: {chimerax_script(run_dir, force=True)} ({state}: written again)")
    else:
        print(f"ChimeraX script: {script} ({state}" + (")" if kind == "same" else "; opened as it is)"))
    return _open_in_chimerax(script)


def _script_state(old: str, new: str) -> tuple[str, str]:
    """How a run folder's script ``old`` stands to the one export would write now, ``new``, and in words:
    ``"same"``; ``"stale"``, the run's own but written by another version or for the folder before it moved (the
    same but for those lines); or ``"edited"`` (or written for other maps)."""
    if old == new:
        return "same", "the run's, up to date"

    def folder(text: str) -> str | None:
        return next((line.removeprefix("# run folder: ") for line in text.splitlines()
                     if line.startswith("# run folder: ")), None)

    was, now = folder(old), folder(new)
    moved = was is not None and was != now
    if (old.replace(was, now) if moved else old).splitlines()[1:] == new.splitlines()[1:]:  # line 1: the version
        return "stale", f"the run's, written for {was}" if moved else "the run's, written by another version"
    return "edited", "edited, or written for other maps" + (f" or for {was}" if moved else "")


def _chimerax_executable() -> str | None:
    """ChimeraX's program: on PATH, else where its installers put it (:data:`CHIMERAX_INSTALLS`); None if neither."""
    found = shutil.which("chimerax") or shutil.which("ChimeraX")
    if found:
        return found
    installed = sorted(p for pattern in CHIMERAX_INSTALLS for p in glob.glob(pattern))
    return installed[-1] if installed else None


def _open_in_chimerax(script: Path) -> int:
    """Start ChimeraX on the script (not waited for); one line on stderr and 1 where it cannot be started."""
    exe = _chimerax_executable()
    if exe is None:
        print(f"semiamort export: ChimeraX not found (no chimerax on PATH): open {script} from ChimeraX "
              "(File > Open), or put chimerax on PATH", file=sys.stderr)
        return 1
    try:
        subprocess.Popen([exe, str(script)])
    except OSError as exc:
        print(f"semiamort export: could not start {exe} ({exc.strerror or exc}): open {script} from ChimeraX "
              "(File > Open)", file=sys.stderr)
        return 1
    print(f"opening it in {exe}")
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
