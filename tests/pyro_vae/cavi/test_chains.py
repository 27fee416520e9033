import itertools
import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.ops.indexing import Vindex

from pyro_vae import elbo_estimate
from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.chains import find_chains, update_chain
from pyro_vae.cavi.conjugate_forms import probe_factors
from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.first_trace import find_dependencies
from pyro_vae.cavi.latent_units import find_latents
from tests.pyro_vae.cavi.float64 import F64

A = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=F64)
MEANS = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)


def hmm(y, skip=False):
    s = first = None
    for t in pyro.markov(range(len(y))):
        probs = torch.full((3,), 1 / 3, dtype=F64) if s is None else A[s]
        s = pyro.sample(f"s_{t}", dist.Categorical(probs))
        first = s if first is None else first
        pyro.sample(f"y_{t}", dist.Normal(MEANS[s], 1.0), obs=y[t])
    if skip:  # a factor on the first and last state: not a chain's neighbours
        pyro.sample("ends", dist.Normal(MEANS[s] - MEANS[first], 1.0), obs=y[0])


def factors_of(model, *args):
    latents = find_latents(poutine.trace(model).get_trace(*args))
    g = torch.Generator().manual_seed(0)
    depends, trace = find_dependencies(model, args, {}, latents, g)
    return latents, probe_factors(model, args, {}, latents, depends, trace, g)


def test_one_forward_backward_gives_the_exact_posterior_of_a_single_chain():
    # with every latent in the chain, q(chain) is the exact posterior: its marginals are
    # the brute-force ones over all 3^T paths and log Z + (the rest) is log p(y)
    y = torch.tensor([0.1, 1.9, 2.2, -0.8], dtype=F64)
    latents, factors = factors_of(hmm, y)
    chains = find_chains(latents, factors)
    assert chains == [("s_0", "s_1", "s_2", "s_3")]
    stats = {n: torch.full((3,), 1 / 3, dtype=F64) for n in latents}
    marginals, pairwise, _, absent = update_chain(chains[0], factors, stats, {})
    paths = torch.cartesian_prod(*[torch.arange(3)] * 4)
    log_joint = (
        torch.log(torch.tensor(1 / 3, dtype=F64))
        + A[paths[:, :-1], paths[:, 1:]].log().sum(-1)
        + dist.Normal(MEANS[paths], 1.0).log_prob(y).sum(-1)
    )
    posterior = (log_joint - log_joint.logsumexp(0)).exp()
    exact = torch.stack([torch.zeros(3, dtype=F64).index_add(0, paths[:, t], posterior)
                         for t in range(4)])  # fmt: skip
    assert torch.allclose(marginals, exact, atol=1e-10)
    assert torch.allclose(pairwise.sum(-1), marginals[:-1], atol=1e-10)
    assert not absent.any()  # every step is in the model
    # AutoCAVI keeps the chain whole: its bound is then log p(y), after one sweep
    fit = AutoCAVI(hmm, max_iter=1).fit(y)
    assert fit.lower_bound_ == pytest.approx(float(log_joint.logsumexp(0)), rel=1e-10)


def test_a_factor_on_non_neighbours_is_refused():
    y = torch.tensor([0.1, 1.9, 2.2], dtype=F64)
    latents, factors = factors_of(hmm, y, True)
    with pytest.raises(NotConjugateError, match=r"'ends' mentions the sites \['s_0', 's_2'\]"):
        find_chains(latents, factors)


STEPS = torch.softmax(
    torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * 2, -1
)  # a different transition matrix at each of 3 steps


def inhomogeneous_hmm(y):
    s = None
    for t in pyro.markov(range(len(y))):
        probs = torch.full((3,), 1 / 3, dtype=F64) if s is None else STEPS[t - 1][s]
        s = pyro.sample(f"s_{t}", dist.Categorical(probs))
        pyro.sample(f"y_{t}", dist.Normal(MEANS[s], 1.0), obs=y[t])


