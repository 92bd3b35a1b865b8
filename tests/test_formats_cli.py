"""`semiamort reconstruct` from each input format, what a run writes for RELION, cryoSPARC and ChimeraX, and
RELION reading our STAR (the issue's "our STAR means what RELION means")."""

import shutil
import subprocess
from importlib.resources import files

import mrcfile
import numpy as np
import pytest
import starfile

from conftest import DATA
from napari_semiamort.cli.main import main
from napari_semiamort.data.cryodrgn import write_ctf_pkl
from napari_semiamort.data.cryosparc import read_cs, write_cs
from napari_semiamort.data.mrc import read_map
from napari_semiamort.data.star import read_star, write_star
from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

MOLECULE = str(files("napari_semiamort") / "resources" / "1igy.cif.gz")
QUICK = ["--epochs", "2", "--switch-epoch", "1", "--heads", "4", "--batch-size", "32", "--threads", "1"]

needs_relion = pytest.mark.skipif(shutil.which("relion_reconstruct") is None,
                                  reason="RELION not installed (apt-get install relion)")


def ncc(a, b):
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_dataset(MOLECULE, out, SimulationConfig(n_particles=400, box=32, pixel_size=8.0, snr=100.0,
                                                     max_shift=3.0, seed=3))
    return out


def test_reconstruct_from_a_relion_star_writes_map_halves_fsc_poses_and_a_chimerax_script(sim, tmp_path):
    run = tmp_path / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), "--halves", "--box", "24",
                 "--reference-map", str(sim / "truth.mrc"), *QUICK]) == 0
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "poses.star", "chimerax.cxc"):
        assert (run / name).is_file(), name
    # poses inferred at 24 px; the maps made from the 32-px images at 8 Å/px
    with mrcfile.open(run / "map.mrc") as m:
        assert m.data.shape == (32, 32, 32) and m.data.dtype == np.float32
        assert float(m.voxel_size.x) == pytest.approx(8.0, abs=1e-3)
    with mrcfile.open(run / "half1.mrc") as m:
        assert m.data.shape == (32, 32, 32) and float(m.voxel_size.x) == pytest.approx(8.0, abs=1e-3)
    fsc = np.genfromtxt(run / "fsc.csv", delimiter=",", names=True)
    assert fsc["fsc_halves"][0] == pytest.approx(1.0) and len(fsc) == 17
    assert fsc["resolution_angstrom"][-1] == pytest.approx(16.0)
    assert "fsc_reference" in fsc.dtype.names  # against the 32-px truth
    assert (run / "fsc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the poses refer to the original 32-px images at 8 Å/px, with the halves and the CTF carried through
    out = starfile.read(run / "poses.star", always_dict=True)
    assert out["optics"]["rlnImageSize"][0] == 32 and out["optics"]["rlnImagePixelSize"][0] == pytest.approx(8.0)
    p = out["particles"]
    assert sorted(set(p["rlnRandomSubset"])) == [1, 2] and len(p) == 400
    src = read_star(sim / "particles.star")
    np.testing.assert_allclose(p["rlnDefocusU"], src.ctf["rlnDefocusU"], atol=1e-4)
    cxc = (run / "chimerax.cxc").read_text()
    assert f"open {(run / 'map.mrc').resolve()}" in cxc and "voxelSize 8.0000" in cxc and "half2.mrc" in cxc
    # --output-box: the maps at the run's 24 px (10.67 Å/px), and the FSC with them
    small = tmp_path / "small"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(small), "--halves", "--box", "24",
                 "--output-box", "24", "--reference-map", str(sim / "truth.mrc"), *QUICK]) == 0
    m, voxel = read_map(small / "map.mrc")
    assert m.shape == (24, 24, 24) and voxel == pytest.approx(8.0 * 32 / 24, abs=1e-3)
    assert len(np.genfromtxt(small / "fsc.csv", delimiter=",", names=True)) == 13


def test_export_chimerax_refuses_to_overwrite_without_force(sim, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), *QUICK]) == 0
    assert main(["export", "chimerax", str(run)]) == 1
    assert "chimerax.cxc: exists; pass --force" in capsys.readouterr().err
    before = (run / "chimerax.cxc").read_text()
    assert main(["export", "chimerax", str(run), "--force"]) == 0
    assert (run / "chimerax.cxc").read_text().splitlines()[2:] == before.splitlines()[2:]
    assert main(["export", "chimerax", str(tmp_path / "nope")]) == 1


def test_export_for_cryosparc_and_cryodrgn_matches_the_runs_star(sim, tmp_path):
    from napari_semiamort.data.cryodrgn import read_ctf_pkl, read_pose_pkl

    run = tmp_path / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), *QUICK]) == 0
    assert main(["export", "cryosparc", str(run)]) == 0 and main(["export", "cryodrgn", str(run)]) == 0
    star = read_star(run / "poses.star")
    cs = read_cs(run / "poses.cs")
    np.testing.assert_allclose(cs.rotations, star.rotations, atol=1e-5)
    np.testing.assert_allclose(cs.origins, star.origins, atol=1e-4)
    rot, origins = read_pose_pkl(run / "pose.pkl", 32, 8.0)
    np.testing.assert_allclose(rot, star.rotations, atol=1e-6)
    ctf, pixel, box = read_ctf_pkl(run / "ctf.pkl")
    assert (pixel, box) == (pytest.approx(8.0), 32)
    np.testing.assert_allclose(ctf["rlnDefocusU"], star.ctf["rlnDefocusU"], rtol=1e-6)
    assert main(["export", "cryosparc", str(run)]) == 1  # exists: refused without --force


