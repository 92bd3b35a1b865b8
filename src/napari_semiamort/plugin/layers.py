"""What the plugin shows, as plain arrays (no Qt): the candidates montage of the watched particles."""

from __future__ import annotations

import numpy as np

__all__ = ["candidate_montage"]


def _tile(img: np.ndarray) -> np.ndarray:
    """One tile scaled to zero mean and unit standard deviation, so image and projections compare by eye."""
    img = np.asarray(img, dtype=np.float32)
    return (img - img.mean()) / (img.std() + 1e-12)


def candidate_montage(watched, gap: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of (particle image | its M candidate projections) for the watched particles, a ``gap``-pixel
    margin around every tile.

    Returns the montage `(rows·(L+2·gap), cols·(L+2·gap))`, a mask of the same shape that is 1 on the frame
    around each row's winning tile (drawn in the margin, so no pixel of a tile is hidden), and one label per
    row.
    """
    if not watched:
        return np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32), []
    size = watched[0].image.shape[-1]
    cols = 1 + max(len(w.candidates) for w in watched)
    step = size + 2 * gap
    out = np.zeros((len(watched) * step, cols * step), np.float32)
    frame = np.zeros_like(out)
    labels = []
    for r, w in enumerate(watched):
        y = r * step + gap
        out[y : y + size, gap : gap + size] = _tile(w.image)
        for c, cand in enumerate(w.candidates, start=1):
            out[y : y + size, c * step + gap : c * step + gap + size] = _tile(cand)
        x = (1 + w.winner) * step
        frame[r * step : (r + 1) * step, x : x + step] = 1.0
        frame[y : y + size, x + gap : x + gap + size] = 0.0
        labels.append(f"particle {w.index}: head {w.winner + 1} of {len(w.candidates)} wins"
                      if len(w.candidates) > 1 else f"particle {w.index}: refined pose")
    return out, frame, labels


def sphere_mesh(rows: int = 48, cols: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A unit UV sphere: vertices `(V, 3)` (x, y, z) and triangles `(F, 3)`."""
    theta = np.linspace(0, np.pi, rows + 1)
    phi = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    verts = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    faces = []
    for r in range(rows):
        for c in range(cols):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            faces += [[a, a + cols, b], [b, a + cols, b + cols]]
    return verts, np.asarray(faces, dtype=np.int64)


def to_world(directions: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Unit vectors (x, y, z) to napari world coordinates (z, y, x) on a sphere of ``radius`` at ``centre``."""
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    return np.asarray(centre)[None] + radius * d[:, ::-1]


def posterior_sphere(post, vertices: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Per mesh vertex, the log posterior of the nearest HEALPix cell, clipped ``floor`` nats below the mode
    (default: the median depth)."""
    from ..physics.healpix import nearest_pixel

    lp = post.log_posterior
    depth = lp.max() - lp
    floor = float(max(10.0, np.median(depth))) if floor is None else floor
    return np.maximum(lp, lp.max() - floor)[nearest_pixel(vertices, post.directions)]
