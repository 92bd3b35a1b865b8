"""The run folder as one run's own: its lock, the checks before a run writes into it, and what a new run clears.

**One run per folder.** A run (new, or ``--resume``) holds ``RUN_DIR/.semiamort.lock`` while it runs: a JSON
record of its process id, host name, start time and command line, created atomically (``O_CREAT | O_EXCL``: of
two runs starting at once, one creates it and the other finds it) and removed when the run ends, on an error or
Ctrl-C as well (the context manager's exit, and an ``atexit`` hook as a backstop). A run that finds the lock

- of a process alive on this host is refused, in one line naming the folder, the process id, the host and since
  when (a ``--force`` too: it would delete the running run's files);
- of a process that is gone (its id not running, or running a process started later, or the host rebooted
  since) says so in one line and takes the lock over: the run before it was killed (``kill -9``, a crash, a
  node that went down);
- of another host is refused, ``--force`` or not, in one line saying how to remove the lock. On a cluster's
  shared file system (NFS) a process on another node cannot be checked from here, and a run folder written by
  two nodes at once ends in a map and poses that belong to neither; the lock's owner knows whether that run is
  still going. The same holds for a lock that cannot be read.

Taking over a stale lock removes it (after checking it is the same file that was judged stale) and creates a
new one with ``O_EXCL``; two runs taking over the same stale lock in the same instant could both see it gone,
a window of microseconds that the folder's user would have to open on purpose.

**Before a run writes.** The lock is the probe of the folder: a folder that cannot be written (read-only, not
the user's, a full disk) fails there, in one line, before the data are read. ``-o`` naming a file is refused in
one line. The new run's data are read and checked (the :class:`~napari_semiamort.run.Reconstruction` is built:
it writes nothing into its folder until its first epoch ends) before a ``--force`` removes the previous run's
results (:data:`~napari_semiamort.run.outputs.RUN_OUTPUTS`), so a typo or an impossible ``--box`` leaves the
earlier run whole; and a run whose inputs (the particle file, its stacks, ``--ctf-pkl``, ``--pose-pkl``,
``--passthrough``, ``--reference-map``) lie in the run folder under a name the run writes is refused. The free
space is compared with what the run will write (:func:`estimate_bytes`): too little is refused, little warned of.

**While it writes.** Every result file is written whole or not at all (:mod:`napari_semiamort.data.atomic`); a
full disk, a quota, a file size limit or a folder made read-only ends the run with one line naming the file, and
:class:`RunFolder` adds what is intact: the last checkpoint, from which ``--resume`` goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

from .checkpoint import CHECKPOINT
from .outputs import RUN_OUTPUTS

__all__ = ["LOCK", "WRITE_ERRNOS", "RunFolder", "RunLock", "estimate_bytes"]

log = logging.getLogger(__name__)

LOCK = ".semiamort.lock"
# The errors of writing that end a run with one line (and a note on what is intact), not a traceback
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
_MB = 1e6


class RunLock:
    """``RUN_DIR/.semiamort.lock``, held by this process from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run_dir: str | Path, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.command = command if command is not None else " ".join(shlex.quote(a) for a in sys.argv)
        self.token: str | None = None  # this holder's, to remove only its own lock
        self.pid = os.getpid()

    def acquire(self) -> None:
        """Take the lock, or raise ``FileExistsError`` with one line saying who holds it (module docstring)."""
        for _ in range(3):  # a stale lock taken over, then created again; a run starting beside us may win
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            token = uuid.uuid4().hex
            try:
                os.write(fd, (json.dumps(self._record(token)) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            os.close(fd)
            self.token, self.pid = token, os.getpid()
            atexit.register(self.release)
            return
        raise FileExistsError(f"{self.run_dir}: another run took this folder while this one started")

    def release(self) -> None:
        """Remove the lock if this process holds it (not one another run took over since)."""
        if self.token is None or os.getpid() != self.pid:  # not taken, or a forked child's copy
            return
        atexit.unregister(self.release)
        held = _read(self.path)
        if held is not None and held.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.token = None

    def _record(self, token: str) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": self.command, "boot": _boot_id(), "pid_start": _process_start(os.getpid()),
                "token": token}

    def _refuse_or_clear(self) -> None:
        """The lock found: refuse (its run is alive, elsewhere, or unreadable) or remove it (its run is gone)."""
        held, inode = _read_settled(self.path)
        if inode is None:  # removed meanwhile: try again
            return
        if held is None:
            raise FileExistsError(f"{self.path}: a lock this program cannot read; if no run is using {self.run_dir}, "
                                  "delete the lock and start again")
        who = f"PID {held['pid']} on {held['host']} since {held.get('started', '?')}"
        if held["host"] != socket.gethostname():
            raise FileExistsError(
                f"{self.run_dir}: locked by {who} ({held.get('command', '')}), another host, which cannot be "
                f"checked from {socket.gethostname()}; if no run is using the folder, delete {self.path}")
        if _alive(held):
            raise FileExistsError(f"{self.run_dir}: in use by the run of {who} ({held.get('command', '')}); "
                                  "wait for it to end or stop it, or choose another run folder")
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == inode:  # the file judged stale, not one a run made since
                self.path.unlink()
                log.warning("%s: taking over the lock of %s, which is no longer running", self.run_dir, who)


class RunFolder:
    """A run folder taken for one run: ``with RunFolder(path, new=True, force=...) as folder:``.

    On entry: ``-o`` naming a file refused; the folder made (``new``) or required (a resume); the lock taken
    (:class:`RunLock`); a new run's folder required empty (but for a lock) unless ``force``. :meth:`ready`, once
    the run is built, checks the inputs and the free space and (``force``) clears the previous run's results.
    On exit: a write failure's message gets what is intact; the lock removed; a folder this start made and left
    empty removed."""

    def __init__(self, path: str | Path, new: bool, force: bool = False):
        self.path, self.new, self.force = Path(path), new, force
        self.lock = RunLock(self.path)
        self.made = False

    def __enter__(self) -> RunFolder:
        p = self.path
        if p.exists() and not p.is_dir():
            raise FileExistsError(f"{p}: is a file, not a folder; give the run a folder of its own")
        if not self.new and not p.is_dir():
            raise FileNotFoundError(f"{p}: no such run folder")
        self.made = not p.exists()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):  # a file where a folder of the path goes
            raise FileExistsError(f"{p}: cannot make this folder: a part of its path is a file") from None
        except OSError as exc:
            raise _unwritable(p, exc) from None
        try:
            self.lock.acquire()  # the probe of the folder: a file made, written, and removed at the end
        except OSError as exc:
            self._leave()
            raise _unwritable(p, exc) from None
        if self.new and not self.force and any(x.name != LOCK for x in p.iterdir()):
            self._leave()
            raise FileExistsError(f"{p}: exists and is not empty; pass --force to write into it")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            exc.__notes__ = [*getattr(exc, "__notes__", ()), self.intact()]
        self._leave()
        return False

    def _leave(self) -> None:
        self.lock.release()
        if self.made:  # a start that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def ready(self, run) -> None:
        """Before ``run`` (built: its data read and checked) writes: its inputs are not among the files it
        writes here, the disk has room for it, and (a new run) the previous run's results are removed."""
        self.check_inputs(run.config, run.data.table.stacks)
        self.check_space(estimate_bytes(run))
        if self.new:
            self.clear()

    def check_inputs(self, cfg, stacks=()) -> None:
        """Refuse (``ValueError``) a run whose input lies in the run folder under a name the run writes."""
        here = self.path.resolve()
        outputs = {here / name for name in RUN_OUTPUTS}
        inputs = [("particle file", cfg.particles), ("--ctf-pkl", cfg.ctf_pkl), ("--pose-pkl", cfg.pose_pkl),
                  ("--passthrough", cfg.passthrough), ("--reference-map", cfg.reference_map),
                  *(("particle stack", s) for s in stacks)]
        for what, p in inputs:
            if p and _lands_on(Path(p), outputs):
                raise ValueError(f"{p}: this run's {what} is in its run folder {self.path} under a name the run "
                                 "writes; move it out of the folder or choose another run folder")

    def check_space(self, need: dict[str, int]) -> None:
        """Refuse (``OSError``, one line) a run that would not fit the disk; warn when it would only just."""
        total = sum(need.values())
        replaced = sum(f.stat().st_size for f in map(self.path.joinpath, RUN_OUTPUTS) if f.is_file())
        room = shutil.disk_usage(self.path).free + replaced
        parts = ", ".join(f"{k} {v / _MB:.0f} MB" for k, v in need.items())
        if total > room:
            raise OSError(f"{self.path}: the run needs about {total / _MB:.0f} MB ({parts}) and the disk has "
                          f"{room / _MB:.0f} MB free; make room or choose another run folder")
        if 2 * total > room:
            log.warning("%s: the run needs about %.0f MB (%s) of the disk's %.0f MB free", self.path, total / _MB,
                        parts, room / _MB)

    def clear(self) -> None:
        """Remove the previous run's results (and temporaries a killed write left), so none passes for this
        run's. Only after :meth:`check_inputs`: none of them is an input."""
        for name in RUN_OUTPUTS:
            (self.path / name).unlink(missing_ok=True)
            for tmp in [*self.path.glob(f".{name}.*.tmp"), self.path / f".{name}.tmp"]:
                tmp.unlink(missing_ok=True)

    def intact(self) -> str:
        """What a run that failed to write leaves whole, as the end of its one-line message."""
        ckpt = self.path / CHECKPOINT
        if not ckpt.is_file():
            return (f"no checkpoint was written yet; each result in {self.path} is whole or absent (written in full "
                    "or not at all)")
        when = datetime.datetime.fromtimestamp(ckpt.stat().st_mtime).strftime("%H:%M:%S")
        return (f"the last checkpoint ({ckpt}, {when}) and the other files are whole; make room, then "
                f"semiamort reconstruct --resume {self.path}")


