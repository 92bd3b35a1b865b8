"""The benchmark suite's scoring and bookkeeping (benchmarks/run.py): the numbers in docs/benchmarks.md come
from these functions, so a wrong sign or a lost result would silently change every table."""

from __future__ import annotations

import importlib.util
import json
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_semiamort.data.mrc import read_map, write_mrc
from napari_semiamort.physics.so3 import random_rotations

ROOT = Path(__file__).resolve().parents[1]
RIBOSOME = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"


def _script(name: str, file: str):
    """A benchmark script (benchmarks/FILE) loaded as the module NAME."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _script("bench_run", "run.py")


@pytest.fixture()
def truth(tmp_path):
    import gzip

    raw = tmp_path / "ribosome.mrc"
    raw.write_bytes(gzip.decompress(RIBOSOME.read_bytes()))
    volume, voxel = read_map(raw)
    return write_mrc(tmp_path / "truth.mrc", volume, voxel), volume, voxel


def test_score_rotations_the_truth_itself(bench, truth, tmp_path):
    path, volume, voxel = truth
    rots = random_rotations(200, torch.Generator().manual_seed(0), torch.float64).numpy()
    s = bench.score_rotations(path, rots, rots, path)
    assert s["fsc05_A"] == pytest.approx(2 * voxel, rel=0.02)  # identical maps: Nyquist
    assert s["pose_mean_deg"] < 1e-3 and not s["mirrored"] and not s["contrast_inverted"]
    assert "fsc05_masked_A" not in s
    masked = bench.score_rotations(path, rots, rots, path, mask_A=0.6 * volume.shape[0] * voxel)
    assert masked["fsc05_masked_A"] == pytest.approx(2 * voxel, rel=0.02)


def test_score_rotations_fits_the_maps_origin(bench, truth, tmp_path):
    """With estimated shifts a map's origin is arbitrary: RELION's ±3 px map came out 1.2 voxels off and
    scored 21.6 Å instead of 11.7 Å before the translation was fitted."""
    path, volume, voxel = truth
    n = volume.shape[0]
    k = np.fft.fftfreq(n, 1.0 / n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    off = np.fft.ifftn(np.fft.fftn(volume) * np.exp(-2j * np.pi * (0.8 * kz + 0.9 * kx) / n)).real
    moved = write_mrc(tmp_path / "moved.mrc", off.astype(np.float32), voxel)
    rots = random_rotations(200, torch.Generator().manual_seed(2), torch.float64).numpy()
    s = bench.score_rotations(moved, rots, rots, path, mask_A=0.6 * n * voxel)
    assert s["map_offset_px"] == pytest.approx(np.hypot(0.8, 0.9), abs=0.02)
    assert s["fsc05_masked_A"] == pytest.approx(2 * voxel, rel=0.02)
    assert s["fsc_outer_masked"] > 0.99


def test_score_rotations_flips_an_inverted_map_and_says_so(bench, truth, tmp_path):
    """cryoDRGN's maps come out with negative density: they are negated (and flagged), not scored as junk."""
    path, volume, voxel = truth
    inverted = write_mrc(tmp_path / "inverted.mrc", -volume, voxel)
    rots = random_rotations(200, torch.Generator().manual_seed(1), torch.float64).numpy()
    s = bench.score_rotations(inverted, rots, rots, path)
    assert s["contrast_inverted"]
    assert s["fsc05_A"] == pytest.approx(2 * voxel, rel=0.02)


def test_score_rotations_an_unrelated_map_scores_at_the_box_length(bench, truth, tmp_path):
    path, volume, voxel = truth
    rng = np.random.default_rng(0)
    noise = write_mrc(tmp_path / "noise.mrc", rng.standard_normal(volume.shape).astype(np.float32), voxel)
    rots = random_rotations(200, torch.Generator().manual_seed(2), torch.float64).numpy()
    s = bench.score_rotations(noise, rots, rots, path)
    assert s["fsc05_A"] > 10 * 2 * voxel


def test_score_rotations_refuses_a_map_of_another_box(bench, truth, tmp_path):
    path, volume, voxel = truth
    small = write_mrc(tmp_path / "small.mrc", volume[::2, ::2, ::2].copy(), 2 * voxel)
    rots = random_rotations(10, torch.Generator().manual_seed(3), torch.float64).numpy()
    with pytest.raises(ValueError, match="small.mrc: box 32 differs from the truth's 64"):
        bench.score_rotations(small, rots, rots, path)


