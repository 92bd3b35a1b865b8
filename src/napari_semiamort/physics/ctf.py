"""The contrast transfer function, with RELION's formula and sign (``RELION-CONVENTIONS.md``).

``CTF = −sin(γ)``, ``γ = −π λ Δf k² + (π/2) Cs λ³ k⁴ − phase_shift − atan(Q0 / √(1 − Q0²))``;
positive defocus is underfocus, ``CTF(0) = +Q0``. Astigmatism:
``Δf(θ) = ½(U + V) + ½(U − V) cos 2(θ − angle)`` with θ measured from +x (columns) towards +y (rows).
An optional B-factor multiplies by ``exp(−B k² / 4)`` (RELION's ``rlnCtfBfactor``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

import torch

__all__ = ["CTFParams", "CtfMode", "apply_ctf_mode", "compute_ctf", "electron_wavelength_in_angstroms"]


class CtfMode(enum.IntEnum):
    """What the images' own processing already did with the CTF, per image."""

    PLAIN = 0  # the images carry the CTF as the microscope made it
    PHASE_FLIPPED = 1  # phase-flipped (RELION rlnCtfDataArePhaseFlipped): they carry |CTF|
    PREMULTIPLIED = 2  # multiplied by the CTF once more (rlnCtfDataAreCtfPremultiplied): they carry CTF²


def apply_ctf_mode(ctf: torch.Tensor, mode: torch.Tensor) -> torch.Tensor:
    """The transfer the images went through `(B, ...)`: ``ctf`` `(B, ...)` as is, ``|ctf|`` or ``ctf²`` by each
    image's :class:`CtfMode` ``mode`` `(B,)`."""
    mode = mode.reshape(-1, *([1] * (ctf.ndim - 1)))
    return torch.where(mode == CtfMode.PHASE_FLIPPED, ctf.abs(),
                       torch.where(mode == CtfMode.PREMULTIPLIED, ctf * ctf, ctf))


def electron_wavelength_in_angstroms(voltage_in_kilovolts: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength (RELION: ``12.2643247 / √(V (1 + 0.978466e-6 V))``, V in volts)."""
    v = torch.as_tensor(voltage_in_kilovolts, dtype=torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))


@dataclass(frozen=True)
class CTFParams:
    """Per-image CTF parameters, each a tensor `(B,)` (units in the names)."""

    defocus_u_in_angstroms: torch.Tensor
    defocus_v_in_angstroms: torch.Tensor
    astigmatism_angle_in_degrees: torch.Tensor
    voltage_in_kilovolts: torch.Tensor
    spherical_aberration_in_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_in_degrees: torch.Tensor
    bfactor_in_angstroms_squared: torch.Tensor

    def index(self, idx) -> CTFParams:
        return CTFParams(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, device) -> CTFParams:
        return CTFParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.defocus_u_in_angstroms.shape[0])

    @staticmethod
    def stack(n: int, **values) -> CTFParams:
        """Constant-or-array fields broadcast to `(n,)` float64 tensors; missing fields take neutral values."""
        defaults = {
            "astigmatism_angle_in_degrees": 0.0,
            "voltage_in_kilovolts": 300.0,
            "spherical_aberration_in_mm": 2.7,
            "amplitude_contrast": 0.1,
            "phase_shift_in_degrees": 0.0,
            "bfactor_in_angstroms_squared": 0.0,
        }
        out = {}
        for f in fields(CTFParams):
            v = values.get(f.name, defaults.get(f.name))
            if v is None:
                raise ValueError(f"CTF field {f.name} is required")
            out[f.name] = torch.as_tensor(v, dtype=torch.float64).reshape(-1).expand(n).clone()
        return CTFParams(**out)


def compute_ctf(
    params: CTFParams, freqs_per_pixel: torch.Tensor, pixel_size_in_angstroms: float
) -> torch.Tensor:
    """CTF values `(B, ...)` at frequencies ``freqs_per_pixel`` `(..., 2)` (kx, ky in cycles per pixel).

    Evaluated in float64 (γ reaches hundreds of radians at high defocus) and returned as float32.
    """
    k = freqs_per_pixel.to(torch.float64) / pixel_size_in_angstroms  # 1/Å
    kx, ky = k[..., 0], k[..., 1]
    k2 = kx * kx + ky * ky
    theta = torch.atan2(ky, kx)
    extra = (1,) * kx.ndim

    def per_image(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64).reshape(-1, *extra)

    u, v = per_image(params.defocus_u_in_angstroms), per_image(params.defocus_v_in_angstroms)
    angle = torch.deg2rad(per_image(params.astigmatism_angle_in_degrees))
    defocus = 0.5 * (u + v) + 0.5 * (u - v) * torch.cos(2.0 * (theta - angle))
    lam = electron_wavelength_in_angstroms(per_image(params.voltage_in_kilovolts))
    cs = per_image(params.spherical_aberration_in_mm) * 1e7
    q0 = per_image(params.amplitude_contrast)
    phase = torch.deg2rad(per_image(params.phase_shift_in_degrees))
    gamma = (
        -torch.pi * lam * defocus * k2
        + 0.5 * torch.pi * cs * lam**3 * k2 * k2
        - phase
        - torch.atan(q0 / torch.sqrt(1.0 - q0 * q0))
    )
    ctf = -torch.sin(gamma)
    bfac = per_image(params.bfactor_in_angstroms_squared)
    ctf = ctf * torch.exp(-bfac * k2 / 4.0)
    return ctf.to(torch.float32)
