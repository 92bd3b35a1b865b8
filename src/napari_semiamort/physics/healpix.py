"""HEALPix pixel centres (ring scheme) as unit vectors: an equal-area grid of view directions.

Our own few lines of Górski et al. (2005), eqs. 4–9 and the ring-scheme numbering of ``healpix_base``:
``12 · nside²`` pixels, pixel 0 at the north pole's ring, rings of constant z. Tested against the BSD
``healpix`` package (``tests/test_posterior.py``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["healpix_directions", "healpix_resolution_deg", "nearest_pixel"]


def healpix_directions(nside: int) -> np.ndarray:
    """Unit vectors `(12·nside², 3)` (x, y, z) of the ring-scheme pixel centres."""
    if nside < 1:
        raise ValueError(f"nside must be at least 1, not {nside}")
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    p = np.arange(npix, dtype=np.int64)
    z = np.empty(npix)
    phi = np.empty(npix)
    north = p < ncap
    south = p >= npix - ncap
    equator = ~north & ~south
    # polar caps: ring i holds 4i pixels
    pn = p[north]
    i = (1 + np.floor(np.sqrt(1 + 2 * pn)).astype(np.int64)) >> 1
    j = pn + 1 - 2 * i * (i - 1)
    z[north] = 1 - i * i / (3.0 * nside * nside)
    phi[north] = (j - 0.5) * np.pi / (2 * i)
    ps = npix - p[south]
    i = (1 + np.floor(np.sqrt(2 * ps - 1)).astype(np.int64)) >> 1
    j = 4 * i + 1 - (ps - 2 * i * (i - 1))
    z[south] = -1 + i * i / (3.0 * nside * nside)
    phi[south] = (j - 0.5) * np.pi / (2 * i)
    # equatorial belt: 4·nside pixels per ring, alternate rings shifted by half a pixel
    pe = p[equator] - ncap
    ring = pe // (4 * nside) + nside
    j = pe % (4 * nside) + 1
    shift = np.where((ring + nside) % 2 == 1, 1.0, 0.5)
    z[equator] = (2 * nside - ring) * 2.0 / (3.0 * nside)
    phi[equator] = (j - shift) * np.pi / (2 * nside)
    s = np.sqrt(np.clip(1 - z * z, 0, None))
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], -1)


def healpix_resolution_deg(nside: int) -> float:
    """Typical pixel size: the square root of the pixel area, in degrees (7.33° at nside 8)."""
    return float(np.degrees(np.sqrt(4 * np.pi / (12 * nside * nside))))


def nearest_pixel(directions: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index into ``grid`` `(P, 3)` of the centre nearest to each direction `(..., 3)`."""
    d = np.asarray(directions, dtype=np.float64)
    return np.argmax(d @ np.asarray(grid, dtype=np.float64).T, axis=-1)
