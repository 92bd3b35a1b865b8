"""The command line: simulate → reconstruct → resume → fsc, the files each writes, and its errors."""

import json
import subprocess
import sys
from importlib.resources import files

import mrcfile
import numpy as np
import pytest

from napari_semiamort.cli import export
from napari_semiamort.cli.main import main
from napari_semiamort.data.mrc import read_map, write_mrc
from napari_semiamort.data.star import read_star_columns

MOLECULE = str(files("napari_semiamort") / "resources" / "1igy.cif.gz")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", MOLECULE, "-o", str(out), "--n", "120", "--box", "32", "--snr", "1", "--seed", "2"]) == 0
    return out


def test_simulate_writes_a_stack_a_star_with_true_poses_and_the_truth(sim):
    with mrcfile.open(sim / "particles.mrcs") as m:
        assert m.data.shape == (120, 32, 32)
        pixel = float(m.voxel_size.x)
    cols = read_star_columns(sim / "particles.star")
    assert len(cols["rlnImageName"]) == 120
    assert np.isclose(cols["rlnImagePixelSize"][0], pixel, atol=1e-3)
    assert cols["rlnDefocusU"].min() >= 10000 and cols["rlnDefocusU"].max() <= 25000
    with mrcfile.open(sim / "truth.mrc") as m:
        assert m.data.shape == (32, 32, 32) and np.isclose(float(m.voxel_size.x), pixel, atol=1e-3)


def test_simulate_draws_the_same_stack_on_any_device(sim, tmp_path):
    """--device moves only the projections: the seed's poses, CTFs and noise come from the CPU generator, so
    ``auto`` (a GPU where there is one) gives the CPU's stack, to float32 rounding of the projections."""
    out = tmp_path / "auto"
    assert main(["simulate", MOLECULE, "-o", str(out), "--n", "120", "--box", "32", "--snr", "1", "--seed", "2",
                 "--device", "auto"]) == 0
    here, cpu = mrcfile.read(out / "particles.mrcs"), mrcfile.read(sim / "particles.mrcs")
    noise = json.loads((sim / "simulation.json").read_text())["noise_std"]
    assert np.abs(here - cpu).max() < 1e-3 * noise  # the noise is the same draw: only the signal may differ
    assert (out / "particles.star").read_text() == (sim / "particles.star").read_text()


def test_simulate_names_a_device_it_does_not_know(tmp_path, capsys):
    assert main(["simulate", MOLECULE, "-o", str(tmp_path / "s"), "--n", "8", "--box", "16", "--device", "gpu"]) == 1
    assert "'gpu'" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_simulate_on_an_absent_device_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", MOLECULE, "-o", str(out), "--n", "8", "--box", "16", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert not out.exists()


