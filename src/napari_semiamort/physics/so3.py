"""Rotations: S2S2 (6D) parameterisation, exponential map, geodesic distance, RELION Euler angles.

Convention (one place for the whole package): a pose ``R`` is RELION's matrix ``A``. It maps volume
coordinates to image (camera) coordinates, ``img(x, y) = ∫ V(Rᵀ (x, y, z)) dz``, and rotation matrices
left-multiply column vectors of xyz coordinates. See ``../shared/docs/RELION-CONVENTIONS.md``.
"""

from __future__ import annotations

import torch

__all__ = [
    "euler_relion_to_matrix",
    "exp_so3",
    "geodesic_distance",
    "log_so3",
    "matrix_to_euler_relion",
    "random_rotations",
    "s2s2_to_matrix",
]

# Below this |ω|² the Taylor branches of the exponential map are used (paper, Supp. C).
_SMALL_ANGLE_SQ = 1e-6


def s2s2_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from the 6D S2S2 representation (paper, Supp. C).

    ``x`` `(..., 6)` is split into two 3-vectors; ``v1`` and ``v3 = v1 × v2`` (normalised) become the
    first and third columns, ``ṽ2 = v3 × v1`` the second. Returns `(..., 3, 3)`.
    """
    v1 = torch.nn.functional.normalize(x[..., 0:3], dim=-1)
    v2 = x[..., 3:6]
    v3 = torch.nn.functional.normalize(torch.linalg.cross(v1, v2, dim=-1), dim=-1)
    v2t = torch.linalg.cross(v3, v1, dim=-1)
    return torch.stack([v1, v2t, v3], dim=-1)


def _skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices `(..., 3, 3)` of vectors `(..., 3)`."""
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -wz, wy], dim=-1),
            torch.stack([wz, zero, -wx], dim=-1),
            torch.stack([-wy, wx, zero], dim=-1),
        ],
        dim=-2,
    )


def exp_so3(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula ``exp([ω]×)`` for axis-angle vectors `(..., 3)` → `(..., 3, 3)`.

    ``sin θ / θ`` and ``(1 − cos θ) / θ²`` switch to their Taylor series near ``θ = 0`` so that the value
    and the gradient are finite and exact at and around the identity (paper, Supp. C).
    """
    theta_sq = (w * w).sum(-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    # A safe θ keeps the unused branch of torch.where free of 0/0, whose NaN gradient would leak.
    theta_sq_safe = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = torch.sqrt(theta_sq_safe)
    a = torch.where(small, 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0, torch.sin(theta) / theta)
    b = torch.where(
        small, 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0, (1.0 - torch.cos(theta)) / theta_sq_safe
    )
    k = _skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def log_so3(r: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors `(..., 3)` of rotations `(..., 3, 3)` (inverse of :func:`exp_so3`, θ < π)."""
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    vee = torch.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], dim=-1
    )
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    factor = torch.where(small, 0.5 + theta**2 / 12.0, theta / (2.0 * torch.where(small, 1.0, sin)))
    return factor[..., None] * vee


def geodesic_distance(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Angle in radians of ``r1ᵀ r2`` for rotations `(..., 3, 3)`; in ``[0, π]``."""
    trace = (r1 * r2).sum(dim=(-2, -1))
    # atan2 form is accurate near 0 and π, unlike arccos of the trace.
    cos = (trace - 1.0) / 2.0
    rel = r1.transpose(-1, -2) @ r2
    vee = torch.stack(
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]],
        dim=-1,
    )
    sin = torch.linalg.vector_norm(vee, dim=-1) / 2.0
    return torch.atan2(sin, cos)


def _rot_z(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack(
        [torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2
    )


def _rot_y(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack(
        [torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2
    )


def euler_relion_to_matrix(rot: torch.Tensor, tilt: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """RELION's ``A = Rz(−psi) · Ry(−tilt) · Rz(−rot)`` from angles in radians `(...)` → `(..., 3, 3)`.

    ``Aᵀ`` equals scipy's ``Rotation.from_euler('ZYZ', [rot, tilt, psi]).as_matrix()``.
    """
    return _rot_z(-psi) @ _rot_y(-tilt) @ _rot_z(-rot)


def matrix_to_euler_relion(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_relion_to_matrix`: (rot, tilt, psi) in radians, tilt in ``[0, π]``.

    With ``Aᵀ = Rz(rot) Ry(tilt) Rz(psi)``: ``A[2, 2] = cos tilt``, ``A[2, :2] ∝ (−cos rot, sin rot)``…
    derived from the product; the gimbal-lock case (tilt 0 or π) puts all in-plane rotation in psi.
    """
    m = r.transpose(-1, -2)  # Rz(rot) Ry(tilt) Rz(psi)
    cos_tilt = m[..., 2, 2].clamp(-1.0, 1.0)
    sin_tilt = torch.sqrt((m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2).clamp_min(0.0))
    tilt = torch.atan2(sin_tilt, cos_tilt)
    regular = sin_tilt > 1e-6
    rot = torch.where(regular, torch.atan2(m[..., 1, 2], m[..., 0, 2]), torch.zeros_like(tilt))
    psi_regular = torch.atan2(m[..., 2, 1], -m[..., 2, 0])
    # Gimbal lock: m = Rz(rot ± psi) up to a flip; put everything into psi with rot = 0.
    psi_lock = torch.where(
        cos_tilt > 0,
        torch.atan2(m[..., 1, 0], m[..., 0, 0]),
        torch.atan2(m[..., 1, 0], -m[..., 0, 0]),
    )
    psi = torch.where(regular, psi_regular, psi_lock)
    return rot, tilt, psi


def random_rotations(n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """``n`` rotations drawn uniformly (Haar measure) from SO(3) via random unit quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return r.to(dtype)
