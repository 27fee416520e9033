"""The trace toolkit: particle traces (vectorized and looped lay out the same densities),
plate nesting, the full-rank reshape, the fallback rule and its warning, and run_pair.

The model has a global latent and a per-datapoint one, so particles meet sites of two batch
ranks:  μ ~ N(0, 1);  z_n ~ N(μ, 1);  x_nd ~ N(z_n, 0.5²)  (n = 1..3 in the plate, d = 1, 2).
"""

import copy
import functools
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.ops.indexing import Vindex

from pyro_vae.traces import (
    PARTICLES,
    SharedSubsamples,
    VectorizationWarning,
    buffers_kept,
    full_rank,
    particle_traces,
    plate_nesting,
    run_pair,
    sample_sites,
    sample_sites_where,
    stack_particles,
    stack_values,
    vectorize_for,
    vectorized_or_looped,
)

X = torch.tensor([[0.2, -0.4], [1.5, 1.1], [-0.7, 0.0]])


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), 0.5).to_event(1), obs=x)


def guide(x):
    pyro.sample("mu", dist.Normal(0.3, 0.8))
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Normal(x.mean(-1), 0.7))


def normal_log_pdf(value, loc, scale):
    return -0.5 * ((value - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)


def by_hand(model_tr, guide_tr):
    """Every site's log-density [K, ...] from the traced values, by the formula."""
    mu, z = guide_tr.nodes["mu"]["value"], guide_tr.nodes["z"]["value"]  # [K, 1], [K, 3]
    x_loc = z.unsqueeze(-1)
    return {
        "model": {
            "mu": normal_log_pdf(mu, 0.0, 1.0),
            "z": normal_log_pdf(z, mu, 1.0),
            "x": normal_log_pdf(X, x_loc, 0.5).sum(-1),
        },
        "guide": {"mu": normal_log_pdf(mu, 0.3, 0.8), "z": normal_log_pdf(z, X.mean(-1), 0.7)},
    }


@pytest.mark.parametrize("vectorize", [True, False])
def test_particle_traces_lay_out_every_density_at_the_particle_dim(vectorize):
    model_tr, guide_tr, vectorized = particle_traces(model, guide, (X,), {}, 4, 1, vectorize)
    assert vectorized is vectorize
    assert guide_tr.nodes["mu"]["value"].shape == (4, 1)
    assert guide_tr.nodes["z"]["value"].shape == (4, 3)
    assert torch.equal(model_tr.nodes["z"]["value"], guide_tr.nodes["z"]["value"])
    expected = by_hand(model_tr, guide_tr)
    for which, trace in (("model", model_tr), ("guide", guide_tr)):
        assert list(sample_sites(trace)) == list(expected[which])
        for name, log_p in expected[which].items():
            site = trace.nodes[name]
            torch.testing.assert_close(site["log_prob"], log_p.expand(site["log_prob"].shape))
            particle = [f for f in site["cond_indep_stack"] if f.name == PARTICLES]
            assert [(f.dim, f.size) for f in particle] == [(-2, 4)]
    shapes = {n: s["log_prob"].shape for n, s in sample_sites(model_tr).items()}
    assert shapes == {"mu": (4, 1), "z": (4, 3), "x": (4, 3)}


def test_one_particle_draws_the_same_numbers_either_way():
    pyro.set_rng_seed(11)
    vec_model, vec_guide, _ = particle_traces(model, guide, (X,), {}, 1, 1, vectorize=True)
    pyro.set_rng_seed(11)
    loop_model, loop_guide, _ = particle_traces(model, guide, (X,), {}, 1, 1, vectorize=False)
    for vec, loop in ((vec_model, loop_model), (vec_guide, loop_guide)):
        for name, site in sample_sites(vec).items():
            torch.testing.assert_close(loop.nodes[name]["log_prob"], site["log_prob"])
            torch.testing.assert_close(loop.nodes[name]["log_prob_sum"], site["log_prob_sum"])


def test_vectorized_and_looped_estimate_the_same_elbo():
    # ELBO = E_q[log p − log q]; two independent 400-particle estimates agree within 5 SE
    estimates = []
    for vectorize in (True, False):
        model_tr, guide_tr, _ = particle_traces(model, guide, (X,), {}, 400, 1, vectorize)
        log_w = sum(s["log_prob"].reshape(400, -1).sum(-1) for s in sample_sites(model_tr).values())
        log_w = log_w - sum(
            s["log_prob"].reshape(400, -1).sum(-1) for s in sample_sites(guide_tr).values()
        )
        estimates.append((log_w.mean(), log_w.var() / 400))
    (a, var_a), (b, var_b) = estimates
    assert abs(float(a - b)) < 5 * float((var_a + var_b).sqrt())


def cannot_broadcast(x):
    # .item() on a latent works once per run, not under a particle plate
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("x", dist.Normal(mu.item() + torch.zeros_like(x), 1.0).to_event(1), obs=x)


def mu_guide(x):
    pyro.sample("mu", dist.Normal(0.3, 0.8))


def test_a_model_that_cannot_broadcast_falls_back_to_the_loop_and_says_why():
    with pytest.warns(VectorizationWarning) as record:
        model_tr, _, vectorized = particle_traces(cannot_broadcast, mu_guide, (X,), {}, 5, 1)
    assert not vectorized and model_tr.nodes["x"]["log_prob"].shape == (5, 3)
    message = str(record[0].message)
    assert message.startswith("particle traces: the model and guide could not run under")
    assert "(RuntimeError: " in message and "drawing the 5 particles one at a time" in message
    assert record[0].filename == __file__  # stacklevel: the caller of particle_traces
    with pytest.raises(RuntimeError):
        particle_traces(cannot_broadcast, mu_guide, (X,), {}, 5, 1, vectorize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, vectorized = particle_traces(
            cannot_broadcast, mu_guide, (X,), {}, 5, 1, vectorize=False
        )
    assert vectorized is False


def test_the_warning_gives_the_cause_pyro_wraps_on_its_next_line():
    """Pyro wraps a site's error as "Error while computing log_prob at site 'z':" with the
    cause on the next line; the warning said only the wrapper's line (tester DI: an
    ``Empirical`` guide, whose ``log_prob`` takes one value at a time, looped "unexplained")."""
    atoms = torch.tensor([-1.0, 0.5, 2.0])

    def empirical_guide(x):
        pyro.sample("mu", dist.Empirical(atoms, torch.zeros(3)))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning) as record:
        model_tr, _, vectorized = particle_traces(model, empirical_guide, (X,), {}, 4, 1)
    assert not vectorized and model_tr.nodes["mu"]["log_prob"].shape[0] == 4
    message = str(record[0].message)
    assert "at site 'mu': ``value.shape`` must be torch.Size([])" in message, message


def picks_a_plated_mean(y):
    # Vindex(mu)[..., z] with mu plated and z not: under a particle plate at dim -2, mu is
    # [S, 3] and z [S, 1], and the pick is [S, S], which no error catches
    with pyro.plate("components", 3):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
    pyro.sample("y", dist.Normal(Vindex(mu)[..., z], 1.0), obs=y)


def picks_guide(y):
    with pyro.plate("components", 3):
        pyro.sample("mu", dist.Normal(torch.tensor([-1.0, 0.0, 2.0]), 0.5))
    pyro.sample("z", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))


def plated_picks(y):
    # mu and z in plates at dim -1: under particles at -2, mu is [S, 2] and z [S, N], and
    # Vindex pairs draw s's mu with datapoint s; with S = N every shape is right
    with pyro.plate("components", 2):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
        pyro.sample("y", dist.Normal(Vindex(mu)[..., z], 1.0), obs=y)


def plated_picks_guide(y):
    with pyro.plate("components", 2):
        pyro.sample("mu", dist.Normal(torch.tensor([-2.0, 2.0]), 0.5))
    with pyro.plate("data", len(y)):
        pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7])))


