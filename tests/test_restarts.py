"""The restart policy: the lowest loss goes on; once it agrees with another start (their poses equal up to one
rotation of the map and its hand) no more starts are added. Agreement between other starts does not outrank it."""

import pytest
import torch

from napari_semiamort.physics.so3 import exp_so3, random_rotations
from napari_semiamort.run import ReconstructionConfig
from napari_semiamort.run.restarts import AGREEMENT_DEG, RestartPolicy

MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0]))


def _found(truth: torch.Tensor, seed: int, jitter_deg: float) -> torch.Tensor:
    """The poses a start that found the structure gives: the truth in its own frame (a global rotation), each
    pose off by a random turn of about ``jitter_deg``."""
    gen = torch.Generator().manual_seed(seed)
    frame = random_rotations(1, gen)[0]
    turn = torch.randn(len(truth), 3, generator=gen) * torch.deg2rad(torch.tensor(jitter_deg / 3**0.5))
    return exp_so3(turn) @ truth @ frame


def _state(poses: torch.Tensor, tag: str) -> dict:
    return {"poses": poses, "tag": tag}


def _policy(**kw) -> RestartPolicy:
    cfg = ReconstructionConfig(restarts=2, max_restarts=5, restart_margin=0.04, **kw)
    return RestartPolicy(cfg, 600)


def test_the_lowest_loss_goes_on_and_its_agreement_with_another_start_ends_the_restarts():
    truth = random_rotations(600, torch.Generator().manual_seed(0))
    policy = _policy()
    policy.record(0.52, _state(random_rotations(600, torch.Generator().manual_seed(1)), "blob"))
    policy.record(0.50, _state(_found(truth, 2, 15.0), "a"))  # the lowest loss
    assert not policy.disagreement_resolved() and not policy.done  # none agree, no loss stands out: a third
    mirrored = MIRROR @ _found(truth, 3, 15.0) @ MIRROR  # the other hand: the same images
    policy.record(0.51, _state(mirrored, "b"))
    assert policy.disagreement[(1, 2)] < AGREEMENT_DEG < min(policy.disagreement[(0, 1)], policy.disagreement[(0, 2)])
    assert policy.disagreement_resolved() and policy.done  # the lowest loss is confirmed: no more starts
    assert policy.take_best()["tag"] == "a"
    summary = policy.summary(policy.chosen)
    assert summary["chosen_restart"] == 1 and summary["restart_agrees_with"] == [2]
    assert set(summary["restart_disagreement_deg"]) == {"1-2", "1-3", "2-3"}


def test_two_starts_agreeing_in_a_basin_of_higher_loss_neither_go_on_nor_end_the_restarts():
    """The tiny set's seeds 0 and 3: two starts fell into one wrong, pseudo-symmetric basin, agreed, and had
    higher losses than a start that agreed with none; keeping the pair ended 50-55° from the truth."""
    truth = random_rotations(600, torch.Generator().manual_seed(11))
    policy = _policy()
    policy.record(0.50, _state(_found(truth, 12, 15.0), "lowest"))
    basin = random_rotations(600, torch.Generator().manual_seed(13))  # the same wrong poses, found twice
    policy.record(0.51, _state(_found(basin, 14, 15.0), "c"))
    policy.record(0.515, _state(_found(basin, 15, 15.0), "d"))
    assert policy.disagreement[(1, 2)] < AGREEMENT_DEG  # the pair agrees ...
    assert not policy.disagreement_resolved() and not policy.done  # ... but does not confirm the lowest loss
    assert policy.take_best()["tag"] == "lowest"
    assert policy.summary(policy.chosen)["restart_agrees_with"] == []


def test_without_agreement_the_lowest_loss_goes_on_and_starts_are_added_while_none_stands_out():
    gen = torch.Generator().manual_seed(4)
    policy = _policy()
    for loss in (0.60, 0.59, 0.595, 0.58, 0.585):
        policy.record(loss, _state(random_rotations(600, gen), str(loss)))
    assert policy.done and len(policy.losses) == 5  # up to max_restarts
    assert policy.take_best()["tag"] == "0.58"
    stands_out = _policy()
    stands_out.record(0.60, _state(random_rotations(600, gen), "x"))
    stands_out.record(0.40, _state(random_rotations(600, gen), "y"))
    assert stands_out.done and stands_out.take_best()["tag"] == "y"


@pytest.mark.parametrize("jitter, agree", [(10.0, True), (60.0, False)])
def test_the_agreement_threshold_separates_near_poses_from_far_ones(jitter, agree):
    truth = random_rotations(600, torch.Generator().manual_seed(5))
    policy = _policy()
    policy.record(0.5, _state(_found(truth, 6, jitter), "a"))
    policy.record(0.5, _state(_found(truth, 7, jitter), "b"))
    assert policy.disagreement_resolved() == agree


def test_starts_whose_poses_collapsed_onto_one_view_do_not_count_as_agreeing():
    """Two starts that gave every image nearly one pose differ little once aligned, but no less with the poses
    shuffled among the images: no agreement (the tiny data set after one epoch did this)."""
    gen = torch.Generator().manual_seed(8)
    one = random_rotations(1, gen)
    policy = _policy()
    for seed in (9, 10):
        turn = torch.randn(600, 3, generator=torch.Generator().manual_seed(seed)) * 0.1
        policy.record(0.5, _state(exp_so3(turn) @ one, str(seed)))
    assert policy.disagreement[(0, 1)] < AGREEMENT_DEG  # close once aligned ...
    assert not policy.disagreement_resolved()  # ... but as close shuffled


def test_the_log_says_which_restart_goes_on_and_why():
    from napari_semiamort.cli.reconstruct import restart_choice

    agreed = {"chosen_restart": 1, "restart_gap": 0.02, "restart_agrees_with": [0, 2],
              "restart_disagreement_deg": {"1-2": 21.0, "1-3": 80.0, "2-3": 19.4}}
    assert restart_choice(agreed, 3) == ("kept restart 2 of 3 (lowest loss; its poses agree with restart 1, 3's within "
                                         "19° median)")
    alone = {"chosen_restart": 0, "restart_gap": 0.031, "restart_agrees_with": []}
    assert restart_choice(alone, 6) == "kept restart 1 of 6 (lowest loss, 3.1 % below the others' median; no " \
                                       "other restart agrees with it)"
