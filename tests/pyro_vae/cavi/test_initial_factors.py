import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import AutoCAVI
from tests.pyro_vae.cavi.float64 import F64, t
from tests.pyro_vae.cavi.mixtures import two_means


def mixture(y):
    """Three unit-variance components with N(0, 3²) means and equal weights."""
    with pyro.plate("components", 3):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(3.0)))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(torch.ones(3, dtype=F64) / 3))
        pyro.sample("y", dist.Normal(mu[z], 1.0), obs=y)


def three_groups():
    g = torch.Generator().manual_seed(0)
    return torch.cat([c + torch.randn(50, generator=g, dtype=F64) for c in (-5.0, 0.0, 5.0)])


def test_a_mixture_starts_from_a_random_assignment_not_the_symmetric_fixed_point():
    # prior expectations give every component the same responsibilities, a fixed point
    # (all means at the data mean); the default start, z at its forward-run draw, leaves
    # it and finds the three groups, as a start from the true assignment does
    y = three_groups()
    symmetric = torch.full((150, 3), 1 / 3, dtype=F64)
    stuck = AutoCAVI(mixture, init={"z": symmetric}, tol=1e-10).fit(y)
    truth = torch.nn.functional.one_hot(torch.arange(150) // 50, 3).to(F64)
    best = AutoCAVI(mixture, init={"z": truth}, tol=1e-10).fit(y)
    means = {}
    for seed in (0, 1):
        fit = AutoCAVI(mixture, tol=1e-10, random_state=seed).fit(y)
        assert fit.lower_bound_ == pytest.approx(best.lower_bound_, abs=1e-6)
        means[seed] = fit.variational_distributions()["mu"].loc
    assert stuck.lower_bound_ < best.lower_bound_ - 500
    found = sorted(best.variational_distributions()["mu"].loc.tolist())
    assert sorted(means[0].tolist()) == pytest.approx(found, abs=1e-6)
    assert not torch.allclose(means[0], means[1])  # the seed picks the labelling


def normal_gamma(y):
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
    with pyro.plate("points", len(y)):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def test_a_fitted_block_or_a_point_restarts_a_block():
    y = t([0.3, 1.9, 1.1, 0.4])
    exact = AutoCAVI(normal_gamma, blocks=[("mu", "tau")]).fit(y)
    q = exact.fitted_blocks_["mu+tau"]
    again = AutoCAVI(normal_gamma, blocks=[("mu", "tau")], init={"mu+tau": q}, max_iter=1)
    assert again.fit(y).lower_bound_ == pytest.approx(exact.lower_bound_, rel=1e-12)
    point = AutoCAVI(normal_gamma, blocks=[("mu", "tau")], init={"mu+tau": (t(1.0), t(2.0))})
    assert point.fit(y).lower_bound_ == pytest.approx(exact.lower_bound_, rel=1e-12)


@pytest.mark.parametrize(
    ("init", "words"),
    [
        ({"mu+tau": dist.Gamma(t(1.0), t(1.0))}, "Gamma is not a start for the Normal-Gamma block"),
        ({"mu+tau": (t(1.0),)}, "expected a NormalGamma (a fitted_blocks_ entry) or a tuple"),
        ({"mu+tau": (t([1.0, 2.0]), t(1.0))}, "tuple of values of shapes [(), ()]"),
    ],
)
def test_a_bad_block_start_is_refused_naming_what_the_block_takes(init, words):
    with pytest.raises(ValueError, match="init\\['mu\\+tau'\\]") as raised:
        AutoCAVI(normal_gamma, blocks=[("mu", "tau")], init=init).fit(t([0.3, 1.9]))
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("init", "words"),
    [
        ({"mu": dist.Gamma(t(1.0), t(1.0))}, "Gamma is not a distribution of the Normal family"),
        ({"z": torch.ones(4, 2, dtype=F64) / 2}, "shape (4, 2); expected (4, 3)"),
        ({"z": torch.full((4, 3), 0.5, dtype=F64)}, "sum to 1 over the last dim"),
    ],
)
def test_a_start_of_the_wrong_family_or_shape_is_refused(init, words):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(3.0)).expand([3]).to_event(1))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(torch.ones(3, dtype=F64) / 3))
            pyro.sample("y", dist.Normal(mu[z], 1.0), obs=y)

    with pytest.raises(ValueError) as raised:
        AutoCAVI(model, init=init).fit(t([0.3, 1.9, -2.0, 4.0]))
    assert words in str(raised.value)


def test_a_discrete_start_is_balanced_so_no_component_starts_empty():
    # a new user's mixture: with random_state=0 the model's own forward draw (its Dirichlet
    # weights) put all six points in one component, and CAVI settled with both means at
    # the data mean (-22.92 nats). The balanced start finds the two groups at every seed,
    # the bound of a start from the true assignment.
    x = t([-2.1, -1.7, -2.5, 1.9, 2.4, 2.0])
    gmm = two_means(prior_scale=5.0)
    truth = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 1, 1, 1]), 2).to(F64)
    best = AutoCAVI(gmm, init={"z": truth}, tol=1e-10).fit(x).lower_bound_
    for seed in range(4):
        bound = AutoCAVI(gmm, tol=1e-10, random_state=seed).fit(x).lower_bound_
        assert bound == pytest.approx(best, abs=1e-6), seed


@pytest.mark.parametrize(
    "site, q, words",
    [
        ("tau", dist.Gamma(t(1.0), t(-1.0), validate_args=False), "Gamma's rate -1.0"),
        ("mu", dist.Normal(t(float("nan")), t(1.0), validate_args=False), "Normal's loc nan"),
        ("mu", dist.Normal(t(0.0), t(-2.0), validate_args=False), "Normal's scale -2.0"),
    ],
)
def test_a_start_with_an_invalid_parameter_is_refused_naming_it(site, q, words):
    # built without validation, such a start used to surface as the model's "improper"
    # update (blaming its prior) or, for a negative scale, pass silently
    with pytest.raises(ValueError, match=rf"init\['{site}'\]: {words} is not finite or not in"):
        AutoCAVI(normal_gamma, init={site: q}).fit(t([0.3, -0.2, 1.0]))
