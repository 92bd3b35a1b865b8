"""RELION STAR particle files: 3.0 style (one table) and 3.1/4/5 style (``data_optics`` + ``data_particles``).

Reading (:func:`read_star`) gives a :class:`~napari_semiamort.data.particles.ParticleTable`:

- ``rlnImageName`` is ``index@stack`` (index 1-based); relative stack paths are resolved against
  ``datadir``, else the STAR's folder or its parents (a RELION project folder), else the working directory.
- Optics-group values (voltage, Cs, amplitude contrast, pixel and image size, phase-flip and premultiply
  flags) are merged into each particle; a 3.0 file carries them per particle. The pixel size is
  ``rlnImagePixelSize``, else ``rlnDetectorPixelSize`` (µm) · 10⁴ / ``rlnMagnification``.
- Origins: ``rlnOriginX/YAngst`` (Å); in files that only have the old ``rlnOriginX/Y`` (pixels) those are
  used, times the pixel size (RELION 3.1 ignores them in a file with an optics table, but a file that
  has nothing else means them).
- Angles equal to −999 (RELION's "unset") mean no pose.

Writing (:func:`write_star`) gives a RELION 3.1 file (``# version 30001``) that RELION 3.1–5 read: an
optics table (one group per distinct set of optics values, the input's names kept), the particles with
absolute image paths (RELION resolves them against its working directory), angles, origins in Å, the CTF
and every other column the input had.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .checks import check_file, check_pixel_size
from .particles import CTF_FIELDS, ParticleTable, resolve_stacks

__all__ = ["read_star", "read_star_columns", "write_star"]

# Per-particle values a 3.1 file keeps in its optics table.
_OPTICS_FIELDS = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnCtfDataArePhaseFlipped",
    "rlnCtfDataAreCtfPremultiplied",
)
# Columns the reader turns into table fields (not carried through as extra columns).
_CONSUMED = {
    "rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
    "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup", "rlnMagnification", "rlnDetectorPixelSize",
    *CTF_FIELDS, *_OPTICS_FIELDS,
}
_UNSET = -999.0
log = logging.getLogger("napari_semiamort")


def _read_blocks(path: Path) -> dict:
    import starfile  # pandas is heavy: imported only where STAR files are read

    text = _check_text(check_file(path, "STAR file"))
    try:
        return starfile.read(path, always_dict=True)
    except Exception as exc:
        raise ValueError(f"{path}: {_first_ragged_row(text) or f'not a readable STAR file ({exc})'}") from exc


_HEADER = re.compile(r"^[ \t]*(data_\S*|loop_|_\S+)", re.MULTILINE)
_CONTENT = re.compile(r"^[ \t]*[^#\s]", re.MULTILINE)  # a line that is neither blank nor a comment


def _check_text(path: Path) -> str:
    """The STAR file's text, after the checks starfile does not make (it reads past them silently): UTF-8
    throughout, each block name and each column of a block once, no block without content."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}: line {line} holds bytes that are not UTF-8 text ({raw[exc.start:exc.end]!r} at "
                         f"byte {exc.start}); save the file as UTF-8") from exc
    seen: dict[str, int] = {}  # block names → line
    columns: dict[str, int] = {}  # this block's columns (or keys) → line
    block, line, start, end, in_rows = None, 1, 0, 0, False

    def empty(until: int) -> bool:  # the current block so far holds no column, key or row
        return block is not None and not columns and _CONTENT.search(text, end, until) is None

    for m in _HEADER.finditer(text):
        line, start = line + text.count("\n", start, m.start()), m.start()
        rows_before = _CONTENT.search(text, end, m.start()) is not None  # lines since the last header
        end = text.find("\n", m.end()) % (len(text) + 1)  # the header line's end (the text's, for the last)
        token = m.group(1)
        if token.startswith("data_"):
            if empty(start):
                raise ValueError(f"{path}: block {block} (line {seen[block]}) is empty: no loop_ and no values")
            if token in seen:
                raise ValueError(f"{path}: block {token} appears twice (lines {seen[token]} and {line})")
            block, columns, in_rows = token, {}, False
            seen[token] = line
        elif token == "loop_":
            columns, in_rows = {}, False
        elif block is None or in_rows or rows_before and columns:
            in_rows = True  # a value in a loop's row that starts with "_", not a column
        elif token in columns:
            raise ValueError(f"{path}: column {token} appears twice in {block} (lines {columns[token]} and {line})")
        else:
            columns[token] = line
    if empty(len(text)):
        raise ValueError(f"{path}: block {block} (line {seen[block]}) is empty: no loop_ and no values")
    return text


