"""cryoDRGN's ``ctf.pkl`` and ``pose.pkl``: read into and write from our RELION conventions.

cryoDRGN keeps per-particle metadata in Python pickles, read here with an unpickler that builds numpy
arrays and nothing else (a pickle can run arbitrary code when loaded; :func:`load_pickle_safely`).

- ``ctf.pkl``: float32 `(N, 9)` with columns ``[D (box, px), Apix (Å/px), dfU (Å), dfV (Å), dfang (deg),
  kV, Cs (mm), w (amplitude contrast), phase shift (deg)]``: RELION's CTF fields one to one. cryoDRGN uses
  row 0's ``D · Apix`` as the physical box: a stack downsampled to ``L`` pixels has ``D · Apix / L`` Å/px.
- ``pose.pkl``: a tuple ``(rot (N, 3, 3), trans (N, 2))`` (or ``rot`` alone). ``rot`` is RELION's matrix
  ``A`` itself and ``trans = rlnOriginX/Y (px) / D`` — the origin as a fraction of the box, same sign.
  Established on cryoDRGN's ``parse_pose_star`` output for the PfCRT STAR (``tests/test_cryodrgn.py``):
  max |rot − A| 5.6e-17, trans exact.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .checks import PIXEL_SIZE_RANGE, check_file, check_pixel_size
from .mrc import Stack
from .particles import CTF_FIELDS, ParticleTable

__all__ = [
    "ctf_to_cryodrgn",
    "load_pickle_safely",
    "poses_to_cryodrgn",
    "read_cryodrgn",
    "read_ctf_pkl",
    "read_pose_pkl",
    "write_ctf_pkl",
    "write_pose_pkl",
]

# The RELION fields of ctf.pkl columns 2–8.
_CTF_COLUMNS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnPhaseShift",
)
_CTF_LAYOUT = "[D, Apix, dfU (Å), dfV (Å), dfang (deg), kV, Cs (mm), w, phase shift (deg)]"


def _numpy_core(submodule: str):
    """``numpy._core.<submodule>`` (numpy ≥ 1.26), else ``numpy.core.<submodule>``: no deprecation warning."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 1.26
        return importlib.import_module(f"numpy.core.{submodule}")


# (module, name) a pickle of numpy arrays may ask for → how to get it. Nothing else is ever imported.
_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_core("multiarray").scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_core("multiarray").scalar,
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer,
    # Protocol 2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _Refused(ValueError):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        getter = _ALLOWED.get((module, name))
        if getter is None:
            raise _Refused(
                f"{self.path}: refused to load: the pickle asks for {module}.{name}; "
                "only numpy arrays and tuples are accepted"
            )
        return getter()


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def load_pickle_safely(path: str | Path) -> np.ndarray | tuple | list:
    """Load a pickle that holds numpy arrays: an array, a tuple/list of arrays, or a list of ints.

    The unpickler resolves only the numpy names an array needs (``_ALLOWED``), so a pickle that asks for
    anything else (``os.system``, a class of some package) is refused before any of it runs. Object
    arrays, dicts and other containers are refused after loading.
    """
    path = check_file(path, "pickle file")
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, path).load()
    except _Refused:
        raise
    except Exception as exc:  # a damaged or foreign file: pickle raises many types
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc

    def numeric(a) -> bool:
        return type(a) is np.ndarray and a.dtype.kind in "biuf"

    if numeric(obj):
        return obj
    if isinstance(obj, (tuple, list)) and obj and all(numeric(a) for a in obj):
        return obj
    if isinstance(obj, list) and all(_is_int(i) for i in obj):
        return obj
    what = f"an array of dtype {obj.dtype}" if isinstance(obj, np.ndarray) else f"a {type(obj).__name__}"
    raise ValueError(
        f"{path}: refused to load: the pickle holds {what}; only numeric numpy arrays, tuples of them "
        "and lists of ints are accepted"
    )


def _single(path: Path, values: np.ndarray, what: str) -> float:
    uniq = np.unique(values)
    if len(uniq) != 1:
        shown = ", ".join(str(v) for v in uniq[:5]) + (", …" if len(uniq) > 5 else "")
        raise ValueError(f"{path}: particles have {len(uniq)} different {what} ({shown}); expected one")
    return float(str(uniq[0]))  # float32 2.95 reads as 2.95


