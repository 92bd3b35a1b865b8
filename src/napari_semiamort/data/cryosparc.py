"""cryoSPARC ``.cs`` particle files: read into and write from a :class:`ParticleTable`.

A ``.cs`` file is a numpy ``.npy`` structured array, one row per particle, with fields such as ``uid``,
``blob/path``, ``blob/idx``, ``ctf/df1_A`` and ``alignments3D/pose``. Conventions, established against
cryoDRGN's own converters on real files (``tests/test_cryosparc.py``; cryoDRGN's ``parse_pose_star`` output
equals RELION's ``A`` and origins exactly, see ``tests/test_cryodrgn.py``):

- ``blob/idx`` is 0-based. ``blob/path`` is bytes; a leading ``>`` marks a path relative to the cryoSPARC
  project folder (resolved like a RELION project-relative path, see :func:`resolve_stacks`).
- ``alignments3D/pose`` ``ω`` `(N, 3)` is an axis-angle vector in radians and RELION's matrix is
  ``A = exp([ω]×)ᵀ = exp(−[ω]×)``: cryoSPARC's rotation maps image to volume coordinates. Golden pair
  ``cryosparc_P12_J24_001_particles.cs`` → cryoDRGN ``pose.pkl``: max |Δ| 4.4e-7 over 2,019 particles.
- ``alignments3D/shift`` `(N, 2)` is in pixels of ``alignments3D/psize_A`` (``blob/psize_A`` when absent)
  with RELION's sign: ``rlnOriginX/YAngst = shift · psize_A`` (the image is the projection shifted by
  −shift). Same golden pair: cryoDRGN's ``trans = shift / D`` to 3.6e-9, and its RELION converter gives
  ``trans = rlnOriginX/Y / D``.
- CTF: ``df1_A``/``df2_A`` → ``rlnDefocusU``/``V`` (Å), ``df_angle_rad`` → ``rlnDefocusAngle`` (degrees),
  ``accel_kv``, ``cs_mm``, ``amp_contrast``, ``phase_shift_rad`` → ``rlnPhaseShift`` (degrees).
- ``ctf/bfactor`` is **not** read as ``rlnCtfBfactor`` (which is set to 0): no real file here carries a
  non-zero value, so its sign and scale against RELION's ``exp(−B k²/4)`` envelope could not be checked.
  The raw values travel in ``table.extra["ctf/bfactor"]`` and are written back unchanged.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .checks import check_file, check_pixel_size
from .mrc import Stack
from .particles import CTF_FIELDS, ParticleTable, resolve_stacks

__all__ = ["read_cs", "write_cs"]

# cryoSPARC field → (RELION name, factor to RELION's unit). The first five are required for a CTF.
_CTF_FROM_CS: dict[str, tuple[str, float]] = {
    "ctf/df1_A": ("rlnDefocusU", 1.0),
    "ctf/df2_A": ("rlnDefocusV", 1.0),
    "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / np.pi),
    "ctf/accel_kv": ("rlnVoltage", 1.0),
    "ctf/cs_mm": ("rlnSphericalAberration", 1.0),
    "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
    "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / np.pi),
}
_CTF_REQUIRED = list(_CTF_FROM_CS)[:5]

# Per-particle fields carried in ``table.extra`` under their cryoSPARC names and written back by write_cs.
_EXTRA_FIELDS = ("blob/sign", "ctf/bfactor", "ctf/exp_group_id", "ctf/scale", "ctf/scale_const")
_EXTRA_PREFIXES = ("location/",)

_JOB = re.compile(r"J\d+")


def _as_float(value: np.floating) -> float:
    """A float32 value as the decimal it was written as (2.95, not 2.9500000477)."""
    return float(str(np.float32(value)))


def _as_float_array(values: np.ndarray) -> np.ndarray:
    """float64 copy of a float32 column, each value read as the decimal it was written as."""
    uniq, inverse = np.unique(np.asarray(values, dtype=np.float32), return_inverse=True)
    return np.array([_as_float(u) for u in uniq], dtype=np.float64)[inverse.reshape(-1)]


def _load_structured(path: Path) -> dict[str, np.ndarray]:
    """The fields of a ``.cs`` file as a dict of column arrays; clear errors for anything else."""
    check_file(path, "cryoSPARC .cs file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a cryoSPARC .cs file (numpy cannot read it as an array: {exc})") from exc
    if not isinstance(data, np.ndarray):  # an .npz archive
        data.close()
        raise ValueError(f"{path}: not a cryoSPARC .cs file (an .npz archive, not one structured array)")
    if data.dtype.names is None or data.ndim != 1:
        raise ValueError(
            f"{path}: not a cryoSPARC .cs file (expected a 1D numpy structured array with fields such as "
            f"blob/path; got a plain {data.dtype} array of shape {data.shape})"
        )
    if len(data) == 0:
        raise ValueError(f"{path}: no particles (the file has 0 rows; fields: {', '.join(data.dtype.names[:5])}, …)")
    return {name: data[name] for name in data.dtype.names}


def _find_passthrough(path: Path) -> Path | None:
    """The passthrough file of ``path``'s job next to it, when exactly one matches; else None.

    cryoSPARC names it ``J24_passthrough_particles.cs`` or ``P12_J24_passthrough_particles.cs`` beside
    ``cryosparc_P12_J24_001_particles.cs``: same folder, ``passthrough`` in the name, same job token.
    """
    if "passthrough" in path.name:
        return None
    jobs = [t for t in path.stem.split("_") if _JOB.fullmatch(t)]
    if len(jobs) != 1:
        return None
    candidates = [
        p
        for p in path.parent.glob("*.cs")
        if p.name != path.name and "passthrough" in p.name and jobs[0] in p.stem.split("_")
    ]
    return candidates[0] if len(candidates) == 1 else None


def _merge_passthrough(path: Path, fields: dict[str, np.ndarray], passthrough: Path) -> None:
    """Add the passthrough file's fields that ``fields`` lacks, matched row by row through ``uid``."""
    extra = _load_structured(passthrough)
    new = [name for name in extra if name not in fields]
    if not new:
        return
    for where, f in ((path, fields), (passthrough, extra)):
        if "uid" not in f:
            raise ValueError(f"{path}: cannot merge the passthrough file {passthrough}: {where} has no uid field")
    uid = fields["uid"].astype(np.uint64)
    pt_uid = extra["uid"].astype(np.uint64)
    order = np.argsort(pt_uid, kind="stable")
    sorted_uid = pt_uid[order]
    if np.any(sorted_uid[1:] == sorted_uid[:-1]):
        raise ValueError(f"{path}: the passthrough file {passthrough} repeats particle uids; it cannot be matched")
    pos = np.minimum(np.searchsorted(sorted_uid, uid), len(sorted_uid) - 1)
    found = sorted_uid[pos] == uid
    if not found.all():
        first = int(uid[~found][0])
        raise ValueError(
            f"{path}: {int((~found).sum())} of {len(uid)} particle uids (first {first}) are not in the passthrough "
            f"file {passthrough}; give the passthrough file of the same job"
        )
    rows = order[pos]
    for name in new:
        fields[name] = extra[name][rows]