def test_a_chain_whose_transitions_change_each_step_is_still_exact():
    # log A_t[s_{t-1}, s_t] differs with t: forward-backward takes one matrix per step,
    # and q(chain) is again the exact posterior, its bound log p(y) by enumeration
    y = torch.tensor([0.1, 1.9, 2.2, -0.8], dtype=F64)
    paths = torch.cartesian_prod(*[torch.arange(3)] * 4)
    log_joint = (
        torch.log(torch.tensor(1 / 3, dtype=F64))
        + sum(STEPS[t][paths[:, t], paths[:, t + 1]].log() for t in range(3))
        + dist.Normal(MEANS[paths], 1.0).log_prob(y).sum(-1)
    )
    fit = AutoCAVI(inhomogeneous_hmm, max_iter=2).fit(y)
    assert list(fit.fitted_chains_) == [("s_0", "s_1", "s_2", "s_3")]
    assert fit.lower_bound_ == pytest.approx(float(log_joint.logsumexp(0)), rel=1e-10)
    posterior = (log_joint - log_joint.logsumexp(0)).exp()
    marginals, pairwise = fit.fitted_chains_[("s_0", "s_1", "s_2", "s_3")]
    exact = torch.zeros(3, 3, dtype=F64).index_put_(
        (paths[:, 1], paths[:, 2]), posterior, accumulate=True
    )  # q(s_1, s_2)
    assert torch.allclose(pairwise[1], exact, atol=1e-10)
    naive = AutoCAVI(inhomogeneous_hmm, markov_chains=False, tol=1e-12).fit(y)
    assert naive.lower_bound_ < fit.lower_bound_ - 1e-3


def latent_transitions_hmm(means):
    """A Bayesian HMM (MacKay 1997; Beal 2003): the rows of its transition matrix latent,
    A_k ~ Dirichlet(1, …, 1) in a plate of the K states, s_0 uniform, s_t ~ Categorical(A[s_{t−1}])
    (a mixture whose selector s_{t−1} picks s_t's row), y_t ~ N(means[s_t], 1)."""
    k = len(means)

    def model(y):
        with pyro.plate("rows", k):
            rows = pyro.sample("A", dist.Dirichlet(torch.ones(k, dtype=F64)))
        s = pyro.sample("s_0", dist.Categorical(torch.ones(k, dtype=F64) / k))
        pyro.sample("y_0", dist.Normal(means[s], 1.0), obs=y[0])
        for t in pyro.markov(range(1, len(y))):
            s = pyro.sample(f"s_{t}", dist.Categorical(Vindex(rows)[..., s, :]))
            pyro.sample(f"y_{t}", dist.Normal(means[s], 1.0), obs=y[t])

    return model


def test_latent_transition_rows_in_a_plate_reproduce_structured_mean_field():
    """q(A) q(s_0, …, s_{T−1}): each step's factor is a mixture whose selector s_{t−1} picks
    the row of A that scores s_t, so q(A_k) = Dirichlet(1 + Σ_t ξ_t(k, ·)) takes the
    chain's pairwise marginals ξ_t, not the product of its marginals. The reference is that
    structured mean field written out over all 3^T paths, in AutoCAVI's order (A from the
    start's ξ_t = r_{t−1} ⊗ r_t, then the chain, which init sets), every sweep; its bound
    is log Σ_paths exp(score) + E_q[log p(A)] + H[q(A)]."""
    import itertools

    y = torch.tensor([-1.2, -0.7, 2.1, 1.8, 0.4], dtype=F64)
    g = torch.Generator().manual_seed(0)
    r = torch.softmax(torch.randn(len(y), 3, generator=g, dtype=F64), -1)  # q(s_t) at start
    init = {f"s_{t}": r[t] for t in range(len(y))}
    fit = AutoCAVI(latent_transitions_hmm(MEANS), init=init, tol=0.0, max_iter=4).fit(y)
    assert sorted(fit.fitted_chains_) == [tuple(f"s_{t}" for t in range(len(y)))]
    paths = torch.tensor(list(itertools.product(range(3), repeat=len(y))))  # [3^T, T]
    emissions = dist.Normal(MEANS[paths], 1.0).log_prob(y).sum(-1) + math.log(1 / 3)
    xi = r[:-1].unsqueeze(-1) * r[1:].unsqueeze(-2)  # [T − 1, 3, 3]
    bounds = []
    for _ in range(4):
        alpha = 1 + xi.sum(0)
        e_log_a = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
        score = emissions + e_log_a[paths[:, :-1], paths[:, 1:]].sum(-1)
        q = torch.softmax(score, 0)
        xi = torch.stack([
            torch.zeros(3, 3, dtype=F64).index_put((paths[:, t], paths[:, t + 1]), q, True)
            for t in range(len(y) - 1)
        ])  # fmt: skip
        q_a = dist.Dirichlet(alpha)
        prior = 3 * math.log(2.0)  # log Γ(3) per row of Dirichlet(1, 1, 1), at any A
        bounds.append(float(score.logsumexp(0)) + prior + float(q_a.entropy().sum()))
    assert fit.lower_bounds_ == pytest.approx(bounds, rel=1e-10)
    q_a = fit.variational_distributions()["A"]
    assert torch.allclose(q_a.concentration, alpha, rtol=1e-10)  # the last sweep's update


