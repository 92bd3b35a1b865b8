"""MRC maps and stacks: reading (memory-mapped) and atomic writing with the voxel size set."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = ["Stack", "open_stack", "read_map", "write_mrc"]


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


class Stack:
    """An MRC image stack, memory-mapped on demand: ``data`` `(n, L, L)` holds the complete images only.

    Opening reads the header alone; the pixels are mapped when first read, and at most ``MAX_OPEN`` stacks
    are mapped at once (a RELION dataset has one stack per micrograph: thousands of files, more than the
    open-file limit of many systems). A truncated file (the header declares more images than the file
    holds, e.g. an interrupted copy) opens with its complete images; asking for a missing one is an error
    naming the truncation. A gzip'd stack cannot be mapped: it is decompressed into memory.
    """

    MAX_OPEN = 64
    _open: OrderedDict[Path, np.ndarray] = OrderedDict()  # least recently used first
    _lock = threading.Lock()

    def __init__(self, path: str | Path):
        import mrcfile

        self.path = path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such particle stack")
        gz = path.name.lower().endswith(".gz")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mrc = mrcfile.open(path, mode="r", permissive=True, header_only=not gz)
            except (ValueError, OSError, EOFError) as exc:
                raise ValueError(f"{path}: not a readable MRC stack ({exc})") from exc
        with mrc:
            header = mrc.header
            problems = "; ".join(str(w.message) for w in caught)
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            try:
                dtype = np.dtype(mrcfile.utils.data_dtype_from_header(header))
            except ValueError as exc:
                raise ValueError(f"{path}: not a readable MRC stack (bad header: {exc})") from exc
            if dtype.kind == "c":
                raise ValueError(f"{path}: holds complex numbers (MRC mode {int(header.mode)}), not particle images")
            if min(nx, ny, nz) <= 0:
                raise ValueError(f"{path}: not a readable MRC stack (bad header: size {nx} × {ny} × {nz})")
            self.header_pixel_size = float(mrc.voxel_size.x)
            self._memory = None
            if gz:
                if mrc.data is None:
                    raise ValueError(f"{path}: not a readable MRC stack ({problems or 'no data'})")
                self._memory = np.asarray(mrc.data).reshape(-1, ny, nx)
        self._offset = 1024 + int(header.nsymbt)
        self._dtype = dtype
        if gz:
            complete = nz
        else:
            size = path.stat().st_size
            complete = max(0, (size - self._offset) // (nx * ny * dtype.itemsize))
            if header.map.tobytes() != b"MAP " and size != self._offset + nx * ny * nz * dtype.itemsize:
                # without the MAP tag, only a file whose size matches its header is believed
                raise ValueError(f"{path}: not a readable MRC stack (bad header: {problems or 'no MAP tag'})")
            if complete == 0 and nz > 0 and size < self._offset:
                raise ValueError(f"{path}: not a readable MRC stack (shorter than its header)")
        if nx != ny:
            raise ValueError(f"{path}: images are not square ({ny} × {nx} pixels)")
        self.declared = nz  # images the header promises
        self._shape = (min(complete, nz), ny, nx)

    @property
    def data(self) -> np.ndarray:
        """The complete images `(n, L, L)`, memory-mapped (read-only)."""
        if self._memory is not None:
            return self._memory
        if self._shape[0] == 0:
            return np.zeros(self._shape, self._dtype)
        cls = Stack
        with cls._lock:
            arr = cls._open.get(self.path)
            if arr is None or arr.shape != self._shape:
                arr = np.memmap(self.path, dtype=self._dtype, mode="r", offset=self._offset, shape=self._shape)
                cls._open[self.path] = arr
                while len(cls._open) > cls.MAX_OPEN:
                    cls._open.popitem(last=False)  # unmapped once no batch holds a view of it
            cls._open.move_to_end(self.path)
            return arr

    @property
    def truncated(self) -> bool:
        return self._shape[0] < self.declared

    @property
    def box(self) -> int:
        return int(self._shape[-1])

    def __len__(self) -> int:
        return int(self._shape[0])

    def check_index(self, index: int, source: Path | str) -> None:
        """A one-line error when image ``index`` (0-based) is not in the file."""
        if index < len(self):
            return
        if self.truncated:
            raise ValueError(
                f"{self.path}: truncated: the header declares {self.declared} images of {self.box}×{self.box}, "
                f"the file holds only {len(self)} complete ones; {source} asks for image {index + 1}"
            )
        raise ValueError(f"{source}: image {index + 1} requested from {self.path}, which holds {len(self)} images")


def open_stack(path: str | Path) -> np.ndarray:
    """Memory-mapped image stack `(n, L, L)` (a single image reads as `(1, L, L)`); truncated files refused."""
    stack = Stack(path)
    if stack.truncated:
        raise ValueError(f"{stack.path}: truncated: the header declares {stack.declared} images, "
                         f"the file holds only {len(stack)} complete ones")
    return stack.data