def _first_ragged_row(text: str) -> str | None:
    """Where a loop's row has more or fewer values than the loop has columns (only for a file starfile could not
    read: this walks every line); None where none is found (values in quotes are not counted)."""
    block, ncols, in_header = "", 0, False
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0].startswith("data_"):
            block, ncols, in_header = words[0], 0, False
        elif words[0] == "loop_":
            ncols, in_header = 0, True
        elif in_header and words[0].startswith("_"):
            ncols += 1
        elif ncols:
            in_header = False
            if len(words) != ncols and '"' not in line and "'" not in line:
                return f"line {number} has {len(words)} values, the loop of {block} has {ncols} columns"
    return None


def _particle_block(path: Path, blocks: dict):
    if not blocks:
        raise ValueError(f"{path}: no data_ block: an empty file, or not a STAR file")
    if "particles" in blocks and hasattr(blocks["particles"], "columns"):
        table = blocks["particles"]
    else:
        tables = [b for b in blocks.values() if hasattr(b, "columns") and "rlnImageName" in b.columns]
        if not tables:
            listed = ", ".join(f"data_{k}" for k in blocks) or "none"
            raise ValueError(
                f"{path}: no particle table with an rlnImageName column (blocks: {listed}); "
                "the STAR does not say where the images are"
            )
        table = tables[0]
    if len(table) == 0:
        raise ValueError(f"{path}: the particle table is empty")
    if "rlnImageName" not in table.columns:
        raise ValueError(f"{path}: the particle table has no rlnImageName column: the STAR does not say where "
                         "the images are")
    return table


def _as_table(block):
    """A STAR block as a DataFrame: a key-value block (``data_optics`` without ``loop_``) is one row."""
    import pandas as pd

    if isinstance(block, dict):
        return pd.DataFrame([block])
    return block


def read_star_columns(path: str | Path) -> dict[str, np.ndarray]:
    """The particle table's columns as arrays, optics-group values merged into each particle.

    ``_optics`` holds each group's row of ``data_optics`` (every column), keyed by group number.
    """
    path = Path(path)
    blocks = _read_blocks(path)
    particles = _particle_block(path, blocks)
    cols = {c: particles[c].to_numpy() for c in particles.columns}
    optics = blocks.get("optics")
    if optics is not None:
        optics = _as_table(optics)
        if len(optics) == 0:
            raise ValueError(f"{path}: data_optics has columns but no rows (no optics group is defined)")
    if optics is not None and len(optics):
        if "rlnOpticsGroup" not in optics.columns:
            if len(optics) > 1:
                raise ValueError(f"{path}: data_optics has {len(optics)} rows but no rlnOpticsGroup column")
            optics = optics.assign(rlnOpticsGroup=1)
        groups = _numbers(path, "rlnOpticsGroup (data_optics)", optics["rlnOpticsGroup"], np.int64)
        if len(set(groups.tolist())) != len(groups):
            raise ValueError(f"{path}: data_optics defines an optics group twice ({sorted(groups.tolist())})")
        if "rlnOpticsGroup" not in cols:
            if len(optics) > 1:
                raise ValueError(f"{path}: {len(optics)} optics groups but the particles have no rlnOpticsGroup")
            cols["rlnOpticsGroup"] = np.full(len(particles), int(groups[0]))
        particle_groups = _numbers(path, "rlnOpticsGroup", cols["rlnOpticsGroup"], np.int64)
        cols["rlnOpticsGroup"] = particle_groups
        unknown = sorted(set(np.unique(particle_groups).tolist()) - set(groups.tolist()))
        if unknown:
            raise ValueError(f"{path}: particles refer to optics groups {unknown} that data_optics does not define")
        order = np.argsort(groups)
        row = order[np.searchsorted(groups[order], particle_groups)]
        for name in optics.columns:
            if name not in cols and name in _OPTICS_FIELDS:
                cols[name] = optics[name].to_numpy()[row]
        records = optics.to_dict("records")
        cols["_optics"] = {int(g): rec for g, rec in zip(groups.tolist(), records, strict=True)}
    return cols


