import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

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


def test_forward_backward_with_one_transition_matrix_per_step_matches_enumeration():
    g = torch.Generator().manual_seed(1)
    log_pi = torch.log_softmax(torch.randn(3, generator=g, dtype=torch.float64), 0)
    log_A = torch.log_softmax(torch.randn(3, 3, 3, generator=g, dtype=torch.float64), -1)
    log_lik = torch.randn(4, 3, generator=g, dtype=torch.float64)
    paths = torch.tensor(list(itertools.product(range(3), repeat=4)))
    scores = (
        log_pi[paths[:, 0]]
        + sum(log_A[t][paths[:, t], paths[:, t + 1]] for t in range(3))
        + log_lik[torch.arange(4), paths].sum(1)
    )
    log_z, marginals, pairwise = forward_backward(log_pi, log_A, log_lik)
    assert float(log_z) == pytest.approx(float(torch.logsumexp(scores, 0)), abs=1e-12)
    post = (scores - torch.logsumexp(scores, 0)).exp()
    for t in range(3):
        expected = torch.zeros(3, 3, dtype=torch.float64).index_put_(
            (paths[:, t], paths[:, t + 1]), post, accumulate=True
        )
        torch.testing.assert_close(pairwise[t], expected)
    # the same matrix at every step is the homogeneous chain
    same = forward_backward(log_pi, log_A[0], log_lik)
    torch.testing.assert_close(forward_backward(log_pi, log_A[0].expand(3, 3, 3), log_lik), same)
    with pytest.raises(ValueError, match=r"expected \(3,\) and \(3, 3\) or \(3, 3, 3\)"):
        forward_backward(log_pi, log_A[:2], log_lik)


@pytest.mark.parametrize("per_step", [False, True])
def test_forward_backward_over_a_batch_of_chains_is_each_chain_alone(per_step):
    # sequences in a plate: log_lik [T, 2, K] (and log_A [T−1, 2, K, K] per step and chain,
    # or one [K, K]) give each chain's own log Z, marginals and pairwise marginals
    g = torch.Generator().manual_seed(2)
    log_pi = torch.log_softmax(torch.randn(2, 3, generator=g, dtype=torch.float64), -1)
    shape = (3, 2, 3, 3) if per_step else (3, 3)
    log_A = torch.log_softmax(torch.randn(shape, generator=g, dtype=torch.float64), -1)
    log_lik = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    log_z, marginals, pairwise = forward_backward(log_pi, log_A, log_lik)
    assert log_z.shape == (2,) and marginals.shape == (4, 2, 3)
    assert pairwise.shape == (3, 2, 3, 3)
    for b in range(2):
        alone = forward_backward(log_pi[b], log_A[:, b] if per_step else log_A, log_lik[:, b])
        torch.testing.assert_close(log_z[b], alone[0])
        torch.testing.assert_close(marginals[:, b], alone[1])
        torch.testing.assert_close(pairwise[:, b], alone[2])
    with pytest.raises(ValueError, match=r"or \(3, \*\(2,\), 3, 3\) for the batch"):
        forward_backward(log_pi, log_A[..., :2] if per_step else log_A[:2], log_lik)


def test_forward_backward_computes_in_float64_whatever_it_is_given():
    # an integer or float32 log_lik, or NumPy arrays, give the float64 answer
    log_pi = torch.log_softmax(torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64), 0)
    log_A = torch.zeros(3, 3, dtype=torch.float64)
    log_z = forward_backward(log_pi, log_A, torch.zeros(4, 3, dtype=torch.long))[0]
    assert log_z.dtype == torch.float64 and float(log_z) == pytest.approx(math.log(27), 1e-12)
    from_numpy = forward_backward(log_pi.numpy(), log_A.float().numpy(), np.zeros((4, 3)))[0]
    assert float(from_numpy) == pytest.approx(math.log(27), rel=1e-7)
    impossible = torch.full((3, 3), -math.inf, dtype=torch.float64)
    with pytest.raises(ValueError, match="every path of states has probability zero"):
        forward_backward(log_pi, impossible, torch.zeros(4, 3, dtype=torch.float64))


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


