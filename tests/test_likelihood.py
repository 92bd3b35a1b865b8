import torch

from napari_semiamort.physics.likelihood import ShellNoiseModel, gaussian_nll, winner_takes_all


def test_gaussian_nll_is_half_the_whitened_mean_squared_error():
    pred = torch.tensor([[1.0, 2.0, 3.0]])
    obs = torch.tensor([[0.0, 2.0, 5.0]])
    inv_var = torch.tensor([1.0, 1.0, 0.25])
    assert torch.allclose(gaussian_nll(pred, obs, inv_var), torch.tensor([0.5 * (1 + 0 + 1) / 3]))


def test_winner_takes_all_picks_the_head_closest_to_the_image(generator):
    obs = torch.randn(5, 40, generator=generator)
    heads = torch.randn(5, 4, 40, generator=generator)
    truth_head = torch.tensor([2, 0, 3, 1, 2])
    heads[torch.arange(5), truth_head] = obs + 0.01 * torch.randn(5, 40, generator=generator)
    best, head = winner_takes_all(gaussian_nll(heads, obs[:, None], torch.ones(40)))
    assert torch.equal(head, truth_head)
    assert bool((best < 1e-3).all())


def test_winner_takes_all_sends_gradient_only_to_the_winner(generator):
    obs = torch.randn(3, 10, generator=generator)
    heads = torch.randn(3, 4, 10, generator=generator, requires_grad=True)
    best, head = winner_takes_all(gaussian_nll(heads, obs[:, None], torch.ones(10)))
    best.sum().backward()
    touched = heads.grad.abs().sum(-1) > 0
    assert torch.equal(touched, torch.nn.functional.one_hot(head, 4).bool())


def test_shell_noise_model_recovers_coloured_noise_variances(generator):
    shells = torch.arange(4).repeat_interleave(500)
    sigma = torch.tensor([4.0, 2.0, 1.0, 0.5])
    model = ShellNoiseModel(shells, 4)
    for _ in range(10):
        model.accumulate(torch.randn(20, 2000, generator=generator) * sigma[shells])
    model.update()
    assert torch.allclose(model.variance, sigma**2, rtol=0.03)