def test_merge_quality_replaces_a_tools_earlier_result_and_keeps_the_others(bench):
    record = {"quality": []}
    bench.merge_quality(record, 0.0, 5.15, [{"tool": "ours", "fsc05_A": 12.0}, {"tool": "RELION", "fsc05_A": 15.0}])
    everyone = bench.merge_quality(record, 0.0, 5.15, [{"tool": "ours", "fsc05_A": 11.0}])
    assert sorted((r["tool"], r["fsc05_A"]) for r in everyone) == [("RELION", 15.0), ("ours", 11.0)]
    bench.merge_quality(record, 3.0, 5.15, [{"tool": "ours", "fsc05_A": 13.0}])
    assert [q["shift_px"] for q in record["quality"]] == [0.0, 3.0]
    assert len(record["quality"][0]["results"]) == 2


def test_first_time_to_a_resolution_within_the_mask(bench):
    curve = [{"seconds": 1.0, "fsc05_masked_A": None}, {"seconds": 2.0, "fsc05_masked_A": 30.0, "fsc05_A": 9.0},
             {"seconds": 5.0, "fsc05_masked_A": 14.0}, {"seconds": 9.0, "fsc05_masked_A": 12.0}]
    assert bench.first_time_to(curve, 15.0) == 5.0
    assert bench.first_time_to(curve, 12.0) == 9.0
    assert bench.first_time_to(curve, 10.0) is None
    assert bench.first_time_to(curve, 10.0, key="fsc05_A") == 2.0