@pytest.mark.parametrize(
    "family, sizes, seed",
    [(StructuredMeanField, (2, 2, 1), 7), (NaiveMeanField, (2, 2, 2), 7)],
)
def test_several_starts_escape_a_local_optimum(family, sizes, seed):
    # Two sticky 2-state chains over 6 steps: the bound has several local maxima, and
    # the default start (seed 0) stops at one 4.6 (structured) or 11.9 (naive) nats below
    # the exact log-likelihood, which forward on the 4 joint states gives independently.
    model = random_fhmm(*sizes, seed=seed)
    y = sample(model, 6, seed=seed + 10)
    exact = model.log_likelihood_exact(y)
    one = family(model).fit(y)
    ten = family(model, n_init=10).fit(y)
    assert one.converged_ and one.lower_bound_ < exact - 4
    # The best fixed point's bound is 0.042 (structured) and 0.0017 (naive) nats below
    # exact, its KL from the posterior; any other one found is ≥ 4 nats below.
    assert exact - 0.1 < ten.lower_bound_ <= exact + 1e-9
    assert ten.converged_
    # The first of the ten starts is the single start: n_init=1 results do not move.
    assert family(model, n_init=1, random_state=0).fit(y).lower_bound_ == one.lower_bound_


def test_structured_converged_means_one_more_sweep_moves_nothing():
    model = random_fhmm(3, 2, 2, seed=0)
    y = sample(model, 40, seed=10)
    tol = 1e-8
    fit = StructuredMeanField(model, tol=tol).fit(y)
    assert fit.converged_
    # One more sweep, written out here: each chain's HMM with emissions
    # log h_t = Wᵀ C⁻¹ (y_t − Σ_{l≠m} W⁽ˡ⁾ ⟨s_t⁽ˡ⁾⟩) − ½ diag(Wᵀ C⁻¹ W), by forward-backward.
    mu = fit.expectations_.clone()
    c_inv = torch.linalg.inv(model.C)
    moved = 0.0
    for c in range(model.sizes[0]):
        others = sum(mu[:, j] @ model.W[j].T for j in range(model.sizes[0]) if j != c)
        w = model.W[c]
        log_h = (y - others) @ c_inv @ w - 0.5 * torch.diagonal(w.T @ c_inv @ w)
        _, marginals, _ = forward_backward(model.log_pi[c], model.log_A[c], log_h)
        moved = max(moved, float((marginals - mu[:, c]).abs().max()))
        mu[:, c] = marginals
    # The last sweep raised the bound by < tol, and that rise is Σ_m KL(q_m ‖ q_m') ≥ each
    # marginal's KL ≥ 2 max |Δ⟨s_t⟩|² (Pinsker), so it moved no marginal by more than
    # sqrt(tol / 2) = 7e-5. Near a fixed point the next sweep moves less; we allow twice
    # that bound, sqrt(2 tol). (Measured: 6.6e-6.)
    assert moved <= math.sqrt(2 * tol)


def test_a_zero_probability_transition():
    # Forward-backward works in log space, so structured mean field takes −inf in log A;
    # naive mean field would average −inf and is refused.
    base = random_fhmm(1, 3, 2, seed=1)
    A = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.9]], dtype=torch.float64)
    model = FactorialHMM(base.log_pi, A.log()[None], base.W, base.C)
    y = sample(model, 30, seed=2)
    fit = StructuredMeanField(model).fit(y)
    assert fit.lower_bound_ == pytest.approx(model.log_likelihood_exact(y), abs=1e-8)
    with pytest.raises(ValueError, match="model: log_A has 3 zero probabilities"):
        NaiveMeanField(model).fit(y)