def _numbers(path: Path, name: str, values, dtype=np.float64) -> np.ndarray:
    """A column as numbers, or a one-line error naming the file and the column."""
    try:
        v = np.asarray(values).astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column {name} holds a value that is not a number ({exc})") from exc
    if dtype is np.int64:
        if not np.isfinite(v).all() or (v != np.round(v)).any():
            raise ValueError(f"{path}: column {name} holds a value that is not a whole number")
        return v.astype(np.int64)
    return v


def _single_value(path: Path, name: str, values: np.ndarray, rel_tol: float) -> float:
    v = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{path}: {name} is {v[bad[0]]:g} in row {bad[0] + 1} ({bad.size} such rows); "
                         "give the pixel size with --pixel-size")
    lo, hi = float(v.min()), float(v.max())
    if hi - lo > rel_tol * max(abs(hi), 1e-12):
        raise ValueError(f"{path}: {name} differs between particles ({lo:g} to {hi:g}); "
                         "split the file by optics group and run each part")
    if hi > lo:
        log.warning("%s: %s ranges from %g to %g (within %g%%): using the median %g", path, name, lo, hi,
                    100 * rel_tol, float(np.median(v)))
    return float(np.median(v))


def read_star(path: str | Path, datadir: str | Path | None = None, pixel_size: float | None = None,
              require_stacks: bool = True) -> ParticleTable:
    """A RELION particle STAR as a :class:`ParticleTable` (``pixel_size`` overrides the file's).

    ``require_stacks=False`` reads the metadata even when the stacks are not there (conversion only).
    """
    path = Path(path)
    cols = read_star_columns(path)
    optics_rows = cols.pop("_optics", {})
    n = len(cols["rlnImageName"])
    image_index, stack_names, stack_index = _image_names(path, cols["rlnImageName"])
    stacks = resolve_stacks(path, stack_names, datadir, require_stacks)
    pixel_size = _pixel_size(path, cols, pixel_size)
    box = None
    if "rlnImageSize" in cols:
        sizes = np.unique(_numbers(path, "rlnImageSize", cols["rlnImageSize"], np.int64))
        if len(sizes) > 1:
            raise ValueError(f"{path}: mixed box sizes {sizes.tolist()} in rlnImageSize; "
                             "re-extract or split the file so all images have one size")
        box = int(sizes[0])

    # CTF (its values are checked where they are used: ParticleDataset, with use_ctf).
    missing = [c for c, d in CTF_FIELDS.items() if d is None and c not in cols]
    ctf = None
    if not missing:
        ctf = {c: _numbers(path, c, cols[c]) if c in cols else np.full(n, d, dtype=np.float64)
               for c, d in CTF_FIELDS.items()}

    def whole(name):
        return _numbers(path, name, cols[name], np.int64) if name in cols else None

    flipped, premultiplied = whole("rlnCtfDataArePhaseFlipped"), whole("rlnCtfDataAreCtfPremultiplied")
    rotations, origins = _poses(path, cols, n, pixel_size)
    # Everything else is carried through; so are the CTF columns of an incomplete CTF (used with --no-ctf).
    consumed = _CONSUMED - (set(CTF_FIELDS) if ctf is None else set())
    extra = {c: np.asarray(v) for c, v in cols.items() if c not in consumed}
    return ParticleTable(
        source=path, stacks=stacks, stack_index=stack_index, image_index=image_index, pixel_size=pixel_size,
        box=box, ctf=ctf, ctf_missing=missing,
        phase_flipped=np.zeros(n, bool) if flipped is None else flipped != 0,
        ctf_premultiplied=np.zeros(n, bool) if premultiplied is None else premultiplied != 0,
        rotations=rotations, origins=origins, optics_group=whole("rlnOpticsGroup"), optics=optics_rows, extra=extra,
    )