def _stack_paths(
    path: Path, raw: np.ndarray, datadir: str | Path | None, require: bool
) -> tuple[list[Path], np.ndarray]:
    """Resolved stacks (in order of first appearance) and each particle's stack index `(N,)`."""
    if raw.dtype.kind == "S":
        names_all = np.char.decode(raw, "utf-8")
    elif raw.dtype.kind == "U":
        names_all = raw
    else:
        raise ValueError(f"{path}: blob/path holds {raw.dtype} values, not file names")
    uniq, first, inverse = np.unique(names_all, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    names = [str(uniq[i]) for i in order]
    # A leading ">" means "relative to the cryoSPARC project folder": the folder above the job folders.
    names = [n[1:] if n.startswith(">") else n for n in names]
    return resolve_stacks(path, names, datadir, require=require), rank[inverse.reshape(-1)].astype(np.int64)


def _image_indices(path: Path, idx: np.ndarray) -> np.ndarray:
    """``blob/idx`` as 0-based int64 image indices; a one-line error for anything else."""
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise ValueError(f"{path}: blob/idx holds {idx.dtype} values of shape {idx.shape}, not image indices")
    index = idx.astype(np.int64)
    if index.size and index.min() < 0:
        raise ValueError(f"{path}: blob/idx holds {index.min()} in row {int(np.argmin(index)) + 1}; "
                         "image indices start at 0")
    return index


def _single_pixel_size(path: Path, psize: np.ndarray) -> float:
    values = np.unique(np.asarray(psize, dtype=np.float32))
    if len(values) != 1:
        shown = ", ".join(str(v) for v in values[:5]) + (", …" if len(values) > 5 else "")
        raise ValueError(
            f"{path}: particles have {len(values)} different pixel sizes (blob/psize_A: {shown}); "
            "split the file by pixel size (one optics group at a time)"
        )
    return check_pixel_size(_as_float(values[0]), f"{path}: blob/psize_A")


def _single_box(path: Path, shape: np.ndarray) -> int:
    shapes = np.unique(np.asarray(shape).reshape(len(shape), -1), axis=0)
    if len(shapes) != 1 or len(set(shapes[0].tolist())) != 1:
        shown = ", ".join("×".join(str(int(v)) for v in s) for s in shapes[:5])
        raise ValueError(f"{path}: particles must be square and all the same size (blob/shape: {shown})")
    return int(shapes[0][0])


def read_cs(
    path: str | Path,
    passthrough: str | Path | bool | None = None,
    datadir: str | Path | None = None,
    require_stacks: bool = True,
) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file.

    Parameters
    ----------
    path
        The ``.cs`` file (e.g. ``J24/cryosparc_P12_J24_005_particles.cs``).
    passthrough
        Its ``*_passthrough_particles*.cs`` file, whose fields fill in those the main file lacks (matched by
        ``uid``). ``None``: use the one next to ``path`` when exactly one matches its job; ``False``: none.
    datadir
        Folder that relative stack paths are resolved against (default: found next to or above ``path``).
    require_stacks
        False: keep missing stacks as paths instead of raising (converting metadata without the images).

    Returns
    -------
    A :class:`ParticleTable` with RELION conventions (module docstring). ``ctf`` is None and
    ``ctf_missing`` names the missing RELION fields when the file lacks a required CTF field;
    ``rotations`` `(N, 3, 3)` and ``origins`` `(N, 2)` (Å) come from ``alignments3D/*`` when present.
    """
    path = Path(path)
    fields = _load_structured(path)
    if passthrough is None:
        passthrough = _find_passthrough(path)
    if passthrough:
        _merge_passthrough(path, fields, Path(passthrough))
    n = len(fields[next(iter(fields))])

    for name in ("blob/path", "blob/idx"):
        if name not in fields:
            raise ValueError(
                f"{path}: no {name} field, so the particle images cannot be found (is this a particle .cs? "
                "a job's passthrough file may hold it: pass it as passthrough)"
            )
    if "blob/psize_A" not in fields:
        raise ValueError(f"{path}: no blob/psize_A field (the pixel size of the particle images)")
    stacks, stack_index = _stack_paths(path, fields["blob/path"], datadir, require_stacks)
    image_index = _image_indices(path, fields["blob/idx"])
    pixel_size = _single_pixel_size(path, fields["blob/psize_A"])
    box = _single_box(path, fields["blob/shape"]) if "blob/shape" in fields else None

    ctf_missing = [_CTF_FROM_CS[name][0] for name in _CTF_REQUIRED if name not in fields]
    ctf = None
    if not ctf_missing:
        ctf = {rln: np.full(n, default, dtype=np.float64) for rln, default in CTF_FIELDS.items() if default is not None}
        for name, (rln, factor) in _CTF_FROM_CS.items():
            if name in fields:
                ctf[rln] = fields[name].astype(np.float64) * factor
        ctf = {rln: ctf[rln] for rln in CTF_FIELDS}  # CTF_FIELDS' order

    rotations = origins = None
    if "alignments3D/pose" in fields:
        rotations = _rotvec_to_matrix(-fields["alignments3D/pose"].astype(np.float64).reshape(n, 3))
    if "alignments3D/shift" in fields:
        psize = fields.get("alignments3D/psize_A", fields["blob/psize_A"])
        origins = fields["alignments3D/shift"].astype(np.float64).reshape(n, 2) * _as_float_array(psize)[:, None]

    extra = {
        name: np.array(v) for name, v in fields.items() if name in _EXTRA_FIELDS or name.startswith(_EXTRA_PREFIXES)
    }
    return ParticleTable(
        source=path,
        stacks=stacks,
        stack_index=stack_index,
        image_index=image_index,
        pixel_size=pixel_size,
        box=box,
        ctf=ctf,
        ctf_missing=ctf_missing,
        rotations=rotations,
        origins=origins,
        uid=fields["uid"].astype(np.uint64) if "uid" in fields else None,
        extra=extra,
    )


def _rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    """Rotation matrices `(N, 3, 3)` float64 from axis-angle vectors `(N, 3)` (radians)."""
    import torch

    from ..physics.so3 import exp_so3

    return exp_so3(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))).numpy()


def _matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    """Axis-angle vectors `(N, 3)` (radians, angle in [0, π]) of rotation matrices `(N, 3, 3)`."""
    import torch

    from ..physics.so3 import log_so3

    return log_so3(torch.from_numpy(np.ascontiguousarray(r, dtype=np.float64))).numpy()


def _make_uids(table: ParticleTable) -> np.ndarray:
    """Unique uint64 particle ids, reproducible for the same images (cryoSPARC's are random 64-bit)."""
    digest = hashlib.sha256("\n".join(table.image_names()).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    while True:
        uid = rng.integers(0, np.iinfo(np.uint64).max, size=len(table), dtype=np.uint64, endpoint=True)
        if len(np.unique(uid)) == len(uid):
            return uid


def write_cs(
    path: str | Path,
    table: ParticleTable,
    rotations: np.ndarray | None = None,
    origins: np.ndarray | None = None,
    force: bool = False,
) -> Path:
    """Write ``table`` as a cryoSPARC particle ``.cs`` file (atomically).

    Fields: ``uid`` (the table's, else reproducible random ids), ``blob/path`` (absolute paths of the
    table's stacks), ``blob/idx`` (0-based), ``blob/shape``, ``blob/psize_A``; ``ctf/*`` when the table has
    a CTF; ``alignments3D/pose``, ``/shift`` (pixels) and ``/psize_A`` from ``rotations`` `(N, 3, 3)` and
    ``origins`` `(N, 2)` (Å, RELION's conventions) or else the table's, omitted when there are none; and the
    cryoSPARC fields carried in ``table.extra`` (``location/*``, ``ctf/bfactor``, …).
    """
    path = Path(path)
    n = len(table)
    rotations = table.rotations if rotations is None else np.asarray(rotations, dtype=np.float64)
    origins = table.origins if origins is None else np.asarray(origins, dtype=np.float64)
    if rotations is not None and rotations.shape != (n, 3, 3):
        raise ValueError(f"{path}: rotations have shape {rotations.shape}, the table needs ({n}, 3, 3)")
    if origins is not None and origins.shape != (n, 2):
        raise ValueError(f"{path}: origins have shape {origins.shape}, the table needs ({n}, 2)")
    if table.pixel_size is None:
        raise ValueError(f"{path}: the particle table has no pixel size, which cryoSPARC needs; give the pixel size")
    pixel_size = float(table.pixel_size)
    box = table.box if table.box is not None else Stack(table.stacks[0]).box

    names = [str(p.resolve()).encode() for p in table.stacks]
    columns: dict[str, np.ndarray] = {
        "uid": table.uid if table.uid is not None else _make_uids(table),
        "blob/path": np.array(names, dtype=f"S{max(len(s) for s in names)}")[table.stack_index],
        "blob/idx": table.image_index.astype(np.uint32),
        "blob/shape": np.full((n, 2), box, dtype=np.uint32),
        "blob/psize_A": np.full(n, pixel_size, dtype=np.float32),
    }
    if table.ctf is not None:
        for name, (rln, factor) in _CTF_FROM_CS.items():
            value = table.ctf.get(rln)
            if value is None:
                value = np.full(n, CTF_FIELDS[rln])
            columns[name] = (np.asarray(value, dtype=np.float64) / factor).astype(np.float32)
    if rotations is not None:
        columns["alignments3D/pose"] = _matrix_to_rotvec(np.swapaxes(rotations, -1, -2)).astype(np.float32)
        shift = np.zeros((n, 2)) if origins is None else origins / pixel_size
        columns["alignments3D/shift"] = shift.astype(np.float32)
        columns["alignments3D/psize_A"] = np.full(n, pixel_size, dtype=np.float32)
    for name, value in table.extra.items():
        value = np.asarray(value)
        if value.dtype.kind == "U":
            value = np.char.encode(value, "utf-8")
        if "/" in name and name not in columns and value.dtype.kind in "biufS":
            columns[name] = value

    dtype = [(name, v.dtype, v.shape[1:]) for name, v in columns.items()]
    out = np.zeros(n, dtype=dtype)
    for name, value in columns.items():
        out[name] = value
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, out)
    return path
