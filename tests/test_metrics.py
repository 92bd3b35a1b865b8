import numpy as np
import pytest
import torch

from napari_semiamort.metrics.alignment import align_poses, align_translation, rotate_map
from napari_semiamort.metrics.fsc import fsc, masked_fsc, resolution_at, soft_sphere_mask
from napari_semiamort.physics.so3 import exp_so3, random_rotations

MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def test_fsc_of_a_map_with_itself_is_one(igg_map):
    assert np.allclose(fsc(igg_map, igg_map), 1.0)


def test_fsc_of_independent_noise_is_near_zero(generator):
    a = torch.randn(32, 32, 32, generator=generator)
    b = torch.randn(32, 32, 32, generator=generator)
    curve = fsc(a, b)
    assert np.abs(curve[3:]).max() < 0.15  # shells of ≥ 100 voxels: noise ~ 1/√n


def test_resolution_interpolates_the_threshold_crossing():
    curve = np.array([1.0, 0.9, 0.7, 0.3, 0.1])
    # crosses 0.5 halfway between shells 2 and 3: shell 2.5 → 64 · 2 Å / 2.5
    assert np.isclose(resolution_at(curve, 64, 2.0, 0.5), 64 * 2.0 / 2.5)
    assert resolution_at(np.ones(5), 64, 2.0, 0.5) == 4.0  # never crosses: Nyquist


def test_pose_alignment_recovers_a_global_rotation_and_reports_small_errors(generator):
    truth = random_rotations(300, generator=generator, dtype=torch.float64)
    g = exp_so3(torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64))
    noise = exp_so3(0.02 * torch.randn(300, 3, generator=generator, dtype=torch.float64))
    est = noise @ truth @ g.T  # est_i G = truth_i (up to noise)
    al = align_poses(est, truth)
    assert not al.mirrored
    assert torch.allclose(al.transform, g, atol=0.01)
    assert al.median_error < 2.0


def test_pose_alignment_detects_the_mirror_hand(generator):
    truth = random_rotations(300, generator=generator, dtype=torch.float64)
    g = exp_so3(torch.tensor([1.0, 0.2, -0.5], dtype=torch.float64))
    est = MIRROR @ truth @ g.T @ MIRROR
    al = align_poses(est, truth)
    assert al.mirrored
    assert al.mean_error < 1e-3


def test_rotate_map_undoes_a_known_rotation(igg_map):
    t = exp_so3(torch.tensor([0.3, 0.5, -0.2], dtype=torch.float64)).float()
    turned = rotate_map(igg_map, t)
    back = rotate_map(turned, t.T)
    corr = np.corrcoef(back.numpy().ravel(), igg_map.numpy().ravel())[0, 1]
    assert corr > 0.99
    assert np.corrcoef(turned.numpy().ravel(), igg_map.numpy().ravel())[0, 1] < 0.9


def test_rotate_map_is_exact_for_turns_that_keep_the_grid(igg_map):
    """The identity and turns by 90° or 180° about the axes sample the padded transform on its grid points: the
    map comes back as it is (turned voxel for voxel), not with its edges amplified by the compensation for an
    interpolation that does not happen (before: worst voxel off by 7.6 % of the peak for the identity, 8.5 % for
    the quarter turn; now 0 and 3.1 %, the Nyquist plane's share)."""
    v = igg_map.float()
    peak = float(v.abs().max())
    assert float((rotate_map(v, torch.eye(3)) - v).abs().max()) < 1e-4 * peak
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # T (x, y, z) = (−y, x, z)
    c = 16
    k = torch.arange(32) - c
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    inside = -y < c  # V(u) = V_in(T u): the voxel (x, y, z) holds V_in's (−y, x, z), where that is in the box
    expect = torch.zeros_like(v)
    expect[inside] = v[(z + c)[inside], (x + c)[inside], (-y + c)[inside]]
    assert float((rotate_map(v, quarter) - expect).abs().max()) < 0.05 * peak


def test_resolution_of_a_curve_that_starts_below_the_threshold_is_the_lowest_shell():
    curve = np.array([-1.0, -0.99, -0.9, 0.2, 0.1])
    assert resolution_at(curve, 8, 2.0, 0.5) == 16.0  # the box length: no resolution at all


def test_soft_sphere_mask_is_one_inside_zero_outside_and_smooth_between():
    m = soft_sphere_mask(32, radius=8.0, edge=5.0)
    c = 16
    assert m[c, c, c] == 1 and m[c, c + 8, c] == 1  # on the radius: still inside
    assert m[c, c, c + 14] == 0 and m[0, 0, 0] == 0  # beyond radius + edge
    assert 0 < m[c, c + 10, c] < 1  # within the edge
    assert torch.allclose(m, m.flip(0).roll(1, 0))  # symmetric about the centre voxel L // 2


