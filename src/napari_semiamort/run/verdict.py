"""Whether the run worked (issue 18, item 8): a verdict from measured signals at the end of stage 1 and of the run, so
that a blob is never handed out silently.

**The signal the map explains.** At each image's pose the map predicts the image; where the poses and the map are
right, the prediction is the image's signal and its squared correlation with the image, per frequency shell, is the
image's signal fraction ``S/(S+N)``. So ``E(k) = C(k)² / (1 − σ²(k)/⟨|y|²⟩(k))``, the prediction's squared
correlation ``C(k)²`` with the images over the signal fraction the noise model leaves, is the share of the images'
signal the map explains at their poses: ~1 for a right map and poses, ~0 for a map whose projections do not follow
the images; with a share f of the images at right poses and the rest at poses unrelated to them, ~f² (the pooled
correlation scales with f: 0.27 with half the tiny test set's poses scrambled). It is judged over the shells from
:data:`FIRST_SHELL` (below, the particle's outline, which a round blob explains as well: 0.66–0.99 in every run
measured, failed ones included) to where the images' signal falls below :data:`MIN_SIGNAL` of their power, pooled
over a seeded sample of the images not flagged as junk.

Measured on finished runs at box 64 (3,000 images; benchmarks/results/verdict.json; docs/results.md): right maps of
clean sets 0.92–0.99; realistic 3KPR (SNR 0.05, junk, coloured noise) that succeeded with a 20-30 % tail of wrong
poses 0.85–0.88; a self-consistent wrong map (poses 100° off, realistic) 0.74; blobs from runs whose stage 1 never
broke the symmetry 0.08–0.24. A wrong map can explain much of the images' signal (its own poses fit it), so ``E``
alone cannot confirm a structure: **two independent stage-1 starts that reached the same poses** (:mod:`.restarts`)
can, and the verdict says whether they did.

**What to try names the band the data support.** Stage 1's band is widened to what the images' spectral SNR
supports (:func:`.schedule.measured_band_end`), up to 0.6 of Nyquist; where a failed or doubtful run's images
carry signal well beyond the band stage 1 used (a band set by hand, or beyond that cap), the advice names the
supported band as ``--autoencode-max-freq``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .batches import ImageSource
from .frequencies import Frequencies
from .schedule import DEFAULT_BAND_END, WIDER_BY, supported_band
from .scorer import ImageModel
from .state import RunState

__all__ = ["DOUBTFUL_BELOW", "DOUBTFUL_BELOW_STAGE1", "DOUBTFUL_JUNK", "FAILED_BELOW", "FIRST_SHELL", "MIN_SIGNAL",
           "SAMPLE", "STAGE1_JUDGED_TO", "ExplainedSignal", "explained_signal", "judge", "verdict_lines",
           "verdict_message"]

FIRST_SHELL = 4  # Fourier pixels; below, a round blob explains the particle's outline as well as a right map
MIN_SIGNAL = 0.1  # the shells judged: those where the images' signal is at least this fraction of their power
SAMPLE = 2048  # images (a seeded sample of those not flagged as junk) the signal is measured on
# Below this share of the signal the map is a blob (0.08-0.43 measured), below the next it may be a wrong map
# (0.74 measured) or a right one with a large tail of wrong poses; right maps measured 0.85-0.99 at the run's end.
FAILED_BELOW, DOUBTFUL_BELOW = 0.5, 0.8
# At the switch stage 1's poses are coarse (10-20° median) and the volume only knows stage 1's band: runs that went
# on to succeed measured 0.76 (realistic 3KPR) and 0.82 (clean 3KPR) there, a blob 0.41
DOUBTFUL_BELOW_STAGE1 = 0.65
# ... judged within stage 1's default band end (0.4 of Nyquist), where those were measured (its band ends there at
# boxes 50-130). Below box 50 stage 1 trains to 10 Fourier px, beyond; there its coarse poses explain less: the
# tiny sets' runs that ended at 1.4-3.4° median measured 0.50-0.72 over shells 4-10 at the switch
STAGE1_JUDGED_TO = DEFAULT_BAND_END
# Junk is told from particles by how well the map fits them at their poses: particles at wrong poses can be
# flagged too (half the tiny test set's images, their poses scrambled, were). Above this share of the images left
# out the verdict is doubtful whatever the rest explains (realistic sets with 10 % junk: 9.3-9.5 % flagged).
DOUBTFUL_JUNK = 0.4
LEVELS = ("found", "doubtful", "failed", "unknown")  # the verdict's values, in the records


@dataclass(frozen=True)
class ExplainedSignal:
    """The share of the images' signal the map explains at their poses, per shell and over the judged shells."""

    fraction: float  # the mean of ``per_shell`` over the judged shells (nan where there are none)
    shells: tuple[int, int]  # the first and last shell judged (Fourier pixels; (0, -1) where none)
    per_shell: np.ndarray  # (L/2 + 1,) E(k), nan outside the band
    signal: np.ndarray  # (L/2 + 1,) the images' signal fraction 1 − σ²/⟨|y|²⟩
    junk: float  # the share of the images left out as junk (the run's flags)

    def resolution(self, size: int, pixel_size: float) -> tuple[float, float]:
        """The judged shells as resolutions (Å, low to high)."""
        return tuple(size * pixel_size / k for k in self.shells)  # type: ignore[return-value]


