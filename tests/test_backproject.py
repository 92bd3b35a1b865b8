"""Direct Fourier reconstruction (physics.backproject): the run's map and half maps."""

import numpy as np
import pytest
import torch

from napari_semiamort.metrics.fsc import fsc
from napari_semiamort.physics.backproject import FourierInserter
from napari_semiamort.physics.so3 import random_rotations
from napari_semiamort.sim.project import PaddedProjector


@pytest.fixture(scope="module")
def projections(igg_map):
    """1,500 noise-free projections of the 32³ IgG map in seeded random poses, with a real CTF-like
    weight that changes sign (a ring of zeros at 0.3 cycles/px)."""
    gen = torch.Generator().manual_seed(7)
    rot = random_rotations(1500, gen)
    f = PaddedProjector(igg_map).fourier(rot)
    k = torch.arange(32) - 16
    r = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).float() / 32
    ctf = torch.cos(torch.pi * r / 0.3).expand(len(rot), 32, 32)
    return f * ctf, rot, ctf


def reconstruct(projections, radius=None, parts=1, in_place=False):
    f, rot, ctf = projections
    pieces = []
    for idx in np.array_split(np.arange(len(rot)), parts):
        ins = FourierInserter(32, radius=radius)
        ins.insert(f[idx], rot[idx], ctf[idx])
        pieces.append(ins)
    total = pieces[0]
    for p in pieces[1:]:
        total = total.add_(p) if in_place else total + p
    return total


def test_the_map_is_recovered_to_nyquist_including_the_outermost_shell(projections, igg_map):
    curve = fsc(reconstruct(projections).volume(), igg_map)
    assert curve[1:16].min() > 0.93  # lowest at the CTF zero ring (shell 5), where the Wiener term weighs in
    assert curve[16] > 0.9  # the Nyquist shell: cut at L/2 − 1 it would hold little more than noise
    cut = fsc(reconstruct(projections, radius=15).volume(), igg_map)
    assert cut[16] < curve[16] - 0.2


def test_inserters_add_up_to_one_pass_over_all_images(projections):
    whole = reconstruct(projections)
    summed = reconstruct(projections, parts=3)
    assert summed.count == whole.count == 1500
    torch.testing.assert_close(summed.den, whole.den, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(summed.volume(), whole.volume(), rtol=0, atol=1e-5 * float(whole.volume().abs().max()))
    in_place = reconstruct(projections, parts=3, in_place=True)  # add_: the same sums, no third grid
    assert in_place.count == 1500
    torch.testing.assert_close(in_place.num, summed.num)
    torch.testing.assert_close(in_place.den, summed.den)


def test_inserters_of_different_grids_refuse_to_add():
    with pytest.raises(ValueError, match="cannot add inserters of box 32"):
        FourierInserter(32) + FourierInserter(32, radius=10)
    with pytest.raises(ValueError, match="cannot add inserters of box 32"):
        FourierInserter(32).add_(FourierInserter(24))
    with pytest.raises(ValueError, match="radius"):
        FourierInserter(32, radius=40)


def test_the_regularised_map_keeps_the_shells_the_halves_agree_on_and_drops_the_noise(projections, igg_map):
    """Noisy images in two halves: the regularised map (RELION's τ² from the halves' FSC) is nearer the truth than
    the plain one over the whole box (3× here), keeps the shells the halves agree on as the plain map has them, and
    removes the shells that hold only noise, which the plain map keeps at full strength. A λ without the FSC, or
    inverted, fails one of these. (Between, where the halves half agree, the shrinkage may cost a little.)"""
    from napari_semiamort.physics.backproject import wiener_maps

    f, rot, ctf = projections
    gen = torch.Generator().manual_seed(11)
    scale = float(f.abs().pow(2).mean().sqrt())
    noisy = f + 2.0 * scale * torch.complex(torch.randn(f.shape, generator=gen), torch.randn(f.shape, generator=gen))
    halves = []
    for part in (slice(0, 750), slice(750, 1500)):
        ins = FourierInserter(32)
        ins.insert(noisy[part], rot[part], ctf[part])
        halves.append(ins)
    plain = (halves[0] + halves[1]).volume()
    regularised, curve, _ = wiener_maps(*halves)
    assert curve.shape == (17,) and curve[1:4].min() > 0.9 and curve[14:].max() < 0.2
    truth = torch.as_tensor(igg_map, dtype=torch.float32)
    k = torch.arange(32) - 16
    shell = torch.sqrt((k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).float()).round()
    from napari_semiamort.physics.fourier import fft_centered

    def error(vol, lo, hi):  # squared distance from the truth within shells [lo, hi)
        d = fft_centered(vol.to(torch.float64) - truth.to(torch.float64), 3)
        return float(d.abs().pow(2)[(shell >= lo) & (shell < hi)].sum())

    assert error(regularised, 0, 17) < 0.4 * error(plain, 0, 17)
    assert error(regularised, 1, 5) < 1.02 * error(plain, 1, 5)
    low = fsc(regularised, truth)[1:5]
    assert low.min() > 0.95  # the shells with signal are kept
    def power(vol, lo, hi):
        return float(fft_centered(vol.to(torch.float64), 3).abs().pow(2)[(shell >= lo) & (shell < hi)].sum())

    assert power(regularised, 14, 17) < 0.1 * power(plain, 14, 17)  # the noise-only shells are removed


def test_each_half_map_holds_its_own_images_only_regularised_as_a_half(projections, igg_map):
    """The half maps (:func:`wiener_maps`): each is built from its own half's images alone (new noise in half 2's
    images moves half 1's map only through the shared regularisation: a fifteenth of what it moves half 2's in the
    shells they agree on), and each is nearer the truth than its plain reconstruction."""
    from napari_semiamort.physics.backproject import wiener_maps
    from napari_semiamort.physics.fourier import fft_centered

    f, rot, ctf = projections
    gen = torch.Generator().manual_seed(12)
    scale = float(f.abs().pow(2).mean().sqrt())

    def noise():
        return 2.0 * scale * torch.complex(torch.randn(f.shape, generator=gen), torch.randn(f.shape, generator=gen))

    noisy = f + noise()

    def inserters(images):
        out = []
        for part in (slice(0, 750), slice(750, 1500)):
            ins = FourierInserter(32)
            ins.insert(images[part], rot[part], ctf[part])
            out.append(ins)
        return out

    first, second = inserters(noisy)
    half1, half2 = wiener_maps(first, second).halves
    truth = torch.as_tensor(igg_map, dtype=torch.float64)
    for h, ins in ((half1, first), (half2, second)):
        assert float((h.double() - truth).norm()) < 0.6 * float((ins.volume().double() - truth).norm())
    # half 2's noise drawn again: half 1's map moves only through the regularisation, half 2's with its noise
    other = noisy.clone()
    other[750:] = f[750:] + noise()[750:]
    again1, again2 = wiener_maps(*inserters(other)).halves
    k = torch.arange(32) - 16
    shell = torch.sqrt((k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).float()).round()

    def low(vol):
        return fft_centered(vol.to(torch.float64), 3)[(shell >= 1) & (shell < 5)]

    def change(a, b):
        return float((low(a) - low(b)).abs().norm() / low(b).abs().norm())

    assert change(again1, half1) < 0.2 * change(again2, half2)  # 0.008 against 0.12 (both halves' images: ~½)