def test_masked_fsc_ignores_noise_outside_the_mask(igg_map, generator):
    """A map that is right inside the particle but noisy in the solvent: the masked FSC sees the particle."""
    size = igg_map.shape[-1]
    solvent = 1 - soft_sphere_mask(size, radius=size * 0.4, edge=2.0).float()
    noisy = igg_map + 3 * igg_map.std() * torch.randn(igg_map.shape, generator=generator) * solvent
    unmasked = fsc(noisy, igg_map)
    masked = masked_fsc(noisy, igg_map, radius=size * 0.4 - 3, edge=3.0)
    assert masked[1:].min() > 0.99
    assert unmasked[size // 4 :].mean() < 0.9


def test_density_centre_finds_a_blob_in_noise_and_ignores_the_solvent():
    from napari_semiamort.metrics.density import density_centre

    g = torch.arange(32, dtype=torch.float64) - 16
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    blob = torch.exp(-((x - 3) ** 2 + (y + 2) ** 2 + (z - 1.5) ** 2) / (2 * 3.0**2))
    noise = 0.05 * torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c = density_centre(blob + noise)
    assert torch.allclose(c, torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64), atol=0.1)
    # a plain centre of mass of the positive density is pulled towards the middle by the noise
    w = (blob + noise).clamp_min(0)
    plain = torch.stack([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / w.sum()
    assert (plain - torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)).norm() > 0.3


def test_volume_translation_by_whole_voxels_is_a_circular_shift():
    from napari_semiamort.models.volume import HartleyVolume

    m = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(5))
    v = HartleyVolume(16)
    v.set_from_map(m)
    v.translate(torch.tensor([2.0, -1.0, 3.0]))  # (x, y, z)
    torch.testing.assert_close(v.real_space(), torch.roll(m, shifts=(3, -1, 2), dims=(0, 1, 2)), atol=1e-4, rtol=0)


def test_volume_translation_by_a_fraction_of_a_voxel_is_the_real_part_of_the_fourier_shift():
    from napari_semiamort.models.volume import HartleyVolume

    m = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = np.array([0.3, -1.7, 0.45])  # (x, y, z)
    k = np.fft.fftfreq(16)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    f = np.fft.fftn(np.fft.ifftshift(m.numpy())) * np.exp(-2j * np.pi * (kx * t[0] + ky * t[1] + kz * t[2]))
    expected = np.fft.fftshift(np.fft.ifftn(f).real)
    v = HartleyVolume(16)
    v.set_from_map(m.float())
    v.translate(torch.from_numpy(t))
    np.testing.assert_allclose(v.real_space().double().numpy(), expected, atol=1e-4 * np.abs(expected).max())
    # and back: the map returns, except on the −L/2 planes, which lose a factor cos²(π t) per axis
    v.translate(-torch.from_numpy(t))
    back = np.fft.fftn(np.fft.ifftshift(v.real_space().double().numpy()))
    ref = np.fft.fftn(np.fft.ifftshift(m.numpy()))
    inner = np.ones((16, 16, 16), bool)
    inner[8, :, :] = inner[:, 8, :] = inner[:, :, 8] = False
    np.testing.assert_allclose(back[inner], ref[inner], atol=1e-4 * np.abs(ref).max())


