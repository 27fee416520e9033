import itertools

import pytest
import torch

from pyro_vae.cavi import FactorialHMM, NaiveMeanField, StructuredMeanField, forward_backward


def random_fhmm(m, k, d, seed, spread=2.0, stay=0.8):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.log_softmax(torch.randn(m, k, generator=g, dtype=torch.float64), -1)
    A = torch.full((m, k, k), (1 - stay) / (k - 1), dtype=torch.float64)
    A[:, torch.arange(k), torch.arange(k)] = stay
    W = spread * torch.randn(m, d, k, generator=g, dtype=torch.float64)
    return FactorialHMM(log_pi, A.log(), W, 0.8 * torch.eye(d, dtype=torch.float64))


def sample(model, t_len, seed):
    return model.sample(t_len, seed)[1]


def test_forward_backward_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    log_pi = torch.log_softmax(torch.randn(3, generator=g, dtype=torch.float64), 0)
    log_A = torch.log_softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), 1)
    log_lik = torch.randn(4, 3, generator=g, dtype=torch.float64)
    paths = torch.tensor(list(itertools.product(range(3), repeat=4)))
    scores = (
        log_pi[paths[:, 0]]
        + log_A[paths[:, :-1], paths[:, 1:]].sum(1)
        + log_lik[torch.arange(4), paths].sum(1)
    )
    log_z, marginals, pairwise = forward_backward(log_pi, log_A, log_lik)
    assert float(log_z) == pytest.approx(float(torch.logsumexp(scores, 0)), abs=1e-12)
    post = (scores - torch.logsumexp(scores, 0)).exp()
    expected = torch.stack(
        [torch.stack([post[paths[:, t] == k].sum() for k in range(3)]) for t in range(4)]
    )
    torch.testing.assert_close(marginals, expected)
    torch.testing.assert_close(pairwise.sum(-1), marginals[:-1])


def test_one_chain_structured_mean_field_is_exact():
    model = random_fhmm(1, 3, 2, seed=1)
    y = sample(model, 30, seed=2)
    fit = StructuredMeanField(model).fit(y)
    assert fit.lower_bound_ == pytest.approx(model.log_likelihood_exact(y), abs=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_several_chains_naive_below_structured_below_exact(seed):
    model = random_fhmm(3, 2, 2, seed=seed)
    y = sample(model, 40, seed=seed + 10)
    exact = model.log_likelihood_exact(y)
    structured = StructuredMeanField(model, random_state=seed).fit(y)
    naive = NaiveMeanField(model, random_state=seed).fit(y)
    assert structured.converged_ and naive.converged_
    assert structured.lower_bound_ <= exact + 1e-9
    assert naive.lower_bound_ < structured.lower_bound_
    for fit in (structured, naive):  # coordinate ascent never goes down
        bounds = torch.tensor(fit.lower_bounds_)
        assert (bounds[1:] - bounds[:-1] >= -1e-9).all()


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="do not agree"):
        FactorialHMM(torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.zeros(2, 4, 2), torch.eye(4))
    model = random_fhmm(2, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"y: shape \(5, 3\)"):
        StructuredMeanField(model).fit(torch.zeros(5, 3))
