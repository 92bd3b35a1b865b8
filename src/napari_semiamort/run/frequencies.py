"""The image frequencies a loss uses: the Fourier pixels inside a band, and a cache of the bands in use."""

from __future__ import annotations

import torch

__all__ = ["FrequencyBank", "Frequencies"]


class Frequencies:
    """The image frequencies inside a circle of ``fraction`` of Nyquist, as flat lists, with the index of
    each one's negative (the Hartley transform's partner)."""

    def __init__(self, size: int, fraction: float, device):
        k = torch.arange(size) - size // 2
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        radius = min(fraction * size / 2, size / 2 - 1)  # the −L/2 row has no +L/2 partner: excluded
        inside = (kx**2 + ky**2) <= radius**2
        self.size, self.fraction = size, fraction
        self.flat_index = torch.nonzero(inside.flatten()).squeeze(1).to(device)  # (P,) into L·L
        grid = torch.stack([kx[inside], ky[inside]], -1).to(torch.float32)
        self.grid = grid.to(device)  # (P, 2) Fourier px
        self.per_pixel = self.grid / size  # (P, 2) cycles per pixel
        shells = torch.round(grid.norm(dim=-1)).long()
        self.shells = shells.to(device)  # (P,)
        self.max_shell = int(shells.max()) if len(shells) else 0  # known on the host: no device sync per step
        # index of each frequency's negative, through a dense (L, L) map (a Python dict over the P
        # frequencies held the GIL ~100 ms per band and stalled the napari GUI thread)
        flat = torch.full((size * size,), -1, dtype=torch.long)
        kx_in, ky_in = kx[inside], ky[inside]
        flat[(ky_in + size // 2) * size + (kx_in + size // 2)] = torch.arange(len(kx_in))
        self.negative = flat[(-ky_in + size // 2) * size + (-kx_in + size // 2)].to(device)  # (P,)

    def __len__(self) -> int:
        return self.grid.shape[0]


class FrequencyBank:
    """The bands of one box, built once each: a band is keyed by its fraction of Nyquist (to 4 decimals)."""

    def __init__(self, size: int, device):
        self.size, self.device = size, device
        self._bands: dict[float, Frequencies] = {}

    def at(self, fraction: float) -> Frequencies:
        key = round(fraction, 4)
        if key not in self._bands:
            self._bands[key] = Frequencies(self.size, key, self.device)
        return self._bands[key]