def test_an_existing_output_folder_is_refused_and_left_untouched(sim, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.mrc").write_bytes(b"user data")
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), *QUICK]) == 1
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert (run / "precious.mrc").read_bytes() == b"user data" and len(list(run.iterdir())) == 1


def test_reconstruct_from_a_cryosparc_cs_writes_poses_cs_with_alignments(sim, tmp_path):
    cs = write_cs(tmp_path / "particles.cs", read_star(sim / "particles.star"))
    run = tmp_path / "run"
    assert main(["reconstruct", str(cs), "-o", str(run), *QUICK]) == 0
    out = np.load(run / "poses.cs")
    assert "alignments3D/pose" in out.dtype.names and len(out) == 400
    back = read_cs(run / "poses.cs")
    star = read_star(run / "poses.star")
    np.testing.assert_allclose(back.rotations, star.rotations, atol=1e-5)
    np.testing.assert_array_equal(back.uid, read_cs(cs).uid)


def test_reconstruct_from_a_bare_stack_with_a_cryodrgn_ctf_pkl(sim, tmp_path, capsys):
    t = read_star(sim / "particles.star")
    write_ctf_pkl(tmp_path / "ctf.pkl", t.ctf, 32, 8.0)
    run = tmp_path / "run"
    stack = sim / "particles.mrcs"
    assert main(["reconstruct", str(stack), "--ctf-pkl", str(tmp_path / "ctf.pkl"), "-o", str(run), *QUICK]) == 0
    assert (run / "map.mrc").is_file()
    # without a CTF the bare stack is refused with the way out named
    assert main(["reconstruct", str(stack), "-o", str(tmp_path / "r2"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "particles.mrcs: a bare stack carries no CTF parameters" in err and "--ctf-pkl" in err and "--no-ctf" in err


def test_smoke_runs_on_real_particles_from_a_star_and_a_cs(tmp_path):
    """EMPIAR-10076's 7 real 320-px particles (header pixel size 0) through both readers, downsampled."""
    for src in ("empiar_10076_7.star", "empiar_10076_7.cs"):
        run = tmp_path / src.replace(".", "_")
        assert main(["reconstruct", str(DATA / src), "-o", str(run), "--box", "32", "--output-box", "64",
                     "--epochs", "1", "--switch-epoch", "1", "--heads", "2", "--batch-size", "4",
                     "--threads", "1"]) == 0
        m, voxel = read_map(run / "map.mrc")
        assert m.shape == (64, 64, 64) and np.isfinite(m).all() and voxel == pytest.approx(1.31 * 5, abs=0.01)


@needs_relion
@pytest.mark.parametrize("route", ["star", "cs"])
def test_relion_reconstruct_from_our_rewritten_star_gives_the_truth_and_not_its_mirror(sim, tmp_path, route):
    """STAR → our table (→ .cs → table) → our STAR with absolute paths, read by RELION from another folder."""
    table = read_star(sim / "particles.star")
    if route == "cs":
        table = read_cs(write_cs(tmp_path / "p.cs", table))
    write_star(tmp_path / "ours.star", table)
    work = tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run(["relion_reconstruct", "--i", str(tmp_path / "ours.star"), "--o", "relion.mrc", "--ctf",
                    "--j", "2"], cwd=work, check=True, capture_output=True)
    rec, _ = read_map(work / "relion.mrc")
    truth, _ = read_map(sim / "truth.mrc")
    assert ncc(rec, truth) >= 0.95
    assert ncc(rec[::-1], truth) < 0.8


def test_export_cryosparc_of_a_cs_run_keeps_the_original_uids(sim, tmp_path):
    cs = write_cs(tmp_path / "particles.cs", read_star(sim / "particles.star"))
    run = tmp_path / "run"
    assert main(["reconstruct", str(cs), "-o", str(run), *QUICK]) == 0
    assert main(["export", "cryosparc", str(run), "--force"]) == 0
    np.testing.assert_array_equal(read_cs(run / "poses.cs").uid, read_cs(cs).uid)


def test_a_forced_new_run_clears_the_previous_runs_results_and_files_are_readable_by_others(sim, tmp_path):
    import os
    import stat

    run = tmp_path / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), "--halves", *QUICK]) == 0
    assert (run / "half1.mrc").is_file()
    old = os.umask(0o022)
    try:
        assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), "--force", *QUICK]) == 0
    finally:
        os.umask(old)
    assert not (run / "half1.mrc").exists() and "half1" not in (run / "chimerax.cxc").read_text()
    assert stat.S_IMODE((run / "map.mrc").stat().st_mode) == 0o644


def test_a_resumed_run_keeps_its_original_command_in_config_json(sim, tmp_path):
    import json

    run = tmp_path / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), *QUICK]) == 0
    first = json.loads((run / "config.json").read_text())
    assert main(["reconstruct", "--resume", str(run), "--epochs", "3"]) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["command"] == first["command"] and len(record["resumed"]) == 1
    assert record["config"]["epochs"] == 3


def test_a_complex_mrc_is_refused(tmp_path):
    import mrcfile as mf

    from napari_semiamort.data.mrc import Stack

    with mf.new(tmp_path / "c.mrcs") as m:
        m.set_data(np.zeros((2, 8, 8), np.complex64))
    with pytest.raises(ValueError, match=r"c\.mrcs: holds complex numbers"):
        Stack(tmp_path / "c.mrcs")
