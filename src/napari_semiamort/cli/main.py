"""``semiamort``: ab-initio cryo-EM reconstruction with semi-amortized pose inference.

Sub-commands (``semiamort COMMAND --help`` for each):

  reconstruct   reconstruct a map from particles (.star, .cs, .mrcs) (or --resume a run)
  simulate      simulate a particle stack with known poses from a map or an atomic model
  fsc           FSC between two maps, and pose errors against known poses
  demo          simulate the bundled molecule, reconstruct it and report the errors
  export        write a run's results for ChimeraX (.cxc), cryoSPARC (.cs) or cryoDRGN (.pkl)
  inspect       posterior maps of chosen particles and head specialisation (PNG)
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

_COMMANDS = {
    "reconstruct": "napari_semiamort.cli.reconstruct",
    "simulate": "napari_semiamort.cli.simulate",
    "fsc": "napari_semiamort.cli.fsc",
    "demo": "napari_semiamort.cli.demo",
    "export": "napari_semiamort.cli.export",
    "inspect": "napari_semiamort.cli.inspect_run",
}

# The errors of writing that end a command with one line (run/folder.py's WRITE_ERRNOS), in plain words
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would exceed the file size limit (ulimit -f)", errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
}


def _description() -> str:
    """The top-level help: what the program does and one line per sub-command (the package's ``SUMMARIES``).

    The sub-commands are listed here only: argparse's own list of them (``add_parser(help=...)``) would repeat
    them, worse wrapped, under "positional arguments"."""
    summaries = importlib.import_module("napari_semiamort.cli").SUMMARIES
    width = max(map(len, summaries)) + 3
    rows = "\n".join(f"  {cmd:<{width}}{summaries[cmd]}" for cmd in _COMMANDS)
    return ("semiamort: ab-initio cryo-EM reconstruction with semi-amortized pose inference.\n\n"
            f"Sub-commands (semiamort COMMAND --help for each):\n\n{rows}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="semiamort", usage="%(prog)s [-h] [--version] COMMAND ...", description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    # Sub-command modules (and torch) load only for the command that runs.
    name = next((a for a in argv if not a.startswith("-")), None)
    for cmd, mod in _COMMANDS.items():
        if cmd == name:
            module = importlib.import_module(mod)
            p = sub.add_parser(cmd, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_args(p)
            p.set_defaults(func=module.main)
        else:
            sub.add_parser(cmd)  # listed in the description
    args = parser.parse_args(argv)
    if args.version:
        from napari_semiamort import __version__

        print(__version__)
        return 0
    import logging

    log = logging.getLogger("napari_semiamort")  # the data layer's notes (contrast, skipped images, …)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # before training started (a run's own Ctrl-C is handled at a step boundary)
        print(f"semiamort {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"semiamort {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a quota, a size limit, a read-only folder: one line, not a traceback
        if exc.errno is not None and exc.errno not in _WRITE_ERRORS:
            raise
        print(f"semiamort {args.command}: error: {_write_error(exc)}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a run that diverged, a GPU out of memory: one line that says what to do
        line = _run_error(exc, args)
        if line is None:
            raise
        print(f"semiamort {args.command}: error: {line}", file=sys.stderr)
        return 1


def _run_error(exc: RuntimeError, args) -> str | None:
    """The line for a run's own failures (None: not one, a traceback is more use): training that diverged
    (:class:`~napari_semiamort.run.guard.TrainingDiverged`), and a device out of memory, with a batch to try."""
    from ..run.config import ReconstructionConfig
    from ..run.guard import TrainingDiverged

    if isinstance(exc, TrainingDiverged):
        return str(exc)
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return None
    batch = getattr(args, "batch_size", None) or ReconstructionConfig().batch_size
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
    return (f"the device ran out of memory ({first}) at a batch of {batch} images; a batch of {max(1, batch // 2)}"
            f" needs about half the memory of the step: rerun with --batch-size {max(1, batch // 2)} (and "
            "--stage2-batch-size likewise where set), or --device cpu")


def _write_error(exc: OSError) -> str:
    """A failed write as one line: the file and the problem (or the program's own sentence, an ``OSError`` with
    no errno), then what the program added (its notes: what is intact, how to go on)."""
    text = str(exc) if exc.errno is None else f"{exc.filename or 'a file'}: {_WRITE_ERRORS[exc.errno]}"
    return "; ".join([text, *getattr(exc, "__notes__", ())])


if __name__ == "__main__":
    raise SystemExit(main())
