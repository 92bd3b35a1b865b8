"""The benchmark suite: our throughput and memory, our map quality against time, the paper's ablations, and
RELION's and cryoDRGN's ab-initio runs on the same data; results as JSON (results.json) next to the plots.

  python benchmarks/run.py --suite quick                # ~18 min on 2 CPU cores: throughput, ours, ablations
  python benchmarks/run.py --suite full --cryodrgn X/bin/cryodrgn --peer-limit 3000
                                                        # + RELION and cryoDRGN, centred and shifted data: hours
  python benchmarks/run.py --suite full --only paper    # the paper's Table 2 setting (a GPU: 50,000 images)

Suites (all 3KPR, TCR–HLA from ../shared/data/structures; 2,000 images, box 64, SNR 0.1, CTF):
  quick    throughput and peak memory at box 64 and 128 for M = 1, 7, 15 heads; our map quality over
           time on centred and shifted (±3 px) data; the ablations (semi- vs fully amortised; M = 1, 2, 4, 7 on 7PBL)
  full     centred and shifted (±3 px) data; RELION 3.1's SGD initial model (its GUI's settings) and
           cryoDRGN's abinit_homo_old beside ours
  full128  as full on centred data at box 128 (2.6 Å/px), where the true poses' ceiling is below Nyquist

Parts (--only / --skip): throughput, ours, relion, cryodrgn, ablations, paper. Each part's results merge
into the suite's results.json, so parts can be run (or re-run) separately; --rescore scores the peers'
earlier runs again without rerunning them.

Every tool reads the same simulated particles. RELION gets what its users give it: the images normalised
by relion_preprocess, a STAR without the truth's poses, a mask diameter of the particle's size + 10 %
(also given to ours). cryoDRGN (its own virtual environment: --cryodrgn) reads the stack and a ctf.pkl
from its parse_ctf_star; its maps have inverted contrast and are negated. On centred data neither peer
searches translations (RELION --offset_range 0, cryoDRGN --t-extent 0 --t-ngrid 1), as ours does not.
Each map is compared with the truth after aligning the run's frame and hand with the run's own poses
(align_poses): FSC = 0.5 within the same soft spherical mask (fsc05_masked_A; RELION flattens its map's
solvent) and unmasked (fsc05_A), and the mean / median pose error. Times are wall-clock from the tool's
start; peak memory is its peak resident set (GNU time's %M). --peer-limit SECONDS stops a peer and scores
what it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ROOT.parent / "shared" / "data" / "structures"
RIBOSOME = "ribosome_6zu5_64.mrc.gz"  # bundled with the package: travels to machines without ../shared
SUITES = {
    "quick": {"molecule": "3KPR_TCR_HLA.cif.gz", "n": 2000, "box": 64, "snr": 0.1, "shifts": [0.0, 3.0],
              "throughput_boxes": [64, 128], "heads": [1, 7, 15], "relion": False},
    "full": {"molecule": "3KPR_TCR_HLA.cif.gz", "n": 2000, "box": 64, "snr": 0.1, "shifts": [0.0, 3.0],
             "throughput_boxes": [64, 128], "heads": [1, 7, 15], "relion": True},
    # the same particle at box 128 (2.6 Å/px, Nyquist 5.2 Å): 2,000 images at SNR 0.1 do not carry a map to
    # Nyquist, so FSC = 0.5 separates the tools where box 64 puts every good map at its ceiling
    "full128": {"molecule": "3KPR_TCR_HLA.cif.gz", "n": 2000, "box": 128, "snr": 0.1, "shifts": [0.0],
                "throughput_boxes": [128], "heads": [7], "relion": True, "skip": ["throughput", "ablations"]},
}


def sh_status(cmd: list[str], cwd: Path | None = None, log: Path | None = None) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, its peak resident memory in MB from GNU time's %M, exit status)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd] if Path("/usr/bin/time").exists() else cmd
        t0 = time.perf_counter()
        with open(log or os.devnull, "w") as fh:
            rc = subprocess.run(timed, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        lines = [x for x in Path(rss.name).read_text().splitlines() if x.strip().isdigit()]
    return wall, (float(lines[-1]) / 1024 if lines else float("nan")), rc


def sh(cmd: list[str], cwd: Path | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run ``cmd``, which must succeed; return (wall seconds, peak resident memory in MB)."""
    wall, peak, rc = sh_status(cmd, cwd, log)
    if rc != 0:
        raise subprocess.CalledProcessError(rc, cmd)
    return wall, peak