@pytest.mark.parametrize(
    ("model", "guide", "y", "match"),
    [(picks_a_plated_mean, picks_guide, torch.tensor(2.5),
      r"site 'y': log-density of shape \(4, 4\)"),
     (plated_picks, plated_picks_guide, torch.tensor([-2.1, 1.7, 2.4, -1.5]),
      r"site 'y': the vectorized run scores")],
)  # fmt: skip
def test_a_model_broadcasting_the_particles_into_its_own_dims_is_drawn_one_at_a_time(
    model, guide, y, match
):
    """Vindex(mu)[..., z] under 4 particles: with z unplated the log-density is [S, S],
    summed as S² terms (an ELBO estimate 2,800 nats off); with mu and z plated at one dim
    and as many draws as datapoints every shape is right and each draw's log p up to 3
    nats off, which a plain run at the last draw's values shows. Each draw's log p(y | mu,
    z) must be the one scored here from the guide's own draws."""
    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning, match=match):
        model_tr, guide_tr, vectorized = particle_traces(model, guide, (y,), {}, 4, 1)
    assert not vectorized
    mu, z = guide_tr.nodes["mu"]["value"], guide_tr.nodes["z"]["value"]
    expected = dist.Normal(mu.gather(-1, z.reshape(4, -1)), 1.0).log_prob(y).sum(-1)
    assert torch.allclose(model_tr.nodes["y"]["log_prob"].reshape(4, -1).sum(-1), expected)


def test_vectorized_or_looped_runs_only_what_it_is_asked_for():
    calls = []

    def vectorized():
        calls.append("vectorized")
        raise ValueError("no broadcasting")

    def looped():
        calls.append("looped")
        return "looped result"

    assert vectorized_or_looped(False, vectorized, looped, "w", 3) == ("looped result", False)
    assert calls == ["looped"]
    assert vectorized_or_looped(True, lambda: "v", looped, "w", 3) == ("v", True)
    with pytest.raises(ValueError, match="no broadcasting"):
        vectorized_or_looped(True, vectorized, looped, "w", 3)
    calls.clear()
    with pytest.warns(VectorizationWarning, match=r"^w: .*\(ValueError: no broadcasting\)"):
        assert vectorized_or_looped(None, vectorized, looped, "w", 3) == ("looped result", False)
    assert calls == ["vectorized", "looped"]

    def traced():  # Pyro appends its trace's shape table to a shape error
        raise ValueError("Shape mismatch inside plate('data')\n Trace Shapes:\n  a 3\n  y 4")

    with pytest.warns(VectorizationWarning) as record:
        vectorized_or_looped(None, traced, looped, "w", 3)
    message = str(record[0].message)
    assert "(ValueError: Shape mismatch inside plate('data'))" in message
    assert "Trace Shapes" not in message and "\n" not in message  # one line (tester 23)


def test_the_loop_after_a_failed_vectorized_run_draws_what_it_would_have_drawn_alone():
    """Tester BE: a BatchNorm model's validation fell back to the loop at every call of a
    resumed fit's first, after a vectorized attempt that had drawn first, and its draws
    (and the run's after them) were not the uninterrupted fit's, which had stopped trying."""

    def vectorized():
        torch.rand(5)  # a guide's draws before the model's layer fails on the particle dim
        np.random.rand(2)  # noqa: NPY002  Pyro's streams all
        raise RuntimeError("running_mean should contain 162 elements not 4")

    def looped():
        return torch.rand(3), np.random.rand(1)  # noqa: NPY002

    pyro.set_rng_seed(0)
    alone = looped(), torch.rand(1)
    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning):
        (result, was_vectorized) = vectorized_or_looped(None, vectorized, looped, "w", 3)
    after = torch.rand(1)
    assert not was_vectorized
    assert torch.equal(result[0], alone[0][0]) and result[1] == alone[0][1]
    assert torch.equal(after, alone[1])


def test_when_the_loop_fails_too_its_own_error_is_raised_without_a_warning():
    def looped():
        raise KeyError("the model's own error")

    def vectorized():
        raise ValueError("broadcast")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError, match="the model's own error"):
            vectorized_or_looped(None, vectorized, looped, "w", 3)


def test_particles_that_visit_different_sites_cannot_be_stacked():
    def branching(x):
        if pyro.sample("b", dist.Bernoulli(0.5)).item():
            pyro.sample("extra", dist.Normal(0.0, 1.0))

    def branching_guide(x):
        pyro.sample("b", dist.Bernoulli(0.5))
        # no "extra": it is drawn from the prior when the branch is taken

    pairs = []
    for _ in range(20):
        pairs.append(run_pair(branching, branching_guide, (X,), {}))
        for tr in pairs[-1]:
            tr.compute_log_prob()
    assert {len(sample_sites(m)) for m, _ in pairs} == {1, 2}  # seeded: both branches occur
    with pytest.raises(ValueError, match=r"particles visited different sample sites \(\['b'"):
        stack_particles(pairs, 1)


def test_stacked_sites_recompute_their_sums_and_keep_every_particle():
    def masked(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3), poutine.mask(mask=torch.tensor([True, False, True])):
            pyro.sample("z", dist.Normal(mu, 1.0))

    pairs = []
    for _ in range(3):
        model_tr, guide_tr = run_pair(masked, guide, (X,), {})
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        pairs.append((model_tr, guide_tr))
    model_tr, guide_tr = stack_particles(pairs, 2)
    z = model_tr.nodes["z"]
    assert z["value"].shape == (3, 3) and len(z["fns"]) == 3 and z["fn"] is z["fns"][0]
    assert "score_parts" not in z
    torch.testing.assert_close(z["log_prob_sum"], z["log_prob"].sum())
    torch.testing.assert_close(
        z["log_prob"], torch.stack([p[0].nodes["z"]["log_prob"] for p in pairs])
    )
    assert z["mask"].shape == (3, 3) and z["mask"][:, 1].eq(False).all()
    assert model_tr.nodes["mu"]["value"].shape == (3, 1)
    assert z["cond_indep_stack"][-1].name == PARTICLES and z["cond_indep_stack"][-1].dim == -2


def test_stack_values_brings_batch_dims_to_one_rank_and_broadcasts():
    out = stack_values([torch.tensor([1.0, 2.0, 3.0]), 4.0], 1, 0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]))
    events = stack_values([torch.ones(2), torch.zeros(3, 2)], 2, 1)  # event dim of size 2
    assert events.shape == (2, 1, 3, 2) and events[0].eq(1).all() and events[1].eq(0).all()


def test_run_pair_replays_the_model_on_the_guide_and_lets_nothing_escape():
    with poutine.trace() as outer:
        model_tr, guide_tr = run_pair(model, guide, (X,), {}, particles=(6, -2))
    assert not outer.trace.nodes
    for name in ("mu", "z"):
        assert model_tr.nodes[name]["value"] is guide_tr.nodes[name]["value"]
    assert guide_tr.nodes["mu"]["value"].shape == (6, 1)
    assert model_tr.nodes["x"]["is_observed"] and torch.equal(model_tr.nodes["x"]["value"], X)
    model_tr, guide_tr = run_pair(model, guide, (X,), {})
    assert guide_tr.nodes["z"]["value"].shape == (3,)