def _image_names(path: Path, column) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``rlnImageName`` (``index@stack``): each image's 0-based index, the stack names, each image's stack."""
    names = np.asarray(column).astype(str)
    at = np.char.find(names, "@")
    bad = np.flatnonzero(at < 1)
    if bad.size:
        raise ValueError(f"{path}: rlnImageName {str(names[bad[0]])!r} (row {bad[0] + 1}) is not of the form "
                         "index@stack")
    parts = np.char.partition(names, "@")
    try:
        image_index = parts[:, 0].astype(np.int64) - 1
    except ValueError as exc:
        raise ValueError(f"{path}: rlnImageName has a non-integer image index ({exc})") from exc
    if (image_index < 0).any():
        raise ValueError(f"{path}: rlnImageName image indices start at 1; found {image_index.min() + 1}")
    stack_names, stack_index = np.unique(parts[:, 2], return_inverse=True)
    return image_index, [str(s) for s in stack_names], stack_index.reshape(-1).astype(np.int64)


def _pixel_size(path: Path, cols: dict, given: float | None) -> float | None:
    """``given`` (``--pixel-size``), else the file's: ``rlnImagePixelSize``, else ``rlnDetectorPixelSize`` (µm) ·
    10⁴ / ``rlnMagnification``; None where it has neither. Checked (:func:`check_pixel_size`)."""
    where = "--pixel-size"
    if given is None and "rlnImagePixelSize" in cols:
        where = f"{path}: rlnImagePixelSize"
        ps = _numbers(path, "rlnImagePixelSize", cols["rlnImagePixelSize"])
        given = _single_value(path, "rlnImagePixelSize", ps, 0.02)
    elif given is None and "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        where = f"{path}: rlnDetectorPixelSize / rlnMagnification"
        with np.errstate(divide="ignore", invalid="ignore"):  # a magnification of 0 is reported as Inf
            ps = (_numbers(path, "rlnDetectorPixelSize", cols["rlnDetectorPixelSize"]) * 1e4
                  / _numbers(path, "rlnMagnification", cols["rlnMagnification"]))
        given = _single_value(path, "pixel size (rlnDetectorPixelSize / rlnMagnification)", ps, 0.02)
    return None if given is None else check_pixel_size(given, where)


def _poses(path: Path, cols: dict, n: int, pixel_size: float | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The file's poses as ``(rotations, origins in Å)``, or ``(None, None)``: no angles, RELION's "unset"
    −999, or values that are not finite (reported; the poses only serve the pose-error log)."""
    angle_cols = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    if not all(c in cols for c in angle_cols):
        return None, None
    ang = np.stack([_numbers(path, c, cols[c]) for c in angle_cols], -1)
    if (ang == _UNSET).any():
        return None, None
    if "rlnOriginXAngst" in cols and "rlnOriginYAngst" in cols:
        origins = np.stack([_numbers(path, c, cols[c]) for c in ("rlnOriginXAngst", "rlnOriginYAngst")], -1)
    elif "rlnOriginX" in cols and "rlnOriginY" in cols and pixel_size is not None:
        origins = np.stack([_numbers(path, c, cols[c]) for c in ("rlnOriginX", "rlnOriginY")], -1) * pixel_size
    else:
        origins = np.zeros((n, 2))
    bad = np.flatnonzero(~np.isfinite(np.concatenate([ang, origins], -1)).all(-1))
    if bad.size:
        log.warning("%s: the angles or origins of row %d (%d rows in all) are not finite: the file's poses are "
                    "not used (they only serve the pose-error log)", path, bad[0] + 1, bad.size)
        return None, None
    return angles_to_matrices(ang), origins