def test_nan_observations_are_refused_before_any_work(monkeypatch):
    model = random_fhmm(2, 2, 2, seed=0)
    y = sample(model, 10, seed=1)
    y[3, 0] = y[7, 1] = float("nan")
    y[8, 0] = float("inf")
    for family in (StructuredMeanField, NaiveMeanField):
        # Coordinate ascent itself must not start.
        monkeypatch.setattr(family, "_ascend", lambda *args: pytest.fail("ascent started"))
        with pytest.raises(ValueError, match="y: 2 of its 20 entries are NaN and 1 infinite"):
            family(model).fit(y)
    with pytest.raises(ValueError, match="y: 2 of its 20 entries are NaN"):
        model.log_likelihood_exact(y)
    # tester BR: y near 1e200 gave lower_bound_ = nan after every iteration
    for family in (StructuredMeanField, NaiveMeanField):
        with pytest.raises(ValueError, match="y: values up to .*e.200, whose squares summed"):
            family(model).fit(sample(model, 10, seed=1) * 1e200)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="do not agree"):
        FactorialHMM(torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.zeros(2, 4, 2), torch.eye(4))
    model = random_fhmm(2, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"y: shape \(5, 3\)"):
        StructuredMeanField(model).fit(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"y: shape \(0, 2\) has no time steps"):
        StructuredMeanField(model).fit(torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"log_lik: shape \(0, 3\)"):
        forward_backward(torch.zeros(3), torch.zeros(3, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="do not match log_lik's 3 states"):
        forward_backward(torch.zeros(2), torch.zeros(3, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="log_lik: 1 of its 12 entries is NaN"):
        log_lik = torch.zeros(4, 3)
        log_lik[2, 1] = float("nan")
        forward_backward(torch.zeros(3), torch.zeros(3, 3), log_lik)
    with pytest.raises(ValueError, match="t_len: 0 is not a positive integer"):
        model.sample(0)


def test_bad_parameters_and_settings_are_named():
    good = random_fhmm(2, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"log_pi: rows do not sum to 1"):
        FactorialHMM(good.log_pi + 0.1, good.log_A, good.W, good.C)
    with pytest.raises(ValueError, match=r"log_A: rows do not sum to 1"):
        FactorialHMM(good.log_pi, good.log_A.exp(), good.W, good.C)
    with pytest.raises(ValueError, match="log_A: 1 of its 8 entries is NaN"):
        bad = good.log_A.clone()
        bad[0, 0, 0] = float("nan")
        FactorialHMM(good.log_pi, bad, good.W, good.C)
    with pytest.raises(ValueError, match="W: 8 of its 8 entries are infinite"):
        FactorialHMM(good.log_pi, good.log_A, torch.full_like(good.W, float("inf")), good.C)
    with pytest.raises(ValueError, match="C: is not symmetric positive definite"):
        FactorialHMM(good.log_pi, good.log_A, good.W, -good.C)
    y = sample(good, 5, seed=0)
    for kwargs, message in [
        ({"n_init": 0}, "n_init: 0 is not a positive integer"),
        ({"max_iter": 0}, "max_iter: 0 is not a positive integer"),
        ({"tol": -1.0}, "tol: -1.0 is not a finite non-negative number"),
        ({"random_state": -2}, "random_state: -2 is not a seed"),
    ]:
        with pytest.raises(ValueError, match=message):
            StructuredMeanField(good, **kwargs).fit(y)
    with pytest.raises(ValueError, match="model: dict is not a FactorialHMM"):
        NaiveMeanField({}).fit(y)


@pytest.mark.parametrize("family", [StructuredMeanField, NaiveMeanField])
def test_variational_distributions_are_the_fitted_marginals_by_site(family):
    model = random_fhmm(2, 3, 2, seed=0)
    y = sample(model, 5, seed=1)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        family(model).variational_distributions()
    fit = family(model, random_state=0).fit(y)
    q = fit.variational_distributions()
    assert sorted(q) == sorted(f"s_{m}_{t}" for m in range(2) for t in range(5))
    assert torch.allclose(q["s_1_3"].probs, fit.expectations_[3, 1])


def _log_weights(model, guide, y, draws):
    """log p(y, S) − log q(S) for ``draws`` seeded draws of ``guide``."""
    import pyro

    pyro.set_rng_seed(0)
    out = []
    for _ in range(draws):
        guide_tr = pyro.poutine.trace(guide).get_trace(y)
        model_tr = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_tr)).get_trace(y)
        out.append(float(model_tr.log_prob_sum() - guide_tr.log_prob_sum()))
    return torch.tensor(out, dtype=torch.float64)