def test_sample_sites_leave_out_params_and_subsample_sites():
    def with_param(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", 10, subsample_size=3):
            pyro.sample("z", dist.Normal(loc, 1.0))

    trace = poutine.trace(with_param).get_trace(X)
    assert {s["type"] for s in trace.nodes.values()} >= {"param", "sample"}
    assert "data" in trace.nodes and list(sample_sites(trace)) == ["z"]


def test_plate_nesting_counts_vectorized_plates_only():
    def nested(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("a", 2, dim=-1), pyro.plate("b", 3, dim=-3):
            pyro.sample("w", dist.Normal(0.0, 1.0))
        for i in pyro.plate("sequential", 2):
            pyro.sample(f"s{i}", dist.Normal(0.0, 1.0))

    def flat(x):
        with pyro.plate("c", 4, dim=-2):
            pyro.sample("v", dist.Normal(0.0, 1.0))

    def no_plates(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    traces = {f.__name__: poutine.trace(f).get_trace(X) for f in (nested, flat, no_plates)}
    assert plate_nesting(traces["nested"]) == 3
    assert plate_nesting(traces["flat"]) == 2
    assert plate_nesting(traces["no_plates"]) == 0
    assert plate_nesting(traces["no_plates"], traces["flat"]) == 2
    assert plate_nesting() == 0


@pytest.mark.parametrize(
    "value, rank, shape",
    [
        (torch.tensor(2.0), 3, (1, 1, 1)),
        (torch.ones(4, 5), 3, (1, 4, 5)),
        (torch.ones(4, 5), 2, (4, 5)),
        (1.5, 2, (1, 1)),
        ([1.0, 2.0], 2, (1, 2)),
    ],
)
def test_full_rank_prepends_singleton_dims(value, rank, shape):
    out = full_rank(value, rank)
    assert out.shape == shape
    torch.testing.assert_close(out.reshape(-1), torch.as_tensor(value).reshape(-1))


def test_a_guide_that_draws_one_particle_per_run_is_looped_unless_told_otherwise():
    def plain(x):
        pass

    def one_at_a_time(x):
        pass

    one_at_a_time.vectorizable = False
    assert vectorize_for(plain, None) is None and vectorize_for(one_at_a_time, None) is False
    assert vectorize_for(one_at_a_time, True) is True  # asked for: tried, and it raises


def test_sample_sites_where_keeps_the_chosen_sample_sites_in_order_without_subsample_sites():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("b", dist.Normal(a, 1.0))
            pyro.sample("y", dist.Normal(a, 1.0), obs=torch.zeros(3))

    trace = poutine.trace(model).get_trace()
    assert list(sample_sites_where(trace, lambda _, s: not s["is_observed"]).nodes) == ["a", "b"]
    kept = sample_sites_where(trace, lambda name, _: name in {"y", "data"})
    assert list(kept.nodes) == ["y"] and kept.nodes["y"] is not trace.nodes["y"]
    assert kept.nodes["y"]["value"] is trace.nodes["y"]["value"]


def test_looped_particles_share_one_subsample_of_each_subsampling_plate():
    """As a vectorized run's particles do: each looped particle drew its own subsample, and
    a bound averaging weights over particles mixed datapoints (tester M)."""
    x = torch.arange(20.0)

    def model(x):
        with pyro.plate("data", 20, subsample_size=4) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[i])

    def guide(x):
        with pyro.plate("data", 20, subsample_size=4) as i:
            pyro.sample("z", dist.Normal(0.1 * x[i], 1.0))

    pyro.set_rng_seed(0)
    model_tr, guide_tr, vectorized = particle_traces(model, guide, (x,), {}, 6, 1, False)
    assert not vectorized
    observed = model_tr.nodes["x"]["value"]  # [6, 4]: each particle's rows of x
    assert observed.shape == (6, 4) and (observed == observed[0]).all()
    assert len(set(observed[0].tolist())) == 4  # a subsample of 4 distinct rows
    shared = SharedSubsamples()
    first = poutine.trace(shared(model)).get_trace(x).nodes["data"]["value"]
    again = poutine.trace(shared(guide)).get_trace(x).nodes["data"]["value"]
    assert torch.equal(first, again)


def test_a_guide_only_latent_beside_a_drawn_model_latent_is_refused():
    """Tester T's F3: a hierarchical guide q(z, u) = q(u) q(z | u) whose marginal q(z) is the
    exact posterior N(x/2, 1/2) gave IWAE "log p(x)" rising with K past the exact
    log N(x; 0, 2) (K = 10⁵: 1.21 where −1.33) and an "ELBO" log p(x) + H[q(u | z)] above
    it, with no word. An autoguide's auxiliary latent, reaching the model by point masses,
    is let through."""
    from pyro.infer.autoguide import AutoMultivariateNormal

    from pyro_vae.evaluate import iwae_log_likelihood
    from pyro_vae.traces import particle_traces

    x = torch.tensor([0.5, -1.0, 2.0])

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            u = pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
            pyro.sample("z", dist.Normal(x / 2 + 0.5 * u, 0.5))

    with pytest.raises(ValueError, match=r"guide: it draws \['u'\], which the model does not"):
        iwae_log_likelihood(model, guide, x, num_samples=10)
    pyro.clear_param_store()
    autoguide = AutoMultivariateNormal(model)
    model_tr, guide_tr, _ = particle_traces(model, autoguide, (x,), {}, 4, 1)
    assert "_AutoMultivariateNormal_latent" in guide_tr.nodes and "z" in model_tr.nodes


def test_a_guide_draw_of_a_site_the_model_observes_is_refused_by_the_evaluators():
    """Tester CU: Pyro only warns of a guide that draws an observed site; its log q then
    entered every estimate. The evaluators refuse it, as the estimators do; observed in
    the guide too (a label the guide conditions on), or auxiliary, it is no draw."""
    from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood
    from pyro_vae.traces import refuse_guide_draws_of_observed_sites

    x = torch.tensor([0.5, -1.0, 2.0])

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, observed=False, auxiliary=False):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(x / 2, 0.7))
            infer = {"is_auxiliary": True} if auxiliary else {}
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x if observed else None, infer=infer)

    refusal = r"guide: it draws \['x'\], which the model observes"
    for evaluator in (elbo_per_datapoint, iwae_log_likelihood):
        with pytest.raises(ValueError, match=refusal):
            evaluator(model, guide, x, num_samples=4)
    for options in ({"observed": True}, {"auxiliary": True}):
        traces = run_pair(model, functools.partial(guide, **options), (x,), {})
        refuse_guide_draws_of_observed_sites(*traces)  # let through


def test_an_observation_the_guide_scores_is_refused_by_the_evaluators():
    """Tester CX: a guide observing a label with a density (Pyro's semi-supervised VAE
    example's q(y | x)) gave iwae_log_likelihood log p(x, y) − log q(y | x), +0.42 nats
    above the exact log p(x, y) of a row. The evaluators refuse it; a point mass at the
    observed label scores 0 and gives the exact log p(x, y) of this conjugate model:
    log N(x; 0, 2) + log Bernoulli(y; 0.3), to Monte Carlo error (K = 2,000)."""
    from pyro_vae.evaluate import elbo_estimate, elbo_per_datapoint, iwae_log_likelihood

    x, y = torch.tensor([0.3, 1.5, -0.4]), torch.tensor([1.0, 0.0, 1.0])

    def model(x, y):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Bernoulli(0.3), obs=y)
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, y, point_mass=False):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.5 * x, 0.5**0.5))  # the exact posterior
            label = dist.Delta(y) if point_mass else dist.Bernoulli(0.9)
            pyro.sample("y", label, obs=y)

    refusal = r"guide: it observes \['y'\] with a density"
    for evaluator in (iwae_log_likelihood, elbo_per_datapoint):
        with pytest.raises(ValueError, match=refusal):
            evaluator(model, guide, (x, y), num_samples=4)
    with pytest.raises(ValueError, match=refusal):
        elbo_estimate(model, guide, x, y, num_samples=4)
    exact = dist.Normal(0.0, 2**0.5).log_prob(x) + dist.Bernoulli(0.3).log_prob(y)
    pyro.set_rng_seed(0)
    found = iwae_log_likelihood(model, functools.partial(guide, point_mass=True), (x, y),
                                num_samples=2000)  # fmt: skip
    assert torch.allclose(found, exact, atol=1e-4)  # exact q: every weight is p(x, y)


