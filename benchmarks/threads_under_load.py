"""Does a run keep its share of a busy machine? Images/s beside busy processes against the same run alone.

  python benchmarks/threads_under_load.py [--n 1000] [--box 64] [--steps 20] [--cap 15] [--hogs 2]
      [--settle 90] [--out results.json]

Simulates a small dataset from the bundled ribosome map once, then times the stage-1 training steps of
benchmarks/threads.py (the widest stage-1 band, batch 64, after two warm-up steps), each setting in a fresh
process (OpenMP reads its wait policy once, when torch loads it): first on the machine as it is ("alone"),
then beside ``--hogs`` processes that each keep a core busy (``python -c "while True: pass"``, started and
killed here; "busy"). The settings:

- ``default, spinning``: torch's default threads and OpenMP's default wait policy (idle threads spin): the
  program before issue 19. This process imports torch before napari_semiamort, so the package's
  OMP_WAIT_POLICY comes too late for the runtime.
- ``default, passive``: torch's default threads, idle threads sleep (the package's OMP_WAIT_POLICY=PASSIVE).
- ``auto, passive``: ``set_cpu_threads(None)``, i.e. ``devices.auto_threads()``: what the programs do now.
- ``1 thread``: ``set_cpu_threads(1)``.

Before the busy runs it waits (at most ``--settle`` s) for the 1-minute load average to take in the busy
processes, since ``auto_threads`` reads it. Each measurement stops after ``--steps`` steps or ``--cap``
seconds, whichever comes first. Reported per setting and condition: threads, images/s, CPU-seconds per
1,000 images (the process's user + system time over the timed steps, all its threads), the process's CPU
time in all (import and set-up included), the load average it saw, and GOMP_SPINCOUNT as the OpenMP
runtime reports it (OMP_DISPLAY_ENV); then busy / alone per setting, and busy against the old program
alone. The children's environment drops OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS and
MKL_NUM_THREADS, so each setting means the same on every machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("auto, passive", "default, passive", "default, spinning", "1 thread")
OLD = "default, spinning"
_DROPPED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DISPLAY_ENV")


def child(setting: str, particles: str, steps: int, cap: float) -> dict:
    """One measurement in this (fresh) process; the imports' order is the setting's wait policy."""
    if setting == OLD:
        importlib.import_module("torch")  # before the package: the OpenMP runtime starts without its policy
    importlib.import_module("napari_semiamort")  # sets OMP_WAIT_POLICY (if torch is not loaded yet)
    import torch

    from napari_semiamort.devices import available_cores, set_cpu_threads
    from napari_semiamort.run import Reconstruction, ReconstructionConfig

    load = os.getloadavg()[0]
    if setting == "auto, passive":
        set_cpu_threads(None)
    elif setting == "1 thread":
        set_cpu_threads(1)
    cfg = ReconstructionConfig(particles=particles, threads=torch.get_num_threads())
    run = Reconstruction(cfg)
    run.state.epoch = cfg.switch_epoch - 1  # as benchmarks/threads.py: the widest, most expensive stage-1 band
    batch, n = cfg.batch_size, len(run.data)
    for s in range(2):  # warm-up
        run.train_step(torch.arange(s * batch, (s + 1) * batch) % n)
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while done < steps and (done == 0 or time.perf_counter() - t0 < cap):
        run.train_step(torch.arange((done + 2) * batch, (done + 3) * batch) % n)
        done += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"threads": torch.get_num_threads(), "available_cores": available_cores(), "load_1min": load,
            "images": done * batch, "wall_s": wall, "images_per_s": done * batch / wall,
            "cpu_s": cpu, "cpu_s_per_1000_images": 1000 * cpu / (done * batch), "torch": torch.__version__}


def measure(setting: str, particles: Path, args: argparse.Namespace) -> dict:
    """:func:`child` in a fresh process, with the runtime's spin count and the process's whole CPU time."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # libgomp prints its settings on stderr as it starts
    cmd = [sys.executable, __file__, "--child", setting, "--particles", str(particles),
           "--steps", str(args.steps), "--cap", str(args.cap)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300 + 3 * args.cap)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{setting}: the measurement failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
    result["gomp_spincount"] = int(spin.group(1)) if spin else None  # None: not GNU OpenMP
    result["process_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"  {setting}: {result['threads']} thread(s), {result['images_per_s']:.0f} img/s, load "
          f"{result['load_1min']:.2f}, spin count {result['gomp_spincount']}", file=sys.stderr)
    return result


