"""The five RLW distributions of RW Sec. 5.4: simplex, mean 1/T (Appendix B), shape of each."""

import pytest
import torch

from mtlrepro.weighting._random_weights import DISTRIBUTIONS, sample_weights

DRAWS = 20_000


def draws(distribution: str, n_tasks: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([sample_weights(distribution, n_tasks, generator) for _ in range(DRAWS)])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_weights_lie_on_the_simplex_with_mean_one_over_t(distribution: str, n_tasks: int) -> None:
    w = draws(distribution, n_tasks)
    assert w.shape == (DRAWS, n_tasks)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(DRAWS), atol=1e-6, rtol=0)
    # E[lambda] = 1/T for all five distributions (RW paper, Appendix B); 5 standard errors of slack.
    stderr = w.std(dim=0).max().item() / DRAWS**0.5
    assert torch.allclose(w.mean(dim=0), torch.full((n_tasks,), 1.0 / n_tasks), atol=5 * stderr + 1e-4)


def test_normal_is_softmax_of_a_standard_normal_draw() -> None:
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = torch.softmax(torch.randn(4, generator=g2), dim=-1)
    torch.testing.assert_close(sample_weights("normal", 4, g1), expected)


def test_uniform_is_softmax_of_uniform_draws_so_weights_stay_close() -> None:
    w = draws("uniform", 3)
    # softmax of values in [0, 1): max/min ratio below e
    assert (w.max(dim=1).values / w.min(dim=1).values < torch.e).all()


def test_dirichlet_one_is_uniform_on_the_simplex() -> None:
    # For Dirichlet(1, 1) the first weight is U(0, 1): check its quartiles.
    first = draws("dirichlet", 2)[:, 0]
    quartiles = torch.quantile(first, torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(quartiles, torch.tensor([0.25, 0.5, 0.75]), atol=0.02, rtol=0)


def test_bernoulli_picks_a_uniform_nonempty_subset() -> None:
    n_tasks = 3
    w = draws("bernoulli", n_tasks)
    support = (w > 0).sum(dim=1)
    assert support.min() >= 1
    # each non-empty subset of 3 tasks has probability 1/7
    codes = ((w > 0).long() * torch.tensor([1, 2, 4])).sum(dim=1)
    freq = torch.bincount(codes, minlength=8)[1:].float() / DRAWS
    torch.testing.assert_close(freq, torch.full((7,), 1 / 7), atol=0.015, rtol=0)
    # non-zero weights are equal: 1 / (number of chosen tasks)
    nonzero = w[w > 0]
    assert torch.allclose(nonzero, (1.0 / support.repeat_interleave(support)).float())


def test_bernoulli_with_many_tasks_uses_rejection_and_stays_valid() -> None:
    generator = torch.Generator().manual_seed(0)
    w = sample_weights("bernoulli", 80, generator)
    assert w.sum().item() == pytest.approx(1.0)
    assert set(w.unique().tolist()) <= {0.0, w.max().item()}


def test_c_bernoulli_is_one_hot() -> None:
    w = draws("c_bernoulli", 4)
    assert ((w == 0) | (w == 1)).all()
    assert (w.sum(dim=1) == 1).all()


def test_same_generator_state_gives_same_weights() -> None:
    for distribution in DISTRIBUTIONS:
        a = sample_weights(distribution, 5, torch.Generator().manual_seed(7))
        b = sample_weights(distribution, 5, torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


def test_unknown_distribution_is_rejected() -> None:
    with pytest.raises(ValueError, match="gaussian"):
        sample_weights("gaussian", 2, torch.Generator())
