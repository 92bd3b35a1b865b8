"""Centred discrete Fourier and Hartley transforms, frequency grids and phase-ramp shifts.

Conventions: arrays are real-space with their origin at index ``N // 2`` (RELION's centre); transforms are
"centred" (DC at index ``N // 2``) and unnormalised in the forward direction, so that the 2D transform of a
projection equals the central slice of the 3D transform exactly on the grid. The Hartley transform of a real
signal is ``H = Re F − Im F``; for real signals ``F(−k) = conj F(k)`` so ``H(−k) = Re F + Im F``.
"""

from __future__ import annotations

import torch

__all__ = [
    "fft_centered",
    "flip_frequencies",
    "fourier_crop_2d",
    "fourier_to_hartley",
    "frequency_grid_2d",
    "hartley_centered",
    "hartley_to_fourier",
    "ifft_centered",
    "ihartley_centered",
    "radial_frequency_index_2d",
    "radial_frequency_index_3d",
    "resample_map",
    "shift_hartley",
]


def _dims(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def fft_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Forward DFT over the last ``ndim`` axes, origin and DC at index ``N // 2``."""
    d = _dims(ndim)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d), dim=d)


def ifft_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`fft_centered` (complex output)."""
    d = _dims(ndim)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=d), dim=d), dim=d)


def fourier_to_hartley(f: torch.Tensor) -> torch.Tensor:
    """``H = Re F − Im F`` (paper, Eq. 7)."""
    return f.real - f.imag


def hartley_to_fourier(h: torch.Tensor, ndim: int) -> torch.Tensor:
    """Complex ``F`` from a centred Hartley array: ``Re F = (H(k) + H(−k))/2``, ``Im F = (H(−k) − H(k))/2``."""
    hm = flip_frequencies(h, ndim)
    return torch.complex((h + hm) / 2, (hm - h) / 2)


def hartley_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred discrete Hartley transform over the last ``ndim`` axes of a real array."""
    return fourier_to_hartley(fft_centered(x, ndim))


def ihartley_centered(h: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`hartley_centered`: the DHT is its own inverse up to ``1 / N``."""
    n = 1
    for s in h.shape[-ndim:]:
        n *= s
    return hartley_centered(h, ndim) / n


def flip_frequencies(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """``x(−k)`` for a centred frequency array over the last ``ndim`` axes.

    For even ``N`` the index of ``−k`` is ``N − j`` (mod ``N``): flip, then roll by one; the Nyquist row
    ``−N/2`` maps onto itself. For odd ``N`` a plain flip.
    """
    d = _dims(ndim)
    out = torch.flip(x, dims=d)
    shifts = tuple(1 if x.shape[i] % 2 == 0 else 0 for i in d)
    return torch.roll(out, shifts=shifts, dims=d)


def frequency_grid_2d(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centred frequencies `(size, size, 2)` as (kx, ky) in cycles per pixel; x along columns."""
    k = (torch.arange(size, device=device, dtype=dtype) - size // 2) / size
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def radial_frequency_index_2d(size: int, device=None) -> torch.Tensor:
    """Integer shell index `(size, size)` (rounded |k| in Fourier pixels) of a centred 2D grid."""
    k = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    r = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    return torch.round(r).long()


def radial_frequency_index_3d(size: int, device=None) -> torch.Tensor:
    """Integer shell index `(size, size, size)` of a centred 3D grid."""
    k = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return torch.round(r).long()


def shift_hartley(
    h: torch.Tensor, h_flipped: torch.Tensor, freqs: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Hartley coefficients of an image translated by ``shift`` pixels: ``img(x) → img(x − t)``.

    ``h`` and ``h_flipped`` are ``H(k)`` and ``H(−k)`` `(..., P)` at frequencies ``freqs`` `(P, 2)` in
    cycles per pixel (x, y); ``shift`` is `(..., 2)` as (tx, ty) in pixels. In Fourier space the shift is
    the phase ramp ``F · exp(iφ)`` with ``φ = −2π k·t``, which in Hartley space reads
    ``H'(k) = cos φ · H(k) − sin φ · H(−k)``.
    """
    phase = -2.0 * torch.pi * (shift[..., None, :] * freqs).sum(-1)  # (..., P)
    return torch.cos(phase) * h - torch.sin(phase) * h_flipped


def fourier_crop_2d(images: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample images `(..., L, L)` to `(..., size, size)` by cropping their centred transform.

    The band kept is |k| < size/2 of the original pixels; the pixel size grows by ``L / size``. Values are
    scaled so that a constant image keeps its value.
    """
    full = images.shape[-1]
    if size == full:
        return images
    f = fft_centered(images, 2)
    lo = full // 2 - size // 2
    f = f[..., lo : lo + size, lo : lo + size]
    return ifft_centered(f, 2).real * (size / full) ** 2


def resample_map(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier crop (or zero-pad) a cubic map to ``size``; the voxel size scales by ``L / size``."""
    old = volume.shape[-1]
    if size == old:
        return volume
    f = fft_centered(volume.to(torch.float64), 3)
    out = torch.zeros(size, size, size, dtype=f.dtype)
    m = min(old, size)
    so, sn = old // 2 - m // 2, size // 2 - m // 2
    out[sn : sn + m, sn : sn + m, sn : sn + m] = f[so : so + m, so : so + m, so : so + m]
    return (ifft_centered(out, 3).real * (size / old) ** 3).to(torch.float32)