def test_a_guide_only_latent_passed_on_whole_by_a_point_mass_is_let_through():
    """A latent u the guide gives a model site whole, as a point mass at u (AutoCAVI's q
    joint over a plate's elements, drawn outside the plate), beside a model latent drawn
    from a density: q(u | z) is a point mass, so log p(x, z) − log q(z, u) is log p − log
    q(z) and IWAE's estimate stays a bound. At K = 2,000 it lies within 0.02 nats below
    the exact log N(x; 0, 3) (its gap there, from the marginal q, is about 0.01) and
    never above it. A point mass at a function of u (2u) is still refused."""
    from pyro_vae.evaluate import iwae_log_likelihood

    x = torch.tensor([0.7])

    def model(x):
        with pyro.plate("data", 1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + w, 1.0), obs=x)

    def guide(x, passed=lambda u: u):
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Normal(0.2, 0.8))
            u = pyro.sample("u", dist.Normal(0.3, 0.8), infer={"is_auxiliary": True})
            pyro.sample("w", dist.Delta(passed(u)))

    def drawn(x):  # the same q(z) q(w), w drawn from its density at the site itself
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Normal(0.2, 0.8))
            pyro.sample("w", dist.Normal(0.3, 0.8))

    estimates = []
    for pair_guide in (guide, drawn):  # the same draws at the same seed
        pyro.set_rng_seed(0)
        estimate = iwae_log_likelihood(model, pair_guide, x, num_samples=2000)
        estimates.append(float(torch.as_tensor(estimate).sum()))
    exact = float(dist.Normal(0.0, math.sqrt(3.0)).log_prob(x))
    assert estimates[0] == pytest.approx(estimates[1], abs=1e-5) and estimates[0] < exact
    refused = r"guide: it draws \['u'\], which the model does not"
    with pytest.raises(ValueError, match=refused):
        iwae_log_likelihood(model, lambda x: guide(x, lambda u: 2 * u), x, num_samples=10)