def read_ctf_pkl(path: str | Path) -> tuple[dict[str, np.ndarray], float, int]:
    """CTF parameters of a cryoDRGN ``ctf.pkl``.

    Returns
    -------
    ``(ctf, pixel_size, box)``: RELION-named `(N,)` float64 arrays (``CTF_FIELDS``; B-factor 0), the
    pixel size in Å and the box in pixels the file states (its ``Apix`` and ``D`` columns).
    """
    path = Path(path)
    arr = load_pickle_safely(path)
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 9 or len(arr) == 0:
        got = f"shape {arr.shape}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
        raise ValueError(f"{path}: not a cryoDRGN CTF file: expected an (N, 9) array {_CTF_LAYOUT}, got {got}")
    box_f = _single(path, arr[:, 0], "box sizes (column D)")
    if box_f != int(box_f) or box_f <= 0:
        raise ValueError(f"{path}: column D (box size in pixels) is {box_f}, not a positive whole number")
    pixel_size = _single(path, arr[:, 1], "pixel sizes (column Apix)")
    ctf = {name: arr[:, 2 + i].astype(np.float64) for i, name in enumerate(_CTF_COLUMNS)}
    ctf["rlnCtfBfactor"] = np.zeros(len(arr))
    return {name: ctf[name] for name in CTF_FIELDS}, pixel_size, int(box_f)


def ctf_to_cryodrgn(ctf: dict[str, np.ndarray], box: int, pixel_size: float) -> np.ndarray:
    """cryoDRGN's `(N, 9)` float32 CTF array from RELION-named CTF fields (defaults for missing optional ones)."""
    n = len(ctf["rlnDefocusU"])
    cols = [np.full(n, float(box)), np.full(n, float(pixel_size))]
    for name in _CTF_COLUMNS:
        value = ctf.get(name)
        cols.append(np.full(n, CTF_FIELDS[name]) if value is None else np.asarray(value, dtype=np.float64))
    return np.stack(cols, -1).astype(np.float32)


def _check_rotations(path: Path, rot: np.ndarray) -> None:
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"{path}: rotations have shape {rot.shape}; a cryoDRGN pose file has (N, 3, 3)")
    if not np.isfinite(rot).all():
        raise ValueError(f"{path}: rotation {int(np.flatnonzero(~np.isfinite(rot).all((1, 2)))[0]) + 1} holds NaN or "
                         "Inf values")
    err = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max(initial=0.0)
    if err > 1e-3 or np.any(np.linalg.det(rot) < 0):
        raise ValueError(f"{path}: not rotation matrices (RRᵀ differs from I by {err:.2g}, or det < 0)")