def test_latent_transition_rows_of_four_states_are_below_the_exact_log_evidence():
    """K = 4 (the rows as four sites outside any plate had K²(K + 1)^K = 16,000 coefficients
    a step, and five states were refused): the structured bound is below log p(y), summed
    here over the 4^T paths with A integrated out in closed form (each row's transitions
    Dirichlet-multinomial), and above naive mean field's (markov_chains=False)."""
    import itertools

    means = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=F64)  # overlapping: states uncertain
    y = torch.tensor([-0.8, -1.1, 0.2, 0.9, 1.3, 2.2], dtype=F64)
    model = latent_transitions_hmm(means)
    fit = AutoCAVI(model, tol=1e-12, n_init=4).fit(y)
    naive = AutoCAVI(model, tol=1e-12, n_init=4, markov_chains=False).fit(y)
    paths = torch.tensor(list(itertools.product(range(4), repeat=len(y))))
    counts = torch.zeros(len(paths), 4, 4, dtype=F64)
    for t in range(len(y) - 1):
        counts[torch.arange(len(paths)), paths[:, t], paths[:, t + 1]] += 1
    ones = torch.ones(4, dtype=F64)
    dirichlet_multinomial = (
        torch.lgamma(ones.sum()) - torch.lgamma(ones.sum() + counts.sum(-1))
        + (torch.lgamma(ones + counts) - torch.lgamma(ones)).sum(-1)
    ).sum(-1)  # fmt: skip
    log_joint = (math.log(1 / 4) + dirichlet_multinomial
                 + dist.Normal(means[paths], 1.0).log_prob(y).sum(-1))  # fmt: skip
    log_evidence = float(log_joint.logsumexp(0))
    assert naive.lower_bound_ < fit.lower_bound_ <= log_evidence


def test_a_start_state_read_from_a_fixed_row_of_the_latent_matrix_fits():
    """s_0 ~ Categorical(A[..., 0, :]): the start state's factor reads row 0 of the plated
    rows, not a row it picks itself (a site's own value never picks its parameters; tester
    19's F3: refused as a mixture whose selector was s_0). The rows other than 0 are read
    by no other factor here, so the bound is that of s_0 ~ Categorical(theta) with theta
    one Dirichlet site."""
    y = torch.tensor([0.3], dtype=F64)

    def from_row(y):
        with pyro.plate("rows", 3):
            rows = pyro.sample("A", dist.Dirichlet(torch.ones(3, dtype=F64)))
        s = pyro.sample("s_0", dist.Categorical(rows[..., 0, :]))
        pyro.sample("y_0", dist.Normal(MEANS[s], 1.0), obs=y[0])

    def from_site(y):
        theta = pyro.sample("theta", dist.Dirichlet(torch.ones(3, dtype=F64)))
        s = pyro.sample("s_0", dist.Categorical(theta))
        pyro.sample("y_0", dist.Normal(MEANS[s], 1.0), obs=y[0])

    fit = AutoCAVI(from_row, tol=1e-12).fit(y)
    reference = AutoCAVI(from_site, tol=1e-12).fit(y)
    assert fit.lower_bound_ == pytest.approx(reference.lower_bound_, rel=1e-10)