def test_a_resumed_peer_counts_its_time_up_to_the_checkpoint_once(bench, tmp_path):
    """A peer stopped by --peer-limit and continued with --resume: its first run counts up to the checkpoint
    it restarts from (the work after it is lost and done again), the second from there; files written in
    either run get their time in that sum, and the peak is the larger of the two runs'."""
    import os
    import sys
    import time

    checkpoint = tmp_path / "run_it210_optimiser.star"
    checkpoint.write_text("")
    before = tmp_path / "run_it200_class001.mrc"
    before.write_text("")
    now = time.time()
    t0 = now - 1000.0  # the first run started 1000 s ago and was stopped
    os.utime(before, (t0 + 250.0, t0 + 250.0))
    os.utime(checkpoint, (t0 + 300.0, t0 + 300.0))
    written = tmp_path / "run_it220_class001.mrc"
    cmd = [sys.executable, "-c", f"import time; time.sleep(0.3); open({str(written)!r}, 'w').write('x')"]
    previous = {"started_at": t0, "peak_rss_mb": 1e6, "wall_s": 1000.0}
    segments, wall, peak = bench.peer_resume(cmd, tmp_path / "log", previous, checkpoint)
    assert [s["offset_s"] for s in segments] == [0.0, pytest.approx(300.0, abs=0.01)]
    assert 300.3 <= wall < 320.0  # not 1000 + the second run
    assert peak == 1e6  # the first run's, larger than a python -c's
    assert bench.elapsed(before.stat().st_mtime, segments) == pytest.approx(250.0, abs=0.01)
    late = bench.elapsed(written.stat().st_mtime, segments)
    assert 300.3 <= late <= wall + 0.01
    # a second continuation chains on the first: its offset is the new checkpoint's time in the sum
    segments2, wall2, _ = bench.peer_resume([sys.executable, "-c", "pass"], tmp_path / "log2",
                                            {**previous, "segments": segments}, written)
    assert segments2[-1]["offset_s"] == pytest.approx(late, abs=0.01)
    assert wall2 == pytest.approx(late, abs=5.0) and wall2 >= late
    with pytest.raises(bench.subprocess.CalledProcessError):
        bench.peer_resume([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log3", previous, checkpoint)


FAKE_CRYODRGN = '''#!{python}
"""A stand-in for cryoDRGN's command line: each epoch writes the files abinit_homo_old writes (the
truth as its map, the true poses), and it "stops" (status 124, as timeout's) after epoch STOP."""
import os, pickle, shutil, sys, time
from pathlib import Path
import numpy as np
args = sys.argv[1:]
if args[0] == "parse_ctf_star":
    Path(args[args.index("-o") + 1]).write_bytes(b"ctf")
    raise SystemExit(0)
out = Path(args[args.index("-o") + 1]); out.mkdir(parents=True, exist_ok=True)
epochs = int(args[args.index("-n") + 1])
start = int(Path(args[args.index("--load") + 1]).name.split(".")[1]) + 1 if "--load" in args else 1
assert "--load" not in args or Path(args[args.index("--load-poses") + 1]).name == f"pose.{{start - 1}}.pkl"
for epoch in range(start, epochs + 1):
    time.sleep(0.2)
    shutil.copy(os.environ["FAKE_TRUTH"], out / f"reconstruct.{{epoch}}.mrc")
    shutil.copy(os.environ["FAKE_POSES"], out / f"pose.{{epoch}}.pkl")
    (out / f"weights.{{epoch}}.pkl").write_bytes(b"w")
    if epoch == int(os.environ.get("FAKE_STOP", 0)):
        raise SystemExit(124)
'''


def test_cryodrgn_stopped_then_resumed_scores_every_epoch_once(bench, tmp_path, monkeypatch):
    """run_cryodrgn's two paths end to end with a stand-in executable: a run stopped after epoch 2 of 3,
    then resumed to 4 epochs from its last checkpoint; the curve holds epochs 1–4 in time order and the
    result says when the run is complete."""
    import os
    import sys

    from napari_semiamort.data.cryodrgn import write_pose_pkl
    from napari_semiamort.data.star import read_star
    from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

    data = tmp_path / "data"
    simulate_dataset(str(ROOT / "src" / "napari_semiamort" / "resources" / "1igy.cif.gz"), str(data),
                     SimulationConfig(n_particles=40, box=32, seed=0))
    star = read_star(data / "particles.star", require_stacks=False)
    poses = write_pose_pkl(tmp_path / "true_pose.pkl", star.rotations, None, 32, star.pixel_size)
    exe = tmp_path / "fake_cryodrgn"
    exe.write_text(FAKE_CRYODRGN.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_TRUTH", str(data / "truth.mrc"))
    monkeypatch.setenv("FAKE_POSES", str(poses))
    monkeypatch.setenv("FAKE_STOP", "2")
    out, pixel = tmp_path / "cryodrgn_shift0", star.pixel_size
    first = bench.run_cryodrgn(str(exe), data, out, data / "truth.mrc", 32, pixel, 0.6 * 32 * pixel, False, 3)
    assert [p["epoch"] for p in first["curve"]] == [1, 2] and not first["complete"]
    assert "segments" not in first
    assert first["curve"][-1]["pose_median_deg"] < 1e-3
    assert first["curve"][-1]["fsc05_masked_A"] == pytest.approx(2 * pixel, rel=0.02)
    monkeypatch.setenv("FAKE_STOP", "0")
    # the time before the stop: up to weights.2.pkl, not to the end of the first run
    os.utime(out / "run" / "weights.2.pkl", (first["started_at"] + 100.0, first["started_at"] + 100.0))
    second = bench.run_cryodrgn(str(exe), data, out, data / "truth.mrc", 32, pixel, 0.6 * 32 * pixel, False, 4,
                                previous=first, resume=True)
    assert [p["epoch"] for p in second["curve"]] == [1, 2, 3, 4] and second["complete"]
    assert len(second["segments"]) == 2 and second["segments"][1]["offset_s"] == pytest.approx(100.0, abs=0.01)
    seconds = [p["seconds"] for p in second["curve"]]
    assert seconds[2] > 100.0 and seconds[2] < seconds[3] <= second["wall_s"] + 0.01
    assert (out / "cryodrgn_from2.log").is_file()
    # nothing left to continue: --resume scores the run again and keeps its times
    again = bench.run_cryodrgn(str(exe), data, out, data / "truth.mrc", 32, pixel, 0.6 * 32 * pixel, False, 4,
                               previous=second, resume=True)
    assert again["wall_s"] == second["wall_s"] and [p["seconds"] for p in again["curve"]] == seconds


def test_the_pose_floors_truth_map_is_scaled_shell_by_shell_onto_the_images_map():
    """benchmarks/molecules.py's floor scores poses against the truth at the images' own scale per shell (their
    B-factor and contrast): a map that is the truth with each shell scaled (and noise added) gives those scales
    back."""
    module = _script("bench_molecules", "molecules.py")
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((24, 24, 24))
    f = np.fft.fftfreq(24) * 24
    shell = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2).round().astype(int)
    scale = np.exp(-0.02 * np.arange(shell.max() + 1) ** 2) * 3.0  # a B-factor-like fall and a contrast
    data = np.fft.ifftn(np.fft.fftn(truth) * scale[shell]).real + 0.01 * rng.standard_normal(truth.shape)
    fitted = module.scaled_to_images(truth, data)
    ratio = np.abs(np.fft.fftn(fitted)) / np.maximum(np.abs(np.fft.fftn(truth)), 1e-12)
    for k in (0, 3, 6, 9):
        np.testing.assert_allclose(np.median(ratio[shell == k]), scale[k], rtol=0.02, atol=2e-3)


@pytest.fixture(scope="module")
def panel_figure():
    return _script("bench_panel_figure", "panel_figure.py")


def test_the_panel_figures_projections_run_along_z_and_along_x(panel_figure):
    """Maps are (z, y, x): a blob off the centre in x lies off-centre in both views' columns (along z: the image
    is (y, x)) or not at all (along x: the image is (z, y)), one off in z only in the second view's rows."""
    volume = np.zeros((16, 16, 16))
    volume[8, 8, 12] = 1.0  # x = 12
    volume[3, 8, 8] = 2.0  # z = 3
    p = panel_figure.projections(volume)
    assert p["z"].shape == p["x"].shape == (16, 16)
    assert p["z"][8, 12] == 1.0 and p["z"][8, 8] == 2.0  # along z: (y, x); the z-offset blob lands on the centre
    assert p["x"][8, 8] == 1.0 and p["x"][3, 8] == 2.0  # along x: (z, y)
    assert p["z"].sum() == p["x"].sum() == 3.0
    with pytest.raises(ValueError, match="three axes"):
        panel_figure.projections(np.zeros((16, 16)))


def test_the_panel_figure_is_written_whole_for_a_case(panel_figure, tmp_path):
    """A case's figure: a PNG of the size asked, written under its final name only once complete."""
    import matplotlib.image

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((16, 16, 16))
    curve = np.linspace(1.0, 0.0, 9)
    row = {"molecule": "m.cif", "condition": "realistic", "seed": 1, "pixel_size": 3.0, "fsc_0.5": 12.0,
           "fsc_0.5_true_poses": 10.0, "pose_floor_median": 1.5, "map_success": True, "pose_success": False,
           "seconds": 90.0}
    errors = np.abs(rng.standard_normal(300)) * 5
    out = panel_figure.case_figure(tmp_path / "figs" / "m_realistic_1.png", row, truth, truth, truth, curve, curve,
                                   errors)
    assert out == tmp_path / "figs" / "m_realistic_1.png" and not list(out.parent.glob("*.part"))
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (368, 880)  # 11 × 4.6 inches at 80 dpi
    assert image[..., :3].std() > 0.05  # drawn, not blank


def _panel_row(molecule, seed, ok, condition="realistic"):
    return {"molecule": molecule, "condition": condition, "seed": seed, "fsc_0.5": 12.0 if ok else 20.0,
            "fsc_0.5_true_poses": 10.0, "pose_error_mean": 5.0, "pose_error_median": 2.0, "pose_floor_median": 1.5,
            "map_success": ok, "pose_success": True, "seconds": 120.0}


def test_the_panel_table_keeps_each_cases_newest_row_and_counts_the_seeds_that_succeeded(tmp_path):
    """benchmarks/panel_table.py: a later file's row replaces an earlier one's for the same case, rows under a
    study's "rows" / "panel_rows" count, and the summary counts each molecule's successful seeds."""
    import json

    table = _script("bench_panel_table", "panel_table.py")
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps([_panel_row("a.cif", 0, False), _panel_row("a.cif", 1, True),
                               _panel_row("b.pdb", 0, True, "clean")]))
    new.write_text(json.dumps({"about": "a study", "runs": [{"x": 1}],
                               "rows": [_panel_row("a.cif", 0, True)], "panel_rows": [_panel_row("a.cif", 2, False)]}))
    rows = table.load_rows([old, new])
    assert len(rows) == 4 and rows[("a.cif", "realistic", 0)]["file"] == "new.json"
    assert table.load_rows([new, old])[("a.cif", "realistic", 0)]["file"] == "old.json"  # the order given decides
    summary = table.summary(rows)
    assert "| a.cif | realistic | 2 of 3 |" in summary and "| b.pdb | clean | 1 of 1 |" in summary
    text = table.table(rows)
    assert text.count("**success**") == 3 and "| a.cif | realistic | 2 | 20.00 Å (10.00 Å) | 2.00 |" in text
    assert "map fails" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"molecule": "a.cif"}]))
    with pytest.raises(SystemExit, match="bad.json: row 0 lacks condition"):
        table.load_rows([bad])
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a JSON file"):
        table.load_rows([bad])


