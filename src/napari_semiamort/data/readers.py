"""Open any particle input by its file type: RELION ``.star``, cryoSPARC ``.cs``, or a bare MRC stack
(``.mrcs``, ``.mrc``, gzip'd too) with optional cryoDRGN ``ctf.pkl`` / ``pose.pkl``."""

from __future__ import annotations

from pathlib import Path

from .checks import check_file
from .dataset import ParticleDataset
from .particles import ParticleTable

__all__ = ["STACK_SUFFIXES", "open_dataset", "read_particles"]

STACK_SUFFIXES = (".mrcs", ".mrc", ".mrcs.gz", ".mrc.gz", ".st")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".mrcs.gz", ".mrc.gz"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def read_particles(
    path: str | Path,
    datadir: str | Path | None = None,
    pixel_size: float | None = None,
    ctf_pkl: str | Path | None = None,
    pose_pkl: str | Path | None = None,
    passthrough: str | Path | None = None,
) -> ParticleTable:
    """The particle table of ``path``, whichever format it is in."""
    path = Path(path)
    suffix = _suffix(path)
    check_file(path, {".star": "STAR file", ".cs": "cryoSPARC file"}.get(suffix, "particle file"))
    if (ctf_pkl or pose_pkl) and suffix not in STACK_SUFFIXES:
        raise ValueError(f"{path}: cryoDRGN pickles go with a particle stack (.mrcs), not a {suffix} file")
    if suffix == ".star":
        from .star import read_star

        return read_star(path, datadir, pixel_size)
    if suffix == ".cs":
        from .cryosparc import read_cs

        table = read_cs(path, passthrough=passthrough, datadir=datadir)
    elif suffix in STACK_SUFFIXES:  # a bare stack: image i is particle i, with or without cryoDRGN's pickles
        from .cryodrgn import read_cryodrgn

        table = read_cryodrgn(path, ctf_pkl=ctf_pkl, pose_pkl=pose_pkl, pixel_size=pixel_size)
    else:
        raise ValueError(f"{path}: unknown particle file type {suffix!r} "
                         "(expected .star, .cs, or a stack: .mrcs, .mrc, .mrcs.gz)")
    if pixel_size is not None:
        table.pixel_size = float(pixel_size)
    return table


def open_dataset(cfg) -> ParticleDataset:
    """The prepared dataset a :class:`~napari_semiamort.run.ReconstructionConfig` describes (not scanned)."""
    table = read_particles(cfg.particles, cfg.datadir, cfg.pixel_size, cfg.ctf_pkl, cfg.pose_pkl, cfg.passthrough)
    if cfg.use_ctf and table.ctf is None and _suffix(Path(cfg.particles)) in STACK_SUFFIXES and not cfg.ctf_pkl:
        raise ValueError(f"{cfg.particles}: a bare stack carries no CTF parameters; give them with --ctf-pkl "
                         "(cryoDRGN format) or a STAR file, or run with --no-ctf")
    if cfg.use_ctf and table.ctf is None and _suffix(Path(cfg.particles)) == ".cs":
        raise ValueError(f"{cfg.particles}: CTF fields missing ({', '.join(table.ctf_missing)}); cryoSPARC keeps "
                         "them in the job's passthrough file: give it with --passthrough (or run with --no-ctf)")
    return ParticleDataset(table, use_ctf=cfg.use_ctf, box=cfg.box, invert=cfg.invert,
                           mask_diameter=cfg.mask_diameter, pixel_size=cfg.pixel_size)
