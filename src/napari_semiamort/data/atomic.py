"""Atomic file writing: a file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path"]

# A write that fails for want of room (a full disk, a quota, a file size limit: ``ulimit -f``) or permission
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_WRITE_ERRNOS = _NO_ROOM | {errno.EROFS, errno.EACCES, errno.EPERM}


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status): setting it to 0
    and back, the only portable way, gives a file another thread creates in between loose permissions."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; where the system cannot (a folder on some
    file systems, Windows), nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _NO_ROOM:  # the data did not reach the disk: the write failed
            raise
    finally:
        os.close(fd)


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; renamed onto it only on success.

    An interrupted or failed write never leaves a half-written file under the final name, and its temporary file
    is removed; the file is flushed to the disk before the rename and the folder's entry after it, so that a
    crash of the machine leaves the old file or the new one, whole. A write that fails for want of room or
    permission raises ``OSError`` naming ``path`` (the final name, not the temporary's), also where the writer
    raised another error from it (:func:`_write_error`).
    """

    def __init__(self, path: str | Path, force: bool = True):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise FileExistsError(f"{self.path}: exists; pass --force to overwrite it")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            raise OSError(exc.errno, os.strerror(exc.errno), str(self.path)) from None
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the usual permissions
                _fsync(self.tmp)
                os.replace(self.tmp, self.path)
                _fsync(self.path.parent, directory=True)
            except BaseException:
                _remove(self.tmp)
                raise
            return False
        cause = _write_error(exc, self.tmp) if isinstance(exc, Exception) else None  # not for Ctrl-C
        _remove(self.tmp)
        if cause is not None:
            raise OSError(cause, os.strerror(cause), str(self.path)) from exc
        return False


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # the write's own error is the one to report
        tmp.unlink(missing_ok=True)


def _write_error(exc: Exception, tmp: Path) -> int | None:
    """The errno of a write into ``tmp`` that failed for want of room or permission, or None for other failures.

    The error itself, or the one it was raised from (torch.save into an open file reports a short write as a
    ``RuntimeError`` raised from the file's ``OSError``); or, where a writer dropped the errno (torch.save given
    a path: its C++ writer raises ``RuntimeError: ... iostream error`` or ``unexpected pos``), the error that
    writing more into ``tmp`` gets now: the same full disk, quota or size limit refuses it again."""
    for e in (exc, exc.__cause__ or exc.__context__):
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS and e.filename in (None, str(tmp)):
            return e.errno
    if not isinstance(exc, RuntimeError):
        return None
    try:
        with open(tmp, "ab", buffering=0) as fh:
            fh.write(bytes(1 << 20))
            os.fsync(fh.fileno())
    except OSError as probe:
        return probe.errno if probe.errno in _NO_ROOM else None
    return None