def test_reconstruct_then_resume_continues_the_run(sim, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["reconstruct", str(sim / "particles.star"), "-o", str(run), "--epochs", "2", "--switch-epoch", "1",
            "--heads", "4", "--batch-size", "32", "--threads", "1", "--reference-map", str(sim / "truth.mrc")]
    assert main(args) == 0
    out = capsys.readouterr().out  # the verdicts: stage 1's at the switch, the run's at its end
    assert out.count("verdict (stage 1): ") == 1 and out.count("verdict (the run): ") == 1
    for name in ("map.mrc", "poses.star", "config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (run / name).is_file(), name
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["heads"] == 4 and "version" in record and "time" in record
    assert record["config"]["threads"] == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert "pose_error_mean_deg" in json.loads(lines[-1])
    assert json.loads(lines[-1])["verdict"] in ("found", "doubtful", "failed", "unknown")
    assert json.loads(lines[-1])["verdict_stage1"] in ("found", "doubtful", "failed", "unknown")
    poses = read_star_columns(run / "poses.star")
    assert len(poses["rlnAngleRot"]) == 120
    with mrcfile.open(run / "map.mrc") as m:
        assert m.data.shape == (32, 32, 32) and m.voxel_size.x > 0
        voxel = float(m.voxel_size.x)
    assert main(["reconstruct", "--resume", str(run), "--epochs", "3"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch   3" in out
    # --output-box on a resume changes the maps' box, not the training
    assert main(["reconstruct", "--resume", str(run), "--output-box", "16"]) == 0
    with mrcfile.open(run / "map.mrc") as m:
        assert m.data.shape == (16, 16, 16) and float(m.voxel_size.x) == pytest.approx(2 * voxel, abs=1e-3)


def test_reconstruct_refuses_an_existing_run_folder_without_force(sim, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_reconstruct_names_a_missing_star_file(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope.star"), "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "nope.star" in err and "no such STAR file" in err


def test_reconstruct_names_missing_stacks(sim, tmp_path, capsys):
    star = tmp_path / "moved.star"
    star.write_text((sim / "particles.star").read_text())
    assert main(["reconstruct", str(star), "-o", str(tmp_path / "r")]) == 1
    assert "stacks not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # a failed start leaves no empty run folder behind


def test_fsc_command_reports_resolutions_and_pose_errors(sim, tmp_path, capsys):
    truth = str(sim / "truth.mrc")
    star = str(sim / "particles.star")
    assert main(["fsc", truth, truth, "--poses", star, "--reference-poses", star,
                 "--csv", str(tmp_path / "fsc.csv")]) == 0
    out = capsys.readouterr().out
    assert "mean 0.00°" in out and "same hand" in out and "FSC=0.5" in out
    table = np.genfromtxt(tmp_path / "fsc.csv", delimiter=",", names=True)  # the columns of a run's fsc.csv
    assert table.dtype.names == ("shell", "frequency_per_angstrom", "resolution_angstrom", "fsc_reference")
    assert (table["fsc_reference"] > 0.999).all()  # resampled through the (identity) alignment


def _ribosome_moved(tmp_path):
    """The bundled ribosome map (64³, 8.31 Å/px) and a copy mirrored, turned by 130° and moved by whole voxels:
    ``V(u) = V_ref(−R u)`` shifted by (3, −2, 1) voxels (z, y, x). Returns both paths, the voxel size and ``R``."""
    import torch

    from napari_semiamort.metrics import rotate_map
    from napari_semiamort.physics.so3 import exp_so3

    ref, voxel = read_map(str(files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"))
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    r = exp_so3(axis / axis.norm() * np.deg2rad(130.0))
    moved = torch.roll(rotate_map(torch.from_numpy(ref), -r), (3, -2, 1), (0, 1, 2)).numpy()
    return (write_mrc(tmp_path / "moved.mrc", moved, voxel), write_mrc(tmp_path / "ref.mrc", ref, voxel), voxel, r)


def test_fsc_without_poses_aligns_a_mirrored_turned_and_moved_copy_to_nyquist(tmp_path, capsys):
    moved, ref, voxel, _ = _ribosome_moved(tmp_path)
    assert main(["fsc", str(moved), str(ref)]) == 0
    out = capsys.readouterr().out
    assert "maps aligned: map1 rotated by 130." in out and "mirrored" in out and "origin fitted" in out
    assert f"FSC=0.5: {2 * voxel:.2f} Å" in out  # agree to Nyquist once aligned
    assert main(["fsc", str(moved), str(ref), "--no-align"]) == 0  # the frames as they are: far apart
    out = capsys.readouterr().out
    assert "maps aligned" not in out
    assert float(out.split("FSC=0.5: ")[1].split()[0]) > 10 * voxel


def test_align_maps_finds_the_turn_and_the_hand(tmp_path):
    """``V(u) = V_ref(−R u)`` is brought back by ``T = −Rᵀ``: the rotation ``Rᵀ`` (turning the content by R),
    mirrored."""
    import torch

    from napari_semiamort.metrics.map_alignment import align_maps
    from napari_semiamort.physics.so3 import geodesic_distance

    moved, ref, _, r = _ribosome_moved(tmp_path)
    al = align_maps(torch.from_numpy(read_map(moved)[0]), torch.from_numpy(read_map(ref)[0]))
    assert al.mirrored and al.correlation > 0.9
    assert np.rad2deg(float(geodesic_distance(al.rotation, r.T))) < 0.2
    assert al.angle_deg == pytest.approx(130.0, abs=0.2)


@pytest.fixture
def written_run(tmp_path):
    """A run folder as ``reconstruct`` leaves it for ChimeraX: map.mrc and the script it wrote."""
    from napari_semiamort.run.outputs import chimerax_script

    run = tmp_path / "run"
    rng = np.random.default_rng(7)
    write_mrc(run / "map.mrc", rng.normal(size=(16, 16, 16)).astype(np.float32), 2.5)
    chimerax_script(run, force=True)  # as write_outputs does at the end of every run
    return run


@pytest.fixture
def fake_chimerax(tmp_path, monkeypatch):
    """A ``chimerax`` on PATH whose launches are recorded (nothing is started)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "chimerax"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    launched = []
    monkeypatch.setattr(export.subprocess, "Popen", lambda cmd: launched.append(cmd))
    return launched


def test_export_chimerax_open_reuses_the_script_the_run_wrote(written_run, fake_chimerax, capsys):
    script = written_run / "chimerax.cxc"
    before = script.read_text()
    assert main(["export", "chimerax", str(written_run), "--open"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert fake_chimerax == [[str(written_run.parent / "bin" / "chimerax"), str(script)]]
    assert script.read_text() == before
    assert main(["export", "chimerax", str(written_run)]) == 1  # writing it again needs --force, as before
    assert "up to date; --open opens it" in capsys.readouterr().err


def test_export_chimerax_keeps_an_edited_script(written_run, fake_chimerax, capsys):
    script = written_run / "chimerax.cxc"
    edited = script.read_text() + "color #1 gold\n"
    script.write_text(edited)
    assert main(["export", "chimerax", str(written_run)]) == 1
    assert "--force" in capsys.readouterr().err and script.read_text() == edited
    assert main(["export", "chimerax", str(written_run), "--open"]) == 0  # opened as it is
    assert "opened as it is" in capsys.readouterr().out
    assert script.read_text() == edited and len(fake_chimerax) == 1
    assert main(["export", "chimerax", str(written_run), "--force"]) == 0
    assert "gold" not in script.read_text()


def test_export_chimerax_open_writes_a_moved_runs_script_again_for_its_new_folder(written_run, fake_chimerax, capsys):
    moved = written_run.rename(written_run.parent / "moved")
    script = moved / "chimerax.cxc"
    assert str(written_run.resolve()) in script.read_text()  # opens the maps where they were
    assert main(["export", "chimerax", str(moved), "--open"]) == 0
    assert "written again" in capsys.readouterr().out
    assert str(written_run.resolve()) not in script.read_text() and str(moved.resolve()) in script.read_text()
    assert fake_chimerax[0][1] == str(script)


def test_export_chimerax_open_without_chimerax_says_so_in_one_line(written_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no chimerax here
    monkeypatch.setattr(export, "CHIMERAX_INSTALLS", ())
    assert main(["export", "chimerax", str(written_run), "--open"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ChimeraX not found" in err and "chimerax.cxc" in err
    assert "Traceback" not in err


def test_the_package_and_cli_import_without_qt():
    code = ("import sys, napari_semiamort.run, napari_semiamort.cli.main; "
            "assert not any(m.split('.')[0] in ('qtpy', 'PyQt5', 'PySide2', 'PyQt6', 'PySide6', 'napari') "
            "for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_semiamort_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "napari_semiamort.cli.main", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("reconstruct", "simulate", "fsc", "demo"):
        assert cmd in out


def test_a_device_out_of_memory_or_a_diverged_run_ends_in_one_line_saying_what_to_do(monkeypatch, tmp_path, capsys):
    import torch

    from napari_semiamort.cli import reconstruct
    from napari_semiamort.run.guard import TrainingDiverged

    def out_of_memory(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(reconstruct, "main", out_of_memory)
    assert main(["reconstruct", "p.star", "-o", str(tmp_path / "r"), "--batch-size", "128"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in err and "--batch-size 64" in err

    def diverged(args):
        raise TrainingDiverged("training diverged: 20 steps in a row ... Check the inputs")

    monkeypatch.setattr(reconstruct, "main", diverged)
    assert main(["reconstruct", "p.star", "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semiamort reconstruct: error: training diverged") and err.count("\n") == 1


def test_a_loop_of_symbolic_links_given_as_the_particles_is_one_line(tmp_path, capsys):
    (tmp_path / "a.star").symlink_to(tmp_path / "b.star")
    (tmp_path / "b.star").symlink_to(tmp_path / "a.star")
    assert main(["reconstruct", str(tmp_path / "a.star"), "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "a loop of symbolic links" in err and err.count("\n") == 1