def test_the_panel_reports_a_failed_case_goes_on_and_keeps_the_rows_measured(tmp_path, monkeypatch, capsys):
    """benchmarks/molecules.py: a ``semiamort`` command that fails stops its case with the command named (not a
    traceback about the files it did not write); the other cases run, ``--out`` holds every row measured so far
    (written after each case), and the script exits non-zero naming the failed cases."""
    module = _script("bench_molecules_failures", "molecules.py")
    monkeypatch.setattr(module, "cli", lambda args: 1 if args[0] == "simulate" else 0)
    with pytest.raises(module.CaseFailed, match=r"m\.pdb: `semiamort simulate` failed \(exit 1\)"):
        module.semiamort(["simulate", "m.pdb"], Path("m.pdb"))
    module.semiamort(["reconstruct", "x.star"], Path("m.pdb"))  # exit 0: nothing raised

    row = {"molecule": "a.pdb", "pixel_size": 2.0, "seconds": 60.0, "fsc_0.5": 9.0, "fsc_0.5_true_poses": 8.0,
           "map_success": True, "fsc_0.5_over_nyquist": 2.25, "pose_error_mean": 3.0, "pose_error_median": 2.0,
           "pose_floor_median": 1.5, "pose_success": True}

    def case(name, condition, seed, args, extra):
        if name == "b.pdb":
            raise module.CaseFailed("b.pdb: `semiamort simulate` failed (exit 1); its message is above")
        return {**row, "molecule": name}

    monkeypatch.setattr(module, "_case", case)
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["molecules.py", "--molecules", "a.pdb", "b.pdb", "c.pdb", "--out", str(out)])
    with pytest.raises(SystemExit, match="1 of 3 cases failed: b.pdb clean 0"):
        module.main()
    assert [r["molecule"] for r in json.loads(out.read_text())] == ["a.pdb", "c.pdb"]
    assert "| b.pdb | clean | 0 | case failed: b.pdb: `semiamort simulate` failed" in capsys.readouterr().out


