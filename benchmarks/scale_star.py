"""Issue 21 ("Scale"): a 10^6-particle RELION STAR over memory-mapped stacks, read, prepared and streamed.

  python benchmarks/scale_star.py [--n 1000000] [--box 32] [--stacks 10] [--per-stack 1000] [--batches 200]
                                  [--angles] [--workdir DIR] [--out results.json]

Writes, in seconds, a RELION 3.1 STAR (``data_optics`` + ``data_particles``) of ``--n`` rows whose
``rlnImageName`` cycle over ``--stacks`` MRC stacks of ``--per-stack`` noise images each (every index valid),
with CTF columns (defocus 10,000–25,000 Å, angle, 300 kV, Cs 2.7 mm, amplitude contrast 0.1) and, with
``--angles``, poses. Then each step runs in a fresh Python process, so its peak resident memory (VmHWM) is
its own; the peak is reset (``/proc/self/clear_refs``) between the phases of a step, and each phase reports
the resident memory before it (``rss_before``) and its peak (``peak``):

1. ``read_star``: the project's STAR reader (``data/star.read_star``, as ``read_particles`` calls it);
2. ``dataset``: the same, then ``ParticleDataset`` as ``open_dataset`` builds it, then its ``scan()`` (every
   image read once; the prepared images cached when they fit ``CACHE_BYTES``), as ``Reconstruction`` does
   before training;
3. ``stream``: the same, then ``--batches`` random batches of 64 (an epoch's permutation, as the schedule
   cuts it) through ``BatchLoader`` and ``ImageSource.batch`` (images, Hartley transforms, CTF at the full
   band) on the CPU: time per batch and an epoch extrapolated.

Prints a markdown table; ``--out`` writes the figures as JSON. The baseline (``base``) is the process after
importing numpy, torch, pandas and the package, before the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------- generation
def write_stacks(folder: Path, stacks: int, per_stack: int, box: int, pixel_size: float, seed: int) -> list[str]:
    """``stacks`` MRC stacks of ``per_stack`` float32 images: a Gaussian blob in white noise."""
    import mrcfile

    rng = np.random.default_rng(seed)
    k = np.arange(box) - box // 2
    blob = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * (box / 8) ** 2)).astype(np.float32)
    names = []
    for s in range(stacks):
        name = f"Extract/job007/stack_{s:03d}.mrcs"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new_mmap(folder / name, shape=(per_stack, box, box), mrc_mode=2, overwrite=True) as mrc:
            mrc.data[:] = rng.standard_normal((per_stack, box, box), dtype=np.float32) + blob
            mrc.voxel_size = pixel_size
            mrc.header.ispg = 0  # a stack of images, not a volume
        names.append(name)
    return names


def write_star(path: Path, n: int, names: list[str], per_stack: int, box: int, pixel_size: float, angles: bool,
               seed: int) -> None:
    """A RELION 3.1 particle STAR of ``n`` rows cycling over the stacks' images (vectorised text)."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    stack = (i // per_stack) % len(names)
    image = i % per_stack + 1
    du = rng.uniform(10000, 25000, n)
    cols = {
        "rlnImageName": np.char.add(np.char.add(np.char.zfill(image.astype(str), 6), "@"),
                                    np.asarray(names)[stack]),
        "rlnDefocusU": du, "rlnDefocusV": du - rng.uniform(0, 500, n), "rlnDefocusAngle": rng.uniform(-180, 180, n),
        "rlnOpticsGroup": np.ones(n, np.int64), "rlnRandomSubset": 1 + (i % 2),
    }
    if angles:
        cols |= {"rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                 "rlnAnglePsi": rng.uniform(-180, 180, n), "rlnOriginXAngst": rng.normal(0, 2, n),
                 "rlnOriginYAngst": rng.normal(0, 2, n)}
    header = ["", "# version 30001", "", "data_optics", "", "loop_"]
    optics = {"rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1, "rlnMicrographOriginalPixelSize": pixel_size,
              "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
              "rlnImagePixelSize": pixel_size, "rlnImageSize": box, "rlnImageDimensionality": 2}
    header += [f"_{c} #{j + 1}" for j, c in enumerate(optics)]
    header += [" ".join(str(v) for v in optics.values()), "", "", "# version 30001", "", "data_particles", "", "loop_"]
    header += [f"_{c} #{j + 1}" for j, c in enumerate(cols)]
    text = [np.char.mod("%.6f", v) if v.dtype.kind == "f" else v.astype(str) for v in cols.values()]
    rows = text[0]
    for t in text[1:]:
        rows = np.char.add(np.char.add(rows, " "), t)
    with open(path, "w") as f:
        f.write("\n".join(header) + "\n")
        f.write("\n".join(rows.tolist()))
        f.write("\n\n")