def bayesian_hmm(y, s0=3.0):
    """An HMM whose emission means are latent: y_t ~ N(μ[s_t], 1), μ_k ~ N(0, s0²)."""
    from pyro.ops.indexing import Vindex

    with pyro.plate("states", 3):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), s0))
    s = None
    for t in pyro.markov(range(len(y))):
        probs = torch.full((3,), 1 / 3, dtype=F64) if s is None else A[s]
        s = pyro.sample(f"s_{t}", dist.Categorical(probs))
        pyro.sample(f"y_{t}", dist.Normal(Vindex(mu.unsqueeze(-2))[..., s], 1.0), obs=y[t])


def test_a_chain_picking_latent_emission_means_reproduces_structured_mean_field():
    # q(s_0, …, s_{T−1}) q(μ): each y_t is a mixture factor whose selector is s_t. The
    # reference is that structured mean field written out over all 3^T paths, in AutoCAVI's
    # order (μ, then the chain, which init sets), every sweep.
    import itertools

    y = torch.tensor([-1.2, -0.7, 2.1, 1.8, 2.4], dtype=F64)
    g = torch.Generator().manual_seed(0)
    r = torch.softmax(torch.randn(len(y), 3, generator=g, dtype=F64), -1)  # q(s_t) at start
    init = {f"s_{t}": r[t] for t in range(len(y))}
    fit = AutoCAVI(bayesian_hmm, init=init, tol=0.0, max_iter=4).fit(y)
    assert sorted(fit.fitted_chains_) == [tuple(f"s_{t}" for t in range(len(y)))]
    paths = torch.tensor(list(itertools.product(range(3), repeat=len(y))))  # [3^T, T]
    log_prior = (torch.full((3,), 1 / 3, dtype=F64).log()[paths[:, 0]]
                 + A.log()[paths[:, :-1], paths[:, 1:]].sum(-1))  # fmt: skip
    bounds = []
    for _ in range(4):
        precision = 1 / 9 + r.sum(0)  # q(μ_k) = N(m_k, 1/precision_k)
        m, v = (r * y.unsqueeze(-1)).sum(0) / precision, 1 / precision
        ell = -0.5 * math.log(2 * math.pi) - 0.5 * ((y.unsqueeze(-1) - m) ** 2 + v)
        score = log_prior + ell[torch.arange(len(y)), paths].sum(-1)  # [3^T]
        q = torch.softmax(score, 0)
        r = torch.stack([torch.zeros(3, dtype=F64).index_add(0, paths[:, t], q)
                         for t in range(len(y))])  # fmt: skip
        prior_mu = dist.Normal(torch.tensor(0.0, dtype=F64), 3.0)
        expected_mu = (prior_mu.log_prob(m) - 0.5 * v / 9).sum()
        entropy_mu = dist.Normal(m, v.sqrt()).entropy().sum()
        bounds.append(float((q * score).sum() - (q * q.log()).sum() + expected_mu + entropy_mu))
    assert fit.lower_bounds_ == pytest.approx(bounds, rel=1e-10)
    marginals = fit.fitted_chains_[tuple(f"s_{t}" for t in range(len(y)))][0]
    assert float((marginals - r).abs().max()) < 1e-10


def _exact_log_evidence(y, log_first, log_steps, means) -> float:
    """log p(y) of a chain with known parameters, every path of states enumerated."""
    k, t_ = len(log_first), len(y)
    scores = []
    for path in itertools.product(range(k), repeat=t_):
        links = zip(path, path[1:], strict=False)
        score = log_first[path[0]] + sum(log_steps[a][b] for a, b in links)
        scores.append(score + dist.Normal(means[list(path)], 1.0).log_prob(y).sum())
    return float(torch.logsumexp(torch.stack(scores), 0))


