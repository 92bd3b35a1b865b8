"""Where a map's density is: the particle/solvent level (Otsu), the particle's centre, and the sphere that holds it
(a solvent mask fitted to the map)."""

from __future__ import annotations

import numpy as np
import torch

from .fsc import soft_sphere_mask

__all__ = ["density_centre", "otsu_level", "particle_sphere", "solvent_mask"]


def otsu_level(volume: np.ndarray, bins: int = 256) -> float:
    """The threshold separating a map's voxels into two classes of least within-class variance (Otsu):
    particle versus solvent, a display level that does not depend on the map's scale."""
    v = np.asarray(volume, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _particle_positive(volume: torch.Tensor) -> torch.Tensor:
    """``volume`` in float64 on the CPU with the particle positive: a map of negative skew (a particle is sparse
    and dense; dark particle, light solvent: inverted contrast) is negated."""
    v = volume.detach().to(torch.float64).cpu()
    return -v if float(((v - v.mean()) ** 3).mean()) < 0 else v


def density_centre(volume: torch.Tensor) -> torch.Tensor:
    """The particle's centre `(3,)` (x, y, z) in voxels from the box centre ``L // 2``: the centroid of the
    density above Otsu's level, weighted by its excess over the level.

    A map of negative skew (dark particle, light solvent: inverted contrast) is negated first. Noise and
    solvent below the level do not pull the centre towards the middle of the box, as they do in
    a plain centre of mass (on a noisy map 1.1 voxels off, where this was within 0.1 of the truth).
    """
    v = _particle_positive(volume)
    w = (v - otsu_level(v.numpy())).clamp_min(0)
    total = w.sum()
    if float(total) <= 0:
        return torch.zeros(3, dtype=torch.float64)
    g = torch.arange(v.shape[-1], dtype=torch.float64) - v.shape[-1] // 2
    z = (w.sum((1, 2)) * g).sum()
    y = (w.sum((0, 2)) * g).sum()
    x = (w.sum((0, 1)) * g).sum()
    return torch.stack([x, y, z]) / total


def particle_sphere(volume: torch.Tensor, low_pass: float = 0.1, level: float = 3.0,
                    mass: float = 0.99) -> tuple[torch.Tensor, float] | None:
    """The sphere that holds the particle in a noisy map: ``(centre, radius)``, the centre `(3,)` (x, y, z) in
    voxels from the box centre ``L // 2`` and the radius in voxels; None where no density stands out.

    The map is low-passed (a Gaussian of ``low_pass`` cycles per voxel), the solvent's level and spread read
    in the box's outer region (beyond 0.45 L from the centre), and the density ``level`` spreads above the
    solvent's mean weighted by its excess; the sphere about its centroid holding ``mass`` of it. On realistic
    box-64 reconstructions (3KPR, 30S, 80S, 7PBL) it gave 16.9–19.4 voxels where the noise-free truth's 99 %
    radius is 17.1–19.2 (a plain centroid of the positive density: 28–34, the noise everywhere counted).
    A map of negative skew (inverted contrast) is negated first, as in :func:`density_centre`.
    """
    v = _particle_positive(volume)
    size = v.shape[-1]
    k = torch.fft.fftfreq(size, dtype=torch.float64)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    smooth = torch.fft.ifftn(torch.fft.fftn(v) * torch.exp(-k2 / (2 * low_pass**2))).real
    g = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    outer = smooth[(x**2 + y**2 + z**2).sqrt() > 0.45 * size]
    w = (smooth - outer.mean() - level * outer.std()).clamp_min(0)
    total = w.sum()
    if float(total) <= 0:
        return None
    centre = torch.stack([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / total
    r = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2).sqrt().reshape(-1)
    order = r.argsort()
    held = w.reshape(-1)[order].cumsum(0) / total
    return centre, float(r[order][int((held < mass).sum())])


def solvent_mask(volume: torch.Tensor, radius: float | None = None,
                 margin: float = 4.0) -> tuple[torch.Tensor, float] | None:
    """A soft spherical mask `(L, L, L)` about the particle in ``volume`` (:func:`particle_sphere`): 1 within
    its radius + ``margin`` voxels, a raised cosine to 0 over as many again (4 + 4 at box 64 masked the
    realistic 3KPR and 80S maps' solvent without cutting their density; at box 32 the tiny set's 80S, 2 + 2
    cut it: the polish's median 1.32 → 1.46°, so a sphere that needs a margin under 4 voxels is not used);
    ``radius`` (voxels) instead of the fitted one where the user knows the particle's size. Returns ``(mask,
    radius)``, or None where the map shows no particle or the sphere would not fit in the box."""
    sphere = particle_sphere(volume)
    if sphere is None:
        return None
    centre, fitted = sphere
    size = volume.shape[-1]
    edge = margin
    inner = (fitted if radius is None else radius) + margin
    if inner + edge + float(centre.abs().max()) > size / 2:
        return None
    return soft_sphere_mask(size, inner, edge, centre).to(volume.dtype).to(volume.device), inner