def test_align_translation_finds_a_fractional_offset_and_moves_the_map_back(igg_map, generator):
    """A map off by a fraction of a voxel (the gauge freedom of estimated shifts) is found and moved back,
    noise or not; without the move its FSC against the truth would collapse."""
    n = igg_map.shape[0]
    k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    t = (1.3, -0.7, 2.25)  # x, y, z voxels
    ramp = torch.exp(-2j * torch.pi * (kx * t[0] + ky * t[1] + kz * t[2]) / n)
    moved = torch.fft.ifftn(torch.fft.fftn(igg_map.to(torch.float64)) * ramp).real.to(torch.float32)
    assert fsc(moved, igg_map)[n // 4] < 0.5
    back, offset = align_translation(moved, igg_map)
    assert np.allclose(offset, [-1.3, 0.7, -2.25], atol=0.02)  # the Nyquist plane loses its imaginary part
    assert back.dtype == igg_map.dtype and back.shape == igg_map.shape
    assert fsc(back, igg_map)[1 : n // 2].min() > 0.999
    noisy = moved + 0.5 * igg_map.std() * torch.randn(moved.shape, generator=generator)
    _, offset = align_translation(noisy, igg_map)
    assert np.allclose(offset, [-1.3, 0.7, -2.25], atol=0.05)
    _, none = align_translation(igg_map, igg_map)
    assert np.abs(none).max() < 1e-9


def test_pose_errors_are_taken_modulo_the_truths_point_group(generator):
    """A C3 truth: each image's estimated pose may be any of its three equivalent poses ``R s``. Without the
    group, two thirds of the images are ~120° "wrong"; with it, only the noise is left, the hand too."""
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis = axis / axis.norm()
    ops = torch.stack([exp_so3(k * 2 * np.pi / 3 * axis) for k in range(3)])
    truth = random_rotations(300, generator=generator, dtype=torch.float64)
    g = exp_so3(torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64))
    which = torch.randint(3, (300,), generator=generator)
    noise = exp_so3(0.02 * torch.randn(300, 3, generator=generator, dtype=torch.float64))
    est = noise @ truth @ ops[which] @ g.T  # est_i G = truth_i s_i
    plain = align_poses(est, truth)
    assert plain.median_error > 60
    al = align_poses(est, truth, ops)
    assert not al.mirrored and al.median_error < 2.0 and al.errors_deg.max() < 5.0
    mirrored = align_poses(MIRROR @ est @ MIRROR, truth, ops)
    assert mirrored.mirrored and mirrored.median_error < 2.0
    # the identity alone is the plain alignment
    np.testing.assert_allclose(align_poses(est, truth, torch.eye(3)[None]).errors_deg, plain.errors_deg, atol=1e-6)


def _write_trimer(path, axis, angle_deg=120.0, same_sequence=True):
    """A PDB file of three copies of one random 40-residue Cα chain, related by turns of ``angle_deg`` about
    ``axis`` through (5, −3, 8) Å; with ``same_sequence=False`` the third copy's residues are renamed."""
    gen = np.random.default_rng(4)
    steps = gen.normal(size=(40, 3))
    chain = 30.0 * np.array([1.0, 0.2, 0.1]) + np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1)[:, None], 0)
    centre = np.array([5.0, -3.0, 8.0])
    lines = []
    for c, name in enumerate("ABC"):
        r = exp_so3(torch.as_tensor(np.radians(angle_deg) * c * axis)).numpy()
        res = "ALA" if same_sequence or c < 2 else "GLY"
        for i, x in enumerate((chain - centre) @ r.T + centre):
            lines.append(f"ATOM  {len(lines) + 1:5d}  CA  {res} {name}{i + 1:4d}    "
                         f"{x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}  1.00 20.00           C")
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def test_the_point_group_of_a_model_is_found_from_its_chains_in_the_frame_of_its_maps_and_poses(tmp_path):
    """chain_symmetry finds a C3 trimer's turns (about its centre, in the maps' frame: the map is invariant
    under each) and nothing in a trimer whose third copy differs in sequence. Under each turn ``s`` the pose
    ``R s`` gives the image of ``R`` (the side :func:`align_poses` takes), ``s R`` does not."""
    from napari_semiamort.models.volume import HartleyVolume
    from napari_semiamort.run.frequencies import Frequencies
    from napari_semiamort.sim.atoms import chain_symmetry, density_from_atoms, read_atoms

    axis = np.array([0.2, 0.9, -0.4]) / np.linalg.norm([0.2, 0.9, -0.4])
    ops = chain_symmetry(_write_trimer(tmp_path / "c3.pdb", axis))
    assert ops.shape == (3, 3, 3)
    angles = sorted(np.degrees(np.arccos(np.clip((np.trace(o) - 1) / 2, -1, 1))) for o in ops)
    np.testing.assert_allclose(angles, [0.0, 120.0, 120.0], atol=1e-3)
    assert chain_symmetry(_write_trimer(tmp_path / "c3x.pdb", axis, same_sequence=False)).shape == (1, 3, 3)
    # copies 100° apart: each turn carries one chain onto another, but never the whole onto itself
    assert chain_symmetry(_write_trimer(tmp_path / "c3y.pdb", axis, angle_deg=100.0)).shape == (1, 3, 3)
    xyz, z = read_atoms(tmp_path / "c3.pdb")
    density = density_from_atoms(xyz, z, 32, 4.0)
    s = torch.as_tensor(ops[1], dtype=torch.float32)
    turned = rotate_map(density, s)
    assert np.corrcoef(turned.numpy().ravel(), density.numpy().ravel())[0, 1] > 0.95  # measured 0.969
    other = rotate_map(density, exp_so3(torch.tensor([0.0, 0.0, 1.0])))
    assert np.corrcoef(other.numpy().ravel(), density.numpy().ravel())[0, 1] < 0.8
    vol = HartleyVolume(32)
    vol.set_from_map(density)
    fr = Frequencies(32, 0.5, "cpu")
    r = random_rotations(8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, right, left = vol.slice(fr.grid, r), vol.slice(fr.grid, r @ s), vol.slice(fr.grid, s @ r)
    same = float((right - a).norm() / a.norm())
    assert same < 0.15 and float((left - a).norm() / a.norm()) > 5 * same  # measured 0.088 and 1.3 (interpolation)


def test_particle_sphere_holds_a_ball_in_noise_and_the_solvent_mask_spares_it():
    from napari_semiamort.metrics.density import particle_sphere, solvent_mask

    g = torch.arange(48, dtype=torch.float64) - 24
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    r = ((x - 3) ** 2 + (y + 2) ** 2 + (z - 1) ** 2).sqrt()
    ball = (1 + torch.cos(torch.pi * ((r - 8) / 2).clamp(0, 1))) / 2  # radius 8–10 voxels, soft edge
    noisy = ball + 0.3 * torch.randn(48, 48, 48, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    centre, radius = particle_sphere(noisy)
    assert torch.allclose(centre, torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64), atol=0.3)
    assert 8 <= radius <= 11.5  # 10.5–10.7 over noise seeds 0–3 (the low-pass widens the edge)
    mask, inner = solvent_mask(noisy.float())  # margin and edge 4 voxels
    assert mask.dtype == torch.float32 and inner == pytest.approx(radius + 4)
    assert float(mask[r <= 10].min()) == 1.0 and float(mask[r >= inner + 4 + 1].max()) < 1e-6
    assert 0 < float(mask[(r > inner) & (r < inner + 4)].mean()) < 1
    # the user's radius instead of the fitted one; inverted contrast the same; a particle filling the box: none
    assert solvent_mask(noisy, radius=12.0)[1] == 16.0
    assert torch.allclose(particle_sphere(-noisy)[0], centre)
    assert solvent_mask(noisy, radius=20.0) is None


def test_the_final_maps_mask_keeps_the_particle_and_removes_the_solvents_noise():
    """``run.maps.masked``, what ``map_masked.mrc`` and ``mask.mrc`` hold: the soft sphere the polish masks its
    maps with, about the particle the map shows; the masked map is nearer the truth than the map (the solvent's
    noise gone) and equal to it on the particle; the user's diameter sets the radius; none where no sphere fits."""
    from napari_semiamort.run.maps import masked

    g = torch.arange(48, dtype=torch.float64) - 24
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    r = ((x + 2) ** 2 + (y - 1) ** 2 + z**2).sqrt()
    truth = ((1 + torch.cos(torch.pi * ((r - 7) / 2).clamp(0, 1))) / 2).numpy()
    noisy = truth + 0.3 * torch.randn(48, 48, 48, generator=torch.Generator().manual_seed(5),
                                      dtype=torch.float64).numpy()
    mask, inner = masked(noisy.astype(np.float32), 2.5)
    assert mask.shape == (48, 48, 48) and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() == 1
    assert 9 * 2.5 <= inner <= 16 * 2.5  # Å: the particle's ~9 voxels + the 4-voxel margin
    on = r.numpy() <= 9
    assert (mask[on] == 1).all() and mask[r.numpy() > inner / 2.5 + 5].max() < 1e-6

    def error(m):
        return float(np.linalg.norm(m - truth))

    assert error(noisy * mask) < 0.5 * error(noisy)  # 0.36–0.37 over noise seeds 0–3 (the mask: 21 % of the box)
    assert masked(noisy.astype(np.float32), 2.5, diameter=40.0)[1] == pytest.approx(20.0 + 4 * 2.5)
    assert masked(noisy.astype(np.float32), 2.5, diameter=100.0) is None  # 20 + 4 + 4 voxels: past the edge
    # a map over MASK_BOX (128): fitted on the map Fourier-cropped to 128, interpolated back; the same sphere
    g = torch.arange(160, dtype=torch.float64) - 80
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    r = ((x - 10) ** 2 + y**2 + (z + 5) ** 2).sqrt()
    big = ((1 + torch.cos(torch.pi * ((r - 25) / 5).clamp(0, 1))) / 2).to(torch.float32).numpy()
    mask, inner = masked(big, 1.0)
    assert mask.shape == (160, 160, 160) and 0 <= mask.min() and mask.max() <= 1
    assert 30 + 5 <= inner <= 34 + 5  # Å: the 99 % radius of a ball of 25–30 voxels + 4 voxels at 1.25 Å
    assert (mask[r.numpy() <= 30] > 0.999).all() and mask[r.numpy() > inner + 5 + 2].max() < 1e-3