def test_the_structured_guide_draws_each_chain_in_order():
    # One chain: structured q is the exact posterior, so every draw of its guide scores the
    # exact log p(Y) (the forward algorithm); drawn from its marginals apart, it would not.
    one = random_fhmm(1, 3, 2, seed=2)
    y = sample(one, 6, seed=3)
    fit = StructuredMeanField(one, tol=1e-12).fit(y)
    model = _float64_model(one)
    weights = _log_weights(model, fit.variational_guide(), y, draws=40)
    assert float((weights - one.log_likelihood_exact(y)).abs().max()) < 1e-9
    apart = _log_weights(model, _product(fit.variational_distributions()), y, draws=40)
    assert float(apart.std()) > 1e-3  # not constant: the product of marginals is not q
    # Two chains: E_q[log p − log q] is the fitted bound (300 draws, 4 standard errors).
    two = random_fhmm(2, 2, 2, seed=4)
    y = sample(two, 5, seed=5)
    fit = StructuredMeanField(two, tol=1e-12, n_init=2).fit(y)
    assert fit.pairwise_.shape == (2, 4, 2, 2)
    weights = _log_weights(_float64_model(two), fit.variational_guide(), y, 300)
    assert abs(float(weights.mean()) - fit.lower_bound_) < 4 * float(weights.std()) / 300**0.5
    with pytest.raises(NotFittedError, match="not fitted yet"):
        StructuredMeanField(two).variational_guide()


def _float64_model(params):
    """``models.hmm.FactorialHMMModel`` holding ``params`` exactly (it stores float32)."""
    from models.hmm import FactorialHMMModel

    model = FactorialHMMModel(params)
    for name in ("log_pi", "log_A", "W", "C"):
        setattr(model, name, getattr(params, name).clone())
    return model


def _product(distributions):
    import pyro

    def guide(*args):
        for site, fn in distributions.items():
            pyro.sample(site, fn)

    return guide


def test_forward_backward_makes_its_tensors_on_the_device_of_its_inputs():
    # CPU inputs with meta as the default device: a tensor made without a device would
    # land on meta and the pass would fail (see tests/pyro_vae/test_devices.py)
    g = torch.Generator().manual_seed(3)
    log_pi = torch.log_softmax(torch.randn(3, generator=g, dtype=torch.float64), 0)
    log_A = torch.log_softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1)
    log_lik = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    expected = forward_backward(log_pi, log_A, log_lik)
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        found = forward_backward(log_pi, log_A, log_lik)
    finally:
        torch.set_default_device(previous)
    for a, b in zip(found, expected, strict=True):
        assert a.device.type == "cpu"
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("t_len", [1, 2, 5])
def test_forward_backward_both_ways_match_enumeration(monkeypatch, scan, t_len):
    # the loop over steps and the parallel scan (forced either way by the cost bound),
    # per-step matrices with a forbidden transition (−inf), against every path summed
    import pyro_vae.cavi.hmm as hmm

    monkeypatch.setattr(hmm, "_SCAN_COST", math.inf if scan else -1)
    g = torch.Generator().manual_seed(t_len)
    log_pi = torch.log_softmax(torch.randn(3, generator=g, dtype=torch.float64), 0)
    log_A = torch.log_softmax(torch.randn(max(t_len - 1, 1), 3, 3, generator=g,
                                          dtype=torch.float64), -1)[: t_len - 1]  # fmt: skip
    log_A[..., 0, 2] = -math.inf
    log_lik = 3 * torch.randn(t_len, 3, generator=g, dtype=torch.float64)
    paths = torch.tensor(list(itertools.product(range(3), repeat=t_len)))
    scores = log_pi[paths[:, 0]] + log_lik[torch.arange(t_len), paths].sum(1)
    for t in range(t_len - 1):
        scores = scores + log_A[t][paths[:, t], paths[:, t + 1]]
    log_z, marginals, pairwise = hmm.forward_backward(log_pi, log_A, log_lik)
    assert float(log_z) == pytest.approx(float(torch.logsumexp(scores, 0)), abs=1e-12)
    post = (scores - torch.logsumexp(scores, 0)).exp()
    for t in range(t_len):
        expected = torch.zeros(3, dtype=torch.float64).index_add_(0, paths[:, t], post)
        torch.testing.assert_close(marginals[t], expected, rtol=0, atol=1e-12)
    for t in range(t_len - 1):
        expected = torch.zeros(3, 3, dtype=torch.float64).index_put_(
            (paths[:, t], paths[:, t + 1]), post, accumulate=True
        )
        torch.testing.assert_close(pairwise[t], expected, rtol=0, atol=1e-12)