def test_search_moves_counts_the_turned_images_the_polish_search_brings_back(tiny_dataset):
    """benchmarks/search_moves.py on the tiny set (SNR 1, shifts searched): from the true poses with a fifth turned at
    random, one polish search brings most of the turned images back, on evidence far above the noise's, and moves
    next to none of the right ones out of their view."""
    module = _script("bench_search_moves", "search_moves.py")
    row = module.measure(tiny_dataset, None, 0.2, 0, ["--shifts", "yes"], None)
    turned = row["good"] - row["within_20_before"]
    assert 150 < turned < 250  # a fifth of 1,000, seeded
    assert row["recovered_moves"] > 0.8 * turned
    assert row["recovered_T_pct_10_50_90"][0] > 5.0
    assert row["false_moves"] <= 0.01 * row["within_20_before"]


def test_fixed_point_scores_each_images_local_grid_and_spreads_it_by_its_weights(tiny_dataset):
    """benchmarks/fixed_point.py's pieces on the tiny set (SNR 1): the 3×3×3 grid has the identity in its middle and
    its face neighbours one step away; under the true poses' maps the true pose (the middle) scores best for most
    images, and its posterior weight is the largest; all weight on the middle spreads nothing (the hard map)."""
    from napari_semiamort.physics.so3 import geodesic_distance
    from napari_semiamort.run import Reconstruction, ReconstructionConfig, polish
    from napari_semiamort.run.maps import insert

    module = _script("bench_fixed_point", "fixed_point.py")
    turns, rotations = module.local_grid(4.0)
    assert turns.shape == (27, 3) and float(turns[13].abs().max()) == 0.0
    angles = torch.rad2deg(geodesic_distance(rotations, torch.eye(3)[None])).numpy()
    assert np.isclose(np.sort(angles)[1:7], 4.0, atol=1e-3).all()
    run = Reconstruction(ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), threads=1, restarts=1))
    n = len(run.data)
    poses = run.data.reference_rotations.to(torch.float32).contiguous()
    run.state.poses = poses
    split = polish.polish_split(run.data.half, n, 0)
    maps = polish.rebuilder(run.source, run.state, split, None)()
    nll = module.grid_nll(run, poses, None, maps, split, rotations)
    assert nll.shape == (n, 27) and float((nll.argmin(1) == 13).float().mean()) > 0.6
    w = module.posterior(nll)
    torch.testing.assert_close(w.sum(1), torch.ones(n))
    assert float((w.argmax(1) == 13).float().mean()) > 0.6
    which = np.arange(n)
    middle = torch.zeros(n, 27)
    middle[:, 13] = 1.0
    torch.testing.assert_close(torch.from_numpy(module.spread_map(run, poses, None, which, middle, rotations)),
                               insert(run.source, poses, None, which, run.output_data()).volume().cpu())
