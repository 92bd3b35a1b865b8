"""MRC maps and stacks: reading (memory-mapped) and atomic writing with the voxel size set."""

from __future__ import annotations

import gzip
import io
import threading
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .checks import check_file

__all__ = ["IMAGE_MODES", "Stack", "open_stack", "read_map", "write_mrc"]


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
    path = check_file(path, "map file")
    header, raw, problems = _read_mrc(path, header_only=False)
    if raw is None or raw.dtype.kind == "c":
        raise ValueError(f"{path}: not a readable MRC file ({problems or 'complex numbers'})")
    data = np.asarray(raw, dtype=np.float32).copy()
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"{path}: expected a cubic 3D map, got shape {data.shape}")
    return data, _voxel_size(header)


# MRC modes that hold real-valued images (mode 0 is read as signed or unsigned bytes, as mrcfile decides)
IMAGE_MODES = {0: "8-bit integers", 1: "16-bit integers", 2: "32-bit floats", 6: "unsigned 16-bit integers",
               12: "16-bit floats"}
_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}  # bytes per pixel, complex modes too
_COMPLEX_MODES = (3, 4)


def _read_mrc(path: Path, header_only: bool, what: str = "MRC file"):
    """``(header, data, problems)`` of an MRC file, plain or gzip'd (a gzip'd one is read whole, with its data):
    ``data`` None with ``header_only`` or where it cannot be read, ``problems`` what mrcfile's permissive reading
    noted. The header's sizes are checked against the bytes the file holds first: mrcfile allocates what a header
    claims. One-line errors for anything that is not an MRC file, including a damaged gzip stream."""
    import mrcfile
    from mrcfile.mrcinterpreter import MrcInterpreter

    gz = path.name.lower().endswith(".gz")
    kind = f"gzip'd {what}" if gz else what
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if gz:
                with gzip.open(path, "rb") as fh:
                    raw = fh.read()
                _check_sizes(raw[:1024], len(raw), with_data=True)
                mrc = MrcInterpreter(io.BytesIO(raw), permissive=True)
            else:
                with open(path, "rb") as fh:
                    _check_sizes(fh.read(1024), path.stat().st_size, with_data=not header_only)
                mrc = mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
            with mrc:
                header = mrc.header.copy()
                readable = not header_only and int(header.mode) in (*_COMPLEX_MODES, *IMAGE_MODES)
                data = np.asarray(mrc.data) if readable and mrc.data is not None else None
        except (ValueError, OSError, EOFError, OverflowError, zlib.error) as exc:
            raise ValueError(f"{path}: not a readable {kind} ({exc})") from exc
    return header, data, "; ".join(str(w.message) for w in caught)


def _check_sizes(first: bytes, size: int, with_data: bool) -> None:
    """The header in ``first`` (a file's first 1024 bytes) against the ``size`` bytes the file holds: its extended
    header, and with ``with_data`` its data block too, must fit (ValueError)."""
    from mrcfile.mrcinterpreter import MrcInterpreter

    if len(first) < 1024:
        raise ValueError(f"shorter than an MRC header: {len(first)} bytes")
    # The header as mrcfile reads it (byte order from the machine stamp), with the extended header's size set to 0
    # so that nothing more is read; that size is then read in the header's byte order.
    with MrcInterpreter(io.BytesIO(first[:92] + bytes(4) + first[96:1024]), permissive=True, header_only=True) as mrc:
        header = mrc.header.copy()
    nsymbt = int(np.frombuffer(first[92:96], dtype=header["nsymbt"].dtype)[0])
    nx, ny, nz, mode = int(header.nx), int(header.ny), int(header.nz), int(header.mode)
    if first[208:211] != b"MAP" and (nsymbt < 0 or 1024 + nsymbt > size or min(nx, ny, nz) <= 0):
        raise ValueError("not an MRC file: no MAP tag, and a header that does not fit the file")
    if nsymbt < 0 or 1024 + nsymbt > size:
        raise ValueError(f"bad header: an extended header of {nsymbt:,} bytes in a file of {size:,}")
    if min(nx, ny, nz) <= 0:
        raise ValueError(f"bad header: size {nx} × {ny} × {nz}")
    if not with_data or mode not in _MODE_BYTES:
        return  # an unknown mode: mrcfile reads no data, the callers name it
    need = nx * ny * nz * _MODE_BYTES[mode]
    if 1024 + nsymbt + need > size:
        raise ValueError(f"truncated: the header declares {nz:,} sections of {ny} × {nx} pixels ({need:,} bytes), "
                         f"the file holds {size - 1024 - nsymbt:,} bytes of data")


def _image_dtype(path: Path, header) -> np.dtype:
    """The pixels' dtype of an MRC header whose mode holds real-valued images; else a one-line error."""
    import mrcfile

    mode = int(header.mode)
    if mode in _COMPLEX_MODES:
        raise ValueError(f"{path}: holds complex numbers (MRC mode {mode}), not particle images")
    if mode not in IMAGE_MODES:
        modes = ", ".join(map(str, IMAGE_MODES))
        raise ValueError(f"{path}: not a readable MRC stack (bad header: mode {mode}; image modes are {modes})")
    return np.dtype(mrcfile.utils.data_dtype_from_header(header))


def _voxel_size(header) -> float:
    """The header's pixel size in Å (``cella.x / mx``; 0 where the header does not say)."""
    mx, x = int(header.mx), float(header.cella.x)
    return x / mx if mx > 0 and np.isfinite(x) else 0.0


def _complete_images(path: Path, header, dtype: np.dtype, problems: str) -> int:
    """How many whole images the file holds, from its size (never from the header alone: a header may claim
    10⁹ images). A file without any is refused, as is one without the MAP tag whose size does not match."""
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    offset = 1024 + int(header.nsymbt)
    size = path.stat().st_size
    image_bytes = nx * ny * dtype.itemsize
    if header.map.tobytes() != b"MAP " and size != offset + image_bytes * nz:
        # without the MAP tag, only a file whose size matches its header is believed
        raise ValueError(f"{path}: not a readable MRC stack (bad header: {problems or 'no MAP tag'})")
    if size < offset:
        raise ValueError(f"{path}: not a readable MRC stack (shorter than its header)")
    complete = (size - offset) // image_bytes
    if complete == 0:
        raise ValueError(f"{path}: truncated or a damaged header: the header declares {nz} images of {ny} × {nx} "
                         f"pixels ({image_bytes:,} bytes each), the file holds {size - offset:,} bytes of data")
    return complete


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
        self.path = path = check_file(path, "particle stack")
        gz = path.name.lower().endswith(".gz")
        header, memory, problems = _read_mrc(path, header_only=not gz, what="MRC stack")
        nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
        self._dtype = dtype = _image_dtype(path, header)
        if gz and memory is None:
            raise ValueError(f"{path}: not a readable MRC stack ({problems or 'no data'})")
        self.header_pixel_size = _voxel_size(header)
        self._memory = None if memory is None else memory.reshape(-1, ny, nx)
        self._offset = 1024 + int(header.nsymbt)
        complete = nz if gz else _complete_images(path, header, dtype, problems)
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
