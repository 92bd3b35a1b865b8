"""`semiamort simulate`'s realistic options: a real data set's CTF table, noise falling with frequency, a
B-factor envelope, a per-image scale and junk, each doing what it says, without moving the other draws."""

import json
from importlib.resources import files
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from napari_semiamort.cli.main import main
from napari_semiamort.data.star import read_star
from napari_semiamort.sim.realistic import NOISE_FLOOR, falling_noise, read_ctf_table
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

RIBOSOME = str(files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz")
IGG = str(files("napari_semiamort") / "resources" / "1igy.cif.gz")
DATA = Path(__file__).resolve().parent / "data"


def _simulate(out: Path, **kw) -> tuple[np.ndarray, dict]:
    settings = {"n_particles": 120, "box": 32, "snr": 1e6, "seed": 5, **kw}
    info = simulate_dataset(RIBOSOME, out, SimulationConfig(**settings), force=True)
    return mrcfile.read(out / "particles.mrcs").astype(np.float64), info


def _radial_power(images: np.ndarray) -> np.ndarray:
    f = np.abs(np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))) ** 2
    size = images.shape[-1]
    k = np.arange(size) - size // 2
    r = np.round(np.hypot(*np.meshgrid(k, k))).astype(int)
    return np.array([f[..., r == s].mean() for s in range(size // 2)])


def test_the_realistic_options_leave_the_poses_and_shifts_of_the_seed_as_they_were(tmp_path):
    _simulate(tmp_path / "plain", max_shift=2)
    _simulate(tmp_path / "real", max_shift=2, noise_falloff=400, bfactor=100, scale_spread=0.1, junk_fraction=0.1,
              ctf_table=str(DATA / "ctf2_from_P12_J24.pkl"))
    a, b = (read_star(tmp_path / s / "particles.star", require_stacks=False) for s in ("plain", "real"))
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.origins, b.origins)
    assert not np.array_equal(a.ctf["rlnDefocusU"], b.ctf["rlnDefocusU"])


@pytest.mark.parametrize("table", ["ctf2_from_P12_J24.pkl", "cryosparc_P12_J24_001_particles.cs"])
def test_each_images_ctf_is_a_row_of_the_real_table(tmp_path, table):
    real = read_ctf_table(DATA / table)
    _simulate(tmp_path, ctf_table=str(DATA / table))
    ours = read_star(tmp_path / "particles.star", require_stacks=False).ctf
    rows = set(zip(*(np.round(real[k], 3) for k in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")), strict=True))
    drawn = list(zip(*(np.round(ours[k], 3) for k in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")), strict=True))
    assert all(r in rows for r in drawn)  # rows of the table (one per micrograph there) ...
    assert len(set(drawn)) > min(len(rows), 120) // 2  # ... many different ones
    assert np.all(ours["rlnCtfBfactor"] == 0)


def test_a_ctf_table_that_is_not_one_is_refused_with_its_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pkl: no such CTF table"):
        read_ctf_table(tmp_path / "nothing.pkl")
    (tmp_path / "map.mrc").write_bytes(b"")
    with pytest.raises(ValueError, match="map.mrc: a CTF table is a cryoDRGN ctf.pkl"):
        read_ctf_table(tmp_path / "map.mrc")


def test_falling_noise_keeps_the_variance_and_falls_as_its_spectrum_says(generator):
    white = torch.randn(400, 64, 64, generator=generator)
    noise = falling_noise(white, pixel_size=4.0, falloff=400.0)
    assert float(noise.var()) == pytest.approx(float(white.var()), rel=0.03)
    power = _radial_power(noise.numpy())
    k = np.arange(32) / (64 * 4.0)
    want = NOISE_FLOOR + np.exp(-400 * k**2 / 4)
    ratio = power[2:] / want[2:]
    assert ratio.std() / ratio.mean() < 0.1  # the shape of the spectrum
    assert power[2] > 2.5 * power[30]  # (1 + 0.1) / (0.25 + 0.1) at 8.5 Å


def test_the_b_factor_damps_the_signal_at_high_frequency_as_its_envelope(tmp_path):
    plain, info = _simulate(tmp_path / "plain", ctf=False)
    damped, _ = _simulate(tmp_path / "damped", ctf=False, bfactor=500.0)
    k = np.arange(16) / (32 * info["pixel_size"])
    measured = _radial_power(damped) / _radial_power(plain)
    np.testing.assert_allclose(measured[1:12], np.exp(-500 * k[1:12] ** 2 / 2), rtol=0.1)


def test_each_images_signal_is_scaled_and_the_snr_counts_the_particles_only(tmp_path):
    plain, _ = _simulate(tmp_path / "plain")
    scaled, _ = _simulate(tmp_path / "scaled", scale_spread=0.2)
    factor = np.sqrt((scaled**2).sum((1, 2)) / (plain**2).sum((1, 2)))
    assert 0.15 < np.log(factor).std() < 0.25 and factor.min() < 0.9 < 1.1 < factor.max()
    _, info = _simulate(tmp_path / "junk", snr=0.5, junk_fraction=0.25)
    _, without = _simulate(tmp_path / "none", snr=0.5)
    assert info["noise_std"] == pytest.approx(without["noise_std"], rel=0.15)  # junk does not dilute the signal


@pytest.mark.parametrize("kind", ["ice", "other"])
def test_junk_images_hold_noise_alone_or_another_molecule(tmp_path, kind):
    source = IGG if kind == "other" else None
    images, info = _simulate(tmp_path, junk_fraction=0.2, junk_kind=kind, junk_source=source, snr=1e3)
    junk = np.loadtxt(tmp_path / "junk.txt", dtype=int)
    assert info["junk_count"] == len(junk) == 24 and np.all(np.diff(junk) > 0)
    plain, _ = _simulate(tmp_path / "plain", snr=1e3)
    power = images.var((1, 2))
    good = np.setdiff1d(np.arange(120), junk)
    np.testing.assert_allclose(images[good], plain[good], rtol=1e-4, atol=1e-3 * np.abs(plain).max())
    if kind == "ice":
        assert power[junk].max() < 0.01 * power[good].min()  # the noise alone, at SNR 1000
    else:
        assert power[junk].min() > 0.05 * np.median(power[good])  # a molecule's signal, not the ribosome's
        assert not np.allclose(images[junk], plain[junk], rtol=0.1)


def test_the_command_line_realistic_preset_and_its_overrides(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", RIBOSOME, "-o", str(out), "--n", "50", "--box", "24", "--realistic",
                 "--bfactor", "50"]) == 0
    info = json.loads((out / "simulation.json").read_text())
    assert (info["noise_falloff"], info["bfactor"], info["scale_spread"], info["junk_fraction"], info["max_shift"]) \
        == (400.0, 50.0, 0.1, 0.1, 3.0)
    assert "5 of them junk (junk.txt)" in capsys.readouterr().out
    assert main(["simulate", RIBOSOME, "-o", str(tmp_path / "bad"), "--junk", "0.1", "--junk-kind", "other"]) == 1
    assert "needs a junk source" in capsys.readouterr().err
