"""RELION STAR files: reading particle tables (3.0 and 3.1+ styles) and writing RELION 3.1 pose tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .mrc import atomic_path

__all__ = ["read_particle_star", "write_particle_star"]

_OPTICS_TO_PARTICLE = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
)


def read_particle_star(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a particle STAR as arrays, with optics-group values merged into each particle.

    Accepts RELION 3.0 files (one table) and 3.1+ files (``data_optics`` + ``data_particles``).
    """
    import starfile  # pandas is heavy: imported only where STAR files are read

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable STAR file ({exc})") from exc
    particles = blocks.get("particles")
    if particles is None:
        tables = [b for b in blocks.values() if hasattr(b, "columns") and "rlnImageName" in b.columns]
        if not tables:
            raise ValueError(f"{path}: no particle table with rlnImageName")
        particles = tables[0]
    if len(particles) == 0:
        raise ValueError(f"{path}: the particle table is empty")
    cols = {c: particles[c].to_numpy() for c in particles.columns}
    optics = blocks.get("optics")
    if optics is not None and "rlnOpticsGroup" in cols:
        groups = {int(g): row for g, row in zip(optics["rlnOpticsGroup"], optics.to_dict("records"), strict=False)}
        for name in _OPTICS_TO_PARTICLE:
            if name in optics.columns and name not in cols:
                cols[name] = np.array([groups[int(g)][name] for g in cols["rlnOpticsGroup"]])
    return cols


def write_particle_star(
    path: str | Path,
    image_names: list[str],
    angles_deg: np.ndarray,
    origins_angst: np.ndarray,
    ctf: dict[str, np.ndarray],
    pixel_size: float,
    box: int,
    force: bool = True,
) -> Path:
    """Write a RELION 3.1 particle STAR (one optics group) atomically.

    ``angles_deg`` `(n, 3)` are rlnAngleRot/Tilt/Psi, ``origins_angst`` `(n, 2)` rlnOriginX/YAngst; ``ctf``
    holds per-particle ``rlnDefocusU``, ``rlnDefocusV``, ``rlnDefocusAngle``, ``rlnPhaseShift``,
    ``rlnCtfBfactor`` and the optics values ``rlnVoltage``, ``rlnSphericalAberration``,
    ``rlnAmplitudeContrast`` (taken from the first particle: one optics group).
    """
    n = len(image_names)
    lines = [
        "",
        "# version 30001",
        "",
        "data_optics",
        "",
        "loop_",
        "_rlnOpticsGroup #1",
        "_rlnOpticsGroupName #2",
        "_rlnAmplitudeContrast #3",
        "_rlnSphericalAberration #4",
        "_rlnVoltage #5",
        "_rlnImagePixelSize #6",
        "_rlnImageSize #7",
        "_rlnImageDimensionality #8",
        f"1 opticsGroup1 {float(ctf['rlnAmplitudeContrast'][0]):.6f} "
        f"{float(ctf['rlnSphericalAberration'][0]):.6f} {float(ctf['rlnVoltage'][0]):.6f} "
        f"{pixel_size:.6f} {box:d} 2",
        "",
        "",
        "# version 30001",
        "",
        "data_particles",
        "",
        "loop_",
    ]
    columns = [
        "rlnImageName",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnPhaseShift",
        "rlnCtfBfactor",
        "rlnOpticsGroup",
    ]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    for i in range(n):
        a, o = angles_deg[i], origins_angst[i]
        lines.append(
            f"{image_names[i]} {a[0]:.6f} {a[1]:.6f} {a[2]:.6f} {o[0]:.6f} {o[1]:.6f} "
            f"{ctf['rlnDefocusU'][i]:.6f} {ctf['rlnDefocusV'][i]:.6f} {ctf['rlnDefocusAngle'][i]:.6f} "
            f"{ctf['rlnPhaseShift'][i]:.6f} {ctf['rlnCtfBfactor'][i]:.6f} 1"
        )
    with atomic_path(path, force=force) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
