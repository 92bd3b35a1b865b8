"""What stage 1 can see: the signal per shell and how well each band pins a pose (issue 18, item 3).

    python benchmarks/diagnose_stage1.py SIM_DIR [SIM_DIR ...] [--images 384] [--bands 5 8 11 14 20]

``SIM_DIR`` is a `semiamort simulate` folder (particles.star with the true poses, truth.mrc, junk.txt when
there is junk). For each set it reports, on a seeded sample of its good particles:

- per shell (Fourier pixels, Å): the spectral SNR of the images at their true poses (the truth's projection
  with the CTF, scaled per shell to the images by least squares, against the residual), the same SNR
  estimated without poses from the images' power over their background's (what a run can measure), and
  the mean CTF²;
- per band: the fraction of images whose best pose on a grid (HEALPix × in-plane, scored with the *true*
  map at the image's true shift) lies within 15° and 30° of the true pose: how far the band can pin a pose
  even with a perfect map, the ceiling of any stage-1 method at that band; and the same with the volume a
  run starts from (what the first epochs see: near-chance);
- the loss at the start band against its noise floor: nothing explained (prediction 0), the start volume at
  the true poses, the true map at the true poses and at random poses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mrcfile
import numpy as np
import torch

from napari_semiamort.data.dataset import background_mask
from napari_semiamort.physics.fourier import hartley_centered
from napari_semiamort.physics.so3 import geodesic_distance, random_rotations
from napari_semiamort.run.config import ReconstructionConfig
from napari_semiamort.run.loop import Reconstruction
from napari_semiamort.run.search import GridSearch, grid_for_band


def _shell_sums(values: torch.Tensor, shells: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64).index_add_(0, shells.cpu(), values.to(torch.float64).cpu())


def diagnose(sim: Path, images: int, bands: list[int], seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = ReconstructionConfig(particles=str(sim / "particles.star"), restarts=1, device="cpu", seed=seed)
    run = Reconstruction(cfg)
    data, size, model = run.data, run.size, run.model
    junk = set(np.loadtxt(sim / "junk.txt", dtype=np.int64, ndmin=1).tolist()) if (sim / "junk.txt").exists() else set()
    good = np.array([i for i in range(len(data)) if int(data.rows[i]) not in junk])
    gen = np.random.default_rng(seed)
    idx = torch.from_numpy(np.sort(gen.choice(good, min(images, len(good)), replace=False)))
    true_rot = data.reference_rotations[idx]
    true_sh = data.reference_shifts[idx] if data.reference_shifts is not None else torch.zeros(len(idx), 2)
    start_volume = model.volume
    truth = torch.from_numpy(np.asarray(mrcfile.read(sim / "truth.mrc"), dtype=np.float32))
    full = run.bank.at(1.0)
    nshell = size // 2 + 1
    batch = run.source.batch(idx, full)
    torch.set_grad_enabled(False)
    # the truth's projections, per-shell least-squares scale to the images (the sign of the shifts tried both ways)
    model.volume = type(start_volume)(size)
    model.volume.set_from_map(truth)
    best = None
    for sign in (1.0, -1.0):
        pred = model.predict(true_rot, sign * true_sh, batch.ctf, full)
        num = _shell_sums((pred * batch.obs).sum(0), full.shells, nshell)
        den = _shell_sums((pred * pred).sum(0), full.shells, nshell)
        alpha = num / den.clamp_min(1e-30)
        resid = batch.obs - pred * alpha[full.shells.cpu()].to(pred.dtype)
        err = float((resid**2).sum().detach())
        if best is None or err < best[0]:
            best = (err, sign, pred, alpha, resid)
    _, sign, pred, alpha, resid = best
    scaled = pred * alpha[full.shells.cpu()].to(pred.dtype)
    signal = _shell_sums((scaled**2).sum(0), full.shells, nshell)
    noise = _shell_sums((resid**2).sum(0), full.shells, nshell)
    ctf2 = _shell_sums((batch.ctf**2).sum(0), full.shells, nshell) / _shell_sums(
        torch.ones_like(full.shells, dtype=torch.float64) * len(idx), full.shells, nshell
    )
    # without poses: the images' power per shell against their background's (the run's own measurement)
    raw = data.read(idx.numpy(), masked=False)
    ring = background_mask(size)
    p_img = _shell_sums((hartley_centered(raw, 2).flatten(1)[:, full.flat_index] ** 2).sum(0), full.shells, nshell)
    p_bg = _shell_sums(
        (hartley_centered(raw * ring, 2).flatten(1)[:, full.flat_index] ** 2).sum(0), full.shells, nshell
    ) / float(ring.mean())
    ssnr_est = (p_img - p_bg) / p_bg.clamp_min(1e-30)
    shells = [
        {
            "shell_px": s,
            "resolution_A": round(size * data.pixel_size / s, 1) if s else None,
            "ssnr_true_poses": float(signal[s] / max(noise[s], 1e-30)),
            "ssnr_no_poses": float(ssnr_est[s]),
            "ctf2": float(ctf2[s]),
        }
        for s in range(1, nshell)
    ]
    truth_hartley = model.volume.hartley().detach()
    pinned = []
    for b in bands:
        fr = run.bank.at(min(1.0, b / (size / 2)))
        nside, inplane = grid_for_band(b)
        grid = GridSearch(nside, inplane, model.device, top=1)
        bb = run.source.batch(idx, fr, reuse=batch)
        row = {"band_px": b, "resolution_A": round(size * data.pixel_size / b, 1), "grid": [nside, inplane]}
        for name, hartley in (("true_map", _scaled(truth_hartley, alpha, size)), ("start_volume", None)):
            model.volume = start_volume if hartley is None else model.volume
            res = grid.search(model, bb, idx, fr, sign * true_sh, hartley)
            err = torch.rad2deg(geodesic_distance(res.rotations[:, 0], true_rot))
            row[name] = {
                "within_15": float((err < 15).float().mean()),
                "within_30": float((err < 30).float().mean()),
                "median_error": float(err.median()),
            }
            if hartley is not None:
                model.volume = type(start_volume)(size)
                model.volume.set_from_map(truth)
        pinned.append(row)
    model.volume = start_volume
    start = run.bank.at(run.schedule.stage1_band(0))
    bs = run.source.batch(idx, start, reuse=batch)
    th = _scaled(truth_hartley, alpha, size)
    losses = {
        "zero": float(model.loss(torch.zeros_like(bs.obs), bs.obs, start).mean()),
        "start_volume_true_poses": float(model.exact_loss(true_rot, sign * true_sh, bs.obs, bs.ctf, start).mean()),
        "true_map_true_poses": float(
            model.loss(model.predict(true_rot, sign * true_sh, bs.ctf, start, th), bs.obs, start).mean()
        ),
        "true_map_random_poses": float(
            model.loss(
                model.predict(
                    random_rotations(len(idx), torch.Generator().manual_seed(1)), sign * true_sh, bs.ctf, start, th
                ),
                bs.obs,
                start,
            ).mean()
        ),
    }
    return {
        "sim": str(sim),
        "pixel_size": data.pixel_size,
        "box": size,
        "images": len(idx),
        "start_band_px": round(run.schedule.stage1_band(0) * size / 2),
        "end_band_px": round(run.schedule.stage1_end * size / 2),
        "shells": shells,
        "pinned": pinned,
        "start_band_losses": losses,
    }


def _scaled(hartley: torch.Tensor, alpha: torch.Tensor, size: int) -> torch.Tensor:
    """The truth's transform scaled per shell by ``alpha`` (its least-squares fit to the images)."""
    c = torch.arange(size) - size // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).round().long()
    a = (
        torch.cat([alpha, alpha[-1:].expand(r.max() + 1 - len(alpha))]).to(hartley.dtype)
        if r.max() >= len(alpha)
        else alpha.to(hartley.dtype)
    )
    return hartley * a[r]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sims", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--bands", type=int, nargs="+", default=[5, 8, 11, 14, 20])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for sim in args.sims:
        r = diagnose(sim, args.images, args.bands)
        results.append(r)
        print(
            f"\n== {sim}  {r['pixel_size']:.2f} Å/px, box {r['box']}, stage-1 band {r['start_band_px']}"
            f"→{r['end_band_px']} px"
        )
        print("shell  Å      SSNR(true poses)  SSNR(no poses)  CTF²")
        for s in r["shells"][:24]:
            print(
                f"{s['shell_px']:5d} {s['resolution_A']:6.1f}  {s['ssnr_true_poses']:10.4f}  {s['ssnr_no_poses']:12.4f}"
                f"  {s['ctf2']:.3f}"
            )
        print("band  Å      grid       true map ≤15°/≤30°/median     start volume ≤15°/≤30°/median")
        for p in r["pinned"]:
            t, s = p["true_map"], p["start_volume"]
            print(
                f"{p['band_px']:4d} {p['resolution_A']:6.1f}  {str(p['grid']):9s}  "
                f"{t['within_15']:.2f} {t['within_30']:.2f} "
                f"{t['median_error']:6.1f}°        {s['within_15']:.2f} {s['within_30']:.2f} {s['median_error']:6.1f}°"
            )
        print("start-band losses:", {k: round(v, 5) for k, v in r["start_band_losses"].items()})
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
