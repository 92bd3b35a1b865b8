"""Direct Fourier reconstruction from images with known poses (the inverse of slicing).

Each image's transform, weighted by its CTF, is inserted on its central slice ``Rᵀ (kx, ky, 0)`` with
trilinear weights; the CTF² is inserted the same way; the map is ``Σ CTF·F / (Σ CTF² + λ)`` (a Wiener
filter whose ``λ`` is a small fraction of the typical weight). Every frequency of the images up to Nyquist
is inserted: the outermost shell decides the FSC of a map whose resolution reaches Nyquist (cutting at
``L/2 − 1``, as the training loss must, cost 0.25 Å at 10.3 Å on the benchmark's data). This is what
``relion_reconstruct --pad 1`` does, without its gridding correction and iterative weights (both measured:
no gain at pad 1, and 2× padding lowered the FSC against the truth, ``docs/benchmarks.md``).

Inserters add: the half maps' sums together are the whole data set's, so the map costs no second pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .fourier import frequency_grid_2d, ifft_centered, radial_frequency_index_3d
from .slicing import central_slice_coordinates

__all__ = ["FourierInserter", "WienerMaps", "wiener_maps"]


class FourierInserter:
    """Accumulates CTF-weighted image transforms `(B, L, L)` into an `(L, L, L)` frequency grid.

    ``radius``: the largest image frequency inserted, in Fourier pixels (default ``L/2``, Nyquist).
    """

    def __init__(self, size: int, device=None, radius: float | None = None):
        self.size = size
        self.radius = size / 2 if radius is None else float(radius)
        if not 0 < self.radius <= size / 2 * 2**0.5:
            raise ValueError(f"radius {radius} must lie in (0, {size / 2 * 2**0.5:.1f}] Fourier pixels")
        self.num = torch.zeros(size**3, dtype=torch.complex64, device=device)
        self.den = torch.zeros(size**3, dtype=torch.float32, device=device)
        freqs = frequency_grid_2d(size, device=device) * size  # (L, L, 2) (kx, ky) in Fourier pixels
        inside = (freqs**2).sum(-1) <= self.radius**2
        self._freqs = freqs[inside]  # (P, 2)
        self._inside = inside
        self.count = 0  # images inserted

    def insert(self, fourier_images: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor) -> None:
        """Insert centred transforms `(B, L, L)` (complex) with poses `(B, 3, 3)` and CTFs `(B, L, L)`."""
        size, c = self.size, self.size // 2
        f = fourier_images[:, self._inside]  # (B, P)
        w = ctf[:, self._inside].to(torch.float32)
        coords = central_slice_coordinates(self._freqs.to(rotations.dtype), rotations) + c  # (B, P, 3) xyz
        base = coords.floor()
        frac = (coords - base).to(torch.float32)
        base = base.long()
        values, weights = (f * w).reshape(-1), (w * w).reshape(-1)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    x, y, z = base[..., 0] + dx, base[..., 1] + dy, base[..., 2] + dz
                    t = ((frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])
                         * (frac[..., 2] if dz else 1 - frac[..., 2])).reshape(-1)
                    ok = ((x >= 0) & (x < size) & (y >= 0) & (y < size) & (z >= 0) & (z < size)).reshape(-1)
                    flat = ((z * size + y) * size + x).reshape(-1)[ok]
                    self.num.index_add_(0, flat, (values[ok] * t[ok]).to(self.num.dtype))
                    self.den.index_add_(0, flat, weights[ok] * t[ok])
        self.count += fourier_images.shape[0]

    def _check_same(self, other: FourierInserter) -> None:
        if (other.size, other.radius) != (self.size, self.radius):
            raise ValueError(f"cannot add inserters of box {self.size}, radius {self.radius} and box "
                             f"{other.size}, radius {other.radius}")

    def __add__(self, other: FourierInserter) -> FourierInserter:
        """The sums of both (the same box and radius): the reconstruction from both sets of images."""
        self._check_same(other)
        out = FourierInserter(self.size, self.num.device, self.radius)
        out.num, out.den, out.count = self.num + other.num, self.den + other.den, self.count + other.count
        return out

    def add_(self, other: FourierInserter) -> FourierInserter:
        """``self + other`` in place (no third grid); returns ``self``."""
        self._check_same(other)
        self.num += other.num
        self.den += other.den
        self.count += other.count
        return self

    def transform(self, regularization: float = 0.01) -> torch.Tensor:
        """The map's centred Fourier transform, flat `(L³,)`: ``Σ CTF·F / (Σ CTF² + λ)`` where anything was
        inserted, ``λ`` ``regularization`` × the median weight there."""
        covered = self.den > 0
        lam = regularization * (self.den[covered].median() if covered.any() else torch.tensor(1.0))
        return torch.where(covered, self.num / (self.den + lam), torch.zeros_like(self.num))

    def volume(self, regularization: float = 0.01) -> torch.Tensor:
        """The real-space map `(L, L, L)` ``[z, y, x]``, origin at ``L // 2``."""
        return ifft_centered(self.transform(regularization).reshape(self.size, self.size, self.size), 3).real


