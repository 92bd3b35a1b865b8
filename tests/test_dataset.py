"""Preparing particles: streamed reading, downsampling, normalisation, contrast, mask, NaN/Inf, halves."""

import logging
from importlib.resources import files

import mrcfile
import numpy as np
import pytest
import torch

from napari_semiamort.data.dataset import ParticleDataset, soft_circular_mask
from napari_semiamort.data.mrc import write_mrc
from napari_semiamort.data.readers import read_particles
from napari_semiamort.physics.fourier import fourier_crop_2d
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    molecule = files("napari_semiamort") / "resources" / "1igy.cif.gz"
    simulate_dataset(str(molecule), out, SimulationConfig(n_particles=300, box=32, pixel_size=8.0, snr=0.5, seed=5))
    return out


def test_the_stack_stays_memory_mapped_and_a_batch_reads_only_its_images(sim):
    d = ParticleDataset(read_particles(sim / "particles.star"))
    assert isinstance(d.stacks[0].data, np.memmap)
    with mrcfile.open(sim / "particles.mrcs") as m:
        direct = np.asarray(m.data[[7, 3, 250]])
    np.testing.assert_array_equal(d.read_raw(np.array([7, 3, 250])), direct)


def test_downsampling_crops_the_transform_and_grows_the_pixel_size(sim):
    full = ParticleDataset(read_particles(sim / "particles.star"))
    half = ParticleDataset(read_particles(sim / "particles.star"), box=16)
    assert half.box == 16 and half.pixel_size == pytest.approx(16.0)
    raw = torch.from_numpy(full.read_raw(np.arange(5)))
    expected = fourier_crop_2d(raw, 16)
    got = half.read(np.arange(5))
    # the same images up to the per-image normalisation (an affine map): correlation 1
    for a, b in zip(expected, got, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999


def test_images_are_normalised_to_a_zero_mean_unit_variance_background(sim):
    d = ParticleDataset(read_particles(sim / "particles.star")).scan()
    x = d.read(np.arange(64))
    k = torch.arange(32) - 16
    ring = (k[:, None] ** 2 + k[None] ** 2) > (0.45 * 32) ** 2
    assert x[:, ring].mean(-1).abs().max() < 1e-4
    assert (x[:, ring].std(-1) - 1).abs().max() < 1e-3


def test_contrast_is_left_for_white_particles_and_inverted_for_dark_ones(sim, tmp_path):
    white = ParticleDataset(read_particles(sim / "particles.star")).scan()
    assert white.sign == 1.0
    with mrcfile.open(sim / "particles.mrcs") as m:
        write_mrc(tmp_path / "particles.mrcs", -np.asarray(m.data), 8.0)
    (tmp_path / "particles.star").write_text((sim / "particles.star").read_text())
    dark = ParticleDataset(read_particles(tmp_path / "particles.star")).scan()
    assert dark.sign == -1.0
    np.testing.assert_allclose(dark.read(np.arange(4)), white.read(np.arange(4)), atol=1e-4)
    forced = ParticleDataset(read_particles(sim / "particles.star"), invert="yes").scan()
    np.testing.assert_allclose(forced.read(np.arange(4)), -white.read(np.arange(4)), atol=1e-5)


def test_images_with_nan_or_inf_are_skipped_and_counted_in_the_log(sim, tmp_path, caplog):
    with mrcfile.open(sim / "particles.mrcs") as m:
        data = np.array(m.data)
    data[4, 3, 3] = np.nan
    data[10, 0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's header statistics notice them too
        write_mrc(tmp_path / "particles.mrcs", data, 8.0)
    (tmp_path / "particles.star").write_text((sim / "particles.star").read_text())
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        d = ParticleDataset(read_particles(tmp_path / "particles.star"), box=16).scan(cache_bytes=0, chunk=64)
    assert len(d) == 298 and list(d.skipped) == [4, 10]
    assert "skipped 2 particle(s) whose images hold NaN or Inf (rows 5, 11)" in caplog.text
    assert d.rows[4] == 5 and torch.isfinite(d.read(np.arange(298))).all()
    # everything per particle moved with it
    full = read_particles(sim / "particles.star")
    np.testing.assert_allclose(d.reference_rotations[4].numpy(), full.rotations[5], atol=1e-6)
    assert float(d.ctf.defocus_u_in_angstroms[4]) == pytest.approx(full.ctf["rlnDefocusU"][5])


def test_the_cache_and_the_streamed_reads_give_the_same_images(sim):
    cached = ParticleDataset(read_particles(sim / "particles.star"), box=16).scan()
    streamed = ParticleDataset(read_particles(sim / "particles.star"), box=16).scan(cache_bytes=0)
    assert cached.in_memory and not streamed.in_memory
    idx = np.array([5, 100, 2])
    np.testing.assert_allclose(cached.read(idx), streamed.read(idx), atol=1e-6)


def test_the_soft_mask_is_one_inside_zero_outside_and_smooth_between():
    m = soft_circular_mask(64, radius=20, edge=4)
    assert m[32, 32] == 1 and m[32, 32 + 19] == 1 and m[32, 32 + 25] == 0 and m[0, 0] == 0
    assert 0 < float(m[32, 32 + 22]) < 1
    d_profile = m[32, 32:].diff()
    assert (d_profile <= 1e-7).all()  # monotone fall


def test_a_mask_diameter_masks_the_images_but_not_the_noise_estimate(sim):
    d = ParticleDataset(read_particles(sim / "particles.star"), mask_diameter=8.0 * 20).scan()
    masked, plain = d.read(np.arange(3)), d.read(np.arange(3), masked=False)
    assert masked[:, 0, 0].abs().max() == 0 and plain[:, 0, 0].abs().max() > 0
    with pytest.raises(ValueError, match="does not fit the box"):
        ParticleDataset(read_particles(sim / "particles.star"), mask_diameter=8.0 * 40)


def test_with_a_mask_the_noise_model_is_the_masked_images_noise(sim):
    """The losses compare masked images: σ² must be their noise, not the unmasked background's (which is
    1 / mask_power times larger). At the highest shells of this set (SNR 0.5 at box 32, a 8 Å pixel) the
    images are noise, so their masked power per shell is σ² there."""
    from napari_semiamort.run.batches import ImageSource
    from napari_semiamort.run.build import initial_noise
    from napari_semiamort.run.frequencies import Frequencies

    d = ParticleDataset(read_particles(sim / "particles.star"), mask_diameter=8.0 * 24).scan()
    assert 0.2 < d.mask_power < 0.6
    fr = Frequencies(32, 1.0, "cpu")
    noise = initial_noise(ImageSource(d, torch.device("cpu")), fr, seed=0, white=False)
    from napari_semiamort.physics.fourier import hartley_centered

    power = (hartley_centered(d.read(np.arange(300)), 2).flatten(1)[:, fr.flat_index] ** 2).mean(0)
    shells = fr.shells
    high = [13, 14, 15]
    ratio = [float(power[shells == k].mean() / noise.variance[k]) for k in high]
    np.testing.assert_allclose(ratio, 1.0, atol=0.2)


def test_halves_are_a_seeded_equal_split_or_the_files_random_subsets(sim, tmp_path):
    d = ParticleDataset(read_particles(sim / "particles.star"))
    a = d.split_halves(seed=3).copy()
    assert (a == 1).sum() == 150 and (a == 2).sum() == 150
    np.testing.assert_array_equal(d.split_halves(seed=3), a)
    assert not np.array_equal(d.split_halves(seed=4), a)
    table = read_particles(sim / "particles.star")
    table.extra["rlnRandomSubset"] = np.arange(300) % 2 + 1
    given = ParticleDataset(table).split_halves(seed=3)
    np.testing.assert_array_equal(given, np.arange(300) % 2 + 1)


def test_phase_flipped_and_premultiplied_data_get_abs_and_squared_ctf(sim):
    from napari_semiamort.run.batches import ImageSource

    table = read_particles(sim / "particles.star")
    table.phase_flipped = np.arange(300) % 3 == 1
    table.ctf_premultiplied = np.arange(300) % 3 == 2
    freqs = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * 0.5
    c = ImageSource(ParticleDataset(table), torch.device("cpu")).ctf(torch.arange(3), freqs)
    plain = ParticleDataset(read_particles(sim / "particles.star"))
    ref = ImageSource(plain, torch.device("cpu")).ctf(torch.arange(3), freqs)
    torch.testing.assert_close(c[0], ref[0])
    torch.testing.assert_close(c[1], ref[1].abs())
    torch.testing.assert_close(c[2], ref[2] ** 2)


def test_an_odd_box_is_cropped_to_the_even_box_below(tmp_path):
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "s.mrcs", rng.normal(size=(4, 33, 33)).astype(np.float32), 3.0)
    d = ParticleDataset(read_particles(tmp_path / "s.mrcs"), use_ctf=False)
    assert d.box == 32 and d.pixel_size == pytest.approx(3.0 * 33 / 32)


def test_a_bare_stack_uses_its_header_pixel_size_unless_it_is_the_unset_value(tmp_path):
    write_mrc(tmp_path / "a.mrcs", np.zeros((2, 16, 16), np.float32), 2.5)
    assert ParticleDataset(read_particles(tmp_path / "a.mrcs"), use_ctf=False).pixel_size == 2.5
    write_mrc(tmp_path / "b.mrcs", np.zeros((2, 16, 16), np.float32), 1.0)
    with pytest.raises(ValueError, match=r"b\.mrcs: no pixel size .* says 1 Å, the usual 'unset' value.*--pixel-size"):
        ParticleDataset(read_particles(tmp_path / "b.mrcs"), use_ctf=False)


def test_the_loader_reads_ahead_in_order_and_stops_its_thread(sim):
    import threading

    from napari_semiamort.data.loader import BatchLoader

    d = ParticleDataset(read_particles(sim / "particles.star")).scan(cache_bytes=0)
    batches = [np.arange(s, s + 50) for s in range(0, 300, 50)]
    got = list(BatchLoader(d, batches))
    assert [b[0] for b, _ in got] == [0, 50, 100, 150, 200, 250]
    np.testing.assert_allclose(got[3][1], d.read(batches[3]))
    it = iter(BatchLoader(d, batches))
    next(it)
    it.close()  # a run stopped mid-epoch
    assert not any(t.name == "semiamort-loader" for t in threading.enumerate())


def test_a_read_error_in_the_loader_thread_reaches_the_trainer(sim):
    from napari_semiamort.data.loader import BatchLoader

    d = ParticleDataset(read_particles(sim / "particles.star")).scan(cache_bytes=0)
    with pytest.raises(IndexError):
        list(BatchLoader(d, [np.arange(3), np.array([10_000])]))


def test_a_gzipped_stack_reads_like_the_plain_one(sim, tmp_path):
    import gzip
    import shutil

    with open(sim / "particles.mrcs", "rb") as src, gzip.open(tmp_path / "particles.mrcs.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    gz = ParticleDataset(read_particles(tmp_path / "particles.mrcs.gz"), use_ctf=False)
    plain = ParticleDataset(read_particles(sim / "particles.mrcs"), use_ctf=False)
    assert len(gz) == 300 and gz.pixel_size == pytest.approx(8.0)
    np.testing.assert_array_equal(gz.read_raw(np.array([0, 299])), plain.read_raw(np.array([0, 299])))


def test_thousands_of_stacks_never_hold_more_than_max_open_files(tmp_path, monkeypatch):
    """A RELION dataset has one stack per micrograph; the open-file limit must not bound its size."""
    import os

    from napari_semiamort.data.mrc import Stack
    from napari_semiamort.data.particles import ParticleTable

    monkeypatch.setattr(Stack, "MAX_OPEN", 8)
    rng = np.random.default_rng(3)
    stacks = []
    for s in range(60):
        stacks.append(write_mrc(tmp_path / f"mic{s:03d}.mrcs", rng.normal(size=(3, 16, 16)).astype(np.float32), 2.0))
    idx = np.arange(180)
    table = ParticleTable(source=tmp_path / "p.star", stacks=stacks, stack_index=idx // 3, image_index=idx % 3,
                          pixel_size=2.0)
    before = len(os.listdir("/proc/self/fd"))
    d = ParticleDataset(table, use_ctf=False)
    for _ in range(5):
        x = d.read_raw(rng.permutation(180)[:36])
    del x
    assert len(os.listdir("/proc/self/fd")) - before <= 8
    with mrcfile.open(tmp_path / "mic059.mrcs") as m:
        np.testing.assert_array_equal(d.read_raw(np.array([179])), m.data[2][None])


def test_at_box_prepares_the_same_particles_at_the_images_box_with_the_decided_contrast(sim, tmp_path):
    """The full-size view of a downsampled dataset (for the final maps) keeps the contrast decided on the
    downsampled images, the mask's diameter in Å and the halves; it refuses before the contrast is decided."""
    with mrcfile.open(sim / "particles.mrcs") as m:
        write_mrc(tmp_path / "particles.mrcs", -np.asarray(m.data), 8.0)
    (tmp_path / "particles.star").write_text((sim / "particles.star").read_text())
    small = ParticleDataset(read_particles(tmp_path / "particles.star"), box=16, mask_diameter=160.0).scan()
    small.split_halves(seed=1)
    assert small.sign == -1.0 and small.pixel_size == pytest.approx(16.0)
    full = small.at_box()
    assert full.box == 32 and full.pixel_size == pytest.approx(8.0) and full.sign == -1.0
    np.testing.assert_array_equal(full.half, small.half)
    direct = ParticleDataset(read_particles(tmp_path / "particles.star"), mask_diameter=160.0, invert="yes").scan()
    np.testing.assert_allclose(full.read(np.arange(5)), direct.read(np.arange(5)), atol=1e-5)
    assert small.at_box(16) is small
    with pytest.raises(ValueError, match=r"particles\.star: box 40: choose an even size from 8 to the images' 32"):
        small.at_box(40)
    with pytest.raises(RuntimeError, match="before scan"):
        ParticleDataset(read_particles(tmp_path / "particles.star"), box=16).at_box()