def read_pose_pkl(path: str | Path, box: int, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Poses of a cryoDRGN ``pose.pkl`` in RELION's conventions.

    ``box`` and ``pixel_size`` are those of the stack the poses belong to (``trans`` is a fraction of the
    box). Returns ``(rotations, origins)``: RELION's ``A`` `(N, 3, 3)` float64 and ``rlnOriginX/YAngst``
    `(N, 2)` float64 in Å (zeros when the file holds rotations only).
    """
    path = Path(path)
    obj = load_pickle_safely(path)
    if isinstance(obj, np.ndarray):
        obj = (obj,)
    if not isinstance(obj, (tuple, list)) or len(obj) not in (1, 2) or not isinstance(obj[0], np.ndarray):
        raise ValueError(f"{path}: not a cryoDRGN pose file: expected a tuple (rot (N, 3, 3), trans (N, 2))")
    rot = np.asarray(obj[0], dtype=np.float64)
    _check_rotations(path, rot)
    if len(obj) == 1:
        return rot, np.zeros((len(rot), 2))
    trans = np.asarray(obj[1], dtype=np.float64)
    if trans.shape != (len(rot), 2):
        raise ValueError(
            f"{path}: translations have shape {trans.shape}; with {len(rot)} rotations a cryoDRGN pose file "
            f"has ({len(rot)}, 2)"
        )
    if not np.isfinite(trans).all():
        raise ValueError(f"{path}: translation {int(np.flatnonzero(~np.isfinite(trans).all(1))[0]) + 1} holds NaN or "
                         "Inf values")
    return rot, trans * (box * pixel_size)


def poses_to_cryodrgn(
    rotations: np.ndarray, origins: np.ndarray | None, box: int, pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """cryoDRGN's ``(rot (N, 3, 3), trans (N, 2))`` float32 from RELION's ``A`` and origins in Å (None: 0)."""
    rotations = np.asarray(rotations, dtype=np.float64)
    if origins is None:
        origins = np.zeros((len(rotations), 2))
    trans = np.asarray(origins, dtype=np.float64) / (box * pixel_size)
    return rotations.astype(np.float32), trans.astype(np.float32)


class _Numpy1CompatiblePickler(pickle._Pickler):
    """Pickles numpy 1 and 2 can both read: numpy 2's ``numpy._core.*`` names written as ``numpy.core.*``.

    numpy < 1.26 cannot import ``numpy._core``, and cryoDRGN installs often pin an older numpy; every numpy
    reads ``numpy.core.*`` (numpy 2 keeps it as an alias). Protocol 3 writes globals as text (GLOBAL).
    """

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module == "numpy._core" or module.startswith("numpy._core."):
            qualname = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"numpy.core{module[len('numpy._core') :]}\n{qualname}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _write_pickle(path: Path, obj, force: bool) -> Path:
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as fh:
            _Numpy1CompatiblePickler(fh, protocol=3).dump(obj)
    return path


def write_ctf_pkl(
    path: str | Path, ctf: dict[str, np.ndarray], box: int, pixel_size: float, force: bool = False
) -> Path:
    """Write cryoDRGN's ``ctf.pkl`` `(N, 9)` float32 from RELION-named CTF fields (atomically)."""
    return _write_pickle(Path(path), ctf_to_cryodrgn(ctf, box, pixel_size), force)


def write_pose_pkl(
    path: str | Path,
    rotations: np.ndarray,
    origins: np.ndarray | None,
    box: int,
    pixel_size: float,
    force: bool = False,
) -> Path:
    """Write cryoDRGN's ``pose.pkl`` ``(rot, trans)`` from RELION's ``A`` and origins in Å (atomically)."""
    return _write_pickle(Path(path), poses_to_cryodrgn(rotations, origins, box, pixel_size), force)


def read_cryodrgn(
    stack_path: str | Path,
    ctf_pkl: str | Path | None = None,
    pose_pkl: str | Path | None = None,
    pixel_size: float | None = None,
) -> ParticleTable:
    """A particle table for one stack with cryoDRGN's ``ctf.pkl`` (and ``pose.pkl``): image ``i`` is row ``i``.

    The pixel size is ``pixel_size`` when given, else the ``ctf.pkl``'s (rescaled as cryoDRGN does when the
    stack was downsampled: ``D · Apix / box``), else the stack header's. Without ``ctf_pkl`` the table has no
    CTF (``ctf_missing`` lists the required fields).
    """
    stack = Path(stack_path)
    images = Stack(stack)
    if images.truncated:  # every image of a bare stack is a particle; checked before a row is made for each
        raise ValueError(f"{stack}: truncated: the header declares {images.declared:,} images of {images.box} × "
                         f"{images.box} pixels, the file holds only {len(images):,} complete ones")
    n, box, voxel = len(images), images.box, images.header_pixel_size
    ctf = None
    ctf_missing = [name for name, default in CTF_FIELDS.items() if default is None]
    if ctf_pkl is not None:
        ctf_pkl = Path(ctf_pkl)
        ctf, ctf_pixel, ctf_box = read_ctf_pkl(ctf_pkl)
        _check_rows(ctf_pkl, len(ctf["rlnDefocusU"]), stack, n)
        ctf_missing = []
        if pixel_size is None:
            check_pixel_size(ctf_pixel, f"{ctf_pkl} (column Apix)")
            pixel_size = ctf_pixel if ctf_box == box else ctf_box * ctf_pixel / box
    lo, hi = PIXEL_SIZE_RANGE
    if pixel_size is None and voxel != 1.0 and lo <= voxel <= hi:  # 0 and 1 Å: what tools write when they do not know
        pixel_size = voxel
    rotations = origins = None
    if pose_pkl is not None:
        pose_pkl = Path(pose_pkl)
        if pixel_size is None:
            raise ValueError(
                f"{pose_pkl}: the pixel size is unknown (no ctf.pkl, and the header of {stack} says {voxel:g} Å, "
                "an 'unset' value); give it with --pixel-size"
            )
        rotations, origins = read_pose_pkl(pose_pkl, box, pixel_size)
        _check_rows(pose_pkl, len(rotations), stack, n)
    return ParticleTable(
        source=stack,
        stacks=[stack],
        stack_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n, dtype=np.int64),
        pixel_size=pixel_size,
        box=box,
        ctf=ctf,
        ctf_missing=ctf_missing,
        ctf_source=None if ctf_pkl is None else Path(ctf_pkl),
        rotations=rotations,
        origins=origins,
    )


def _check_rows(pkl: Path, rows: int, stack: Path, images: int) -> None:
    if rows != images:
        raise ValueError(
            f"{pkl}: {rows} particles, but the stack {stack} has {images} images; the pickle must have one row "
            "per image, in stack order (apply cryoDRGN's --ind subset to the stack or use the matching pickle)"
        )
