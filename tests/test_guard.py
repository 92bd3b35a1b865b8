"""The divergence guard: a step that would put a NaN or an Inf into the model is never kept (issue 20)."""

import logging

import numpy as np
import pytest
import torch

from napari_semiamort.models.poses import PoseTable
from napari_semiamort.physics.so3 import random_rotations
from napari_semiamort.run.guard import DivergenceGuard, TrainingDiverged


def _model(generator):
    p = torch.nn.Parameter(torch.randn(8, generator=generator))
    return p, torch.optim.Adam([p], lr=0.1)


def test_a_nan_loss_is_skipped_the_rate_halved_and_the_user_told(generator, caplog):
    p, opt = _model(generator)
    guard = DivergenceGuard()
    before = p.detach().clone()
    loss = (p * float("nan")).sum()
    loss.backward()
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        assert guard.step(loss, (opt,)) is False
    assert torch.equal(p.detach(), before) and p.grad is None
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert "learning rates halved to 0.05" in caplog.text
    good = (p**2).sum()  # a finite step afterwards is applied, and the count of failures in a row starts again
    good.backward()
    assert guard.step(good, (opt,)) is True and not torch.equal(p.detach(), before) and guard.in_a_row == 0


def test_a_step_that_would_blow_the_parameters_up_is_rolled_back(generator):
    p, opt = _model(generator)
    opt = torch.optim.SGD([p], lr=1e38)  # a finite gradient times this rate overflows float32
    guard = DivergenceGuard()
    before = p.detach().clone()
    loss = (p * 1e3).sum()
    loss.backward()
    assert guard.step(loss, (opt,)) is False
    assert torch.equal(p.detach(), before) and opt.param_groups[0]["lr"] == pytest.approx(5e37)


def test_steps_that_stay_nan_end_the_run_with_a_message_naming_what_to_check(generator):
    p, opt = _model(generator)
    guard = DivergenceGuard(max_failures=3)
    with pytest.raises(TrainingDiverged, match="Check the inputs: CTF parameters"):
        for _ in range(3):
            loss = (p * float("inf")).sum() - (p * float("inf")).sum()
            loss.backward()
            guard.step(loss, (opt,))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 8)


def test_a_pose_whose_image_gave_a_nan_keeps_its_pose_the_others_move(generator):
    rotations = random_rotations(4, generator)
    table = PoseTable(rotations, shifts=torch.zeros(4, 2))
    idx = torch.arange(4)
    w, t = table.perturbation(idx)
    weights = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    ((table.poses(idx, w) * torch.linspace(0.1, 0.9, 9).reshape(3, 3)).sum((1, 2)) * weights).sum().add(
        (t * weights[:, None]).sum()).backward()
    table.step(idx, w, t)
    moved = [not torch.allclose(table.rotations[i], rotations[i]) for i in range(4)]
    assert moved == [True, False, True, True]
    assert bool(torch.isfinite(table.rotations).all()) and bool(torch.isfinite(table.shifts).all())
    assert np.allclose(table.shifts[1].numpy(), 0.0)


def test_a_run_with_an_absurd_volume_rate_ends_with_a_finite_map_and_says_why(ribosome_images, tmp_path, caplog):
    import mrcfile

    from napari_semiamort.cli.main import main

    sim = ribosome_images(tmp_path / "sim", n_particles=160, box=24, snr=1.0, seed=3)
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        code = main(["reconstruct", str(sim / "particles.star"), "-o", str(tmp_path / "run"), "--epochs", "3",
                     "--switch", "fixed", "--switch-epoch", "2", "--restarts", "1", "--threads", "1",
                     "--volume-lr", "1e30"])
    assert code == 0 and "training step skipped" in caplog.text and "learning rates halved" in caplog.text
    with mrcfile.open(tmp_path / "run" / "map.mrc") as m:
        assert np.isfinite(m.data).all() and np.abs(m.data).max() > 0
