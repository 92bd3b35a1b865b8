"""Particle datasets: a particle table's images, read lazily in batches and prepared for training.

Preparation, per image and in this order (RELION's ``relion_preprocess`` does the same steps):

1. particles that cannot be used are skipped and listed in the log at :meth:`ParticleDataset.scan`: images
   holding NaN or Inf, values beyond ±1e15 or one value throughout (:func:`~.checks.image_problems`), and
   rows whose per-particle CTF values are not finite or out of range (:func:`~.checks.ctf_rows_to_skip`;
   bad optics values are refused when the dataset is made);
2. downsampling to ``box`` by Fourier cropping (the pixel size grows by the ratio);
3. normalisation: mean 0, standard deviation 1 in the background ring outside 0.45 of the box;
4. contrast inversion when the particles are dark on a light background (RELION and our model expect
   white density): ``invert="auto"`` decides from the data (:func:`contrast_statistic`);
5. an optional soft circular mask of ``mask_diameter`` Å (cosine edge).

Stacks stay memory-mapped: a batch reads its images, never the whole file. Prepared images are cached in
memory only when all of them fit in ``cache_bytes``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ..physics.ctf import CtfMode, CTFParams
from ..physics.fourier import fourier_crop_2d
from .checks import IMAGE_PROBLEMS, PIXEL_SIZE_RANGE, check_pixel_size, ctf_rows_to_skip, image_problems
from .mrc import Stack
from .particles import ParticleTable

__all__ = [
    "ParticleDataset",
    "ParticleStackView",
    "background_mask",
    "contrast_statistic",
    "normalize_background",
    "soft_circular_mask",
]

log = logging.getLogger("napari_semiamort")

# Header pixel sizes that mean "not set" (mrcfile writes 0, EMAN and many tools 1 Å).
_UNSET_PIXEL_SIZES = (0.0, 1.0)


CACHE_BYTES = 2e9  # a data set up to this size (prepared, float32) is held in memory after the scan

def background_mask(size: int, radius_fraction: float = 0.45, device=None) -> torch.Tensor:
    """`(size, size)` float mask, 1 outside the circle of radius ``radius_fraction · size``."""
    k = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    return ((k[:, None] ** 2 + k[None, :] ** 2) > (radius_fraction * size) ** 2).float()


def soft_circular_mask(size: int, radius: float, edge: float = 3.0, device=None) -> torch.Tensor:
    """`(size, size)` mask: 1 inside ``radius`` pixels, a raised-cosine fall to 0 over ``edge`` pixels."""
    k = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    r = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    t = ((r - radius) / max(edge, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def normalize_background(images: torch.Tensor, radius_fraction: float = 0.45) -> torch.Tensor:
    """Per image: subtract the mean and divide by the std of the pixels outside a circle (RELION's norm)."""
    ring = background_mask(images.shape[-1], radius_fraction, images.device).bool()
    bg = images[..., ring]
    mean = bg.mean(-1)
    std = bg.std(-1).clamp_min(1e-6)
    return (images - mean[..., None, None]) / std[..., None, None]


def contrast_statistic(images: torch.Tensor) -> torch.Tensor:
    """Per normalised image `(B, L, L)`: mean of the central disk (radius L/4) minus the background's mean.

    Positive for white density on a dark background. The particle's low frequencies dominate that mean
    and the CTF is positive there (``CTF(0) = +Q0`` up to the first zero), so the sign holds through the
    CTF; one image is noisy, the mean over many is not.
    """
    size = images.shape[-1]
    k = torch.arange(size, dtype=torch.float32, device=images.device) - size // 2
    r2 = k[:, None] ** 2 + k[None, :] ** 2
    inner = r2 <= (size / 4) ** 2
    ring = r2 > (0.45 * size) ** 2
    return images[..., inner].mean(-1) - images[..., ring].mean(-1)


def read_images(table: ParticleTable, stacks: list[Stack], rows: np.ndarray, box: int,
                check: bool = False) -> np.ndarray:
    """Raw images `(B, box, box)` float32 of the table's ``rows``: one read per stack touched, in ascending
    file order. ``check``: a missing image (index past the end, a truncated file) is a one-line error."""
    out = np.empty((len(rows), box, box), dtype=np.float32)
    s_ids, im_ids = table.stack_index[rows], table.image_index[rows]
    for s in np.unique(s_ids):
        sel = np.flatnonzero(s_ids == s)
        order = sel[np.argsort(im_ids[sel], kind="stable")]  # ascending offsets: sequential reads
        if check:
            stacks[s].check_index(int(im_ids[order[-1]]), table.source)
        out[order] = stacks[s].data[im_ids[order]]
    return out


class ParticleDataset:
    """A :class:`ParticleTable`'s images, prepared, plus what training needs per particle.

    Parameters
    ----------
    table : the particles (any reader's output).
    use_ctf : model the CTF; a table without CTF fields needs ``use_ctf=False``.
    box : downsample to this box (pixels; even, at most the stacks' box); None keeps the stacks' box.
    invert : ``"auto"``, ``"yes"`` or ``"no"``: multiply the images by −1 (dark-on-light data).
    mask_diameter : soft circular mask diameter in Å; None: no mask.
    pixel_size : Å per pixel of the stacks, overriding the table's.
    """

    def __init__(
        self,
        table: ParticleTable,
        use_ctf: bool = True,
        box: int | None = None,
        invert: str = "auto",
        mask_diameter: float | None = None,
        pixel_size: float | None = None,
    ):
        self.table = table
        src = table.source
        if invert not in ("auto", "yes", "no"):
            raise ValueError(f"invert must be 'auto', 'yes' or 'no', not {invert!r}")
        self.stacks = [Stack(p) for p in table.stacks]
        self.raw_box = self._check_stacks()
        self.raw_pixel_size = self._pixel_size(pixel_size)
        if box is None and self.raw_box % 2:
            box = self.raw_box - 1  # the centre convention (N // 2) needs even boxes: crop one Fourier pixel
            log.info("%s: odd box %d: images downsampled to %d", src, self.raw_box, box)
        self.box = self.check_box(box or None)  # 0: as extracted, as None
        self.pixel_size = self.raw_pixel_size * self.raw_box / self.box
        # input rows (0-based) skipped, with the reason: the CTF's now, the images' at the scan
        self.skip_reasons: dict[int, str] = {}
        self.ctf: CTFParams | None = None
        self.ctf_mode: torch.Tensor | None = None  # (N,) CtfMode of each image
        if use_ctf:
            self._set_ctf()

        self.reference_rotations = None  # (N, 3, 3) float32 from the file's poses, for metrics
        self.reference_shifts = None  # (N, 2) RELION origins in (prepared) pixels
        if table.rotations is not None:
            self.reference_rotations = torch.from_numpy(table.rotations).to(torch.float32)
            if table.origins is not None:
                self.reference_shifts = torch.from_numpy(table.origins / self.pixel_size).to(torch.float32)
        self.invert = invert
        self.sign = -1.0 if invert == "yes" else 1.0
        self.mask_diameter = mask_diameter
        self._mask = None
        if mask_diameter is not None:
            radius = 0.5 * mask_diameter / self.pixel_size
            if not 0 < radius <= self.box / 2:
                raise ValueError(f"mask diameter {mask_diameter} Å does not fit the box "
                                 f"({self.box} px × {self.pixel_size:.3f} Å = {self.box * self.pixel_size:.1f} Å)")
            self._mask = self._soft_mask(self.box, self.pixel_size)
        self._cache: torch.Tensor | None = None
        self.scanned = False  # scan() has run: contrast decided, bad images skipped
        self.skipped = np.zeros(0, dtype=np.int64)  # rows of the input table skipped (skip_reasons says why)
        self.rows = np.arange(len(table))  # each particle's row in the input table

    def _check_stacks(self) -> int:
        """The stacks' one box, after checking it against the metadata's and every image index against its stack."""
        src, table = self.table.source, self.table
        if not self.stacks:
            raise ValueError(f"{src}: no particles")
        boxes = sorted({s.box for s in self.stacks})
        if len(boxes) > 1:
            first = {b: next(s.path for s in self.stacks if s.box == b) for b in boxes[:2]}
            raise ValueError(
                f"{src}: mixed box sizes: {', '.join(f'{p} has {b} px' for b, p in first.items())}; "
                "re-extract the particles at one box size"
            )
        if table.box is not None and table.box != boxes[0]:
            raise ValueError(f"{src}: the metadata says the images are {table.box} px, the stacks hold "
                             f"{boxes[0]} px images ({self.stacks[0].path})")
        for s_id, stack in enumerate(self.stacks):
            used = table.image_index[table.stack_index == s_id]
            if used.size:
                stack.check_index(int(used.max()), src)
        return boxes[0]

    def _set_ctf(self) -> None:
        """Each image's CTF parameters and mode; the rows whose per-particle values are unusable are noted to be
        skipped at the scan (:func:`~.checks.ctf_rows_to_skip`: bad optics values are refused)."""
        table, src = self.table, self.table.source
        if table.ctf is None:
            missing = ", ".join(table.ctf_missing) or "all"
            raise ValueError(f"{src}: CTF fields missing ({missing}); add them or run with --no-ctf")
        skip = ctf_rows_to_skip(table.ctf_source or src, table.ctf)
        self.skip_reasons.update({i: f"CTF {why}" for i, why in skip.items()})
        c = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in table.ctf.items()}
        self.ctf = CTFParams(
            defocus_u_in_angstroms=c["rlnDefocusU"], defocus_v_in_angstroms=c["rlnDefocusV"],
            astigmatism_angle_in_degrees=c["rlnDefocusAngle"], voltage_in_kilovolts=c["rlnVoltage"],
            spherical_aberration_in_mm=c["rlnSphericalAberration"],
            amplitude_contrast=c["rlnAmplitudeContrast"], phase_shift_in_degrees=c["rlnPhaseShift"],
            bfactor_in_angstroms_squared=c["rlnCtfBfactor"],
        )
        flipped = np.zeros(len(table), bool) if table.phase_flipped is None else table.phase_flipped
        premult = np.zeros(len(table), bool) if table.ctf_premultiplied is None else table.ctf_premultiplied
        self.ctf_mode = torch.from_numpy(np.where(premult, CtfMode.PREMULTIPLIED, np.where(
            flipped, CtfMode.PHASE_FLIPPED, CtfMode.PLAIN)).astype(np.int64))

    def _pixel_size(self, override: float | None) -> float:
        src, headers = self.table.source, {round(s.header_pixel_size, 4) for s in self.stacks}
        header = next(iter(headers)) if len(headers) == 1 else None
        lo, hi = PIXEL_SIZE_RANGE
        usable = header is not None and header not in _UNSET_PIXEL_SIZES and lo <= header <= hi
        if override is not None:
            return check_pixel_size(override, "--pixel-size")
        if self.table.pixel_size is not None:
            metadata = check_pixel_size(self.table.pixel_size, f"{src}: the metadata")
            if usable and abs(header / metadata - 1) > 0.01:
                log.warning("%s: the metadata says %.4f Å/px, the stack header %.4f Å/px; using the metadata's "
                            "(override with --pixel-size)", src, metadata, header)
            return metadata
        if usable:
            log.info("%s: pixel size %.4f Å from the stack header", src, header)
            return float(header)
        if header is None:
            said = "the stack headers disagree"
        elif header in _UNSET_PIXEL_SIZES:
            said = f"the stack header says {header:g} Å, the usual 'unset' value"
        else:
            said = f"the stack header says {header:g} Å, not a pixel size (allowed: {lo:g}–{hi:g} Å)"
        raise ValueError(f"{src}: no pixel size in the metadata and {said}; give it with --pixel-size")

    # ------------------------------------------------------------------ size and subsets
    def __len__(self) -> int:
        return len(self.table)

    @property
    def half(self) -> np.ndarray:
        """(N,) 1 or 2: the half-set of each particle (``rlnRandomSubset`` when the input has it)."""
        return self._half

    def split_halves(self, seed: int) -> np.ndarray:
        """Assign each particle to half 1 or 2: the input's ``rlnRandomSubset`` if it has one, else a seeded
        random split into two equal halves."""
        given = self.table.extra.get("rlnRandomSubset")
        if given is not None and set(np.unique(given).astype(int).tolist()) == {1, 2}:
            self._half = np.asarray(given).astype(np.int64)
        else:
            rng = np.random.default_rng(seed)
            half = np.ones(len(self), np.int64)
            half[rng.permutation(len(self))[: len(self) // 2]] = 2
            self._half = half
        return self._half

    _half = None

    def subset(self, keep: np.ndarray) -> ParticleDataset:
        """The particles ``keep`` (boolean mask or indices), stacks and preparation shared."""
        keep = np.asarray(keep)
        new = object.__new__(ParticleDataset)
        new.__dict__.update(self.__dict__)
        new.table = self.table.subset(keep)
        new.rows = self.rows[keep]
        if self.ctf is not None:
            t = torch.from_numpy(np.flatnonzero(keep) if keep.dtype == bool else keep)
            new.ctf, new.ctf_mode = self.ctf.index(t), self.ctf_mode[t]
        for name in ("reference_rotations", "reference_shifts", "_cache"):
            v = getattr(self, name)
            if v is not None:
                setattr(new, name, v[torch.from_numpy(keep)])
        if self._half is not None:
            new._half = self._half[keep]
        return new

    @property
    def mask_power(self) -> float:
        """The fraction of white noise's power the images' mask keeps (the mean of its square; 1 without a mask):
        masked images carry that fraction of the noise the unmasked background shows, at every frequency for
        white noise (the mask's transform smooths a coloured spectrum, and keeps its mean)."""
        return 1.0 if self._mask is None else float((self._mask**2).mean())

    def _soft_mask(self, box: int, pixel_size: float) -> torch.Tensor:
        """The ``mask_diameter`` mask at ``box`` pixels of ``pixel_size`` Å (a cosine edge of 5 % of the box)."""
        return soft_circular_mask(box, 0.5 * self.mask_diameter / pixel_size, edge=max(2.0, 0.05 * box))

    def check_box(self, box: int | None) -> int:
        """``box`` (None: the stacks' own, less one pixel when odd) if the images can be prepared at it."""
        box = self.raw_box - self.raw_box % 2 if box is None else int(box)
        if box > self.raw_box or box < 8 or box % 2:
            why = "larger than the images" if box > self.raw_box else "odd" if box % 2 else "too small"
            raise ValueError(f"{self.source}: box {box}: choose an even size from 8 to the images' {self.raw_box} px "
                             f"({box} px is {why})")
        return box

    def at_box(self, box: int | None = None) -> ParticleDataset:
        """The same particles prepared at another ``box`` (default: the stacks' own, less one pixel when odd).

        The contrast :meth:`scan` decided, the halves, the skipped rows and the mask's diameter in Å are kept;
        the pixel size and the reference shifts follow the box. Images are read from the stacks (no cache):
        this is for one pass, such as the final maps at the images' full resolution after poses were
        inferred on downsampled images.
        """
        box = self.check_box(box)
        if box == self.box:
            return self
        if not self.scanned:  # the contrast must be decided once, on the images the run trains on
            raise RuntimeError(f"{self.source}: at_box before scan(): the contrast is not decided yet")
        new = object.__new__(ParticleDataset)
        new.__dict__.update(self.__dict__)
        new.box = box
        new.pixel_size = self.raw_pixel_size * self.raw_box / box
        new._cache = None
        if self._mask is not None:  # the same diameter in Å fits: the box spans the same width at any size
            new._mask = self._soft_mask(box, new.pixel_size)
        if self.reference_shifts is not None:
            new.reference_shifts = self.reference_shifts * float(self.pixel_size / new.pixel_size)
        return new

    # ------------------------------------------------------------------ reading
    def read_raw(self, idx: np.ndarray) -> np.ndarray:
        """The stacks' images `(B, L0, L0)` float32 for particles ``idx``, one read per stack touched."""
        return read_images(self.table, self.stacks, np.asarray(idx), self.raw_box)

    def prepare(self, raw: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images `(B, L0, L0)` → prepared `(B, L, L)` (unmasked) and what is wrong with each `(B,)` int64
        (0: nothing; else an :data:`~.checks.IMAGE_PROBLEMS` code: such images are prepared as zeros)."""
        x = torch.as_tensor(raw, dtype=torch.float32)
        problems = image_problems(x)
        if bool(problems.any()):
            x = torch.where(problems[:, None, None] == 0, x, torch.zeros((), dtype=x.dtype))
        if self.box != self.raw_box:
            x = fourier_crop_2d(x, self.box)
        x = normalize_background(x)
        if self.sign != 1.0:
            x = x * self.sign
        return x, problems

    def read(self, idx: np.ndarray | torch.Tensor, masked: bool = True) -> torch.Tensor:
        """Prepared images `(B, L, L)` float32 for particle indices ``idx`` (masked unless ``masked=False``)."""
        idx = np.asarray(idx)
        if self._cache is not None:
            x = self._cache[torch.from_numpy(idx)]
        else:
            x, _ = self.prepare(self.read_raw(idx))
        if masked and self._mask is not None:
            x = x * self._mask
        return x

    # ------------------------------------------------------------------ the first pass
    def scan(self, cache_bytes: float = CACHE_BYTES, chunk: int = 1024, contrast_sample: int = 4096) -> ParticleDataset:
        """Read every image once: find those that cannot be used (NaN or Inf, values beyond ±1e15, constant; or
        an unusable CTF, found when the dataset was made), decide the contrast, cache when it fits.

        Returns the dataset without the skipped particles (``self`` when none are); the log lists them, with
        their rows in the input and why (``skip_reasons`` keeps the list).
        """
        n = len(self)
        if n < 2:  # two halves, an FSC, a noise estimate: one image makes none of them
            raise ValueError(f"{self.source}: {n} particle(s): a reconstruction needs at least 2")
        cache = len(self) * self.box**2 * 4 <= cache_bytes
        problems = np.zeros(n, np.int64)
        ctf_bad = np.isin(self.rows, [r for r, why in self.skip_reasons.items() if why.startswith("CTF ")])
        cached = torch.empty(n, self.box, self.box) if cache else None  # filled in place: no second copy
        stats: list[torch.Tensor] = []
        sign, self.sign = self.sign, 1.0  # the contrast is measured on the data as they are
        for s in range(0, n, chunk):
            idx = np.arange(s, min(s + chunk, n))
            x, found = self.prepare(self.read_raw(idx))
            problems[idx] = found.numpy()
            if sum(len(t) for t in stats) < contrast_sample:
                stats.append(contrast_statistic(x[torch.from_numpy((problems[idx] == 0) & ~ctf_bad[idx])]))
            if cache:
                cached[s : s + len(idx)] = x
        self.sign = sign
        self.scanned = True
        kept = (problems == 0) & ~ctf_bad
        if kept.sum() < 2:
            raise ValueError(f"{self.source}: {int(kept.sum())} usable particle(s) of {n} "
                             f"({self._unusable(problems, ctf_bad)}): a reconstruction needs at least 2")
        if self.invert == "auto":
            self.sign = self._decide_contrast(torch.cat(stats))
        if cache:
            self._cache = cached.mul_(self.sign)
        for code, why in IMAGE_PROBLEMS.items():
            self.skip_reasons.update({int(r): f"image: {why}" for r in self.rows[problems == code]})
        if kept.all():
            return self
        self._report_skipped(problems, ctf_bad)
        out = self.subset(kept)
        out.skipped = np.concatenate([self.skipped, self.rows[~kept]])
        return out

    def _unusable(self, problems: np.ndarray, ctf_bad: np.ndarray) -> str:
        """``"2 images hold NaN or Inf, 1 with unusable CTF values"``: the count of each reason."""
        counts = [f"{int((problems == code).sum())} images {why}" for code, why in IMAGE_PROBLEMS.items()
                  if (problems == code).any()]
        ctf_only = int((ctf_bad & (problems == 0)).sum())
        return ", ".join(counts + ([f"{ctf_only} with unusable CTF values"] if ctf_only else []))

    def _report_skipped(self, problems: np.ndarray, ctf_bad: np.ndarray, shown: int = 20) -> None:
        """One warning per reason, listing the rows of the input skipped for it (the first ``shown``)."""
        for code, why in IMAGE_PROBLEMS.items():
            rows = self.rows[problems == code]
            if rows.size:
                listed = ", ".join(str(r + 1) for r in rows[:shown]) + (" …" if rows.size > shown else "")
                log.warning("%s: skipped %d particle(s) whose images %s (%s %s)", self.source, rows.size, why,
                            "row" if rows.size == 1 else "rows", listed)
        rows = self.rows[ctf_bad & (problems == 0)]
        if rows.size:
            listed = "; ".join(f"row {r + 1}: {self.skip_reasons[int(r)].removeprefix('CTF ')}" for r in rows[:shown])
            log.warning("%s: skipped %d particle(s) whose CTF values are unusable (%s%s)", self.source, rows.size,
                        listed, "; …" if rows.size > shown else "")

    def scan_state(self) -> dict:
        """What :meth:`scan` decided (the contrast, the input rows kept and skipped) and the halves: enough to
        prepare the same particles again without reading every image (:meth:`restore_scan`)."""
        if not self.scanned:
            raise RuntimeError(f"{self.source}: scan_state before scan()")
        return {"sign": self.sign, "rows": self.rows.copy(), "skipped": self.skipped.copy(),
                "half": None if self._half is None else self._half.copy(), "skip_reasons": dict(self.skip_reasons)}

    def restore_scan(self, state: dict, cache_bytes: float = 0.0) -> ParticleDataset:
        """The dataset as :meth:`scan` left it, from :meth:`scan_state`, without reading the images again
        (unless they fit ``cache_bytes``: then they are read once into memory, as a scan would)."""
        rows = np.asarray(state["rows"], dtype=np.int64)
        if len(rows) and (rows.max() >= len(self) or len(rows) > len(self)):
            raise ValueError(f"{self.source}: the run's record names {len(rows)} particles up to row "
                             f"{int(rows.max()) + 1}, the file has {len(self)}: is it the run's particle file?")
        out = self if len(rows) == len(self) and np.array_equal(rows, self.rows) else self.subset(rows)
        out.skipped = np.asarray(state["skipped"], dtype=np.int64)
        out.skip_reasons = dict(state.get("skip_reasons") or {})  # runs saved before issue 20 kept no reasons
        out.sign = float(state["sign"])
        out.scanned = True
        if state.get("half") is not None:
            out._half = np.asarray(state["half"], dtype=np.int64)
        if len(out) * out.box**2 * 4 <= cache_bytes:
            out._cache = torch.cat([out.prepare(out.read_raw(np.arange(s, min(s + 1024, len(out)))))[0]
                                    for s in range(0, len(out), 1024)])  # prepare() applies the sign
        return out

    def _decide_contrast(self, stat: torch.Tensor) -> float:
        m, se = float(stat.mean()), float(stat.std() / math.sqrt(max(len(stat), 1))) + 1e-12
        z = m / se
        if z < -3:
            log.info("contrast: dark particles on a light background (z = %.1f over %d images): inverting",
                     z, len(stat))
            return -1.0
        if z > 3:
            log.info("contrast: white particles on a dark background (z = %.1f over %d images): as they are",
                     z, len(stat))
        else:
            log.warning("contrast: undecided (z = %.1f over %d images); using the images as they are "
                        "(set --invert yes if the particles are dark)", z, len(stat))
        return 1.0

    @property
    def in_memory(self) -> bool:
        """The prepared images are held in memory (the scan cached them): reading is indexing."""
        return self._cache is not None

    @property
    def source(self) -> Path:
        return self.table.source


class ParticleStackView:
    """A particle table's raw images as a lazy, read-only array `(N, L, L)` float32: indexing reads only the
    images asked for (what napari needs to browse a million particles without loading them)."""

    def __init__(self, table: ParticleTable):
        self.table = table
        self._stacks = [Stack(p) for p in table.stacks]
        boxes = {s.box for s in self._stacks}
        if len(boxes) != 1:
            raise ValueError(f"{table.source}: images of different sizes ({sorted(boxes)} px)")
        box = boxes.pop()
        self.shape = (len(table), box, box)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        rows = np.arange(self.shape[0])[first]
        scalar = np.ndim(rows) == 0
        out = read_images(self.table, self._stacks, np.atleast_1d(rows), self.shape[-1], check=True)
        out = out[0] if scalar else out
        return out[rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)
