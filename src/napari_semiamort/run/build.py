"""A run's starting point: the noise model from the images' background, and a volume at the images' scale."""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import background_mask
from ..models.volume import HartleyVolume
from ..physics.fourier import hartley_centered
from ..physics.likelihood import ShellNoiseModel
from .batches import ImageSource
from .config import ReconstructionConfig
from .frequencies import Frequencies, FrequencyBank
from .schedule import measured_band_end

__all__ = ["INIT_IMAGES", "initial_noise", "initial_volume", "signal_fraction", "widen_stage1_band"]

INIT_IMAGES = 1024  # images (a seeded sample) the first noise and volume estimates are taken from
# The images are mostly noise: the volume starts at √0.1 of their amplitude per shell (SNR ≈ 0.1).
INIT_SNR = 0.1


@torch.no_grad()
def initial_noise(source: ImageSource, fr: Frequencies, seed: int, white: bool) -> ShellNoiseModel:
    """First noise estimate from the background: the images outside the particle circle, their power per
    shell divided by the area kept (signal power would otherwise down-weight low frequencies); times the
    fraction of the noise a user's mask keeps (the losses compare masked images: without it σ² was 2.5× the
    masked images' noise on the masked 3KPR benchmark, the likelihood 2.5× too flat)."""
    size, device = source.size, source.device
    noise = ShellNoiseModel(fr.shells, size // 2 + 1)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(source), generator=gen)[: min(len(source), INIT_IMAGES)]
    imgs = source.data.read(idx.numpy(), masked=False).to(device)
    ring = background_mask(size, device=device)
    keep = source.data.mask_power / float(ring.mean())
    bg = hartley_centered(imgs * ring, 2).flatten(1)[:, fr.flat_index] * keep**0.5
    noise.accumulate(bg)
    noise.update()
    # The per-image normalisation zeroes the background's mean, hence its DC: take the next shell's value
    # (a near-zero σ² would weight the DC term a thousand-fold).
    noise.tie_dc_to_next_shell()
    if white:
        noise.make_white()
    return noise


@torch.no_grad()
def initial_volume(source: ImageSource, fr: Frequencies, seed: int, init_noise: float,
                   batch_size: int) -> HartleyVolume:
    """A volume whose amplitude per shell is the images' (times √INIT_SNR) with random mantissas from
    ``seed``: a projection's transform is a slice of the volume's, so the images set its scale. The exponent
    is learned: this only has to be the right order of magnitude."""
    size = source.size
    volume = HartleyVolume(size)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(source), generator=gen)[: min(len(source), INIT_IMAGES)]
    # in training-batch chunks: the CTF's float64 intermediates for 1,024 images at once were the largest
    # allocation of the set-up
    parts = [source.batch(c, fr)[2:] for c in idx.split(batch_size)]
    obs, ctf = (torch.cat([p[i].cpu() for p in parts]) for i in (0, 1))
    amp = HartleyVolume.radial_amplitude_from_images(obs, fr.shells.cpu(), size // 2 + 1, ctf)
    volume.initialize(amp * INIT_SNR**0.5, gen, init_noise)
    return volume.to(source.device)


@torch.no_grad()
def signal_fraction(source: ImageSource, fr: Frequencies, noise: ShellNoiseModel, seed: int,
                    batch_size: int) -> np.ndarray:
    """The images' signal fraction ``1 − σ²/⟨|y|²⟩`` per shell `(L/2 + 1,)` (nan where ``fr`` has none): their
    power per shell on a seeded sample against the ``noise`` model's σ², as the verdict measures it."""
    n_shells = source.size // 2 + 1
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(source), generator=gen)[: min(len(source), INIT_IMAGES)]
    power = torch.zeros(n_shells, dtype=torch.float64)
    count = torch.zeros(n_shells, dtype=torch.float64)
    shells = fr.shells.cpu()
    for c in idx.split(batch_size):
        obs = source.batch(c, fr).obs.cpu().to(torch.float64)
        power.index_add_(0, shells, (obs * obs).sum(0))
        count.index_add_(0, shells, torch.full((len(shells),), float(len(c)), dtype=torch.float64))
    variance = noise.variance.cpu().to(torch.float64)[:n_shells]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (1 - variance / (power / count)).numpy()


def widen_stage1_band(config: ReconstructionConfig, source: ImageSource, bank: FrequencyBank,
                      noise: ShellNoiseModel) -> bool:
    """Where ``config`` leaves stage 1's band end to the run (``autoencode_max_freq`` None), set it from the
    images' spectral SNR (:func:`.schedule.measured_band_end`), measured over the whole band against the run's
    first ``noise`` estimate where that is per shell and covers it (``max_freq`` 1), else against one of its own
    (within a smaller stage-2 band the last shell is only partly sampled and its SNR off); written into the config
    so that the run's config.json and a resume keep it. Returns whether the band was widened."""
    if config.autoencode_max_freq is not None:
        return False
    whole = bank.at(1.0)
    if bank.at(config.max_freq) is not whole or config.noise_model == "white":
        noise = initial_noise(source, whole, config.seed, white=False)
    signal = signal_fraction(source, whole, noise, config.seed, config.batch_size)
    config.autoencode_max_freq = measured_band_end(source.size, signal)
    return config.autoencode_max_freq is not None