# ---------------------------------------------------------------- measurement (in the child process)
def _status(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


class Phases:
    def __init__(self):
        self.out: dict[str, dict] = {}

    def run(self, name: str, fn, *args, **kw):
        _reset_peak()
        before, t = _status("VmRSS"), time.perf_counter()
        value = fn(*args, **kw)
        seconds = time.perf_counter() - t
        self.out[name] = {"seconds": round(seconds, 3), "rss_before_mb": round(before, 1),
                          "peak_mb": round(_status("VmHWM"), 1), "rss_after_mb": round(_status("VmRSS"), 1)}
        return value


def child(step: str, star: Path, batches: int, batch_size: int, profile: Path | None) -> dict:
    import logging

    import pandas  # noqa: F401  (imported by the reader: counted in the baseline, not the step)
    import starfile  # noqa: F401
    import torch

    from napari_semiamort.data.dataset import ParticleDataset
    from napari_semiamort.data.loader import BatchLoader
    from napari_semiamort.data.readers import read_particles
    from napari_semiamort.run.batches import ImageSource
    from napari_semiamort.run.frequencies import FrequencyBank

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ph = Phases()
    base = _status("VmRSS")
    if profile is not None:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        read_particles(star)
        prof.disable()
        prof.dump_stats(profile)
        stats = pstats.Stats(str(profile)).sort_stats("cumulative")
        return {"profile": [(f"{f[0].split('site-packages/')[-1].split('src/')[-1]}:{f[1]}({f[2]})",
                             round(v[3], 3), round(v[2], 3))  # cumulative, own time
                            for f, v in sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[:40]]}
    out: dict = {"base_mb": round(base, 1)}
    table = ph.run("read_star", read_particles, star)
    out["rows"] = len(table)
    if step != "read_star":
        data = ph.run("ParticleDataset", ParticleDataset, table, use_ctf=True)
        data = ph.run("scan", data.scan)
        out["cached"] = data.in_memory
        out["box"] = data.box
        out["cache_mb"] = round(len(data) * data.box**2 * 4 / 2**20, 1) if data.in_memory else 0.0
    if step == "stream":
        source = ImageSource(data, torch.device("cpu"))
        fr = FrequencyBank(data.box, torch.device("cpu")).at(1.0)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        idx = [order[s * batch_size:(s + 1) * batch_size] for s in range(batches)]
        per: list[float] = []

        def stream():
            loader = iter(BatchLoader(data, [b.numpy() for b in idx]))
            t = time.perf_counter()
            for b in idx:
                _, images = next(loader)
                batch = source.batch(b, fr, images)
                assert batch.obs.shape[0] == len(b)
                now = time.perf_counter()
                per.append(now - t)
                t = now

        ph.run("stream", stream)
        per_batch = float(np.median(per))
        steps = -(-len(data) // batch_size)
        out["stream_batches"] = batches
        out["stream_ms_per_batch_median"] = round(1e3 * per_batch, 3)
        out["stream_ms_per_batch_mean"] = round(1e3 * float(np.mean(per)), 3)
        out["epoch_steps"] = steps
        out["epoch_read_seconds_extrapolated"] = round(steps * float(np.mean(per)), 1)
    out["phases"] = ph.out
    out["peak_step_mb"] = round(max(p["peak_mb"] for p in ph.out.values()), 1)
    out["beyond_base_mb"] = round(out["peak_step_mb"] - base, 1)
    return out


# ---------------------------------------------------------------- driver
def run_step(step: str, star: Path, args, profile: Path | None = None) -> dict:
    cmd = [sys.executable, str(HERE), "--child", step, "--star", str(star), "--batches", str(args.batches),
           "--batch-size", str(args.batch_size)]
    if profile is not None:
        cmd += ["--profile-file", str(profile)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=star.parent)
    if proc.returncode:
        raise RuntimeError(f"step {step} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - t, 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="particle rows")
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--stacks", type=int, default=10)
    p.add_argument("--per-stack", type=int, default=1000, help="distinct images per stack (rows cycle over them)")
    p.add_argument("--pixel-size", type=float, default=4.0)
    p.add_argument("--angles", action="store_true", help="write poses (rlnAngleRot/Tilt/Psi, origins)")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", nargs="+", default=["read_star", "dataset", "stream"])
    p.add_argument("--profile", action="store_true", help="also cProfile read_particles (top functions)")
    p.add_argument("--workdir", type=Path, default=None, help="where to write the data (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--star", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile-file", dest="profile_file", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.star, args.batches, args.batch_size, args.profile_file)))
        return

    tmp = tempfile.TemporaryDirectory(prefix="scale_star_") if args.workdir is None else None
    folder = Path(tmp.name) if tmp else args.workdir
    folder.mkdir(parents=True, exist_ok=True)
    star = folder / "particles.star"
    t = time.perf_counter()
    names = write_stacks(folder, args.stacks, args.per_stack, args.box, args.pixel_size, seed=0)
    t_stacks = time.perf_counter() - t
    write_star(star, args.n, names, args.per_stack, args.box, args.pixel_size, args.angles, seed=1)
    t_star = time.perf_counter() - t - t_stacks
    result = {
        "n": args.n, "box": args.box, "stacks": args.stacks, "per_stack": args.per_stack, "angles": args.angles,
        "star_mb": round(star.stat().st_size / 2**20, 1),
        "stacks_mb": round(sum((folder / s).stat().st_size for s in names) / 2**20, 1),
        "generate_seconds": {"stacks": round(t_stacks, 2), "star": round(t_star, 2)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "steps": {},
    }
    for step in args.steps:
        result["steps"][step] = run_step(step, star, args)
        print(f"{step}: done in {result['steps'][step]['process_seconds']} s", file=sys.stderr)
    if args.profile:
        result["profile_read_particles"] = run_step("read_star", star, args, profile=folder / "read.prof")["profile"]
    result["machine"]["loadavg_end"] = os.getloadavg()
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if tmp:
        tmp.cleanup()


def table(r: dict) -> str:
    lines = [f"N = {r['n']:,} rows, box {r['box']}, {r['stacks']} stacks × {r['per_stack']} images "
             f"(STAR {r['star_mb']} MB, stacks {r['stacks_mb']} MB; generated in "
             f"{r['generate_seconds']['stacks'] + r['generate_seconds']['star']:.1f} s)", "",
             "| step | phase | seconds | RSS before (MB) | peak (MB) | peak − base (MB) |",
             "|---|---|---:|---:|---:|---:|"]
    for step, s in r["steps"].items():
        for phase, v in s["phases"].items():
            lines.append(f"| {step} | {phase} | {v['seconds']:.2f} | {v['rss_before_mb']:.0f} | {v['peak_mb']:.0f} | "
                         f"{v['peak_mb'] - s['base_mb']:.0f} |")
    for step, s in r["steps"].items():
        extra = [f"base {s['base_mb']:.0f} MB", f"peak {s['peak_step_mb']:.0f} MB"]
        if "cached" in s:
            extra.append(f"images cached: {s['cached']} ({s['cache_mb']} MB)")
        if "stream_ms_per_batch_median" in s:
            extra.append(f"{s['stream_ms_per_batch_median']} ms/batch median over {s['stream_batches']}, "
                         f"epoch of {s['epoch_steps']} steps ≈ {s['epoch_read_seconds_extrapolated']} s")
        lines.append(f"\n{step}: " + "; ".join(extra))
    if "profile_read_particles" in r:
        lines += ["", "read_particles, cProfile (cumulative s, own s):"]
        lines += [f"  {c:8.2f} {o:8.2f}  {f}" for f, c, o in r["profile_read_particles"][:25]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