def angles_to_matrices(angles_deg: np.ndarray) -> np.ndarray:
    """RELION Euler angles `(N, 3)` (rot, tilt, psi in degrees) → matrices A `(N, 3, 3)` float64."""
    import torch

    from ..physics.so3 import euler_relion_to_matrix

    a = torch.deg2rad(torch.as_tensor(np.asarray(angles_deg, dtype=np.float64)))
    return euler_relion_to_matrix(a[:, 0], a[:, 1], a[:, 2]).numpy()


def matrices_to_angles(rotations: np.ndarray) -> np.ndarray:
    """Matrices A `(N, 3, 3)` → RELION Euler angles `(N, 3)` in degrees (float64)."""
    import torch

    from ..physics.so3 import matrix_to_euler_relion

    r, t, p = matrix_to_euler_relion(torch.as_tensor(np.asarray(rotations, dtype=np.float64)))
    return torch.rad2deg(torch.stack([r, t, p], -1)).numpy()


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.6f}"
    if isinstance(v, (int, np.integer, bool, np.bool_)):
        return str(int(v))
    s = str(v)
    return f'"{s}"' if (not s or any(ch.isspace() for ch in s)) else s


def _column_text(values) -> np.ndarray:
    """A column as STAR cells (vectorised: a million-row table is written in seconds)."""
    v = np.asarray(values)
    if v.dtype.kind == "f":
        return np.char.mod("%.6f", v)
    if v.dtype.kind in "iub":
        return v.astype(np.int64).astype(str)
    return np.array([_fmt(x) for x in v.tolist()], dtype=object)


