import torch

from napari_semiamort.models.poses import PoseTable
from napari_semiamort.physics.so3 import geodesic_distance, random_rotations


def test_pose_table_steps_touch_only_the_rows_of_the_batch(generator):
    start = random_rotations(10, generator=generator)
    table = PoseTable(start.clone(), lr=0.05)
    idx = torch.tensor([2, 5])
    w, t = table.perturbation(idx)
    (table.poses(idx, w)[:, 0, 1]).sum().backward()
    table.step(idx, w, t)
    changed = (table.rotations - start).abs().flatten(1).amax(1) > 0
    assert changed.tolist() == [i in (2, 5) for i in range(10)]
    assert table.state_dict()["step"].tolist() == [1 if i in (2, 5) else 0 for i in range(10)]


def test_pose_table_descends_to_a_target_rotation(generator):
    target = random_rotations(8, generator=generator)
    start = torch.linalg.matrix_exp(torch.zeros(8, 3, 3)) @ target  # copy
    noise = random_rotations(8, generator=generator)
    # start 20–40° away: blend towards a random rotation through the exponential map
    from napari_semiamort.physics.so3 import exp_so3, log_so3

    start = exp_so3(0.5 * log_so3(noise)) @ target
    table = PoseTable(start, lr=0.02)
    idx = torch.arange(8)
    for _ in range(300):
        w, t = table.perturbation(idx)
        ((table.poses(idx, w) - target) ** 2).sum().backward()
        table.step(idx, w, t)
    assert float(geodesic_distance(table.rotations, target).max()) < 0.01
    assert torch.allclose(table.rotations.transpose(-1, -2) @ table.rotations, torch.eye(3).expand(8, 3, 3),
                          atol=1e-5)