def test_sequences_in_a_plate_are_chains_kept_whole_at_the_exact_evidence():
    """Two sequences in a plate around one pyro.markov loop: each element is a chain, kept
    whole by one batched forward-backward (tester 19's F4: fitted by naive mean field, then
    with a warning). With the parameters known, q is the exact posterior: the bound is
    log p(Y), every path enumerated, and above naive mean field's."""
    Y = torch.tensor([[0.1, 1.9, 2.2, -0.8], [-1.0, 0.4, 0.6, 2.1]], dtype=F64)

    def sequences(Y):
        with pyro.plate("sequences", 2):
            s = pyro.sample("s_0", dist.Categorical(torch.ones(3, dtype=F64) / 3))
            pyro.sample("y_0", dist.Normal(MEANS[s], 1.0), obs=Y[:, 0])
            for t in pyro.markov(range(1, Y.shape[1])):
                s = pyro.sample(f"s_{t}", dist.Categorical(A[s]))
                pyro.sample(f"y_{t}", dist.Normal(MEANS[s], 1.0), obs=Y[:, t])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of a chain left to mean field
        fit = AutoCAVI(sequences, tol=1e-12).fit(Y)
    naive = AutoCAVI(sequences, tol=1e-12, markov_chains=False).fit(Y)
    first = torch.full((3,), -math.log(3), dtype=F64)
    exact = sum(_exact_log_evidence(y, first, A.log(), MEANS) for y in Y)
    assert list(fit.fitted_chains_) == [tuple(f"s_{t}" for t in range(4))]
    marginals, pairwise = fit.fitted_chains_[tuple(f"s_{t}" for t in range(4))]
    assert marginals.shape == (4, 2, 3) and pairwise.shape == (3, 2, 3, 3)
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-10)
    assert naive.lower_bound_ < exact - 0.01
    # the guide draws each sequence from its chain's q, the exact posterior: every draw's
    # log p(Y, S) − log q(S) is log p(Y), so the Monte Carlo ELBO has no spread
    estimate, se = elbo_estimate(sequences, fit.variational_guide(), Y, num_samples=50)
    assert estimate == pytest.approx(exact, abs=1e-9) and se < 1e-9


def test_ragged_sequences_leave_their_absent_steps_out_of_the_bound():
    """Sequences of lengths 5, 3, 1 and 4 in a plate, the steps past each one's end masked
    off (latent and observation): those elements are absent from the model, so with the
    parameters known the bound is the exact log evidence of each sequence's own steps,
    and the guide's Monte Carlo ELBO equals it with no spread (tester 22's F1: log 3 too
    high per absent element, 7.69 nats); the same for one unplated chain whose last step
    is masked."""
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([5, 3, 1, 4])
    Y = 2 * torch.randn(4, 5, generator=g, dtype=F64)
    mask = torch.arange(5) < lengths[:, None]  # [N, T]

    def ragged(Y):
        with pyro.plate("sequences", Y.shape[0]):
            s = None
            for t in pyro.markov(range(Y.shape[1])):
                with poutine.mask(mask=mask[: Y.shape[0], t]):
                    probs = torch.ones(3, dtype=F64) / 3 if s is None else A[s]
                    s = pyro.sample(f"s_{t}", dist.Categorical(probs))
                    pyro.sample(f"y_{t}", dist.Normal(MEANS[s], 1.0), obs=Y[:, t])

    first = torch.full((3,), -math.log(3), dtype=F64)
    for rows in (4, 1):  # four sequences; the first alone, its last step masked below
        if rows == 1:
            mask[0, -1] = False
        fit = AutoCAVI(ragged, tol=1e-12).fit(Y[:rows])
        exact = sum(
            _exact_log_evidence(Y[n, : int(mask[n].sum())], first, A.log(), MEANS)
            for n in range(rows)
        )
        assert fit.lower_bound_ == pytest.approx(exact, abs=1e-10)
        estimate, se = elbo_estimate(ragged, fit.variational_guide(), Y[:rows], num_samples=20)
        assert estimate == pytest.approx(exact, abs=1e-9) and se < 1e-9