def write_star(
    path: str | Path,
    table: ParticleTable,
    rotations: np.ndarray | None = None,
    origins: np.ndarray | None = None,
    pixel_size: float | None = None,
    box: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    absolute_paths: bool = True,
    force: bool = False,
) -> Path:
    """Write ``table`` (with ``rotations`` / ``origins`` in Å when given) as a RELION 3.1 particle STAR.

    ``pixel_size`` and ``box`` describe the stack images the names point to (default: the table's).
    ``extra`` adds or replaces per-particle columns (e.g. ``rlnRandomSubset``). Image paths are absolute
    (RELION resolves them against its working directory) unless ``absolute_paths=False``, when they are
    written as the table holds them.
    """
    n = len(table)
    rotations = table.rotations if rotations is None else np.asarray(rotations, dtype=np.float64)
    origins = table.origins if origins is None else np.asarray(origins, dtype=np.float64)
    pixel_size = table.pixel_size if pixel_size is None else pixel_size
    box = table.box if box is None else box
    if box is None and table.stacks and table.stacks[0].is_file():
        from .mrc import Stack

        box = Stack(table.stacks[0]).box
    if pixel_size is None or box is None:
        raise ValueError(f"{path}: a RELION 3.1 STAR needs the pixel size and box of the images")
    ctf = dict(table.ctf) if table.ctf is not None else {}
    for c in _OPTICS_FIELDS[:3]:  # voltage, Cs, amplitude contrast: RELION needs them in every optics table
        if c not in ctf and c in table.extra:
            ctf[c] = _numbers(Path(path), c, table.extra[c])
    invented = [c for c in _OPTICS_FIELDS[:3] if c not in ctf]
    if invented and not table.optics:
        log.warning("%s: the input has no %s; writing RELION's usual values (300 kV, 2.7 mm, 0.1) so that "
                    "RELION reads the file: correct them before a refinement with CTF", path, ", ".join(invented))
    ctf.setdefault("rlnVoltage", np.full(n, 300.0))
    ctf.setdefault("rlnSphericalAberration", np.full(n, 2.7))
    ctf.setdefault("rlnAmplitudeContrast", np.full(n, 0.1))
    flipped = table.phase_flipped if table.phase_flipped is not None else np.zeros(n, bool)
    premult = table.ctf_premultiplied if table.ctf_premultiplied is not None else np.zeros(n, bool)

    in_group = table.optics_group if table.optics_group is not None else np.ones(n, np.int64)
    if table.optics and set(np.unique(in_group).tolist()) <= set(table.optics):
        # The input's optics groups, each row as it was: its own pixel size, beam tilt, aberrations, names.
        group = in_group
        rows = []
        for g in sorted(set(in_group.tolist())):
            row = {k: v for k, v in table.optics[g].items() if isinstance(k, str)}
            first = int(np.flatnonzero(in_group == g)[0])
            row["rlnOpticsGroup"] = g
            row.setdefault("rlnOpticsGroupName", f"opticsGroup{g}")
            for c in _OPTICS_FIELDS[:3]:
                row.setdefault(c, float(ctf[c][first]))
            own = row.get("rlnImagePixelSize")
            if own is None or not abs(float(own) / pixel_size - 1) <= 0.02:  # absent, or overridden by the user
                row["rlnImagePixelSize"] = float(pixel_size)
            row.setdefault("rlnImageSize", int(box))
            row.setdefault("rlnImageDimensionality", 2)
            if flipped[first]:
                row["rlnCtfDataArePhaseFlipped"] = 1
            if premult[first]:
                row["rlnCtfDataAreCtfPremultiplied"] = 1
            rows.append(row)
        first_cols = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
                      "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"]
        optics_cols = first_cols + [c for r in rows for c in r if c not in first_cols]
        optics_cols = list(dict.fromkeys(optics_cols))
        missing_cells = [c for c in optics_cols if any(c not in r for r in rows)]
        if missing_cells:
            raise ValueError(f"{path}: optics groups differ in their columns ({', '.join(missing_cells)})")
        optics_lines = [" ".join(_fmt(r[c]) for c in optics_cols) for r in rows]
    else:
        # One group per distinct (input group, voltage, Cs, amplitude contrast, flags).
        keys = np.stack([in_group.astype(np.float64), ctf["rlnVoltage"], ctf["rlnSphericalAberration"],
                         ctf["rlnAmplitudeContrast"], flipped.astype(float), premult.astype(float)], -1)
        uniq, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.reshape(-1) + 1
        optics_cols = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
                       "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"]
        if flipped.any():
            optics_cols.append("rlnCtfDataArePhaseFlipped")
        if premult.any():
            optics_cols.append("rlnCtfDataAreCtfPremultiplied")
        optics_lines = []
        for g, key in enumerate(uniq, start=1):
            row = [g, f"opticsGroup{g}", float(key[3]), float(key[2]), float(key[1]), float(pixel_size), int(box), 2]
            if flipped.any():
                row.append(int(key[4]))
            if premult.any():
                row.append(int(key[5]))
            optics_lines.append(" ".join(_fmt(v) for v in row))
    lines = ["", "# version 30001", "", "data_optics", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(optics_cols)] + optics_lines
    lines += ["", "", "# version 30001", "", "data_particles", "", "loop_"]

    columns: dict[str, np.ndarray | list] = {"rlnImageName": table.image_names(absolute=absolute_paths)}
    if rotations is not None:
        ang = matrices_to_angles(rotations)
        columns.update(rlnAngleRot=ang[:, 0], rlnAngleTilt=ang[:, 1], rlnAnglePsi=ang[:, 2])
        o = np.zeros((n, 2)) if origins is None else origins
        columns.update(rlnOriginXAngst=o[:, 0], rlnOriginYAngst=o[:, 1])
    if table.ctf is not None:
        for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor"):
            columns[c] = ctf[c]
    columns["rlnOpticsGroup"] = group
    for c, v in {**table.extra, **(extra or {})}.items():
        # RELION labels only (a .cs's fields stay in the .cs), one value per particle, optics in data_optics
        v = np.asarray(v)
        if c.startswith("rln") and c not in columns and c not in _OPTICS_FIELDS and v.ndim == 1:
            columns[c] = np.char.decode(v, errors="replace") if v.dtype.kind == "S" else v
    names = list(columns)
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(names)]
    cells = [_column_text(columns[c]).astype(object) for c in names]
    rows = cells[0]
    for col in cells[1:]:
        rows = rows + " " + col
    lines += rows.tolist()
    with atomic_path(path, force=force) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