def test_forward_backward_s_scan_is_its_loop_over_a_long_batch(monkeypatch):
    # 3 chains of 37 steps (no power of 2) with log-likelihoods of tens of nats: the two
    # ways agree to float64 rounding of log Z (~ 300 nats: 1e-12 of it)
    import pyro_vae.cavi.hmm as hmm

    g = torch.Generator().manual_seed(5)
    log_pi = torch.log_softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), -1)
    log_A = torch.log_softmax(torch.randn(4, 4, generator=g, dtype=torch.float64), -1)
    log_lik = 10 * torch.randn(37, 3, 4, generator=g, dtype=torch.float64)
    results = []
    for cost in (-1, math.inf):
        monkeypatch.setattr(hmm, "_SCAN_COST", cost)
        results.append(hmm.forward_backward(log_pi, log_A, log_lik))
    for loop, scan in zip(*results, strict=True):
        torch.testing.assert_close(scan, loop, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cost", [-1, math.inf])
def test_forward_backward_s_log_z_is_pyro_s_discrete_hmm(monkeypatch, cost):
    # an independent implementation: Pyro's DiscreteHMM, whose initial logits are the
    # state's one step before s_0 (so s_0's are theirs times A), over 2 chains of 50 steps
    import pyro.distributions as pdist

    import pyro_vae.cavi.hmm as hmm

    monkeypatch.setattr(hmm, "_SCAN_COST", cost)
    g = torch.Generator().manual_seed(7)
    init = torch.log_softmax(torch.randn(2, 3, generator=g, dtype=torch.float64), -1)
    log_a = torch.log_softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1)
    mu = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64)
    y = 4 * torch.rand(2, 50, generator=g, dtype=torch.float64)
    log_lik = pdist.Normal(mu, 1.0).log_prob(y.T.unsqueeze(-1))
    log_pi = torch.logsumexp(init.unsqueeze(-1) + log_a, -2)
    log_z = hmm.forward_backward(log_pi, log_a, log_lik)[0]
    expected = pdist.DiscreteHMM(init, log_a, pdist.Normal(mu, 1.0)).log_prob(y)
    torch.testing.assert_close(log_z, expected, rtol=0, atol=1e-10)


def test_a_numpy_integer_seed_is_the_same_seed_as_the_int():
    # torch's manual_seed takes only int: np.int64 crashed (tester AM's F7, in AutoCAVI)
    model = random_fhmm(3, 2, 2, seed=0)
    y = sample(model, 20, seed=10)
    by_numpy = StructuredMeanField(model, random_state=np.int64(1)).fit(y)
    assert by_numpy.lower_bound_ == StructuredMeanField(model, random_state=1).fit(y).lower_bound_


def test_a_numpy_random_state_seeds_as_the_integer_it_draws():
    """scikit-learn's random_state convention (tester EP): a Generator seeds the starts
    as the integer it draws."""
    model = random_fhmm(3, 2, 2, seed=0)
    y = sample(model, 40, seed=10)
    drawn = int(np.random.default_rng(4).integers(2**31 - 1))
    for family in (StructuredMeanField, NaiveMeanField):
        fit = family(model, n_init=2, random_state=np.random.default_rng(4)).fit(y)
        same = family(model, n_init=2, random_state=drawn).fit(y)
        assert fit.lower_bounds_ == same.lower_bounds_


def test_random_state_none_is_fresh_entropy_and_the_default_a_fixed_seed():
    """As in scikit-learn, ``random_state=None`` draws fresh starts (it was seed 0, so
    every "random" restart by hand repeated the first); the default, 0, repeats itself."""
    model = random_fhmm(3, 2, 2, seed=0)
    y = sample(model, 40, seed=10)
    default = [NaiveMeanField(model).fit(y).lower_bounds_ for _ in range(2)]
    assert default[0] == default[1] == NaiveMeanField(model, random_state=0).fit(y).lower_bounds_
    fresh = [NaiveMeanField(model, random_state=None).fit(y).lower_bounds_[0] for _ in range(2)]
    assert fresh[0] != fresh[1]  # equal starts from 2³¹ seeds: probability about 5e-10
