"""MRC maps and stacks: reading (memory-mapped) and atomic writing with the voxel size set."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "open_stack", "read_map", "write_mrc"]


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
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_mrc(path: str | Path, data: np.ndarray, voxel_size: float, force: bool = True) -> Path:
    """Write a float32 map `(z, y, x)` or stack `(n, y, x)` with its voxel size (Å), atomically.

    A 3D array whose name ends in ``.mrcs`` is written as an image stack (MRC space group 0).
    """
    import mrcfile

    path = Path(path)
    data = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path, force=force) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if path.suffix == ".mrcs":
                mrc.set_image_stack()
            mrc.voxel_size = float(voxel_size)
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()
    return path


def read_map(path: str | Path) -> tuple[np.ndarray, float]:
    """A cubic map `(L, L, L)` as float32 and its voxel size in Å (0 when the header has none)."""
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such map file")
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise ValueError(f"{path}: not a readable MRC file (bad header)")
            data = np.asarray(mrc.data, dtype=np.float32).copy()
            voxel = float(mrc.voxel_size.x)
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable MRC file ({exc})") from exc
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"{path}: expected a cubic 3D map, got shape {data.shape}")
    return data, voxel


def open_stack(path: str | Path) -> np.ndarray:
    """Memory-mapped image stack `(n, L, L)` (a single image reads as `(1, L, L)`)."""
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such particle stack")
    try:
        mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable MRC stack ({exc})") from exc
    if mrc.data is None:
        raise ValueError(f"{path}: not a readable MRC stack (bad header or truncated data)")
    data = mrc.data
    if data.ndim == 2:
        data = data[None]
    if data.shape[-1] != data.shape[-2]:
        raise ValueError(f"{path}: images are not square ({data.shape[-2]} × {data.shape[-1]})")
    return data