def test_an_hmm_with_a_categorical_emission_of_as_many_classes_stays_one_chain():
    """s_t → z_t ~ Categorical(W[s_t]) → y_t, z of as many classes as s: s_t has two
    Categorical children of K states, and the chain goes on through the one with the longer
    line after it (s_{t+1}); z_t is mean field (tester 22's F2: the chain was cut at every
    step, 0.77 nats lower, silently)."""
    W = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], dtype=F64)
    Y = torch.tensor([[0.1, 1.9, 2.2, -0.8], [-1.0, 0.4, 0.6, 2.1]], dtype=F64)

    def emissions(Y):
        with pyro.plate("sequences", Y.shape[0]):
            s = pyro.sample("s_0", dist.Categorical(torch.ones(3, dtype=F64) / 3))
            for t in pyro.markov(range(Y.shape[1])):
                if t:
                    s = pyro.sample(f"s_{t}", dist.Categorical(A[s]))
                z = pyro.sample(f"z_{t}", dist.Categorical(W[s]))
                pyro.sample(f"y_{t}", dist.Normal(MEANS[z], 1.0), obs=Y[:, t])

    fit = AutoCAVI(emissions, tol=1e-12).fit(Y)
    naive = AutoCAVI(emissions, tol=1e-12, markov_chains=False).fit(Y)
    assert list(fit.fitted_chains_) == [("s_0", "s_1", "s_2", "s_3", "z_3")]
    # exact: s integrated by forward over emissions log Σ_z W[s, z] N(y; μ_z, 1)
    first = torch.full((3,), -math.log(3), dtype=F64)
    exact = 0.0
    for y in Y:
        emit = torch.logsumexp(W.log() + dist.Normal(MEANS, 1.0).log_prob(y[:, None, None]), -1)
        paths = torch.tensor(list(itertools.product(range(3), repeat=4)))
        score = first[paths[:, 0]] + A.log()[paths[:, :-1], paths[:, 1:]].sum(1)
        exact += float(torch.logsumexp(score + emit[torch.arange(4), paths].sum(1), 0))
    assert naive.lower_bound_ < fit.lower_bound_ < exact


def test_a_plated_latent_hmm_matches_its_sequences_unrolled_sweep_for_sweep():
    """A Bayesian HMM (latent rows A_k, latent means μ_k) over four sequences in a plate is
    the same q as the four sequences unrolled into unplated chains (each kept whole, tested
    against structured mean field written out): the same bounds sweep for sweep, q(A) and
    each step's marginals, from the same start."""
    k, n, t_ = 3, 4, 6
    g = torch.Generator().manual_seed(0)
    Y = 2 * torch.randn(n, t_, generator=g, dtype=F64) + 3 * (torch.arange(t_) % 3).to(F64)
    start = torch.softmax(torch.randn(n, t_, k, generator=g, dtype=F64), -1)

    def priors():
        with pyro.plate("states", k):
            rows = pyro.sample("A", dist.Dirichlet(torch.ones(k, dtype=F64)))
            mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 10.0))
        return rows, mu

    def step(name, probs, mu, y):
        s = pyro.sample(f"s_{name}", dist.Categorical(probs))
        pyro.sample(f"y_{name}", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y)
        return s

    def plated(Y):
        rows, mu = priors()
        with pyro.plate("sequences", n):
            s = step(0, torch.ones(k, dtype=F64) / k, mu, Y[:, 0])
            for t in pyro.markov(range(1, t_)):
                s = step(t, Vindex(rows)[..., s, :], mu, Y[:, t])

    def unrolled(Y):
        rows, mu = priors()
        for i in range(n):
            s = step(f"{i}_0", torch.ones(k, dtype=F64) / k, mu, Y[i, 0])
            for t in pyro.markov(range(1, t_)):
                s = step(f"{i}_{t}", Vindex(rows)[..., s, :], mu, Y[i, t])

    fit = AutoCAVI(plated, init={f"s_{t}": start[:, t] for t in range(t_)}, tol=1e-10).fit(Y)
    init = {f"s_{i}_{t}": start[i, t] for i in range(n) for t in range(t_)}
    reference = AutoCAVI(unrolled, init=init, tol=1e-10).fit(Y)
    assert len(fit.fitted_chains_) == 1 and len(reference.fitted_chains_) == n
    assert fit.lower_bounds_ == pytest.approx(reference.lower_bounds_, rel=1e-12)
    q, q_ref = fit.variational_distributions(), reference.variational_distributions()
    assert torch.allclose(q["A"].concentration, q_ref["A"].concentration, rtol=1e-10)
    for i, t in itertools.product(range(n), range(t_)):
        assert torch.allclose(q[f"s_{t}"].probs[i], q_ref[f"s_{i}_{t}"].probs, atol=1e-10)


