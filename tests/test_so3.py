import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_semiamort.physics.so3 import (
    euler_relion_to_matrix,
    exp_so3,
    geodesic_distance,
    log_so3,
    matrix_to_euler_relion,
    random_rotations,
    s2s2_to_matrix,
)


def test_s2s2_gives_proper_rotations_with_first_column_along_the_first_vector(generator):
    x = torch.randn(100, 6, generator=generator, dtype=torch.float64)
    r = s2s2_to_matrix(x)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=torch.float64))
    assert torch.allclose(r[..., 0], x[:, :3] / x[:, :3].norm(dim=-1, keepdim=True))


def test_exponential_map_matches_scipy_rotvec(generator):
    w = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    ours = exp_so3(w).numpy()
    ref = Rotation.from_rotvec(w.numpy()).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_exponential_map_gradient_is_exact_at_zero():
    # d/dω (exp([ω]×) v) at 0 is −[v]×: the generators of so(3).
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda w: exp_so3(w) @ v, w)
    vx = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=torch.float64)
    assert torch.allclose(jac, -vx, atol=1e-12)


@pytest.mark.parametrize("scale", [0.0, 1e-5, 1e-3, 1.0])
def test_exponential_map_passes_float64_gradcheck_at_and_near_zero(scale, generator):
    w = (scale * torch.randn(4, 3, generator=generator, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(exp_so3, (w,))
    assert torch.autograd.gradgradcheck(exp_so3, (w,))


def test_log_inverts_exp_below_pi(generator):
    w = torch.randn(100, 3, generator=generator, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(100, 1, generator=generator, dtype=torch.float64) * 3.0
    assert torch.allclose(log_so3(exp_so3(w)), w, atol=1e-9)


def test_geodesic_distance_is_the_rotation_angle_including_near_zero_and_pi(generator):
    r = random_rotations(20, generator=generator, dtype=torch.float64)
    for angle in (1e-7, 0.3, np.pi - 1e-6):
        axis = torch.nn.functional.normalize(torch.randn(20, 3, generator=generator, dtype=torch.float64), dim=-1)
        d = geodesic_distance(r, exp_so3(angle * axis) @ r)
        assert torch.allclose(d, torch.full((20,), angle, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_relion_euler_matrix_is_the_transpose_of_scipy_intrinsic_zyz(generator):
    ang = torch.rand(50, 3, generator=generator, dtype=torch.float64) * torch.tensor([2 * np.pi, np.pi, 2 * np.pi])
    a = euler_relion_to_matrix(*ang.unbind(-1)).numpy()
    ref = Rotation.from_euler("ZYZ", ang.numpy()).as_matrix()
    np.testing.assert_allclose(a, ref.transpose(0, 2, 1), atol=1e-12)


def test_euler_round_trip_keeps_rotations_including_gimbal_lock(generator):
    r = random_rotations(200, generator=generator, dtype=torch.float64)
    lock = euler_relion_to_matrix(
        torch.tensor([0.4, 1.0, 2.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, np.pi, 0.0, np.pi], dtype=torch.float64),
        torch.tensor([1.1, -0.3, 0.0, 2.5], dtype=torch.float64),
    )
    r = torch.cat([r, lock])
    back = euler_relion_to_matrix(*matrix_to_euler_relion(r))
    assert torch.allclose(back, r, atol=1e-9)
    _, tilt, _ = matrix_to_euler_relion(r)
    assert bool(((tilt >= 0) & (tilt <= np.pi)).all())


def test_random_rotations_are_uniform_in_the_mean_angle(generator):
    r = random_rotations(20000, generator=generator, dtype=torch.float64)
    angle = geodesic_distance(torch.eye(3, dtype=torch.float64).expand_as(r), r)
    # Haar measure: E[θ] = π/2 + 2/π ≈ 2.2074
    assert abs(float(angle.mean()) - (np.pi / 2 + 2 / np.pi)) < 0.01


def test_log_so3_inverts_exp_so3_up_to_and_at_a_half_turn(generator):
    axis = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(500, generator=generator, dtype=torch.float64) * torch.pi
    angle[:3] = torch.tensor([torch.pi, torch.pi - 1e-7, 1e-9], dtype=torch.float64)
    w = axis * angle[:, None]
    back = log_so3(exp_so3(w))
    # at exactly π the axis sign is a free choice: compare the rotations there
    torch.testing.assert_close(exp_so3(back), exp_so3(w), atol=1e-9, rtol=0)
    torch.testing.assert_close(back[1:], w[1:], atol=1e-6, rtol=0)
    diag = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(log_so3(diag).abs(), torch.tensor([torch.pi, 0, 0], dtype=torch.float64))
