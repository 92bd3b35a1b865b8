"""napari writer: an image layer to ``.mrc`` with its voxel size (the layer's scale, in Å)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_mrc_layer"]


def write_mrc_layer(path: str, data, meta: dict) -> list[str]:
    """Write one image layer; the voxel size is the layer's last scale value (or its metadata's)."""
    from ..data.mrc import write_mrc

    scale = meta.get("scale") or (1.0,)
    voxel = float(scale[-1])
    if voxel == 1.0 and (meta.get("metadata") or {}).get("pixel_size"):
        voxel = float(meta["metadata"]["pixel_size"])
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: an MRC holds a 2D image or a 3D map/stack, not {arr.ndim} dimensions")
    p = Path(path)
    if p.suffix.lower() not in (".mrc", ".map", ".mrcs"):
        p = p.with_suffix(".mrc")
    # napari's save dialog has already asked before replacing a file
    return [str(write_mrc(p, arr, voxel, force=True))]