class WienerMaps(NamedTuple):
    """:func:`wiener_maps`' maps: the whole set's, the FSC it was filtered with, and each half set's."""

    volume: torch.Tensor  # (L, L, L)
    fsc: torch.Tensor  # (L//2 + 1,): the halves' FSC per shell (≤ 0.001: 0)
    halves: tuple[torch.Tensor, torch.Tensor]  # (L, L, L) each: the half sets 1 and 2


def wiener_maps(first: FourierInserter, second: FourierInserter) -> WienerMaps:
    """The map `(L, L, L)` of both half sets' images, each shell regularised by the signal the halves agree on,
    the halves' FSC per shell `(L//2 + 1,)` it was filtered with (beyond, 0), and each half's own map so
    regularised; the halves' agreement is measured once for all three.

    RELION's regularised reconstruction: ``F = Σ CTF·X / (Σ CTF² + 1/τ²)``, with ``τ²`` of a shell the whole set's
    signal-to-noise ratio ``2·FSC / (1 − FSC)`` over the shell's mean weight. A shell the halves do not agree on
    gets a weight ``λ`` far above its data: the map is low-passed where its poses have not found signal, so a pose
    scored against it is not pulled towards the noise of its own image (every image's noise is in its own slice).

    Each half's map is regularised alike with a half's signal-to-noise ratio ``FSC / (1 − FSC)``. An image
    compared with the *other* half's map meets no trace of its own noise: under a map that holds an image's noise
    in its own slice, the image's current pose scores better than any pose the map was not built with (realistic
    7PBL: every image held at a wrong mate of the pseudo-six-fold scored worse at its right mate under the whole
    set's map, docs/results.md).
    """
    size = first.size
    shell, fsc, per_shell = _half_agreement(first, second)

    def real(num, den, snr):
        return ifft_centered(_regularised(num, den, snr, shell, per_shell).reshape(size, size, size), 3).real

    volume = real(first.num + second.num, first.den + second.den, 2 * fsc / (1 - fsc))
    halves = tuple(real(h.num, h.den, fsc / (1 - fsc)) for h in (first, second))
    curve = fsc[: size // 2 + 1].float()
    curve[curve <= 1e-3] = 0.0
    return WienerMaps(volume, curve, halves)


def _half_agreement(first: FourierInserter, second: FourierInserter):
    """``(shell, fsc, per_shell)``: each voxel's shell (the corners beyond Nyquist one shell of their own), the
    halves' FSC per shell clamped to [0.001, 0.999] (the corners' 0.001), and the per-shell sum."""
    first._check_same(second)
    size = first.size
    shell = radial_frequency_index_3d(size, first.num.device).reshape(-1).clamp_max(size // 2 + 1)
    n = size // 2 + 2

    def per_shell(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, shell, values.double())

    halves = [first.transform(), second.transform()]
    cross = per_shell((halves[0] * halves[1].conj()).real)
    power = per_shell(halves[0].abs() ** 2) * per_shell(halves[1].abs() ** 2)
    fsc = (cross / power.sqrt().clamp_min(1e-30)).clamp(1e-3, 0.999)
    fsc[-1] = 1e-3  # the corners beyond Nyquist: no shell of the halves to agree on
    return shell, fsc, per_shell


def _regularised(num: torch.Tensor, den: torch.Tensor, snr: torch.Tensor, shell: torch.Tensor, per_shell):
    """``num / (den + λ)`` where anything was inserted, ``λ`` of a shell its mean weight over ``snr`` (τ² of that
    shell); flat `(L³,)`."""
    covered = den > 0
    mean_weight = per_shell(den) / per_shell(covered.float()).clamp_min(1)
    lam = (mean_weight / snr).to(den.dtype)[shell]
    return torch.where(covered, num / (den + lam), torch.zeros_like(num))
