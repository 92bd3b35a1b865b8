"""Pure, batched, device-agnostic physics: rotations, transforms, CTF, slicing, likelihood. No I/O."""

from .ctf import CtfMode, CTFParams, apply_ctf_mode, compute_ctf, electron_wavelength_in_angstroms
from .fourier import (
    fft_centered,
    flip_frequencies,
    fourier_crop_2d,
    fourier_to_hartley,
    frequency_grid_2d,
    hartley_centered,
    hartley_to_fourier,
    ifft_centered,
    ihartley_centered,
    radial_frequency_index_2d,
    radial_frequency_index_3d,
    resample_map,
    shift_hartley,
)
from .likelihood import ShellNoiseModel, gaussian_nll, l1_loss, winner_takes_all
from .slicing import central_slice_coordinates, sample_volume, slice_volume
from .so3 import (
    euler_relion_to_matrix,
    exp_so3,
    geodesic_distance,
    log_so3,
    matrix_to_euler_relion,
    random_rotations,
    s2s2_to_matrix,
)

__all__ = [
    "CTFParams",
    "CtfMode",
    "ShellNoiseModel",
    "apply_ctf_mode",
    "central_slice_coordinates",
    "compute_ctf",
    "electron_wavelength_in_angstroms",
    "euler_relion_to_matrix",
    "exp_so3",
    "fft_centered",
    "flip_frequencies",
    "fourier_crop_2d",
    "fourier_to_hartley",
    "frequency_grid_2d",
    "gaussian_nll",
    "geodesic_distance",
    "hartley_centered",
    "hartley_to_fourier",
    "ifft_centered",
    "ihartley_centered",
    "l1_loss",
    "log_so3",
    "matrix_to_euler_relion",
    "radial_frequency_index_2d",
    "radial_frequency_index_3d",
    "random_rotations",
    "resample_map",
    "s2s2_to_matrix",
    "sample_volume",
    "shift_hartley",
    "slice_volume",
    "winner_takes_all",
]
