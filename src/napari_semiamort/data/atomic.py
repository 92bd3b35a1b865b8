"""Atomic file writing: a file appears under its final name complete, or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; renamed onto it only on success.

    An interrupted write never leaves a half-written file under the final name.
    """

    def __init__(self, path: str | Path, force: bool = True):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise FileExistsError(f"{self.path}: exists; pass --force to overwrite it")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the usual permissions
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False
