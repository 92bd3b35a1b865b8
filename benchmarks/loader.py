"""Does reading keep up with training? Images/s of the particle loader next to images/s of training.

  python benchmarks/loader.py [--n 4096] [--boxes 64 128] [--device auto] [--out results.json]

For each box, writes a dataset the way RELION extracts one (one stack of 64 particles per micrograph,
a STAR with CTF), then in this one process measures:

- loader, uncached: random batches of 64 through ``ParticleDataset.read`` (memory-mapped stacks, page
  cache warm after one pass; cold too when the OS lets us drop caches, i.e. as root on Linux), at the box
  as extracted and downsampled 2× by Fourier cropping;
- training: stage-1 and stage-2 steps of ``Reconstruction`` with the default configuration on the same
  images (cached, so only the arithmetic is timed).

The loader keeps up when its images/s exceed training's: the loop reads one batch ahead in a thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_semiamort.data.dataset import ParticleDataset
from napari_semiamort.data.mrc import write_mrc
from napari_semiamort.data.particles import ParticleTable
from napari_semiamort.data.readers import read_particles
from napari_semiamort.data.star import write_star
from napari_semiamort.run import Reconstruction, ReconstructionConfig


def make_dataset(folder: Path, n: int, box: int, per_stack: int = 64) -> Path:
    rng = np.random.default_rng(0)
    k = np.arange(box) - box // 2
    blob = np.exp(-(k[:, None] ** 2 + k[None] ** 2) / (2 * (box / 8) ** 2)).astype(np.float32)
    stacks = []
    for s in range(0, n, per_stack):
        m = min(per_stack, n - s)
        data = rng.normal(size=(m, box, box)).astype(np.float32) + blob
        stacks.append(write_mrc(folder / f"mic{s // per_stack:05d}.mrcs", data, 2.0))
    idx = np.arange(n)
    ctf = {"rlnDefocusU": rng.uniform(1e4, 2.5e4, n), "rlnDefocusV": rng.uniform(1e4, 2.5e4, n),
           "rlnDefocusAngle": rng.uniform(0, 180, n), "rlnVoltage": np.full(n, 300.0),
           "rlnSphericalAberration": np.full(n, 2.7), "rlnAmplitudeContrast": np.full(n, 0.1),
           "rlnPhaseShift": np.zeros(n), "rlnCtfBfactor": np.zeros(n)}
    table = ParticleTable(source=folder / "particles.star", stacks=stacks, stack_index=idx // per_stack,
                          image_index=idx % per_stack, pixel_size=2.0, box=box, ctf=ctf)
    return write_star(folder / "particles.star", table)


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def loader_rate(star: Path, box: int | None, batches: int, cold: bool) -> float | None:
    d = ParticleDataset(read_particles(star), box=box)  # not scanned: nothing cached
    rng = np.random.default_rng(1)
    order = rng.permutation(len(d))
    if cold and not drop_page_cache():
        return None
    if not cold:
        for s in range(0, len(d), 512):  # one pass: the page cache holds the stacks
            d.read_raw(np.arange(s, min(s + 512, len(d))))
    t0 = time.perf_counter()
    for b in range(batches):
        d.read(order[(b * 64) % len(d):][:64])
    return batches * 64 / (time.perf_counter() - t0)


def training_rates(star: Path, box: int | None, device: str, steps: int) -> dict:
    cfg = ReconstructionConfig(particles=str(star), box=box, device=device, restarts=1)
    run = Reconstruction(cfg)
    n, bs = len(run.data), cfg.batch_size

    def rate(step) -> float:
        for s in range(2):
            step(torch.arange(s * bs, (s + 1) * bs) % n)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(steps):
            step(torch.arange(s * bs, (s + 1) * bs) % n)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        return steps * bs / (time.perf_counter() - t0)

    run.state.epoch = cfg.switch_epoch - 1  # the widest stage-1 band: its most expensive steps
    s1 = rate(run.train_step)
    run.switch()
    s2 = rate(run.train_step)
    return {"stage1_images_per_s": s1, "stage2_images_per_s": s2, "device": str(run.device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for box in args.boxes:
            folder = Path(tmp) / f"box{box}"
            folder.mkdir()
            star = make_dataset(folder, args.n, box)
            row = {"box": box, "n": args.n}
            row["loader_warm_images_per_s"] = loader_rate(star, None, args.batches, cold=False)
            row["loader_cold_images_per_s"] = loader_rate(star, None, args.batches, cold=True)
            row["loader_downsampled_images_per_s"] = loader_rate(star, box // 2, args.batches, cold=False)
            row.update(training_rates(star, None, args.device, args.steps))
            results["rows"].append(row)
            cold = row["loader_cold_images_per_s"]
            fastest = max(row["stage1_images_per_s"], row["stage2_images_per_s"])
            print(f"box {box:4d}: loader {row['loader_warm_images_per_s']:8.0f} img/s warm, "
                  f"{'n/a' if cold is None else f'{cold:8.0f}'} cold, "
                  f"{row['loader_downsampled_images_per_s']:8.0f} downsampled to {box // 2}   |   training "
                  f"stage 1 {row['stage1_images_per_s']:7.0f} img/s, stage 2 {row['stage2_images_per_s']:7.0f}"
                  f" img/s on {row['device']}   |   loader / fastest stage "
                  f"{row['loader_warm_images_per_s'] / fastest:.1f}×",
                  flush=True)
    print(f"{results['machine']}, torch {results['torch']}, {results['threads']} threads")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