def test_an_autonormal_site_beside_a_hand_written_draw_is_let_through():
    """Tester CW: AutoNormal of a constrained global s (its auxiliary s_unconstrained u,
    then a point mass at exp(u) whose log_density is −log |d exp(u)/du|) beside a
    hand-written draw of the local z was refused by iwae and vimco as a guide-only latent;
    q(s) is the exact LogNormal, and the same q written by hand was taken. Expected: the
    same IWAE_5 losses, draw for draw, as that hand-written guide (a LogNormal q(s) at the
    autoguide's loc and scale); a point mass at 2·exp(u) is still refused."""
    from pyro.infer.autoguide import AutoNormal

    from pyro_vae.estimators import IWAELBO

    torch.manual_seed(0)
    x = torch.randn(20)

    def model(x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", 20):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, s), obs=x)

    pyro.clear_param_store()
    auto = AutoNormal(poutine.block(model, expose=["s"]))

    def local(x):
        with pyro.plate("data", 20):
            pyro.sample("z", dist.Normal(0.5 * x, 0.8))

    def guide(x):
        auto(x)
        local(x)

    def by_hand(x):
        pyro.sample("s", dist.LogNormal(auto.locs.s.detach(), auto.scales.s.detach()))
        local(x)

    def doubled(x):
        u = pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        pyro.sample("s", dist.Delta(2 * u.exp(), log_density=-u))
        local(x)

    losses = []
    for q in (guide, by_hand):
        pyro.set_rng_seed(3)
        losses.append([IWAELBO(num_particles=5).loss(model, q, x) for _ in range(5)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    with pytest.raises(ValueError, match=r"guide: it draws \['u'\], which the model does not"):
        IWAELBO(num_particles=5).loss(model, doubled, x)


def test_a_point_mass_carrying_a_change_of_variables_is_let_through_in_minibatches():
    """Tester CX: the same valid guide (Delta(exp(u), log_density=−u) beside a drawn w) was
    taken whole but refused in batches of 1, where u's and the point mass's log-densities
    carry the minibatch's scale N/B like the model's z. Expected: the rows' IWAE estimates
    either way, within 0.1 nats of each other (K = 4,000: Monte Carlo error about 0.02)."""
    from pyro_vae.evaluate import iwae_log_likelihood

    x = torch.tensor([0.3, 1.5])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(-1.0, 0.5))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(w, z), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("z_u", dist.Normal(-1.0, 0.5).expand([x.shape[0]]))
            pyro.sample("z", dist.Delta(u.exp(), log_density=-u))
            pyro.sample("w", dist.Normal(0.5 * x, 0.7))

    rows = []
    for batch_size in (2, 1):
        pyro.set_rng_seed(0)
        rows.append(iwae_log_likelihood(model, guide, x, num_samples=4000, batch_size=batch_size))
    assert (rows[0] - rows[1]).abs().max() < 0.1


@pytest.mark.parametrize("handler", ["mask", "scale", "model masks"])
def test_a_point_mass_carrying_a_change_of_variables_is_refused_unless_counted_whole(handler):
    """Tester CX: the exemption above let through Delta(exp(u), log_density=−u) under
    poutine.mask or poutine.scale (the change of variables dropped or rescaled: IWAE 0.5
    to 1.1 nats above the exact log p(x)), and a hand-written u (no is_auxiliary) carrying
    a latent the model masks (its masked-off elements' entropy in every weight: +1.9 nats
    at K = 10⁴, rising with K). Each is refused, as for an autoguide's auxiliary."""
    from contextlib import nullcontext

    from pyro_vae.evaluate import iwae_log_likelihood

    x, masked = torch.tensor([0.3, 1.5]), torch.tensor([True, False])

    def model(x):
        with pyro.plate("data", 2):
            with poutine.mask(mask=masked) if handler == "model masks" else nullcontext():
                z = pyro.sample("z", dist.LogNormal(-1.0, 0.5))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(w, torch.where(masked, z, torch.ones(2))), obs=x)

    def guide(x):
        with pyro.plate("data", 2):
            u = pyro.sample("z_u", dist.Normal(-1.0, 0.5).expand([2]))
            with poutine.mask(mask=masked) if handler == "mask" else nullcontext():
                with poutine.scale(scale=0.5 if handler == "scale" else 1.0):
                    pyro.sample("z", dist.Delta(u.exp(), log_density=-u))
            pyro.sample("w", dist.Normal(0.5 * x, 0.7))

    refusal = "the model masks off elements of 'z'" if handler == "model masks" else "z_u"
    with pytest.raises(ValueError, match=refusal):
        iwae_log_likelihood(model, guide, x, num_samples=10)


@pytest.mark.parametrize(
    "passing",
    ["two sites", "observed site", "log_density", "and 2u", "u a point mass", "discrete u",
     "masked u", "scaled u"],
)  # fmt: skip
def test_a_guide_only_latent_passed_on_other_than_one_to_one_is_refused(passing):
    """Tester AP: u given by Delta(u) to two model latents (q on the line z₁ = z₂, no
    density of z) gave IWAE 3.3 nats above the exact log p(x); Delta(u) at the observed
    site's name (u then a free auxiliary) 9 to 10 above it; a point mass adding a
    log_density adds it to every estimate; and a second site given 2u has no density
    either. Tester AQ: u itself a point mass at a drawn z₁ (the same line, 3.7 nats
    above), a discrete u (point masses, no density), and u's log q masked or scaled (1.3
    to 1.4 nats above). Each is refused, as before the point-mass rule."""
    from pyro_vae.evaluate import iwae_log_likelihood

    x = torch.tensor([0.3])

    def model(x):
        with pyro.plate("data", 1):
            z1 = pyro.sample("z1", dist.Normal(0.0, 0.01))
            z2 = pyro.sample("z2", dist.Normal(0.0, 0.01))
            z3 = pyro.sample("z3", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z1 + z2 + z3, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 1):
            if passing in ("two sites", "observed site", "log_density", "and 2u"):
                u = pyro.sample("u", dist.Normal(0.0, 0.01), infer={"is_auxiliary": True})
            if passing == "two sites":
                pyro.sample("z1", dist.Delta(u))
                pyro.sample("z2", dist.Delta(u))
            elif passing == "observed site":
                pyro.sample("x", dist.Delta(u))
                pyro.sample("z1", dist.Normal(0.0, 0.01))
                pyro.sample("z2", dist.Normal(0.0, 0.01))
            elif passing == "log_density":
                pyro.sample("z1", dist.Delta(u, log_density=torch.tensor(-5.0)))
                pyro.sample("z2", dist.Normal(0.0, 0.01))
            elif passing == "and 2u":
                pyro.sample("z1", dist.Delta(u))
                pyro.sample("z2", dist.Delta(2 * u))
            else:
                z1 = pyro.sample("z1", dist.Normal(0.0, 0.01))
                if passing == "u a point mass":
                    u = pyro.sample("u", dist.Delta(z1), infer={"is_auxiliary": True})
                elif passing == "discrete u":
                    u = pyro.sample("u", dist.Bernoulli(0.5), infer={"is_auxiliary": True})
                elif passing == "masked u":
                    u = pyro.sample("u", dist.Normal(0.0, 0.01).mask(False))
                else:
                    with poutine.scale(scale=1e-3):
                        u = pyro.sample("u", dist.Normal(0.0, 0.01))
                pyro.sample("z2", dist.Delta(u))
            pyro.sample("z3", dist.Normal(0.15, 0.7))

    refusal = r"guide: it draws \['u'\], which the model does not"
    if passing == "observed site":  # refused first as a draw of an observed site
        refusal = r"guide: it draws \['x'\], which the model observes"
    with pytest.raises(ValueError, match=refusal):
        iwae_log_likelihood(model, guide, x, num_samples=10)


def test_elements_the_model_masks_off_and_the_guide_scores_are_refused():
    """Tester T's F4: with the model's padding masked and the guide's not, log q counted
    the padded steps and log p did not: IWAE's log p(x) came out log 3 high for the padded
    row (−0.49 where −1.60), with no word. Masked alike, it is let through."""
    from pyro_vae.traces import particle_traces
    from tests.pyro_vae.padded import X, padded_pair

    model, guide = padded_pair(guide_masked=False)
    with pytest.raises(ValueError, match=r"guide: site 'c_1' has elements the model masks off"):
        particle_traces(model, guide, (X,), {}, 4, 1)
    model, guide = padded_pair(guide_masked=True)
    model_tr, _, _ = particle_traces(model, guide, (X,), {}, 4, 1)
    assert model_tr.nodes["c_1"]["mask"] is not None


MASKED_X = torch.tensor([0.5, -1.0, 2.0])
MASKED_ON = torch.tensor([True, False, True])


def masked_site(name, fn, how):
    """``fn`` drawn at ``name`` with element 1 masked off: by ``poutine.mask``, by
    ``.mask(...)``, or not at all."""
    if how == "poutine":
        with poutine.mask(mask=MASKED_ON):
            return pyro.sample(name, fn)
    if how == "dist":
        return pyro.sample(name, fn.mask(MASKED_ON))
    return pyro.sample(name, fn)


def masked_pair(model_mask, guide_mask):
    """z_n ~ N(0, 1), x_n ~ N(z_n, 0.7²); q(z_n) = N(0, 0.5²); z_1 masked as told."""

    def model(x):
        with pyro.plate("data", 3):
            z = masked_site("z", dist.Normal(torch.zeros(3), 1.0), model_mask)
            pyro.sample("x", dist.Normal(z, 0.7), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            masked_site("z", dist.Normal(torch.zeros(3), 0.5), guide_mask)

    return model, guide


@pytest.mark.parametrize("model_mask", ["poutine", "dist"])
@pytest.mark.parametrize("guide_mask", ["none", "poutine", "dist"])
def test_either_kind_of_mask_counts_on_either_side(model_mask, guide_mask):
    """Tester's fault 2: the check read poutine.mask alone, so a model's poutine.mask met by
    the guide's .mask(...) (Pyro's obs_mask idiom) was refused, and a model's .mask(...)
    with an unmasked guide was let through, scoring z_1's entropy. Refused iff the guide
    leaves the masked-off element on, whichever kind of mask either side uses."""
    model, guide = masked_pair(model_mask, guide_mask)
    pyro.set_rng_seed(0)
    if guide_mask == "none":
        with pytest.raises(ValueError, match=r"guide: site 'z' has elements the model masks off"):
            particle_traces(model, guide, (MASKED_X,), {}, 4, 1)
        return
    model_tr, guide_tr, _ = particle_traces(model, guide, (MASKED_X,), {}, 4, 1)
    assert guide_tr.nodes["z"]["log_prob"][:, 1].eq(0).all()


@pytest.mark.parametrize("guide_mask", ["poutine", "dist"])
def test_elements_the_guide_masks_off_and_the_model_scores_are_refused(guide_mask):
    """The converse of tester T's F4 (review): a guide that masks z_1 while the model scores
    it leaves log q(z_1) out of an estimate that keeps log p(z_1) and log p(x_1 | z_1). On
    z ~ N(0, 1), x ~ N(z, 0.1²), x_1 = 0 and q(z_1) = N(0, 0.01²) that estimate is
    E_q log p(x_1, z_1) = −0.919 + 1.384 − 0.005 = 0.460 nats, and log p(x_1) =
    log N(0; 0, 1.01) = −0.924: 1.38 nats above, on the old code, with no word."""

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0))
            pyro.sample("x", dist.Normal(z, 0.1), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            masked_site("z", dist.Normal(torch.zeros(3), 0.01), guide_mask)

    x = torch.tensor([0.5, 0.0, 2.0])
    with pytest.raises(ValueError, match=r"guide: site 'z' has elements the guide masks off"):
        particle_traces(model, guide, (x,), {}, 4, 1)
    from pyro_vae.evaluate import elbo_per_datapoint

    with pytest.raises(ValueError, match=r"the model scores: log p counts them"):
        elbo_per_datapoint(model, guide, x, num_samples=10)


def test_a_mask_under_to_event_is_compared_element_by_element():
    """A ``.mask(...)`` under ``.to_event(1)`` masks elements of one event (the three z_n
    as one site, no plate); it is compared with the guide's element by element, and a
    mask on the whole event (``poutine.mask``) is spread over its elements."""
    off_1, on_1 = MASKED_ON, ~MASKED_ON

    def pair(model_mask, guide_mask):
        def model(x):
            with poutine.mask(mask=model_mask[0]):
                z = pyro.sample(
                    "z", dist.Normal(torch.zeros(3), 1.0).mask(model_mask[1]).to_event(1)
                )
            pyro.sample("x", dist.Normal(z, 0.7).to_event(1), obs=x)

        def guide(x):
            fn = dist.Normal(torch.zeros(3), 0.5).mask(guide_mask).to_event(1)
            pyro.sample("z", fn)

        return model, guide

    for model_mask, guide_mask, refused in [
        ((True, off_1), torch.tensor(True), True),
        ((True, off_1), on_1, True),
        ((True, off_1), off_1, False),
        ((torch.tensor(False), True), off_1, True),  # the whole event off, two of it scored
        ((torch.tensor(False), True), torch.tensor(False), False),
        ((True, True), off_1, True),  # the guide masks z_1 off, the model scores it
        ((True, off_1), torch.tensor(False), True),  # the guide masks all, the model two
    ]:
        model, guide = pair(model_mask, guide_mask)
        pyro.set_rng_seed(0)
        if refused:
            with pytest.raises(ValueError, match=r"guide: site 'z' has elements the (model|guide)"):
                particle_traces(model, guide, (MASKED_X,), {}, 4, 0)
        else:
            particle_traces(model, guide, (MASKED_X,), {}, 4, 0)


def test_a_model_mask_matched_by_the_guide_s_mask_scores_the_closed_form_elbo():
    """The ELBO of the pair masked alike, each way: the masked-off z_1 contributes
    E_q log N(x_1; z_1, 0.7²) alone, the others the full ELBO, in closed form for
    q = N(0, 0.5²). Tolerance: 4 Monte Carlo standard errors of the mean of 4000 draws."""
    from pyro_vae.evaluate import elbo_per_datapoint, log_importance_weights

    s, sigma, x, k = 0.5, 0.7, MASKED_X, 4000
    likelihood = -0.5 * math.log(2 * math.pi * sigma**2) - (x**2 + s**2) / (2 * sigma**2)
    prior = -0.5 * math.log(2 * math.pi) - s**2 / 2
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    exact = torch.where(MASKED_ON, likelihood + prior + entropy, likelihood)
    for model_mask, guide_mask in [("poutine", "dist"), ("dist", "poutine"), ("dist", "dist")]:
        model, guide = masked_pair(model_mask, guide_mask)
        pyro.set_rng_seed(0)
        se = log_importance_weights(model, guide, x, k).std(0) / math.sqrt(k)
        pyro.set_rng_seed(1)
        elbo = elbo_per_datapoint(model, guide, x, num_samples=k)
        assert ((elbo - exact).abs() < 4 * se).all(), (model_mask, guide_mask, elbo, exact)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception it was raised from or during the handling of."""
    seen: list[BaseException] = []
    stack = [error]
    while stack:
        e = stack.pop()
        if e is not None and not any(e is s for s in seen):
            seen.append(e)
            stack += [e.__cause__, e.__context__]
    return seen


def test_a_model_error_is_raised_at_once_alone_and_without_the_warning():
    """A ValueError of the model's own code fails every particle of a loop too: it is raised
    once, as the model raised it, not as raised "during handling" of the vectorized run's,
    and no VectorizationWarning blames the particles (builder L's L2)."""

    def checks_its_data(x):
        if (x < 0).any():
            raise ValueError("x: negative counts; expected counts ≥ 0")
        cannot_broadcast(x)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="negative counts") as raised:
            particle_traces(checks_its_data, mu_guide, (X,), {}, 5, 1)
    # one raise of the model's (Pyro's trace adds its shape table, chaining the original)
    originals = [
        e for e in _chain(raised.value) if str(e) == "x: negative counts; expected counts ≥ 0"
    ]
    assert len(originals) == 1
    # the case the fallback is for still falls back: .item() under the particle plate
    with pytest.warns(VectorizationWarning, match=r"\(RuntimeError: "):
        _, _, vectorized = particle_traces(checks_its_data, mu_guide, (X.abs(),), {}, 5, 1)
    assert vectorized is False


@pytest.mark.parametrize(
    "error",
    [
        ValueError('at site "z", plate stack overflow\nTry increasing max_plate_nesting to 2'),
        KeyError("decoder"),
        AttributeError("'Tensor' object has no attribute 'decode'"),
        ZeroDivisionError("float division by zero"),
    ],
)
def test_errors_the_particle_dim_cannot_cause_skip_the_loop(error):
    """Too small a max_plate_nesting for the model's own plates, or a key, attribute or
    division error, is no vectorization failure: raised at once, as it is; the loop that
    hid it (a first step's number and a warning blaming vectorization, then "plate stack
    overflow" at every later step: builder K's K2) is not run."""
    calls = []

    def vectorized():
        raise error

    def looped():
        calls.append("looped")
        return "looped result"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(type(error)) as raised:
            vectorized_or_looped(None, vectorized, looped, "w", 3)
    assert raised.value is error and calls == []


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("The size of tensor a (5) must match the size of tensor b (3)"),
        ValueError("Shape mismatch inside plate('data') at site x dim -1, 3 vs 5"),
        IndexError("The shape of the mask [5, 3] does not match the shape of the indexed"),
        TypeError("only integer tensors of a single element can be converted to an index"),
        AssertionError("this model handles one draw at a time"),
    ],
)
def test_errors_the_particle_dim_can_cause_fall_back_to_the_loop(error):
    def vectorized():
        raise error

    with pytest.warns(VectorizationWarning, match=type(error).__name__):
        result = vectorized_or_looped(None, vectorized, lambda: "looped result", "w", 3)
    assert result == ("looped result", False)