def _unwritable(path: Path, exc: OSError) -> OSError:
    """``exc``, or for a folder that cannot be written one line saying so."""
    if exc.errno not in WRITE_ERRNOS:
        return exc
    why = (exc.strerror or str(exc)).lower()
    return OSError(f"{path}: cannot write in this folder ({why}); make it writable or choose another run folder")


def estimate_bytes(run) -> dict[str, int]:
    """What ``run`` (a built :class:`~napari_semiamort.run.Reconstruction`) will write, in bytes, by kind: the
    checkpoint twice (the new one is written beside the old before it replaces it), the maps, the pose files.

    The checkpoint holds every tensor of the run's state, the parameters three times over (Adam's two moments are
    made at the first step), and per image its poses, shifts and stage 2's table (~64 numbers; measured: box 32, 300
    images, 0.85 MB on the grid and 8.1 MB with the heads' encoder)."""
    n = len(run.data)
    checkpoint = 3 * _tensor_bytes(run.state_dict()) + 64 * 4 * n
    box = run.data.check_box(run.config.output_box)
    maps = (5 if run.config.halves else 3) * 4 * box ** 3 + 1024 * 3
    return {"checkpoint": 2 * checkpoint, "maps": maps, "poses": 3 * 600 * n + (1 << 20)}


