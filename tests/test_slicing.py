import numpy as np
import torch
from scipy.ndimage import map_coordinates

from napari_semiamort.models.volume import HartleyVolume
from napari_semiamort.physics.fourier import frequency_grid_2d, hartley_centered, ihartley_centered
from napari_semiamort.physics.slicing import slice_volume
from napari_semiamort.physics.so3 import exp_so3, random_rotations
from napari_semiamort.sim.project import PaddedProjector


def real_space_projection(volume: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Independent oracle: img(x, y) = Σ_z V(Rᵀ (x, y, z)) by cubic interpolation in real space."""
    size = volume.shape[0]
    c = size // 2
    k = np.arange(size) - c
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    cam = np.stack([x, y, z], -1).astype(np.float64)
    src = cam @ r  # row-vector form of Rᵀ · (x, y, z)
    coords = np.stack([src[..., 2] + c, src[..., 1] + c, src[..., 0] + c]).reshape(3, -1)
    return map_coordinates(volume.astype(np.float64), coords, order=3).reshape(volume.shape).sum(0)


def test_central_slices_equal_the_transform_of_real_space_projections(igg_map, generator):
    size = igg_map.shape[0]
    h = hartley_centered(igg_map, 3)
    freqs = frequency_grid_2d(size).reshape(-1, 2) * size
    rots = random_rotations(4, generator=generator)
    slices = slice_volume(h, freqs, rots).reshape(4, size, size)
    for i in range(4):
        ours = ihartley_centered(slices[i], 2).numpy()
        ref = real_space_projection(igg_map.numpy(), rots[i].double().numpy())
        assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] >= 0.99


def test_padded_projector_matches_real_space_projection_closely(igg_map, generator):
    rots = random_rotations(3, generator=generator)
    imgs = PaddedProjector(igg_map).project(rots)
    for i in range(3):
        ref = real_space_projection(igg_map.numpy(), rots[i].double().numpy())
        assert np.corrcoef(imgs[i].numpy().ravel(), ref.ravel())[0, 1] >= 0.998


def test_identity_slice_is_exactly_the_sum_along_z(igg_map):
    size = igg_map.shape[0]
    h = hartley_centered(igg_map.double(), 3)
    freqs = frequency_grid_2d(size, dtype=torch.float64).reshape(-1, 2) * size
    s = slice_volume(h, freqs, torch.eye(3, dtype=torch.float64)[None])[0].reshape(size, size)
    assert torch.allclose(ihartley_centered(s, 2), igg_map.double().sum(0), atol=1e-6)


def test_slicer_passes_float64_gradcheck_with_respect_to_rotation(generator):
    size = 8
    vol = torch.randn(size, size, size, generator=generator, dtype=torch.float64)
    freqs = frequency_grid_2d(size, dtype=torch.float64).reshape(-1, 2)[::3] * size * 0.7
    r0 = random_rotations(2, generator=generator, dtype=torch.float64)
    w = (0.01 * torch.randn(2, 3, generator=generator, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: slice_volume(vol, freqs, exp_so3(w) @ r0), (w,), atol=1e-6)


def test_slicer_passes_float64_gradcheck_with_respect_to_the_volume(generator):
    size = 6
    vol = torch.randn(size, size, size, generator=generator, dtype=torch.float64, requires_grad=True)
    freqs = frequency_grid_2d(size, dtype=torch.float64).reshape(-1, 2) * size * 0.9
    rots = random_rotations(2, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: slice_volume(v, freqs, rots), (vol,))


def test_hartley_volume_set_from_map_gives_back_the_map(igg_map):
    vol = HartleyVolume(igg_map.shape[0])
    vol.set_from_map(igg_map)
    assert torch.allclose(vol.real_space(), igg_map, atol=1e-3 * float(igg_map.abs().max()))
