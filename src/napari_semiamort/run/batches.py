"""The images as the losses see them: a batch's prepared images, their Hartley transforms, and the
coefficients and CTF at a band's frequencies."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..data.dataset import ParticleDataset
from ..physics.ctf import apply_ctf_mode, compute_ctf
from ..physics.fourier import hartley_centered
from .frequencies import Frequencies

__all__ = ["Batch", "ImageSource"]


class Batch(NamedTuple):
    images: torch.Tensor  # (B, L, L) normalised, real space
    hartley: torch.Tensor  # (B, L, L) their centred Hartley transforms
    obs: torch.Tensor  # (B, P) the coefficients at a band's frequencies
    ctf: torch.Tensor  # (B, P) the CTF there

    def part(self, start: int, stop: int) -> Batch:
        return Batch(*(x[start:stop] for x in self))


class ImageSource:
    """The run's particles on the run's device: batches at any band, and the CTF each image went through."""

    def __init__(self, data: ParticleDataset, device: torch.device):
        self.data, self.device = data, device

    @property
    def size(self) -> int:
        return self.data.box

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, idx: torch.Tensor, fr: Frequencies, images: torch.Tensor | None = None,
              reuse: Batch | None = None) -> Batch:
        """Images ``idx`` (``images``: already read, e.g. by the loader ahead of time), their transforms, and
        their coefficients and CTF at the frequencies ``fr``. ``reuse``: a batch of the same images at another
        band, whose images and transforms are kept."""
        if reuse is None:
            imgs = (self.data.read(idx.numpy()) if images is None else images).to(self.device)
            hartley = hartley_centered(imgs, 2)
        else:
            imgs, hartley = reuse.images, reuse.hartley
        obs = hartley.flatten(1)[:, fr.flat_index]
        return Batch(imgs, hartley, obs, self.ctf(idx, fr.per_pixel))

    def ctf(self, idx: torch.Tensor, freqs: torch.Tensor, data: ParticleDataset | None = None) -> torch.Tensor:
        """The CTF `(B, ...)` the images ``idx`` went through, at frequencies ``freqs`` `(..., 2)` (1/px of
        ``data``, default the run's): ``|CTF|`` for phase-flipped data, ``CTF²`` for premultiplied data."""
        data = self.data if data is None else data
        if data.ctf is None:
            return torch.ones(len(idx), *freqs.shape[:-1], device=self.device)
        ctf = compute_ctf(data.ctf.index(idx), freqs.cpu(), data.pixel_size)
        return apply_ctf_mode(ctf, data.ctf_mode[idx]).to(self.device)
