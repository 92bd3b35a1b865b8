"""Central slices of a 3D frequency-space volume (Fourier slice theorem), trilinear interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["central_slice_coordinates", "sample_volume", "slice_volume"]


def central_slice_coordinates(
    freqs_xy: torch.Tensor, rotations: torch.Tensor
) -> torch.Tensor:
    """3D frequency coordinates ``Rᵀ (kx, ky, 0)`` `(..., P, 3)` (xyz) of image frequencies `(P, 2)`.

    ``R`` `(..., 3, 3)` maps volume to image coordinates, so the image's frequency ``k`` samples the volume
    transform at ``Rᵀ k``. As row vectors that is ``kᵀ R``: only the first two rows of ``R`` are needed.
    """
    return freqs_xy @ rotations[..., :2, :]


def sample_volume(volume: torch.Tensor, coords_xyz: torch.Tensor) -> torch.Tensor:
    """Trilinear samples `(C, *S)` of a centred volume `(C, D, D, D)` at coordinates `(*S, 3)` (xyz).

    Coordinates are in grid units relative to the centre voxel ``D // 2``; outside the grid reads as 0.
    """
    d = volume.shape[-1]
    shape = coords_xyz.shape[:-1]
    grid = (coords_xyz.reshape(1, -1, 1, 1, 3) + d // 2) * (2.0 / (d - 1)) - 1.0
    out = F.grid_sample(
        volume[None].to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[0, :, :, 0, 0].reshape(volume.shape[0], *shape)


def slice_volume(
    volume: torch.Tensor, freqs_xy: torch.Tensor, rotations: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """Sample central slices of a centred frequency-space volume by trilinear interpolation.

    Parameters
    ----------
    volume
        `(C, D, D, D)` or `(D, D, D)`, indexed ``[z, y, x]``, DC at index ``D // 2``.
    freqs_xy
        `(P, 2)` image frequencies (kx, ky) in volume grid units (Fourier pixels of the volume box).
    rotations
        `(..., 3, 3)` poses (volume → image).
    scale
        Multiplies the coordinates: 2 samples a 2×-padded volume at the frequencies of the unpadded box.

    Returns
    -------
    `(..., C, P)` or `(..., P)` when ``volume`` has no channel axis. Points outside the grid read as 0.
    Differentiable with respect to ``volume`` and ``rotations``.
    """
    squeeze = volume.ndim == 3
    if squeeze:
        volume = volume[None]
    c, d = volume.shape[0], volume.shape[-1]
    batch = rotations.shape[:-2]
    coords = central_slice_coordinates(freqs_xy.to(rotations.dtype) * scale, rotations)  # (..., P, 3)
    coords = coords.reshape(1, -1, coords.shape[-2], 1, 3)
    # align_corners=True: index i sits at −1 + 2i/(D−1); DC is index D // 2.
    grid = (coords + d // 2) * (2.0 / (d - 1)) - 1.0
    out = F.grid_sample(
        volume[None].to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (1, C, B, P, 1)
    out = out[0, ..., 0].movedim(0, -2)  # (B, C, P)
    out = out.reshape(*batch, c, out.shape[-1])
    return out[..., 0, :] if squeeze else out