def settle(hogs: int, before: float, seconds: float) -> float:
    """Wait until the 1-minute load average has risen by most of ``hogs`` (at most ``seconds``); the wait."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and os.getloadavg()[0] < before + 0.75 * hogs:
        time.sleep(2)
    return time.perf_counter() - t0


def busy(args: argparse.Namespace, particles: Path) -> tuple[dict, float]:
    """Every setting beside ``args.hogs`` busy processes (started and killed here); the settling wait."""
    load = os.getloadavg()[0]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        waited = settle(args.hogs, load, args.settle)
        print(f"busy ({args.hogs} busy processes; load {os.getloadavg()[0]:.2f} after {waited:.0f} s):",
              file=sys.stderr)
        return {s: measure(s, particles, args) for s in SETTINGS}, waited
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def table(results: dict) -> str:
    """The markdown table: per setting, alone and busy side by side."""
    rows = ["| setting | threads alone / busy | img/s alone | img/s busy | busy / alone | busy / old alone "
            "| CPU-s per 1,000 img alone / busy | GOMP_SPINCOUNT |", "|---|---|---|---|---|---|---|---|"]
    old = results["alone"][OLD]["images_per_s"]
    for s in SETTINGS:
        a, b = results["alone"][s], results["busy"][s]
        rows.append(f"| {s} | {a['threads']} / {b['threads']} | {a['images_per_s']:,.0f} | "
                    f"{b['images_per_s']:,.0f} | {b['images_per_s'] / a['images_per_s']:.2f}× | "
                    f"{b['images_per_s'] / old:.2f}× | {a['cpu_s_per_1000_images']:.1f} / "
                    f"{b['cpu_s_per_1000_images']:.1f} | {a['gomp_spincount']} |")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="simulated images (default 1000)")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps of 64 images (default 20)")
    p.add_argument("--cap", type=float, default=15.0, help="at most this many seconds per measurement")
    p.add_argument("--hogs", type=int, default=2, help="busy processes beside the run (default 2)")
    p.add_argument("--settle", type=float, default=90.0, help="at most this long for the load to rise (s)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    p.add_argument("--particles", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.particles, args.steps, args.cap)))
        return
    from importlib.resources import files

    from napari_semiamort.sim.simulate import SimulationConfig, simulate_dataset

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        molecule = files("napari_semiamort") / "resources" / "ribosome_6zu5_64.mrc.gz"
        simulate_dataset(str(molecule), tmp, SimulationConfig(n_particles=args.n, box=args.box, seed=0))
        particles = Path(tmp) / "particles.star"
        print(f"alone (load {os.getloadavg()[0]:.2f}):", file=sys.stderr)
        results = {"alone": {s: measure(s, particles, args) for s in SETTINGS}}
        results["busy"], waited = busy(args, particles)
    record = {"box": args.box, "n": args.n, "steps": args.steps, "cap_s": args.cap, "hogs": args.hogs,
              "settle_s": waited, "cpu_count": os.cpu_count(), "total_s": time.perf_counter() - t0, **results,
              "busy_over_alone": {s: results["busy"][s]["images_per_s"] / results["alone"][s]["images_per_s"]
                                  for s in SETTINGS}}
    print(f"box {args.box}, batch 64, stage 1, torch {results['alone'][OLD]['torch']}, "
          f"{results['alone'][OLD]['available_cores']} available cores, {args.hogs} busy processes\n")
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