def _tensor_bytes(obj) -> int:
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # a tensor
        return obj.element_size() * obj.nelement()
    if hasattr(obj, "nbytes"):  # an array
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _lands_on(path: Path, outputs: set[Path]) -> bool:
    """Whether ``path`` is (or, a link, points at) one of ``outputs`` (absolute, their folder resolved)."""
    here = Path(os.path.abspath(path))
    return bool({here.parent.resolve() / here.name, Path(os.path.realpath(path))} & outputs)


def _read(path: Path) -> dict | None:
    """A lock's record, or None when it is missing or cannot be read as one."""
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(held, dict) and isinstance(held.get("pid"), int) and held["pid"] > 0 and "host" in held
    return held if ok else None


def _read_settled(path: Path) -> tuple[dict | None, int | None]:
    """A lock's record and inode (None, None: no lock now), read again for a while when it cannot be read: the
    run that made it may be writing it."""
    for _ in range(10):
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            return None, None
        held = _read(path)
        if held is not None:
            return held, inode
        time.sleep(0.1)
    return None, inode


def _alive(held: dict) -> bool:
    """Whether the lock's process (on this host) still runs: its id is taken by the process that took the lock
    (the same start time, where /proc tells it) since the last boot."""
    boot = _boot_id()
    if boot is not None and held.get("boot") not in (None, boot):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    started = _process_start(held["pid"])
    return started is None or held.get("pid_start") is None or started == held["pid_start"]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The process's start (clock ticks after boot, /proc/PID/stat's 22nd field), or None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