def semiamort(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_semiamort.cli.main", *args]


# ---------------------------------------------------------------- throughput (one process per setting)
def throughput_child(box: int, heads: int, batch_size: int | None = None) -> dict:
    """Images/s of stage 1 (at its widest band) and stage 2, and this process's peak memory, at the run's
    default batch size or ``batch_size``."""
    import tempfile
    from importlib.resources import files

    import torch

    from napari_semiamort.run import Reconstruction, ReconstructionConfig
    from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / RIBOSOME
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=1024, box=box, seed=0))
        size = {} if batch_size is None else {"batch_size": batch_size}
        run = Reconstruction(ReconstructionConfig(particles=str(Path(tmp) / "particles.star"), heads=heads, **size))
        n, bs = len(run.data), run.config.batch_size
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)

        def rate(step, steps=8):
            for s in range(2):
                step(torch.arange(s * bs, (s + 1) * bs) % n)
            sync()
            t0 = time.perf_counter()
            for s in range(steps):
                step(torch.arange(s * bs, (s + 1) * bs) % n)
            sync()
            return steps * bs / (time.perf_counter() - t0)

        run.state.epoch = run.config.switch_epoch - 1
        s1 = rate(run.train_step)
        run.switch()
        s2 = rate(run.train_step)
        out = {"box": box, "heads": heads, "batch_size": bs, "stage1_images_per_s": s1, "stage2_images_per_s": s2,
               "device": str(run.device), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if run.device.type == "cuda":
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out


def throughput(boxes, heads, batch_sizes=(None,)) -> list[dict]:
    rows = []
    for box in boxes:
        for m in heads:
            for bs in batch_sizes:
                extra = [] if bs is None else [str(bs)]
                out = subprocess.run([sys.executable, __file__, "_throughput", str(box), str(m), *extra], check=True,
                                     capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  box {box:3d}  M {m:2d}  batch {r['batch_size']:4d}: stage 1 "
                      f"{r['stage1_images_per_s']:7.0f} img/s, stage 2 "
                      f"{r['stage2_images_per_s']:7.0f} img/s, peak {r['peak_rss_mb']:.0f} MB", flush=True)
    return rows


# ---------------------------------------------------------------- the paper's setting (Table 2)
def paper_child(data: str, heads: int, backbone: str) -> dict:
    """One full epoch of each stage on ``data`` (the data loader included), as the paper's Table 2 times
    them (box 128, 50,000 images, M = 7, VGG16 features: 99.76 s and 81.61 s per epoch on its GPU)."""
    import torch

    from napari_semiamort.run import Reconstruction, ReconstructionConfig

    cfg = ReconstructionConfig(particles=data, heads=heads, backbone=backbone, epochs=2, switch_epoch=1,
                               restarts=1, watch=[])
    run = Reconstruction(cfg)
    cuda = run.device.type == "cuda"
    peaks = []
    for snap in run:
        if snap.epoch_end:
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated() / 2**20)
                torch.cuda.reset_peak_memory_stats()
    h = run.history
    out = {"images": len(run.data), "box": run.size, "heads": heads, "backbone": backbone, "device": str(run.device),
           "stage1_epoch_s": h[0]["seconds"], "stage2_epoch_s": h[1]["seconds"],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        out.update({"gpu": torch.cuda.get_device_name(), "stage1_peak_gpu_mb": peaks[0],
                    "stage2_peak_gpu_mb": peaks[1]})
    return out


def paper_setting(out: Path, n: int, box: int, backbones: list[str]) -> list[dict]:
    data = out / f"data_paper_{n}_{box}"
    if not (data / "particles.star").is_file():
        from importlib.resources import files

        molecule = files("napari_semiamort") / "resources" / RIBOSOME
        sh(semiamort("simulate", str(molecule), "-o", str(data), "--n", str(n), "--box", str(box), "--snr", "0.1",
                     "--seed", "0", "--force", "--device", "auto"))  # on the GPU: minutes less
    rows = []
    for backbone in backbones:
        text = subprocess.run([sys.executable, __file__, "_paper", str(data / "particles.star"), "7", backbone],
                              check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(text.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {r['images']} images, box {r['box']}, M 7, {backbone}: stage 1 {r['stage1_epoch_s']:.1f} s/epoch, "
              f"stage 2 {r['stage2_epoch_s']:.1f} s/epoch on {r.get('gpu', r['device'])} (paper: 99.76 s and 81.61 s)",
              flush=True)
        print("  " + json.dumps(r), flush=True)  # the whole row at once: a later backbone may not finish
    return rows


# ---------------------------------------------------------------- quality of a map against the truth
FINAL_KEYS = ("fsc05_masked_A", "fsc_outer_masked", "fsc05_A", "pose_mean_deg", "pose_median_deg", "mirrored",
              "contrast_inverted", "map_offset_px")


def score(map_path: Path, poses_star: Path, truth_star: Path, truth_map: Path, mask_A: float | None = None) -> dict:
    """FSC = 0.5 resolution and pose errors of a map and its poses, after alignment to the truth."""
    from napari_semiamort.data.star import read_star

    est = read_star(poses_star, require_stacks=False)
    ref = read_star(truth_star, require_stacks=False)
    def key(name: str) -> str:  # index@stack file name: the tools write the stack's path differently
        index, stack = name.split("@", 1)
        return f"{index}@{Path(stack).name}"

    by_name = {key(n): i for i, n in enumerate(ref.image_names())}
    rows = [by_name[key(n)] for n in est.image_names()]
    return score_rotations(map_path, est.rotations, ref.rotations[rows], truth_map, mask_A)


def score_rotations(map_path: Path, rotations: np.ndarray, reference: np.ndarray, truth_map: Path,
                    mask_A: float | None = None) -> dict:
    """As :func:`score`, with the poses `(N, 3, 3)` (RELION's A) given in the truth's particle order.

    ``fsc05_A`` compares the whole boxes; ``fsc05_masked_A`` (with ``mask_A``, a diameter in Å) compares
    them within the same soft spherical mask, the fair figure when a tool flattens its map's solvent. The map is
    rotated (and mirrored, and its contrast flipped) into the truth's frame by the poses, then translated to
    its best fit (``map_offset_px``): where shifts are estimated, a map's origin is arbitrary."""
    import torch

    from napari_semiamort.data.mrc import read_map
    from napari_semiamort.metrics.truth import score_against_truth

    m, _ = read_map(map_path)
    t, tv = read_map(truth_map)
    if m.shape != t.shape:
        raise ValueError(f"{map_path}: box {m.shape[0]} differs from the truth's {t.shape[0]}")
    # cryoDRGN's maps come out with inverted contrast (users flip them): allow_inverted; and a map's origin is
    # arbitrary where shifts are estimated: it is fitted too, as in ChimeraX's fitmap
    s = score_against_truth(torch.from_numpy(m), torch.from_numpy(t), tv, torch.as_tensor(rotations),
                            torch.as_tensor(reference), mask_radius_px=mask_A / 2 / tv if mask_A else None,
                            allow_inverted=True)
    out = {"fsc05_A": s.resolution_05, "pose_mean_deg": s.poses.mean_error, "pose_median_deg": s.poses.median_error,
           "mirrored": s.poses.mirrored, "contrast_inverted": s.contrast_inverted, "map_offset_px": s.offset_norm_px}
    if mask_A:
        out["fsc05_masked_A"] = s.resolution_05_masked
        # where FSC = 0.5 reaches Nyquist it can no longer rank maps: the mean FSC over the outer half of
        # the shells (L/4 to Nyquist) still does
        out["fsc_outer_masked"] = s.fsc_outer_masked
    return out


def run_ours(data: Path, out: Path, truth: Path, mask_A: float | None = None) -> dict:
    """Our default configuration, given the mask diameter the peers get (shifts "auto": searched in stage 1,
    kept in stage 2 if the particles are off centre; before that default, shifted data ran with
    ``--estimate-shifts``)."""
    t0 = time.time()
    wall, peak = sh(semiamort("reconstruct", str(data / "particles.star"), "-o", str(out), "--force",
                              "--reference-map", str(truth), *(["--mask-diameter", f"{mask_A:g}"] if mask_A else [])),
                    log=out.parent / f"{out.name}.log")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # wall-clock since the command started, as for the peers (their maps' file times): start-up included
    curve = [{"seconds": m["time"] - t0, "fsc05_A": m.get("fsc_0.5_angstrom"),
              "fsc05_masked_A": m.get("fsc_0.5_angstrom_masked"), "pose_mean_deg": m.get("pose_error_mean_deg"),
              "pose_median_deg": m.get("pose_error_median_deg")} for m in metrics]
    final = score(out / "map.mrc", out / "poses.star", data / "particles.star", truth, mask_A)
    # the epochs score the decoder's volume; the run ends with map.mrc, from the final poses
    curve.append({"seconds": (out / "map.mrc").stat().st_mtime - t0, **{k: final.get(k) for k in FINAL_KEYS}})
    return {"tool": "napari-semiamort", "started_at": t0, "wall_s": wall, "peak_rss_mb": peak, **final,
            "curve": curve}


def relion_input(data: Path, out: Path, box: int) -> Path:
    """What a RELION user feeds its initial-model job: particles normalised as RELION's extraction does
    (``relion_preprocess --norm``, background outside 75 % of the box radius: mean 0, sd 1; RELION warns
    otherwise), and a STAR with the CTF but no poses or origins (the simulator's truth must not leak)."""
    import starfile

    stack = out / "particles.mrcs"  # same name as the truth's stack: poses are matched by index@name
    sh(["relion_preprocess", "--operate_on", "particles.mrcs", "--norm", "--bg_radius", str(int(0.375 * box)),
        "--operate_out", str(stack)], cwd=data)
    blocks = starfile.read(data / "particles.star", always_dict=True)
    particles = blocks["particles"]
    particles = particles.drop(columns=[c for c in particles.columns if c.startswith(("rlnAngle", "rlnOrigin"))])
    particles["rlnImageName"] = [f"{k + 1:06d}@{stack}" for k in range(len(particles))]
    star = out / "particles.star"
    starfile.write({"optics": blocks["optics"], "particles": particles}, star, overwrite=True)
    return star


def mask_diameter(truth: Path) -> float:
    """The mask diameter a RELION user would set: the particle's largest diameter (voxels above 5 % of the
    maximum; a user measures it on 2D classes) plus 10 %, to the nearest 10 Å. It matters: RELION picks its
    angular sampling from it (3.75° instead of 7.5° at 16 Å for a 264 Å mask on 3KPR, 6× slower)."""
    from napari_semiamort.data.mrc import read_map

    m, voxel = read_map(truth)
    c = (m.shape[0] - 1) / 2 if m.shape[0] % 2 else m.shape[0] / 2
    z, y, x = np.nonzero(m > 0.05 * m.max())
    extent = 2 * np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2).max() * voxel
    return float(np.round(1.1 * extent / 10) * 10)


def ceiling(data: Path, out: Path, truth: Path, pixel: float, mask_A: float) -> dict:
    """The best any pose estimate can do on these images: ``relion_reconstruct --ctf`` with the true poses,
    scored like every tool's map."""
    out.mkdir(parents=True, exist_ok=True)
    sh(["relion_reconstruct", "--i", "particles.star", "--o", str(out / "true_poses.mrc"), "--ctf", "--angpix",
        f"{pixel}"], cwd=data, log=out / "relion_reconstruct.log")
    return score(out / "true_poses.mrc", data / "particles.star", data / "particles.star", truth, mask_A)


def ceiling_ours(data: Path, out: Path, truth: Path, mask_A: float) -> dict:
    """The same bound for our map-making: our direct Fourier insertion (the one that writes ``map.mrc``)
    from the true poses and origins, scored like every map."""
    out.mkdir(parents=True, exist_ok=True)
    return insert_with_poses(data / "particles.star", data / "particles.star", out / "true_poses_ours.mrc", truth,
                             mask_A)


def insert_with_poses(poses_star: Path, truth_star: Path, out_map: Path, truth: Path, mask_A: float) -> dict:
    """Our direct Fourier insertion of the images ``poses_star`` names, at their own box, with its angles and
    origins (the truth's, or a run's ``poses.star``); the map is written to ``out_map`` and scored against
    ``truth_star`` and ``truth`` like every map."""
    import torch

    from napari_semiamort.data.mrc import write_mrc
    from napari_semiamort.devices import set_cpu_threads
    from napari_semiamort.run import Reconstruction, ReconstructionConfig

    set_cpu_threads(os.cpu_count() or 2)  # a process of its own: every core
    run = Reconstruction(ReconstructionConfig(particles=str(poses_star), mask_diameter=mask_A,
                                              threads=os.cpu_count() or 2))
    run.poses = run.data.reference_rotations.to(torch.float32)
    if run.data.reference_shifts is not None:
        run.shifts = run.data.reference_shifts
    path = write_mrc(out_map, run.backproject(np.arange(len(run.data))), run.data.pixel_size, force=True)
    return score(path, poses_star, truth_star, truth, mask_A)


def peer_run(cmd: list[str], log: Path, previous: dict | None, first_output: Path | None) -> tuple[float, float, float]:
    """Run a peer, or with ``previous`` (its earlier result, for ``--rescore``) take its times from there.
    Returns (start time, wall seconds, peak MB); a peer stopped by ``--peer-limit`` has no peak."""
    if previous is not None:
        t0 = previous.get("started_at")
        if t0 is None and first_output is not None and previous["curve"]:  # results from before started_at
            t0 = first_output.stat().st_mtime - previous["curve"][0]["seconds"]
        return t0, previous["wall_s"], previous["peak_rss_mb"]
    t0 = time.time()
    wall, peak, rc = sh_status(cmd, log=log)
    if rc == 124:  # stopped by --peer-limit (timeout's status): score what it wrote
        print(f"  stopped after {wall / 60:.1f} min (--peer-limit)", flush=True)
    elif rc != 0:
        raise subprocess.CalledProcessError(rc, cmd, f"see {log}")
    return t0, wall, peak


def peer_resume(cmd: list[str], log: Path, previous: dict, checkpoint: Path) -> tuple[list[dict], float, float]:
    """Continue a peer that ``--peer-limit`` stopped, from its last checkpoint (``cmd`` restarts it there).
    The time before the stop counts up to that checkpoint's writing, so the work lost with the stop is done
    again and counted once. Returns (the run's segments, wall seconds in all, peak MB of both runs)."""
    segments = previous.get("segments") or [{"started_at": previous["started_at"], "offset_s": 0.0}]
    offset = elapsed(checkpoint.stat().st_mtime, segments)
    t1 = time.time()
    segments = [*segments, {"started_at": t1, "offset_s": offset, "from": checkpoint.name}]
    wall, peak, rc = sh_status(cmd, log=log)
    if rc == 124:
        print(f"  stopped again after {wall / 60:.1f} min (--peer-limit)", flush=True)
    elif rc != 0:
        raise subprocess.CalledProcessError(rc, cmd, f"see {log}")
    return segments, offset + wall, float(np.nanmax([peak, previous.get("peak_rss_mb") or np.nan]))


def run_or_resume(cmd: list[str], log: Path, previous: dict | None, first_output: Path | None,
                  limit_s: float | None, resume: tuple[list[str], Path, Path] | None = None):
    """Run a peer's ``cmd`` under ``limit_s``, or with ``previous`` take its times from there (rescoring), or
    with ``resume`` = (its continuation command, the checkpoint it starts from, its log) continue it.
    Returns (start time, wall seconds, peak MB, the run's segments)."""
    def limited(c: list[str]) -> list[str]:
        return ["timeout", str(int(limit_s)), *c] if limit_s else c

    if resume is not None:
        again, checkpoint, again_log = resume
        segments, wall, peak = peer_resume(limited(again), again_log, previous, checkpoint)
        return previous["started_at"], wall, peak, segments
    t0, wall, peak = peer_run(limited(cmd), log, previous, first_output)
    return t0, wall, peak, (previous or {}).get("segments") or [{"started_at": t0, "offset_s": 0.0}]


def elapsed(mtime: float, segments: list[dict]) -> float:
    """A file's time into a peer's run of one or more segments (each a start and the run time before it)."""
    seg = max((s for s in segments if s["started_at"] <= mtime), key=lambda s: s["started_at"], default=segments[0])
    return seg["offset_s"] + mtime - seg["started_at"]


def run_relion(data: Path, out: Path, truth: Path, box: int, pixel: float, diameter: float, shifted: bool = True,
               limit_s: float | None = None, previous: dict | None = None, resume: bool = False) -> dict:
    """RELION 3.1's SGD initial model with the settings of its GUI (3D initial model job); ``diameter`` is
    its mask (particle) diameter in Å, also the scoring mask's. With ``previous`` (its earlier result), score
    that run again, or with ``resume`` continue it from its last iteration written (a run stopped by
    ``--peer-limit``)."""
    out.mkdir(parents=True, exist_ok=True)
    # the GUI's translational search (±6 px in steps of 2) on shifted data; none on centred data, as
    # for cryoDRGN (--t-extent 0) and ours
    offsets = ["--offset_range", "6", "--offset_step", "2"] if shifted else ["--offset_range", "0",
                                                                             "--offset_step", "1"]
    iterations = 300  # --sgd_ini_iter + --sgd_inbetween_iter + --sgd_fin_iter
    star = out / "particles.star" if previous else relion_input(data, out, box)
    cmd = ["relion_refine", "--o", str(out / "run"), "--i", str(star), "--denovo_3dref", "--sgd",
           "--sgd_ini_iter", "50", "--sgd_inbetween_iter", "200", "--sgd_fin_iter", "50", "--sgd_write_iter", "10",
           "--sgd_ini_resol", "35", "--sgd_fin_resol", "15", "--sgd_ini_subset", "100", "--sgd_fin_subset", "500",
           "--ctf", "--K", "1", "--sym", "C1", "--flatten_solvent", "--zero_mask", "--particle_diameter",
           f"{diameter:.0f}", "--oversampling", "1", "--healpix_order", "1", *offsets, "--tau2_fudge", "4",
           "--pad", "1", "--skip_gridding", "--dont_combine_weights_via_disc",
           "--pool", "30", "--j", str(os.cpu_count() or 2)]
    checkpoints = sorted(out.glob("run_it*_optimiser.star"))
    again = None
    if resume and previous and checkpoints and not (out / f"run_it{iterations:03d}_class001.mrc").is_file():
        # RELION's own continuation (the GUI's "Continue"): every setting comes from the optimiser file
        again = (["relion_refine", "--continue", str(checkpoints[-1]), "--o", str(out / "run"), "--pool", "30",
                  "--dont_combine_weights_via_disc", "--j", str(os.cpu_count() or 2)], checkpoints[-1],
                 out / f"relion_{checkpoints[-1].stem}.log")
        print(f"  RELION continues from {checkpoints[-1].name}", flush=True)
    first = None
    if previous and previous["curve"]:
        first = out / f"run_it{previous['curve'][0]['iteration']:03d}_class001.mrc"
    t0, wall, peak, segments = run_or_resume(cmd, out / "relion.log", previous, first, limit_s, again)
    curve = []
    for star in sorted(out.glob("run_it*_data.star")):
        it = star.name[len("run_it"):len("run_it") + 3]
        mrc = out / f"run_it{it}_class001.mrc"
        if mrc.is_file():
            s = score(mrc, star, data / "particles.star", truth, diameter)
            curve.append({"seconds": elapsed(mrc.stat().st_mtime, segments), "iteration": int(it), **s})
    final = curve[-1] if curve else {}
    return {"tool": "RELION 3.1 SGD", "started_at": t0, "wall_s": wall, "peak_rss_mb": peak,
            "mask_diameter_A": diameter, "complete": bool(curve) and curve[-1]["iteration"] == iterations,
            **{k: final.get(k) for k in FINAL_KEYS}, "curve": curve,
            **({"segments": segments} if len(segments) > 1 else {})}


def run_cryodrgn(exe: str, data: Path, out: Path, truth: Path, box: int, pixel: float, diameter: float,
                 shifted: bool = True, epochs: int = 10, limit_s: float | None = None,
                 previous: dict | None = None, resume: bool = False) -> dict:
    """cryoDRGN's homogeneous ab initio (``abinit_homo_old``, 4.x) on the same stack, centred data
    (``--t-extent 0 --t-ngrid 1``: its ``--no-trans`` is not implemented), defaults otherwise; each epoch's
    map and poses are scored like ours. ``previous`` and ``resume`` as for :func:`run_relion` (``epochs`` can
    then be more than the first run's)."""
    from napari_semiamort.data.cryodrgn import read_pose_pkl
    from napari_semiamort.data.star import read_star

    out.mkdir(parents=True, exist_ok=True)
    if previous is None:
        sh([exe, "parse_ctf_star", str(data / "particles.star"), "-o", str(out / "ctf.pkl"), "-D", str(box),
            "--Apix", f"{pixel}"])
    cmd = [exe, "abinit_homo_old", str(data / "particles.mrcs"), "--ctf", str(out / "ctf.pkl"), "-o",
           str(out / "run"), *([] if shifted else ["--t-extent", "0", "--t-ngrid", "1"]), "-n", str(epochs),
           "--seed", "0"]
    last = max((int(w.name.split(".")[1]) for w in (out / "run").glob("weights.*.pkl")), default=0)
    again = None
    if resume and previous and 0 < last < epochs:
        # cryoDRGN's own restart (--load, --load-poses); it then takes one step with random poses (its
        # pretraining loop with --pretrain 0) before the epochs
        checkpoint = out / "run" / f"weights.{last}.pkl"
        again = ([*cmd, "--load", str(checkpoint), "--load-poses", str(out / "run" / f"pose.{last}.pkl")], checkpoint,
                 out / f"cryodrgn_from{last}.log")
        print(f"  cryoDRGN continues from epoch {last}", flush=True)
    first = None
    if previous and previous["curve"]:
        first = out / "run" / f"reconstruct.{previous['curve'][0]['epoch']}.mrc"
    t0, wall, peak, segments = run_or_resume(cmd, out / "cryodrgn.log", previous, first, limit_s, again)
    reference = read_star(data / "particles.star", require_stacks=False).rotations
    curve = []
    for mrc in sorted((out / "run").glob("reconstruct.*.mrc"), key=lambda p: int(p.name.split(".")[1])):
        pose = out / "run" / f"pose.{mrc.name.split('.')[1]}.pkl"
        if pose.is_file():
            rot, _ = read_pose_pkl(pose, box, pixel)
            curve.append({"seconds": elapsed(mrc.stat().st_mtime, segments), "epoch": int(mrc.name.split(".")[1]),
                          **score_rotations(mrc, rot, reference, truth, diameter)})
    final = curve[-1] if curve else {}
    return {"tool": "cryoDRGN abinit_homo_old", "started_at": t0, "wall_s": wall, "peak_rss_mb": peak,
            "mask_diameter_A": diameter, "epochs": epochs, "complete": bool(curve) and curve[-1]["epoch"] == epochs,
            **{k: final.get(k) for k in FINAL_KEYS}, "curve": curve,
            **({"segments": segments} if len(segments) > 1 else {})}


def run_ablations(out: Path, n: int, box: int, snr: float) -> dict:
    """The paper's ablations with our defaults otherwise: semi-amortised vs fully amortised after the switch
    (Fig. 4 left, on 3KPR) and the number of heads on a pseudo-symmetric molecule (Fig. 5, 7PBL: RuvAB)."""
    def curve(run_dir: Path) -> list[dict]:
        return [{"epoch": m["epoch"], "stage": m["stage"], "pose_mean_deg": m.get("pose_error_mean_deg"),
                 "pose_median_deg": m.get("pose_error_median_deg"), "fsc05_A": m.get("fsc_0.5_angstrom")}
                for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if "restart" not in m]

    result = {}
    for name, molecule in (("amortisation", "3KPR_TCR_HLA.cif.gz"), ("heads", "7pbl_RuvAB_HollidayJunction.pdb")):
        data = out / f"data_{name}"
        if not (data / "truth.mrc").is_file():
            sh(semiamort("simulate", str(STRUCTURES / molecule), "-o", str(data), "--n", str(n), "--box", str(box),
                         "--snr", str(snr), "--seed", "0", "--force"))
        runs = ({"semi-amortised (switch at 15)": [], "fully amortised (no switch)": ["--switch-epoch", "25"]}
                if name == "amortisation" else {f"M = {m}": ["--heads", str(m)] for m in (1, 2, 4, 7)})
        result[name] = {"molecule": molecule, "runs": {}}
        for k, (label, extra) in enumerate(runs.items()):
            run_dir = out / f"ablation_{name}_{k}"
            wall, _ = sh(semiamort("reconstruct", str(data / "particles.star"), "-o", str(run_dir), "--force",
                                   "--reference-map", str(data / "truth.mrc"), *extra), log=run_dir.with_suffix(".log"))
            c = curve(run_dir)
            result[name]["runs"][label] = {"wall_s": wall, "curve": c}
            last = c[-1]
            print(f"  {name:12s} {label:30s}: pose error {last['pose_mean_deg']:.1f}° / {last['pose_median_deg']:.1f}°,"
                  f" FSC=0.5 {last['fsc05_A']:.1f} Å, {wall / 60:.1f} min", flush=True)
    return result


def plot_ablations(ab: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for ax, (name, title) in zip(axes, (("amortisation", "after the switch (3KPR)"),
                                        ("heads", "number of heads (7PBL, pseudo-6-fold)")), strict=True):
        for label, r in ab[name]["runs"].items():
            ax.plot([p["epoch"] for p in r["curve"]], [p["pose_mean_deg"] for p in r["curve"]], marker="o", ms=3,
                    label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean pose error (°)")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def first_time_to(curve: list[dict], resolution: float, key: str = "fsc05_masked_A") -> float | None:
    for p in curve:
        if p.get(key) is not None and p[key] <= resolution:
            return p["seconds"]
    return None


def plot(results: list[dict], path: Path, title: str, ceiling: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in results:
        pts = [(p["seconds"], p["fsc05_masked_A"]) for p in r["curve"] if p.get("fsc05_masked_A") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=r["tool"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel("resolution at FSC = 0.5 vs truth, masked (Å)")
    if ceiling:
        ax.axhline(ceiling, color="grey", lw=0.8, ls="--", label=f"true poses ({ceiling:.1f} Å)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


PARTS = ["throughput", "ours", "relion", "cryodrgn", "ablations", "paper"]


def merge_quality(record: dict, shift: float, pixel: float, results: list[dict]) -> list[dict]:
    """Put this run's results for `shift` into `record`, replacing the same tools' earlier results; return
    every tool's results for that shift."""
    entry = next((q for q in record["quality"] if q["shift_px"] == shift), None)
    if entry is None:
        entry = {"shift_px": shift, "pixel_size": pixel, "results": []}
        record["quality"].append(entry)
    tools = {r["tool"] for r in results}
    entry["results"] = [r for r in entry["results"] if r["tool"] not in tools] + results
    return entry["results"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_throughput":
        print(json.dumps(throughput_child(*map(int, sys.argv[2:5]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_paper":
        print(json.dumps(paper_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="quick")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run these parts alone (results merge into results.json)")
    p.add_argument("--shifts", nargs="+", type=float, help="the suite's data to use, by maximum shift in pixels")
    p.add_argument("--cryodrgn", help="cryodrgn executable of its own virtual environment (runs it as a peer)")
    p.add_argument("--cryodrgn-epochs", type=int, default=10)
    p.add_argument("--peer-limit", type=float, default=None, help="seconds after which a peer is stopped")
    p.add_argument("--rescore", action="store_true",
                   help="score the peers' earlier runs again (their folders, times from results.json); don't rerun")
    p.add_argument("--resume", action="store_true",
                   help="continue the peers' runs stopped by --peer-limit from their last iteration or epoch written "
                        "(RELION's --continue, cryoDRGN's --load); the time before the stop counts up to that point")
    p.add_argument("--batch-sizes", nargs="+", type=int,
                   help="throughput at these batch sizes (default: the run's own, 64)")
    p.add_argument("--throughput-boxes", nargs="+", type=int, help="throughput at these boxes (default: 64 128)")
    p.add_argument("--throughput-heads", nargs="+", type=int, help="throughput for these M (default: 1 7 15)")
    p.add_argument("--paper-n", type=int, default=50000, help="images for the paper's setting (part 'paper')")
    p.add_argument("--paper-box", type=int, default=128)
    p.add_argument("--paper-backbones", nargs="+", default=["vgg16", "light"], choices=["vgg16", "light"])
    args = p.parse_args()
    if args.rescore and args.resume:
        p.error("--rescore and --resume exclude each other")
    suite = dict(SUITES[args.suite])
    if args.shifts is not None:
        suite["shifts"] = args.shifts
    skip = set(args.skip) if not args.only else set(PARTS) - set(args.only)
    skip |= set(suite.get("skip", []))  # parts that repeat another suite's (the same settings, the same figures)
    if not suite["relion"]:
        skip.add("relion")
    if not args.cryodrgn:
        skip.add("cryodrgn")
    if not args.only or "paper" not in args.only:
        skip.add("paper")  # a GPU run: only when asked for
    out = Path(args.out) / args.suite
    out.mkdir(parents=True, exist_ok=True)
    import torch

    path = out / "results.json"
    record = json.loads(path.read_text()) if path.is_file() else {"quality": []}
    record.update({"suite": args.suite, "settings": SUITES[args.suite],
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}".rstrip(", "),
                   "python": platform.python_version(), "torch": torch.__version__})
    record.setdefault("runs", []).append({"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "parts": sorted(set(PARTS) - skip), "shifts": suite["shifts"],
                                          "argv": sys.argv[1:]})

    def save() -> None:
        path.write_text(json.dumps(record, indent=2) + "\n")

    if "ablations" not in skip:
        print("ablations:", flush=True)
        record["ablations"] = run_ablations(out, suite["n"], suite["box"], suite["snr"])
        plot_ablations(record["ablations"], out / "ablations.png")
        save()
    if "throughput" not in skip:
        print("throughput and peak memory (one process per setting):", flush=True)
        rows = throughput(args.throughput_boxes or suite["throughput_boxes"], args.throughput_heads or suite["heads"],
                          args.batch_sizes or [None])
        if args.batch_sizes or args.throughput_boxes or args.throughput_heads:  # a scan beside the standard table
            record["throughput_scan"] = rows
        else:
            record["throughput"] = rows
        save()
    if "paper" not in skip:
        print("the paper's setting (Table 2), one epoch per stage:", flush=True)
        rows = paper_setting(out, args.paper_n, args.paper_box, args.paper_backbones)
        record.setdefault("paper_setting", [])
        record["paper_setting"] = [r for r in record["paper_setting"]
                                   if (r["device"], r["images"], r["backbone"]) not in
                                   {(x["device"], x["images"], x["backbone"]) for x in rows}] + rows
        save()
    for shift in suite["shifts"] if {"ours", "relion", "cryodrgn"} - skip else []:
        data = out / f"data_shift{shift:g}"
        truth = data / "truth.mrc"
        if not truth.is_file():
            sh(semiamort("simulate", str(STRUCTURES / suite["molecule"]), "-o", str(data), "--n", str(suite["n"]),
                         "--box", str(suite["box"]), "--snr", str(suite["snr"]), "--max-shift", str(shift),
                         "--seed", "0", "--force"))
        pixel = json.loads((data / "simulation.json").read_text())["pixel_size"]
        nyquist = 2 * pixel
        mask = mask_diameter(truth)
        earlier = {r["tool"]: r for q in record["quality"] if q["shift_px"] == shift for r in q["results"]}
        if shutil.which("relion_reconstruct"):
            best = ceiling(data, out / f"relion_shift{shift:g}", truth, pixel, mask)
            print(f"  true poses (relion_reconstruct), shift {shift:g}: FSC=0.5 {best['fsc05_masked_A']:.1f} Å "
                  f"within the mask, {best['fsc05_A']:.1f} Å unmasked", flush=True)
        ours_best = ceiling_ours(data, out / f"ceiling_shift{shift:g}", truth, mask)
        print(f"  true poses (our insertion), shift {shift:g}: FSC=0.5 {ours_best['fsc05_masked_A']:.1f} Å within "
              f"the mask, outer-half mean FSC {ours_best['fsc_outer_masked']:.3f}", flush=True)
        results = []
        for part in ("ours", "relion", "cryodrgn"):
            if part in skip:
                continue
            if part == "ours":
                r = run_ours(data, out / f"ours_shift{shift:g}", truth, mask)
            elif part == "relion":
                r = run_relion(data, out / f"relion_shift{shift:g}", truth, suite["box"], pixel, mask, shift > 0,
                               args.peer_limit, earlier.get("RELION 3.1 SGD") if args.rescore or args.resume else None,
                               args.resume)
            else:
                r = run_cryodrgn(args.cryodrgn, data, out / f"cryodrgn_shift{shift:g}", truth, suite["box"], pixel,
                                 mask, shift > 0, args.cryodrgn_epochs, args.peer_limit,
                                 earlier.get("cryoDRGN abinit_homo_old") if args.rescore or args.resume else None,
                                 args.resume)
            r["time_to_1.5_nyquist_s"] = first_time_to(r["curve"], 1.5 * nyquist)
            r["time_to_2_nyquist_s"] = first_time_to(r["curve"], 2 * nyquist)
            results.append(r)
            if r["fsc05_A"] is None:
                print(f"  {r['tool']:18s} shift {shift:g}: no map within {r['wall_s'] / 60:.1f} min", flush=True)
            else:
                print(f"  {r['tool']:18s} shift {shift:g}: {r['wall_s'] / 60:5.1f} min, "
                      f"peak {r['peak_rss_mb']:.0f} MB, FSC=0.5 {r['fsc05_masked_A']:.1f} Å within a {mask:g} Å "
                      f"mask ({r['fsc05_A']:.1f} Å unmasked), pose error {r['pose_mean_deg']:.1f}° / "
                      f"{r['pose_median_deg']:.1f}°, first at 1.5 × Nyquist ({1.5 * nyquist:.1f} Å) after "
                      f"{r['time_to_1.5_nyquist_s']} s", flush=True)
            everyone = merge_quality(record, shift, pixel, results)
            entry = next(q for q in record["quality"] if q["shift_px"] == shift)
            entry["true_poses_ours"] = ours_best
            if shutil.which("relion_reconstruct"):
                entry["true_poses"] = best
            save()
            plot(everyone, out / f"resolution_vs_time_shift{shift:g}.png",
                 f"{suite['molecule'].split('_')[0]}, {suite['n']} images, box {suite['box']}, SNR {suite['snr']}, "
                 f"shifts ±{shift:g} px", best["fsc05_masked_A"] if shutil.which("relion_reconstruct") else None)
    save()
    print(f"results: {path}")


if __name__ == "__main__":
    main()