def test_an_autoguide_on_a_model_that_masks_part_of_a_latent_is_refused():
    """Tester AJ: AutoNormal on padded sequences got past the mask checks (its z is a Delta
    image of an auxiliary draw, left out of them), and its auxiliary density scored the
    padded steps: IWAE at K = 1000 came out up to 8.1 nats above the exact log p(x)
    (closed form: N(0, 1.25) per unpadded step), rising with K. Refused; the same
    autoguide on the unmasked model, and AutoDelta's point (no density), are let through."""
    from pyro.infer.autoguide import AutoDelta, AutoNormal

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    on = torch.arange(5) < torch.tensor([5, 3, 2, 4])[:, None]

    def model(x, masked=True):
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(torch.zeros_like(x), 1.0)
            z = pyro.sample("z", (prior.mask(on) if masked else prior).to_event(1))
            likelihood = dist.Normal(z, 0.5)
            pyro.sample("x", (likelihood.mask(on) if masked else likelihood).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"the model masks off elements of 'z'.*auxiliary"):
        particle_traces(model, AutoNormal(model), (x,), {}, 4, 1)
    pyro.clear_param_store()
    particle_traces(model, AutoNormal(model), (x,), {"masked": False}, 4, 1)
    pyro.clear_param_store()
    particle_traces(model, AutoDelta(model), (x,), {}, 4, 1)


def test_buffers_kept_puts_a_lazy_norm_back_as_torch_makes_it():
    """A lazy module's buffers do not exist before its first call: copying them raised
    ValueError ("Attempted to use an uninitialized parameter"), on the first run of any
    model holding a LazyBatchNorm1d. Expected after the block: the values torch makes a
    BatchNorm1d of that size with (a fresh one's), beside a plain BatchNorm1d's put back."""
    torch.manual_seed(0)
    lazy, plain = torch.nn.LazyBatchNorm1d(), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        plain.running_mean.fill_(0.5)
    with buffers_kept():
        for _ in range(2):  # the second call finds the buffers made: copied then
            plain(lazy(torch.randn(4, 3) + 2.0))
    fresh = torch.nn.BatchNorm1d(3)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(lazy, name), getattr(fresh, name)), name
    assert torch.equal(plain.running_mean, torch.full((3,), 0.5))
    assert int(plain.num_batches_tracked) == 0
    lazy(torch.randn(4, 3))  # and it trains on after
    assert int(lazy.num_batches_tracked) == 1


def test_an_autonormal_masked_as_the_model_masks_is_taken():
    """Review of cb181f9..c795b70: under poutine.mask with the model's mask, AutoNormal's
    auxiliary z_unconstrained counts exactly the elements log p counts, yet the pair was
    refused ("scores every element, the masked-off ones too"); unmasked, it is refused."""
    from pyro.infer.autoguide import AutoNormal

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    on = torch.tensor([True, True, False, True])

    def model(x):
        with pyro.plate("data", 4):
            with poutine.mask(mask=on):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None], 1.0).to_event(1), obs=x)

    particle_traces(model, poutine.mask(AutoNormal(model), mask=on), (x,), {}, 4, 1)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"masks off elements of 'z'.*AutoNormal under"):
        particle_traces(model, AutoNormal(model), (x,), {}, 4, 1)


