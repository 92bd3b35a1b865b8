"""napari readers: MRC maps as volumes with their voxel size, particle stacks / STAR / .cs as 2D stacks.

A ``.mrc`` holds either a map or a particle stack (EMPIAR depositions use ``.mrc`` for stacks): a cubic
volume that is not flagged as an image stack opens as a map, anything else as particles. Particle stacks
open lazily (``ParticleStackView``): browsing reads only the images shown.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["get_reader", "read_map_layer", "read_particles_layer"]

_MAP_SUFFIXES = (".mrc", ".map", ".mrc.gz", ".map.gz")
_PARTICLE_SUFFIXES = (".mrcs", ".mrcs.gz", ".star", ".cs")


def _is_map(path: Path) -> bool:
    """A cubic volume not flagged as an image stack (a broken file is left to the stack reader's errors)."""
    import warnings

    import mrcfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, header_only=True, permissive=True) as m:
                h = m.header
                return int(h.nx) == int(h.ny) == int(h.nz) and int(h.ispg) != 0
        except (ValueError, OSError, EOFError):
            return False


def get_reader(path: str | list[str]):
    """The reader for ``path`` (one file), or None when it is not ours."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    name = p.name.lower()
    if name.endswith(_PARTICLE_SUFFIXES):
        return read_particles_layer
    if name.endswith(_MAP_SUFFIXES):
        return read_map_layer if name.endswith(".gz") or _is_map(p) else read_particles_layer
    return None


def read_map_layer(path: str | list[str]) -> list[tuple]:
    """A map as a 3D image layer, scaled by its voxel size (Å)."""
    from ..data.mrc import read_map

    p = Path(path[0] if isinstance(path, list) else path)
    data, voxel = read_map(p)
    scale = (voxel,) * 3 if voxel > 0 else (1.0,) * 3
    lo, hi = float(data.min()), float(data.max())
    meta = {"semiamort_kind": "map", "pixel_size": voxel, "source": str(p.resolve())}
    return [(data, {"name": p.name, "scale": scale, "metadata": meta, "rendering": "mip",
                    "contrast_limits": (lo, hi if hi > lo else lo + 1)}, "image")]


def read_particles_layer(path: str | list[str]) -> list[tuple]:
    """Particles (a stack, a RELION STAR or a cryoSPARC .cs) as a lazy 2D image stack, scaled in Å."""
    from ..data.dataset import ParticleStackView
    from ..data.readers import read_particles

    p = Path(path[0] if isinstance(path, list) else path)
    table = read_particles(p)
    view = ParticleStackView(table)
    pixel = table.pixel_size
    if pixel is None:
        header = view._stacks[0].header_pixel_size
        pixel = header if header not in (0.0, 1.0) else None
    scale = (1.0, pixel, pixel) if pixel else (1.0, 1.0, 1.0)
    first = view[0]
    lo, hi = float(first.min()), float(first.max())
    meta = {"semiamort_kind": "particles", "pixel_size": pixel, "source": str(p.resolve()), "n": len(view)}
    return [(view, {"name": p.name, "scale": scale, "metadata": meta, "colormap": "gray",
                    "contrast_limits": (lo, hi if hi > lo else lo + 1)}, "image")]
