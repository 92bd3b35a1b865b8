import numpy as np
import pytest
import torch

from napari_semiamort.physics.fourier import (
    fft_centered,
    flip_frequencies,
    frequency_grid_2d,
    hartley_centered,
    hartley_to_fourier,
    ihartley_centered,
    shift_hartley,
)


@pytest.mark.parametrize("size", [16, 17])
def test_hartley_round_trip_and_relation_to_fourier(size, generator):
    x = torch.randn(3, size, size, generator=generator, dtype=torch.float64)
    h = hartley_centered(x, 2)
    assert torch.allclose(ihartley_centered(h, 2), x, atol=1e-10)
    assert torch.allclose(hartley_to_fourier(h, 2), fft_centered(x, 2), atol=1e-9)


def test_centred_transform_puts_the_origin_at_n_over_2():
    x = torch.zeros(16, 16, dtype=torch.float64)
    x[8, 8] = 1.0  # a delta at the centre has a flat, real transform
    f = fft_centered(x, 2)
    assert torch.allclose(f, torch.ones_like(f))


def test_flip_frequencies_maps_k_to_minus_k():
    size = 8
    k = frequency_grid_2d(size) * size  # (L, L, 2), integer frequencies
    flipped = flip_frequencies(k.permute(2, 0, 1), 2).permute(1, 2, 0)
    inner = (k.abs() < size // 2).all(-1)  # the −L/2 row and column alias onto themselves
    assert torch.equal(flipped[inner], -k[inner])


@pytest.mark.parametrize("shift", [(3, 0), (0, -5), (2, 7), (-4, -1)])
def test_phase_ramp_shift_equals_an_integer_roll(shift, generator):
    size = 32
    img = torch.randn(size, size, generator=generator, dtype=torch.float64)
    h = hartley_centered(img, 2).flatten()
    freqs = frequency_grid_2d(size, dtype=torch.float64).reshape(-1, 2)
    hf = flip_frequencies(hartley_centered(img, 2), 2).flatten()
    out = shift_hartley(h, hf, freqs, torch.tensor(shift, dtype=torch.float64))
    shifted = ihartley_centered(out.reshape(size, size), 2)
    # shift = (tx, ty): columns move by tx, rows by ty
    expected = np.roll(img.numpy(), shift=(shift[1], shift[0]), axis=(0, 1))
    np.testing.assert_allclose(shifted.numpy(), expected, atol=1e-10)