def test_buffers_kept_puts_back_only_moved_buffers_so_a_graph_saving_the_others_runs():
    """The guide check of a step (pyro_vae.estimators.plate_escapes) runs inside
    buffers_kept between the step's forward and backward passes: copying back every buffer
    bumped an autoregressive flow's mask's version, and the step's backward pass failed
    ("modified by an inplace operation"). A moved buffer is still put back."""
    from pyro_vae.traces import buffers_kept

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2, 2))
            self.register_buffer("mask", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x @ (self.weight * self.mask).T

    net, x = Masked(), torch.randn(4, 2)
    loss = net(x).pow(2).sum()  # the graph saves the mask
    with buffers_kept():
        net(x + 1)
    assert net.calls.item() == 1  # moved, and put back
    loss.backward()
    assert net.weight.grad is not None


def test_a_guide_site_marked_flat_prior_may_score_elements_the_model_masks_off():
    """A prior the model masks off while its data read the latent is flat (tester DB:
    AutoCAVI fits such a latent, and the evaluators refused the fit); a guide says so by
    ``infer={"flat_prior": True}``. Unmarked, the refusal stands, and names that way out."""
    import pyro.poutine as poutine

    from pyro_vae.traces import refuse_mask_mismatches

    def model():
        lam = pyro.sample("lam", dist.Gamma(2.0, 1.0).mask(False))
        pyro.sample("k", dist.Poisson(lam), obs=torch.tensor(3.0))

    def guide(marked):
        infer = {"flat_prior": True} if marked else {}
        pyro.sample("lam", dist.Gamma(4.0, 1.0), infer=infer)

    for marked in (True, False):
        guide_trace = poutine.trace(guide).get_trace(marked)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace()
        if marked:
            refuse_mask_mismatches(model_trace, guide_trace)
            continue
        with pytest.raises(ValueError, match="infer={'flat_prior': True}"):
            refuse_mask_mismatches(model_trace, guide_trace)


def branching_model():
    z = pyro.sample("z", dist.Bernoulli(0.5).expand([2]).to_event(1))
    g = pyro.sample("g", dist.Normal(z.sum(-1), 1.0))
    pyro.sample("x", dist.Normal(g, 1.0), obs=torch.tensor(1.0))


def branching_guide():
    p = pyro.param("p", torch.tensor(0.3))
    z = pyro.sample("z", dist.Bernoulli(p).expand([2]).to_event(1))
    loc = torch.tensor(1.0) if z.sum() > 0.5 else torch.tensor(-1.0)  # a branch in Python
    pyro.sample("g", dist.Normal(loc, 1.0))


def copy_branching_guide():
    """``branching_guide`` whose branch reads a copy made by a function that does not ask
    the draw's class (torch converts the data itself): the copy went untracked."""
    p = pyro.param("p", torch.tensor(0.3))
    z = pyro.sample("z", dist.Bernoulli(p).expand([2]).to_event(1))
    copy = torch.as_tensor(z, dtype=torch.float64)
    loc = torch.tensor(1.0) if copy.sum() > 0.5 else torch.tensor(-1.0)
    pyro.sample("g", dist.Normal(loc, 1.0))


def branching_elbo() -> float:
    """The guide's exact ELBO: a sum over z's four states, each with the closed-form
    expectations over g ~ N(loc, 1) of the Gaussian log-densities."""
    log_2pi, total = math.log(2 * math.pi), 0.0
    for z1 in (0, 1):
        for z2 in (0, 1):
            q_z = (0.3 if z1 else 0.7) * (0.3 if z2 else 0.7)
            s = z1 + z2
            loc = 1.0 if s > 0.5 else -1.0
            log_p_g = -0.5 * log_2pi - 0.5 * ((loc - s) ** 2 + 1)  # E log N(g; s, 1)
            log_p_x = -0.5 * log_2pi - 0.5 * ((1 - loc) ** 2 + 1)  # E log N(1; g, 1)
            log_q_g = -0.5 * log_2pi - 0.5  # E log N(g; loc, 1)
            total += q_z * (math.log(0.25) - math.log(q_z) + log_p_g + log_p_x - log_q_g)
    return total


@pytest.mark.parametrize("guide", [branching_guide, copy_branching_guide])
def test_a_guide_branching_on_a_draw_in_python_is_looped_and_estimates_its_own_elbo(guide):
    """One vectorized run read z.sum() over all 8 particles, so every particle took the
    first branch; the plain-run comparison saw only the last particle, which (at this
    seed) took it too. ``score``'s mean ELBO estimate was −1.87, 115 standard errors above
    the exact −2.85 (tester DE found the kind). Each particle must take its own branch,
    also where the branch reads a copy ``torch.as_tensor`` made (once not followed)."""
    from pyro_vae.estimators import get

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    estimator = get("score", num_particles=8)
    with pytest.warns(VectorizationWarning, match=r"draw 'z' is read into Python \(__bool__ at"):
        losses = [estimator.loss(branching_model, guide) for _ in range(250)]
    elbos = -torch.tensor(losses, dtype=torch.float64)
    se = elbos.std() / math.sqrt(len(elbos))
    assert abs(elbos.mean() - branching_elbo()) < 5 * se  # se ≈ 0.06 nats; the fault: 1 nat


def test_a_model_branching_on_a_draw_in_python_is_drawn_one_at_a_time():
    """The model's own branch on a draw: each particle's log p(g | z) must be by its own z."""

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5).expand([2]).to_event(1))
        loc = 2.0 if bool(z.sum() > 0.5) else -2.0
        pyro.sample("g", dist.Normal(loc, 1.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(0.3).expand([2]).to_event(1))
        pyro.sample("g", dist.Normal(0.0, 1.0))

    pyro.set_rng_seed(3)
    with pytest.warns(VectorizationWarning, match=r"model: a value of draw 'z' is read"):
        model_tr, guide_tr, vectorized = particle_traces(model, guide, (), {}, 8, 0)
    assert not vectorized
    z, g = guide_tr.nodes["z"]["value"], guide_tr.nodes["g"]["value"]
    loc = torch.where(z.sum(-1) > 0.5, 2.0, -2.0)
    assert torch.allclose(model_tr.nodes["g"]["log_prob"], normal_log_pdf(g, loc, 1.0))


def test_an_assert_on_a_draw_keeps_vectorized_particles_where_they_are_insisted_on():
    """An assert reads a draw and decides nothing: with vectorize=True the particles stay
    vectorized, with a warning naming the read and the way to draw them one at a time;
    left to choose (None), they are looped, and the warning says how to keep them."""

    def asserting_guide(x):
        mu = pyro.sample("mu", dist.Normal(0.3, 0.8))
        assert torch.isfinite(mu).all()
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x.mean(-1), 0.7))

    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning, match=r"\(--vectorize-particles off\) draws") as got:
        *_, vectorized = particle_traces(model, asserting_guide, (X,), {}, 4, 1, True)
    assert vectorized
    assert got[0].filename == __file__  # the user's call, not the library's lines
    with pytest.warns(VectorizationWarning, match=r"\(--vectorize-particles on\) keeps"):
        *_, vectorized = particle_traces(model, asserting_guide, (X,), {}, 4, 1, None)
    assert not vectorized


def test_a_guide_reading_no_draw_into_python_stays_vectorized_without_a_warning():
    def reading_data(x):  # reads the data, not a draw, into Python
        if x.abs().max() > 100:
            raise ValueError("x out of range")
        guide(x)

    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        *_, vectorized = particle_traces(model, reading_data, (X,), {}, 4, 1)
    assert vectorized


def bernoulli_pair(score_x):
    """z ~ Bernoulli(0.3)² under the model, Bernoulli(0.5)² under the guide, x = 1 observed
    through ``score_x(z)``, a distribution over x."""

    def model():
        z = pyro.sample("z", dist.Bernoulli(torch.full((2,), 0.3)).to_event(1))
        pyro.sample("x", score_x(z), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(torch.full((2,), 0.5)).to_event(1))

    return model, guide


def looped_without_warning_free_pass(model, guide, args=()):
    pyro.set_rng_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        *_, vectorized = particle_traces(model, guide, args, {}, 8, 0 if not args else 1)
    messages = [str(w.message) for w in caught if issubclass(w.category, VectorizationWarning)]
    return vectorized, messages


def test_a_read_made_only_in_training_mode_is_seen():
    """Tester DG: the check ran networks in eval mode, and ``if self.training and
    z.sum() > 0.5`` went unseen (an ELBO 17 standard errors off)."""

    class Shift(torch.nn.Module):
        def forward(self, z):
            return z + 1.0 if self.training and z.sum() > 0.5 else z

    shift = Shift()
    model, guide = bernoulli_pair(lambda z: dist.Normal(shift(z).sum(-1) - 1.0, 1.0))
    vectorized, messages = looped_without_warning_free_pass(model, guide)
    assert not vectorized and "draw 'z' is read into Python (__bool__" in messages[0]
    assert shift.training


def test_a_read_in_a_distribution_s_own_log_prob_is_seen():
    """Tester DG: the check's run computed no log-density, so a ``log_prob`` that branched
    on a draw went unseen (29.5 standard errors off)."""

    class Switch(dist.TorchDistribution):
        arg_constraints, support = {}, dist.constraints.real

        def __init__(self, z):
            self.z = z
            super().__init__(batch_shape=z.shape[:-1])

        def log_prob(self, value):
            loc = 2.0 if bool((self.z > 0.5).any()) else -1.0
            return dist.Normal(loc, 1.0).log_prob(value).expand(self.batch_shape)

    vectorized, messages = looped_without_warning_free_pass(*bernoulli_pair(Switch))
    assert not vectorized and "draw 'z' is read into Python" in messages[0]


