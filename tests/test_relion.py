"""Our conventions against RELION's own programs (Debian package ``relion``; .ci/run installs it)."""

import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import torch

from conftest import SHARED
from napari_semiamort.data.mrc import read_map, write_mrc
from napari_semiamort.data.particles import ParticleTable
from napari_semiamort.data.star import angles_to_matrices, read_star_columns, write_star
from napari_semiamort.physics.ctf import CTFParams, compute_ctf
from napari_semiamort.physics.fourier import frequency_grid_2d, ifft_centered, resample_map
from napari_semiamort.physics.so3 import euler_relion_to_matrix
from napari_semiamort.sim.project import PaddedProjector
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

needs_relion = pytest.mark.skipif(
    shutil.which("relion_project") is None, reason="RELION not installed (apt-get install relion)"
)


def ncc(a, b):
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def our_projections(volume, angles_deg, pixel, ctf_cols=None, origins_px=None):
    ang = torch.deg2rad(torch.as_tensor(np.asarray(angles_deg), dtype=torch.float64))
    rots = euler_relion_to_matrix(*ang.unbind(-1))
    size = volume.shape[-1]
    f = PaddedProjector(torch.as_tensor(volume)).fourier(rots)
    freqs = frequency_grid_2d(size)
    if ctf_cols is not None:
        n = len(angles_deg)
        ctf = CTFParams.stack(
            n,
            defocus_u_in_angstroms=ctf_cols["rlnDefocusU"], defocus_v_in_angstroms=ctf_cols["rlnDefocusV"],
            astigmatism_angle_in_degrees=ctf_cols["rlnDefocusAngle"], voltage_in_kilovolts=ctf_cols["rlnVoltage"],
            spherical_aberration_in_mm=ctf_cols["rlnSphericalAberration"],
            amplitude_contrast=ctf_cols["rlnAmplitudeContrast"], phase_shift_in_degrees=ctf_cols["rlnPhaseShift"],
        )
        f = f * compute_ctf(ctf, freqs, pixel)
    if origins_px is not None:
        o = torch.as_tensor(np.asarray(origins_px), dtype=torch.float32)
        phase = 2 * torch.pi * (freqs[None] * o[:, None, None, :]).sum(-1)
        f = f * torch.polar(torch.ones_like(phase), phase)
    return ifft_centered(f, 2).real.numpy()


def test_projections_match_relions_golden_images_without_ctf():
    """RELION-free check: relion_project output shipped in shared/data (64 px, centred and shifted)."""
    folder = SHARED / "particles" / "relion_project_70S"
    vol65, _ = read_map(SHARED / "maps" / "clean70SRibosome_vol_65p.mrc")
    vol = resample_map(torch.from_numpy(vol65), 64).numpy()  # the golden set used a Fourier-downsampled map
    for name in ("rln_proj_64_centered", "rln_proj_64_shifted"):
        cols = read_star_columns(folder / f"{name}.star")
        ang = np.stack([cols["rlnAngleRot"], cols["rlnAngleTilt"], cols["rlnAnglePsi"]], -1)
        origins = None
        if "rlnOriginX" in cols:  # this STAR has no optics-level Angst origins: pixels apply
            origins = np.stack([cols["rlnOriginX"], cols["rlnOriginY"]], -1)
        ours = our_projections(vol, ang, 1.0, origins_px=origins)
        with mrcfile.open(folder / f"{name}.mrcs", permissive=True) as m:
            golden = np.asarray(m.data)
        for i in range(len(ours)):
            assert ncc(ours[i], golden[i]) >= 0.99, (name, i)


@needs_relion
def test_ctf_equals_relion_project_with_ctf(tmp_path, igg_map):
    size, pixel = 32, 4.0
    vol = igg_map.numpy()
    write_mrc(tmp_path / "map.mrc", vol, pixel)
    settings = [  # U, V, angle, phase shift, amplitude contrast
        (8000.0, 8000.0, 0.0, 0.0, 0.1),
        (15000.0, 12000.0, 30.0, 0.0, 0.07),
        (20000.0, 19000.0, 120.0, 0.0, 0.1),
        (5000.0, 3000.0, 75.0, 90.0, 0.1),
        (25000.0, 24000.0, 160.0, 0.0, 0.2),
    ]
    n = len(settings)
    ang = np.array([[10, 40, 70], [100, 80, 20], [200, 120, 300], [30, 160, 150], [300, 10, 45]], float)
    s = np.array(settings)
    cols = {
        "rlnDefocusU": s[:, 0], "rlnDefocusV": s[:, 1], "rlnDefocusAngle": s[:, 2], "rlnPhaseShift": s[:, 3],
        "rlnAmplitudeContrast": s[:, 4], "rlnVoltage": np.full(n, 300.0), "rlnSphericalAberration": np.full(n, 2.7),
        "rlnCtfBfactor": np.zeros(n),
    }
    ours = []
    for i in range(n):  # one optics group per STAR: one setting at a time
        one = {k: v[i : i + 1] for k, v in cols.items()}
        star = tmp_path / f"p{i}.star"
        write_mrc(tmp_path / "dummy.mrcs", np.zeros((1, size, size), np.float32), pixel)
        table = ParticleTable(source=star, stacks=[tmp_path / "dummy.mrcs"], stack_index=np.zeros(1, np.int64),
                              image_index=np.zeros(1, np.int64), pixel_size=pixel, box=size, ctf=one,
                              rotations=angles_to_matrices(ang[i : i + 1]), origins=np.zeros((1, 2)))
        write_star(star, table, force=True)
        subprocess.run(["relion_project", "--i", "map.mrc", "--o", f"proj{i}", "--ang", star.name, "--ctf",
                        "--angpix", str(pixel)], cwd=tmp_path, check=True, capture_output=True)
        with mrcfile.open(tmp_path / f"proj{i}.mrcs", permissive=True) as m:
            relion = np.asarray(m.data).reshape(-1, size, size)[0]
        ours = our_projections(vol, ang[i : i + 1], pixel, one)[0]
        assert ncc(ours, relion) >= 0.99, settings[i]
        flipped = our_projections(vol, ang[i : i + 1], pixel, {**one, "rlnDefocusAngle": -one["rlnDefocusAngle"]})[0]
        if settings[i][0] != settings[i][1]:
            assert ncc(ours, relion) > ncc(flipped, relion)


@needs_relion
def test_relion_reconstruct_from_our_star_gives_the_truth_and_not_its_mirror(tmp_path):
    from importlib.resources import files

    molecule = files("napari_semiamort") / "resources" / "1igy.cif.gz"
    cfg = SimulationConfig(n_particles=400, box=32, pixel_size=8.0, snr=100.0, max_shift=3.0, seed=3)
    simulate_dataset(str(molecule), tmp_path, cfg)
    subprocess.run(["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf", "--j", "2"],
                   cwd=tmp_path, check=True, capture_output=True)
    rec, _ = read_map(tmp_path / "relion.mrc")
    truth, _ = read_map(tmp_path / "truth.mrc")
    assert ncc(rec, truth) >= 0.95
    assert ncc(rec[::-1], truth) < 0.8  # the mirror image (z flipped) does not fit