@torch.no_grad()
def explained_signal(model: ImageModel, source: ImageSource, state: RunState, fr: Frequencies,
                     seed: int, batch: int = 256, last_shell: int | None = None) -> ExplainedSignal:
    """:class:`ExplainedSignal` of the run's current volume at the images' current poses and shifts, at the
    frequencies ``fr``, on a seeded sample of the images not flagged as junk (at the switch none are yet). Not
    flagged by the sample's own junk scores: images at wrong poses score low as junk does, and leaving them
    out lifted the share of failed runs' blobs from 0.13-0.24 to 0.27-0.54 (realistic 3KPR at the switch, 9 %
    flagged: 0.76 either way). ``last_shell``: judge no shell beyond it (Fourier pixels)."""
    n, size = len(source), source.size
    kept = np.ones(n, dtype=bool) if state.junk is None else ~state.junk.numpy()
    idx = np.flatnonzero(kept)
    if len(idx) > SAMPLE:
        idx = np.sort(np.random.default_rng(seed).choice(idx, SAMPLE, replace=False))
    n_shells = size // 2 + 1
    shells = fr.shells.to(model.device)
    sums = torch.zeros(4, n_shells, dtype=torch.float64, device=model.device)  # Σpy, Σp², Σy², count
    for s in range(0, len(idx), batch):
        part = torch.from_numpy(idx[s : s + batch])
        b = source.batch(part, fr)
        shifts = None if state.shifts is None else state.shifts[part].to(model.device)
        p = model.predict(state.poses[part].to(model.device), shifts, b.ctf, fr)
        for row, v in enumerate((p * b.obs, p * p, b.obs * b.obs, torch.ones_like(p))):
            sums[row].index_add_(0, shells, v.sum(0).to(torch.float64))
    py, pp, yy, count = sums.cpu().numpy()
    variance = model.noise.variance.cpu().numpy().astype(np.float64)[:n_shells]
    flagged = 0.0 if state.junk is None else float(state.junk.float().mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        corr2 = py**2 / (pp * yy)
        signal = 1 - variance / (yy / count)
        per_shell = np.where(count > 0, corr2 / signal, np.nan)
    last = FIRST_SHELL - 1
    stop = n_shells if last_shell is None else min(n_shells, last_shell + 1)
    while last + 1 < stop and count[last + 1] > 0 and signal[last + 1] >= MIN_SIGNAL:
        last += 1
    if last < FIRST_SHELL + 1:  # fewer than two shells carry enough signal to judge
        return ExplainedSignal(float("nan"), (0, -1), per_shell, signal, flagged)
    judged = np.clip(per_shell[FIRST_SHELL : last + 1], 0.0, None)
    return ExplainedSignal(float(np.nanmean(judged)), (FIRST_SHELL, last), per_shell, signal, flagged)


def _level(explained: ExplainedSignal, final: bool) -> str:
    fraction = explained.fraction
    if not np.isfinite(fraction):
        return "unknown"
    if fraction < FAILED_BELOW:
        return "failed"
    doubtful = fraction < (DOUBTFUL_BELOW if final else DOUBTFUL_BELOW_STAGE1) or explained.junk > DOUBTFUL_JUNK
    return "doubtful" if doubtful else "found"


def _starts_agreed(history: list[dict]) -> bool | None:
    """Whether two stage-1 starts reached the same poses (None: the run tried one start)."""
    record = next((m for m in reversed(history) if "restart_losses" in m), None)
    return None if record is None else bool(record.get("restart_agrees_with"))


def judge(model: ImageModel, source: ImageSource, state: RunState, fr: Frequencies, seed: int,
          final: bool, stage1_band: float | None = None) -> dict:
    """The verdict's record for the epoch's metrics: at the end of stage 1 (``final`` false: keys ending in
    ``_stage1``) or of the run. With ``stage1_band`` (the run's stage-1 band end, fraction of Nyquist), the record
    holds ``wider_band``: the band the images' signal supports (:func:`supported_band`, fraction of Nyquist) where
    it reaches :data:`WIDER_BY` Fourier px or more beyond stage 1's, else None."""
    explained = explained_signal(model, source, state, fr, seed,
                                 last_shell=None if final else round(STAGE1_JUDGED_TO * source.size / 2))
    low, high = explained.resolution(source.size, source.data.pixel_size) if explained.shells[1] > 0 else (0, 0)
    record = {"verdict": _level(explained, final), "explained_signal": explained.fraction,
              "explained_resolution_A": [round(low, 2), round(high, 2)], "explained_junk": explained.junk,
              "starts_agreed": _starts_agreed(state.history)}
    if stage1_band is not None:
        half = source.size / 2
        supported = supported_band(explained.signal)
        wider = supported >= round(stage1_band * half) + WIDER_BY
        record["wider_band"] = round(supported / half, 2) if wider else None
    return record if final else {f"{k}_stage1": v for k, v in record.items()}


def verdict_message(m: dict, final: bool = True) -> str | None:
    """The verdict's line from an epoch's metrics ``m`` (None where it holds none): what was found, the
    measured signals, and what to try."""
    key = "" if final else "_stage1"
    level = m.get(f"verdict{key}")
    if level is None:
        return None
    what = "the run" if final else "stage 1"
    e, (low, high) = m[f"explained_signal{key}"], m[f"explained_resolution_A{key}"]
    agreed = m.get(f"starts_agreed{key}")
    starts = "" if agreed is None else ("; two independent starts reached the same poses" if agreed else
                                        "; no two independent starts reached the same poses")
    if agreed is False and level == "found":
        starts = "; not confirmed" + starts.replace(";", ":", 1)
    wider = m.get(f"wider_band{key}")
    band = None if wider is None else (f"a wider stage-1 band (--autoencode-max-freq {wider:.2f}: the images carry "
                                       "signal beyond stage 1's band)")
    if level == "unknown":
        return (f"verdict ({what}): cannot judge: the images' signal is below {100 * MIN_SIGNAL:.0f} % of their "
                f"power at every resolution the map is judged at{starts}" + ("" if band is None else f". Try {band}"))
    left_out = m.get(f"explained_junk{key}", 0.0)
    # an estimate over the noise model: a right map reads ~100 % ± a few, shown as "all" rather than "101 %"
    share = "all" if e >= 0.995 else f"{100 * e:.0f} %"
    text = f"the map explains {share} of the images' signal at their poses ({low:.0f}–{high:.0f} Å)"
    right = DOUBTFUL_BELOW if final else DOUBTFUL_BELOW_STAGE1
    if e < right:
        text += f", where a right map explains ≥ {100 * right:.0f} %" + ("" if final else " at the switch")
    if left_out > 0:
        text += f"; {100 * left_out:.0f} % of the images were left out as junk"
        if left_out > DOUBTFUL_JUNK:
            text += " (junk, or particles the map does not explain)"
    head = {"found": "a structure was found", "failed": "FAILED, the map is a blob",
            "doubtful": "DOUBTFUL, possibly a wrong map or many wrong poses"}[level]
    line = f"verdict ({what}): {head}: {text}{starts}"
    if level == "found":  # confirmed by a second start or not
        return line
    first = "" if band is None else f"{band}; "
    return (f"{line}. Check the map; try {first}more starts (--restarts 6 --max-restarts 12), --shifts yes, a mask "
            "(--mask-diameter); check the pixel size and the CTF")


def verdict_lines(m: dict) -> list[tuple[str, bool]]:
    """The verdict lines an epoch's metrics ``m`` hold (stage 1's at the switch, the run's at its last epoch),
    each with whether it warns (failed or doubtful): what the CLI prints and the dock shows."""
    lines = []
    for final in (False, True):
        line = verdict_message(m, final)
        if line is not None:
            lines.append((line, m.get("verdict" if final else "verdict_stage1") in ("failed", "doubtful")))
    return lines