def test_a_step_in_other_plate_dims_than_its_predecessor_is_mean_field_with_a_warning():
    """s_0 in a plate at dim −2 and the later steps at dim −1: the link s_0 → s_1 is not
    one chain's (each element's predecessor is read across dims), so it is mean field, said
    so by name; the rest of the sequence is kept whole."""
    Y = torch.tensor([[0.1, 1.9, 2.2, -0.8], [-1.0, 0.4, 0.6, 2.1]], dtype=F64)

    def model(Y):
        with pyro.plate("first", 2, dim=-2):
            s = pyro.sample("s_0", dist.Categorical(torch.ones(3, dtype=F64) / 3))
            pyro.sample("y_0", dist.Normal(MEANS[s], 1.0), obs=Y[:, :1])
        s = s.squeeze(-1)
        with pyro.plate("sequences", 2):
            for t in pyro.markov(range(1, Y.shape[1])):
                s = pyro.sample(f"s_{t}", dist.Categorical(A[s]))
                pyro.sample(f"y_{t}", dist.Normal(MEANS[s], 1.0), obs=Y[:, t])

    with pytest.warns(UserWarning, match=r"\['s_1'\] read a plated predecessor.*mean field"):
        fit = AutoCAVI(model, tol=1e-12).fit(Y)
    assert list(fit.fitted_chains_) == [("s_1", "s_2", "s_3")]
    first = torch.full((3,), -math.log(3), dtype=F64)
    exact = sum(_exact_log_evidence(y, first, A.log(), MEANS) for y in Y)
    assert fit.lower_bound_ < exact


@pytest.mark.parametrize("classes", [2, 3])
def test_a_two_level_latent_class_in_a_plate_is_fitted_without_a_chain_warning(classes):
    """c_n → z_n → y_n per datum, no warning of a chain left to mean field (tester 20's F2:
    warned as chains inside a plate). With as many classes c as z's three, each element's
    pair is a chain kept whole: with B and the means known q(c_n, z_n) is the exact
    posterior, so the bound is log p(y); with two, a hierarchy of unlike classes, mean
    field, below it."""
    y = torch.tensor([0.1, 1.9, 2.2, -0.8, 0.5], dtype=F64)
    B = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]], dtype=F64)[:classes]

    def two_level(y):
        with pyro.plate("data", len(y)):
            c = pyro.sample("c", dist.Categorical(torch.ones(classes, dtype=F64) / classes))
            z = pyro.sample("z", dist.Categorical(B[c]))
            pyro.sample("y", dist.Normal(MEANS[z], 1.0), obs=y)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = AutoCAVI(two_level, tol=1e-10).fit(y)
    # log p(y_n) = log Σ_c Σ_z B[c, z] N(y_n; μ_z, 1) / C
    joint = -math.log(classes) + B.log() + dist.Normal(MEANS, 1.0).log_prob(y[:, None, None])
    exact = float(torch.logsumexp(joint.reshape(len(y), -1), -1).sum())
    if classes == 3:
        assert list(fit.fitted_chains_) == [("c", "z")]
        assert fit.lower_bound_ == pytest.approx(exact, abs=1e-10)
    else:
        assert not fit.fitted_chains_ and fit.lower_bound_ < exact - 1e-3
