"""The run's maps, made directly from the images with their poses (Fourier insertion), at any box; and the
reference map at the run's box."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..data.dataset import ParticleDataset
from ..data.mrc import read_map
from ..metrics.density import solvent_mask
from ..physics.backproject import FourierInserter
from ..physics.fourier import fft_centered, frequency_grid_2d, resample_map
from .batches import ImageSource
from .state import Modes

__all__ = ["PROGRESS_FROM", "backproject", "final_maps", "insert", "insert_modes", "masked", "read_reference"]

log = logging.getLogger("napari_semiamort")

PROGRESS_FROM = 20_000  # final maps of more images than this say how far they are, every tenth of the way


class _Progress:
    """Every tenth of a long insertion, a line in the log: how many images of how many, and the time so far (the
    final maps of 200,000 images took 18 minutes, silent, after a Ctrl-C; issue 20)."""

    def __init__(self, label: str | None, total: int):
        self.label, self.total, self.start, self.next = label, total, time.perf_counter(), 0.1

    def done(self, n: int) -> None:
        if self.label is None or self.total <= PROGRESS_FROM or n < self.next * self.total:
            return
        self.next = (int(10 * n / self.total) + 1) / 10
        log.info(f"{self.label}: {n:,} of {self.total:,} images inserted ({100 * n / self.total:.0f} %, "
                 f"{time.perf_counter() - self.start:.0f} s)")


@torch.no_grad()
def insert(source: ImageSource, poses: torch.Tensor, shifts: torch.Tensor | None, which: np.ndarray,
           data: ParticleDataset | None = None, batch: int = 256, radius: float | None = None,
           weights: torch.Tensor | None = None, progress: str | None = None) -> FourierInserter:
    """The images ``which`` inserted into a frequency grid with ``poses`` `(N, 3, 3)` (and ``shifts`` `(N, 2)`
    in the run's pixels), every frequency up to Nyquist (or ``radius`` Fourier pixels); ``weights`` `(N,)`: each
    image's weight in the sums (its image and CTF scaled by the square root: ``Σ w c y / Σ w c²``). With ``poses``
    `(N, M, 3, 3)` (``shifts`` `(N, M, 2)`, ``weights`` `(N, M)`) each image is inserted at each of its M poses,
    read and transformed once; poses whose weight is 0 for a whole batch are skipped.

    ``data``: the same particles prepared at another box (:meth:`ParticleDataset.at_box`), for a map at that
    box; default the run's images. ``progress``: a name for the log's progress lines of a long insertion."""
    data = source.data if data is None else data
    device = source.device
    if poses.dim() == 3:  # one pose per image
        poses, shifts = poses[:, None], None if shifts is None else shifts[:, None]
        weights = None if weights is None else weights[:, None]
    # images per batch: 256 at box 128 and below, fewer above (the insertion's temporaries grow with L²)
    batch = max(8, min(batch, batch * 128**2 // data.box**2))
    inserter = FourierInserter(data.box, device, radius)
    freqs = frequency_grid_2d(data.box, device=device)  # (L, L, 2) cycles per pixel
    px = source.data.pixel_size / data.pixel_size  # the run's pixels in ``data``'s
    report = _Progress(progress, len(which))
    for s in range(0, len(which), batch):
        idx = torch.from_numpy(np.asarray(which[s : s + batch], dtype=np.int64))
        image = fft_centered(data.read(idx.numpy()).to(device), 2)
        image_ctf = source.ctf(idx, freqs, data)
        for j in range(poses.shape[1]):
            w = None if weights is None else weights[idx, j].to(device)
            if w is not None and not bool((w > 0).any()):
                continue
            f, ctf = image, image_ctf
            if shifts is not None:  # the image is the projection shifted by −origin: undo it
                o = shifts[idx, j].to(device) * px
                phase = -2 * torch.pi * (freqs[None] * o[:, None, None, :]).sum(-1)
                f = f * torch.polar(torch.ones_like(phase), phase)
            if w is not None:
                root = w.sqrt()[:, None, None]
                f, ctf = f * root, ctf * root
            inserter.insert(f, poses[idx, j].to(device), ctf)
        report.done(s + len(idx))
    return inserter


def backproject(source: ImageSource, poses: torch.Tensor, shifts: torch.Tensor | None, which: np.ndarray,
                data: ParticleDataset | None = None, batch: int = 256) -> np.ndarray:
    """A map `(L, L, L)` reconstructed directly from the images ``which`` (at ``data``'s box)."""
    return insert(source, poses, shifts, which, data, batch).volume().cpu().numpy()


def insert_modes(source: ImageSource, poses: torch.Tensor, shifts: torch.Tensor | None, which: np.ndarray,
                 radius: float | None = None, modes: Modes | None = None,
                 data: ParticleDataset | None = None, progress: str | None = None) -> FourierInserter:
    """The images ``which`` inserted at ``poses`` (and ``shifts``) as :func:`insert` does, or, with ``modes``, each
    spread over its modes by their weights (one pass over the images): the first mode at its pose as it is now
    (refined since the modes were found), the others where the view search found them."""
    if modes is None:
        return insert(source, poses, shifts, which, data, radius=radius, progress=progress)
    rotations = torch.cat([poses[:, None], modes.rotations[:, 1:]], 1)
    at = None if shifts is None else torch.cat([shifts[:, None], modes.shifts[:, 1:]], 1)
    return insert(source, rotations, at, which, data, radius=radius, weights=modes.weights, progress=progress)


def final_maps(source: ImageSource, poses: torch.Tensor, shifts: torch.Tensor | None, data: ParticleDataset,
               halves: bool, keep: np.ndarray | None = None,
               modes: Modes | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(map, half1, half2)`` at ``data``'s box from the final poses; the map from all images ``keep``
    `(N,)` bool (None: all; the junk is left out) (the halves' sums added: one pass over the data); no halves
    unless ``halves`` and the particles are split. ``modes``: each image spread over its modes
    (:func:`insert_modes`)."""
    split = source.data.half
    kept = np.ones(len(source), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if not halves or split is None:
        whole = insert_modes(source, poses, shifts, np.flatnonzero(kept), None, modes, data, "map.mrc")
        return whole.volume().cpu().numpy(), None, None
    first = insert_modes(source, poses, shifts, np.flatnonzero((split == 1) & kept), None, modes, data, "half1.mrc")
    half1 = first.volume().cpu().numpy()
    second = insert_modes(source, poses, shifts, np.flatnonzero((split == 2) & kept), None, modes, data, "half2.mrc")
    half2 = second.volume().cpu().numpy()
    first.add_(second)  # the whole set's sums, without a third grid (1.6 GB each at box 512)
    del second
    return first.volume().cpu().numpy(), half1, half2


MASK_BOX = 128  # the largest box the final map's mask is fitted at (a box-400 map is Fourier-cropped to it first)


def masked(volume: np.ndarray, pixel_size: float, diameter: float | None = None) -> tuple[np.ndarray, float] | None:
    """The soft spherical solvent mask `(L, L, L)` in [0, 1] the polish's maps carry
    (:func:`~..metrics.density.solvent_mask`: about the particle ``volume`` shows, its radius fitted to it or
    ``diameter`` Å), and its inner radius in Å; None where the map shows no particle or the sphere does not fit
    the box. The final map times this mask has the solvent's noise gone, as the polish's maps had (fitted the same
    way to this map; realistic 3KPR: FSC = 0.5 with the truth 12.26 Å unmasked, 10.88 Å masked).

    Fitted at box :data:`MASK_BOX` at most (the margin and edge in that box's voxels, as the polish's are at the
    run's box) and interpolated to the map's: the fit's float64 transforms and sort at box 400 would need GBs."""
    size = volume.shape[-1]
    work = min(size, MASK_BOX)
    v = resample_map(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)), work)
    scale = size / work  # the map's voxels per work voxel
    found = solvent_mask(v, None if not diameter else diameter / 2 / (pixel_size * scale))
    if found is None:
        return None
    mask, inner = found
    if work < size:
        mask = torch.nn.functional.interpolate(mask[None, None], size=(size,) * 3, mode="trilinear")[0, 0]
    return mask.clamp(0, 1).numpy().astype(np.float32), inner * scale * pixel_size


def read_reference(path: str, box: int, pixel_size: float) -> torch.Tensor:
    """The reference map at ``path`` resampled to the run's ``box``, checked to span the particles' box
    (``box`` × ``pixel_size`` Å): a run on downsampled images is compared with the reference downsampled the
    same way."""
    ref, voxel = read_map(path)
    extent, ours = ref.shape[-1] * voxel, box * pixel_size
    if voxel > 0 and abs(extent / ours - 1) > 0.01:
        raise ValueError(f"{path}: spans {extent:.1f} Å ({ref.shape[-1]} × {voxel:.3f} Å), "
                         f"the particles' box {ours:.1f} Å: resample it to the particles' box")
    if ref.shape[-1] != box and voxel <= 0:
        raise ValueError(f"{path}: box {ref.shape[-1]} differs from the particles' {box} "
                         "and the header has no voxel size to check the scale")
    return resample_map(torch.from_numpy(ref), box)