def test_a_model_subsampling_its_own_plate_is_checked():
    """Tester DG: with a subsampling plate the evaluators' run skipped every check, and
    every particle scored the branch of the particles' sum."""
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        loc = 1.0 if mu.sum() > 0 else -1.0
        with pyro.plate("data", 6, subsample_size=3) as rows:
            mean = torch.full((3,), loc) + 0 * mu[..., None]
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x[rows])

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning):
        model_tr, guide_tr, vectorized = particle_traces(model, guide, (x,), {}, 5, 1)
    assert not vectorized
    mu = guide_tr.nodes["mu"]["value"].reshape(5)
    log_p = model_tr.nodes["x"]["log_prob"].reshape(5, -1).sum(-1)
    assert (mu > 0).any() and (mu < 0).any()  # two branches: two values, one per sign
    assert len(set(log_p.tolist())) == 2


def test_a_failed_vectorized_attempt_leaves_no_trace_in_a_batchnorm():
    """Tester DG: the fallback put back the random streams, not the buffers: a BatchNorm
    counted the discarded attempt's batch, 5 updates where the loop alone made 4."""
    from pyro_vae.estimators import get

    torch.manual_seed(1)
    x = torch.randn(6, 3)
    start = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8))
    found = {}
    for vectorize in (None, False):
        net = copy.deepcopy(start)

        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                assert torch.isfinite(z).all()  # a read: the vectorized attempt fails over
                mean = z.sum(-1, keepdim=True) * torch.ones(3)
                pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

        def guide(x, net=net):
            pyro.module("net", net)
            with pyro.plate("data", x.shape[0]):
                h = net(x)
                pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:4].exp()).to_event(1))

        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VectorizationWarning)
            estimator = get("score", num_particles=4, vectorize_particles=vectorize)
            loss = estimator.loss(model, guide, x)
        found[vectorize] = (loss, net[1].num_batches_tracked.item(), net[1].running_mean.clone())
    assert found[None][:2] == found[False][:2] == (found[False][0], 4)
    assert torch.equal(found[None][2], found[False][2])


def test_a_draw_written_into_a_tensor_sends_the_particles_to_the_loop_saying_why():
    """A write into a tensor the check cannot follow hides what is read from it later:
    a mask filled so (``m[...] = z > 0``), then indexing by it, was 99 standard errors off
    once writes were let through (tester DJ). The pair is looped, and the message says it
    is a write; exact answers come either way from the loop's own numbers."""

    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
        mask = torch.zeros(z.shape, dtype=torch.bool)
        mask[...] = z > 0
        loc = 2.0 if z[mask].numel() > 2 else 0.0
        pyro.sample("x", dist.Normal(loc, 1.0).expand([1]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))

    vectorized, messages = looped_without_warning_free_pass(model, guide, (torch.zeros(1),))
    assert not vectorized
    assert "draw 'z' is written into a tensor the check cannot follow (__setitem__" in messages[0]


def test_a_read_handed_back_by_a_pyro_helper_counts():
    """``pyro.infer.util.torch_item`` reads inside Pyro and hands the number back: the
    user's branch on it put ``score`` 6.9 standard errors off once Pyro's reads were
    exempt (tester DJ); only Pyro's and torch's distributions are."""
    from pyro.infer.util import torch_item

    model, guide = bernoulli_pair(
        lambda z: dist.Normal(2.0 if torch_item(z.sum()) > 1 else 0.0, 1.0)
    )
    vectorized, messages = looped_without_warning_free_pass(model, guide)
    assert not vectorized and "draw 'z' is read into Python (item" in messages[0]


def test_a_site_marked_for_enumeration_is_tracked_where_it_is_drawn_per_particle():
    """Outside ``TraceEnum_ELBO`` a site marked for enumeration is drawn per particle (Pyro
    only warns), so a branch on it is a particle's: skipped, ``score`` was 99 standard
    errors off (tester DJ)."""

    def model(x):
        z = pyro.sample("z", dist.Bernoulli(0.5))
        loc = 2.0 if z.sum() >= 1 else 0.0
        pyro.sample("x", dist.Normal(loc, 1.0).expand([1]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    pyro.set_rng_seed(2)  # the last particle takes the common branch: only the read shows
    with pytest.warns(VectorizationWarning, match="draw 'z' is read into Python"):
        *_, vectorized = particle_traces(model, guide, (torch.zeros(1),), {}, 8, 0)
    assert not vectorized


def test_buffers_kept_puts_back_a_submodule_applied_without_its_call():
    """Pyro's BatchNorm transform is applied as a Transform, not through ``__call__``, so
    the hook never saw it and a check moved its statistics (tester DH: a resumed flow
    guide with one drifted from the uninterrupted run, 62 of 117 tensors)."""
    from pyro.distributions.transforms import BatchNorm

    class Flow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = BatchNorm(2)

        def forward(self, y):
            return self.norm.inv(y)  # training mode: moves its moving averages

    flow = Flow()
    before = flow.norm.moving_mean.clone()
    with buffers_kept(), torch.no_grad():
        flow(torch.randn(10, 2) + 3.0)
        assert not torch.equal(flow.norm.moving_mean, before)
    assert torch.equal(flow.norm.moving_mean, before)


def test_buffers_kept_puts_back_what_the_given_roots_hold_though_nothing_calls_them():
    """A model object holding a Pyro BatchNorm transform that its guide applies (no
    module's ``__call__`` reaches it): fit's checks moved it, and a resume drifted
    (tester DI); given the pair's objects as roots, it is put back."""
    from pyro.distributions.transforms import BatchNorm

    holder = torch.nn.Module()
    holder.norm = BatchNorm(2)
    before = holder.norm.moving_mean.clone()
    with buffers_kept([holder]) as called, torch.no_grad():
        holder.norm.inv(torch.randn(10, 2) + 3.0)
    assert torch.equal(holder.norm.moving_mean, before) and holder not in called


def test_a_batchnorm_network_trains_with_vectorized_particles():
    """The plain-run comparison copied the running statistics back into the buffers the
    step's graph had saved, and the backward pass failed ("modified by an inplace
    operation", tester DI); the comparison now runs on copies of them."""
    from pyro.infer import SVI
    from pyro.optim import Adam

    from pyro_vae.estimators import get

    encoder = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            h = encoder(x)
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:4].exp()).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(5, 6)
    for name in ("score", "iwae"):
        svi = SVI(model, guide, Adam({"lr": 1e-3}), get(name, num_particles=4))
        assert math.isfinite(svi.step(x)) and math.isfinite(svi.step(x))


def _bernoulli_model():
    t = pyro.sample("t", dist.Bernoulli(0.4))
    pyro.sample("x", dist.Normal(2.0 * t, 1.0), obs=torch.tensor(1.5))


def _guide_with_a_factor(depends_on_v: bool):
    v = pyro.param("v", torch.tensor(0.2))
    t = pyro.sample("t", dist.Bernoulli(logits=v))
    pyro.factor("f", 0.8 * t * (v if depends_on_v else 1.0), has_rsample=False)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize(
    "name, options",
    [("score", {}), ("score", {"control_variate": "ema"}), ("tracegraph", {}), ("enum", {}),
     ("vimco", {"num_particles": 3}), ("trace", {})],
)  # fmt: skip
def test_a_drawn_factor_that_reads_a_parameter_is_refused_by_every_estimator(name, options):
    """Tester FK: with f = 0.8·t·v the readings' exact d(−ELBO)/dv are 1.05 (part of log q,
    DiCE) and 0.38 (a term of the ELBO), and the estimators gave 1.00 (enum), 0.64 (score),
    −0.10 (score with EMA), −0.07 (tracegraph): refused by all, before any update. The same
    factor of the draws alone (0.8·t) is taken where it was."""
    from pyro_vae import estimators

    pyro.clear_param_store()
    estimator = estimators.get(name, **options)
    with pytest.raises(ValueError, match="pyro.factor with has_rsample=False whose value depen"):
        estimator.loss_and_grads(_bernoulli_model, lambda: _guide_with_a_factor(True))
    assert float(pyro.param("v")) == pytest.approx(0.2)
    if name != "trace":  # trace refuses any such factor (tests/.../test_trace_elbo.py)
        pyro.clear_param_store()
        estimator.loss_and_grads(_bernoulli_model, lambda: _guide_with_a_factor(False))
