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
    """Axis-angle vectors `(..., 3)` of rotations `(..., 3, 3)`, angle in [0, π] (inverse of :func:`exp_so3`).

    Through the unit quaternion (Shepperd's method: of the four ways to compute it, the one with the
    largest pivot), which stays accurate near π, where ``(R − Rᵀ) / (2 sin θ)`` loses the axis.
    """
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    pivots = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    s = 2.0 * torch.sqrt(pivots.clamp_min(1e-300 if r.dtype == torch.float64 else 1e-30))  # 4·|q_i|
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    a01, a02, a12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    s0, s1, s2, s3 = s.unbind(-1)
    candidates = torch.stack(
        [
            torch.stack([s0 / 4, d21 / s0, d02 / s0, d10 / s0], -1),
            torch.stack([d21 / s1, s1 / 4, a01 / s1, a02 / s1], -1),
            torch.stack([d02 / s2, a01 / s2, s2 / 4, a12 / s2], -1),
            torch.stack([d10 / s3, a02 / s3, a12 / s3, s3 / 4], -1),
        ],
        -2,
    )  # (..., pivot, (w, x, y, z))
    pick = pivots.argmax(-1)[..., None, None].expand(*pivots.shape[:-1], 1, 4)
    q = candidates.gather(-2, pick)[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)  # w ≥ 0: angle in [0, π]
    sin_half = q[..., 1:].norm(dim=-1)
    angle = 2.0 * torch.atan2(sin_half, q[..., 0])
    tiny = sin_half < 1e-12
    scale = torch.where(tiny, torch.full_like(angle, 2.0), angle / torch.where(tiny, 1.0, sin_half))
    return q[..., 1:] * scale[..., None]


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
