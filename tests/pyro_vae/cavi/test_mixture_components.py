"""Mixture components in more plates than the K categories' (a diagonal-covariance mixture's
means and precisions [K, D]), laid out along the factor's K-axis.

The expected values come from elsewhere: the same model written one site per feature (each a
component in one plate, AutoCAVI's path tested against hand-written CAVI), the log evidence
enumerated over every assignment, and a loop over the elements."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex

from pyro_vae import elbo_estimate
from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.mixture_components import (
    factor_layout_shape,
    picked,
    to_factor_layout,
    to_latent_layout,
)

F64 = torch.float64


def t(value):
    return torch.tensor(value, dtype=F64)


def relative(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float(((a - b).abs() / (1 + b.abs())).max())


@pytest.mark.parametrize("shape, dim", [((3, 4), -2), ((3, 1, 4), -3), ((4, 3), -1)])
def test_the_layouts_are_inverse_and_picked_reads_each_elements_own_feature(shape, dim):
    g = torch.Generator().manual_seed(0)
    component = torch.randn((5, *shape, 2), generator=g, dtype=F64)  # [S, *batch, B]
    laid = to_factor_layout(component, dim, 1)
    assert laid.shape == factor_layout_shape(component.shape, dim, 1)
    assert laid.shape[-2] == 3 and laid.shape[dim - 2] == 1
    assert torch.equal(to_latent_layout(laid, dim, 1), component)
    # K = 3 along dim; each datum n reads feature d of the component z[s, n] picks: the data
    # along dim -2 (features at -1), or along -1 where the features are at -2
    features_last = dim != -1
    z = torch.randint(0, 3, (5, 6, 1) if features_last else (5, 1, 6), generator=g)
    out = picked(component, z, 3, dim, rank=2)
    assert out.shape == ((5, 6, 4, 2) if features_last else (5, 4, 6, 2))
    moved = component.movedim(dim - 1, 1).reshape(5, 3, 4, 2)  # [S, K, D, B]
    for s, n, d in itertools.product(range(5), range(6), range(4)):
        if features_last:
            assert torch.equal(out[s, n, d], moved[s, z[s, n, 0], d])
        else:
            assert torch.equal(out[s, d, n], moved[s, z[s, 0, n], d])


def _gaussian_data(n=60, k=3, d=4):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g, dtype=F64) * 4
    spread = 0.5 + torch.rand(k, d, generator=g, dtype=F64)
    x = centres[labels] + torch.randn(n, d, generator=g, dtype=F64) * spread[labels]
    start = torch.nn.functional.one_hot(labels, k).to(F64) * 0.8 + 0.2 / k
    return x, start


def _diagonal_mixture(k, d):
    """Normal-Gamma means and precisions per component and feature, in plates."""

    def model(x):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(k, dtype=F64)))
        with pyro.plate("components", k, dim=-2), pyro.plate("features", d, dim=-1):
            prec = pyro.sample("prec", dist.Gamma(t(2.0), t(2.0)))
            mu = pyro.sample("mu", dist.Normal(t(0.0), (0.1 * prec).rsqrt()))
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Categorical(w))
            with pyro.plate("features_", d, dim=-1):
                i = torch.arange(d)
                scale = Vindex(prec)[..., z, i].rsqrt()
                pyro.sample("x", dist.Normal(Vindex(mu)[..., z, i], scale), obs=x)

    return model


def _per_feature_mixture(k, d):
    """The same model, one site per feature: each a component in one plate."""

    def model(x):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(k, dtype=F64)))
        with pyro.plate("components", k):
            precs = [pyro.sample(f"prec_{j}", dist.Gamma(t(2.0), t(2.0))) for j in range(d)]
            mus = [pyro.sample(f"mu_{j}", dist.Normal(t(0.0), (0.1 * precs[j]).rsqrt()))
                   for j in range(d)]  # fmt: skip
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            for j in range(d):
                scale = Vindex(precs[j])[..., z].rsqrt()
                pyro.sample(f"x_{j}", dist.Normal(Vindex(mus[j])[..., z], scale), obs=x[:, j])

    return model


@pytest.mark.parametrize("blocks", [(), "auto"])
def test_a_diagonal_mixture_in_plates_fits_as_its_per_feature_form(blocks):
    """Sweep for sweep (float64 rounding of two contraction orders: 1e-10 relative), q of
    every mean and precision, mean field and with (mu, prec) a Normal-Gamma block."""
    x, start = _gaussian_data()
    plated = AutoCAVI(_diagonal_mixture(3, 4), init={"z": start.unsqueeze(1)}, tol=1e-10,
                      blocks=blocks).fit(x)  # fmt: skip
    unrolled = AutoCAVI(_per_feature_mixture(3, 4), init={"z": start}, tol=1e-10,
                        blocks=blocks).fit(x)  # fmt: skip
    assert plated.converged_ and unrolled.converged_
    assert len(plated.lower_bounds_) == len(unrolled.lower_bounds_)
    assert relative(plated.lower_bounds_, unrolled.lower_bounds_) < 1e-10
    q, p = plated.variational_distributions(), unrolled.variational_distributions()
    if not blocks:
        for name in ("mu", "prec"):
            for attr in ("mean", "variance"):
                per_feature = torch.stack([getattr(p[f"{name}_{j}"], attr) for j in range(4)], -1)
                assert relative(getattr(q[name], attr), per_feature) < 1e-8
    assert relative(q["z"].probs.squeeze(1), p["z"].probs) < 1e-8


def test_the_plated_mixtures_guide_scores_its_bound():
    """The fitted guide's Monte Carlo ELBO (400 draws, its se from batch means: 4 se) equals
    the bound: the guide draws each [K, D] component in its own plates."""
    x, start = _gaussian_data()
    model = _diagonal_mixture(3, 4)
    fit = AutoCAVI(model, init={"z": start.unsqueeze(1)}, tol=1e-10).fit(x)
    pyro.set_rng_seed(0)
    estimate, se = elbo_estimate(model, fit.variational_guide(), x, num_samples=400,
                                 vectorize_particles=False)  # fmt: skip
    assert abs(estimate - fit.lower_bound_) < 4 * se


def _binary_data():
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(7, 3, generator=g, dtype=F64) < t([[0.9, 0.2, 0.7]])).to(F64)
    x[::2] = 1 - x[::2]
    return x


A0, B0, ALPHA = 0.7, 1.3, 0.8


def _bernoulli_mixture(x, flip=False):
    """A mixture of Bernoullis (Bishop 2006, §9.3.3) with Beta(A0, B0) pixel probabilities
    per component and pixel, and Dirichlet(ALPHA) weights."""
    n, d = x.shape
    w = pyro.sample("w", dist.Dirichlet(torch.full((2,), ALPHA, dtype=F64)))
    with pyro.plate("components", 2, dim=-2), pyro.plate("pixels", d, dim=-1):
        theta = pyro.sample("theta", dist.Beta(t(A0), t(B0)))
    with pyro.plate("data", n, dim=-2):
        z = pyro.sample("z", dist.Categorical(w))
        with pyro.plate("pixels_", d, dim=-1):
            i = torch.arange(d).flip(0) if flip else torch.arange(d)
            pyro.sample("x", dist.Bernoulli(Vindex(theta)[..., z, i]), obs=x)


def _log_evidence(x) -> float:
    """log p(x) summed over every assignment, each in closed form (Dirichlet-multinomial
    weights, Beta-Bernoulli pixels)."""

    def log_beta(a, b):
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    n, d = x.shape
    terms = []
    for labels in itertools.product(range(2), repeat=n):
        labels = torch.tensor(labels)
        counts = torch.bincount(labels, minlength=2).tolist()
        term = math.lgamma(2 * ALPHA) - math.lgamma(2 * ALPHA + n)
        term += sum(math.lgamma(ALPHA + c) - math.lgamma(ALPHA) for c in counts)
        for k, j in itertools.product(range(2), range(d)):
            column = x[labels == k, j]
            ones = float(column.sum())
            term += log_beta(A0 + ones, B0 + len(column) - ones) - log_beta(A0, B0)
        terms.append(term)
    return float(torch.logsumexp(torch.tensor(terms, dtype=F64), 0))


def test_a_mixture_of_bernoullis_in_plates_is_a_bound_on_the_enumerated_evidence():
    x = _binary_data()
    exact = _log_evidence(x)

    def per_pixel(x):
        w = pyro.sample("w", dist.Dirichlet(torch.full((2,), ALPHA, dtype=F64)))
        with pyro.plate("components", 2):
            thetas = [pyro.sample(f"theta_{j}", dist.Beta(t(A0), t(B0))) for j in range(3)]
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            for j in range(3):
                pyro.sample(f"x_{j}", dist.Bernoulli(Vindex(thetas[j])[..., z]), obs=x[:, j])

    for seed in range(3):
        plated = AutoCAVI(_bernoulli_mixture, tol=1e-12, random_state=seed).fit(x)
        unrolled = AutoCAVI(per_pixel, tol=1e-12, random_state=seed).fit(x)
        assert plated.lower_bound_ <= exact + 1e-9
        assert relative(plated.lower_bound_, unrolled.lower_bound_) < 1e-10


def test_a_component_read_at_another_pixels_element_is_refused():
    with pytest.raises(NotConjugateError, match=r"\['theta'\] are in more plates.*own index"):
        AutoCAVI(_bernoulli_mixture).fit(_binary_data(), True)


def test_components_with_their_categories_at_another_dim_fit_alike():
    """A Poisson mixture's rates [K, 1, D] (the components' plate at dim -3), and laid out
    [D, K] (features at dim -2, the data along dim -1), as its per-feature form."""
    g = torch.Generator().manual_seed(3)
    rates = torch.rand(3, 4, generator=g, dtype=F64) * 10
    x = torch.poisson(rates[torch.arange(50) % 3], generator=g)
    i = torch.arange(4)

    def laid_out(x, deep):  # deep: [K, 1, D]; else [D, K], the data along dim -1
        components, features, data = (-3, -1, -2) if deep else (-1, -2, -1)
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3, dtype=F64)))
        with pyro.plate("components", 3, dim=components), pyro.plate("features", 4, dim=features):
            lam = pyro.sample("lam", dist.Gamma(t(1.0), t(0.2)))
        with pyro.plate("data", 50, dim=data):
            z = pyro.sample("z", dist.Categorical(w))
            with pyro.plate("features_", 4, dim=features):
                rate = Vindex(lam)[..., z, 0, i] if deep else Vindex(lam)[..., i[:, None], z]
                pyro.sample("x", dist.Poisson(rate), obs=x if deep else x.T)

    def per_feature(x):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3, dtype=F64)))
        with pyro.plate("components", 3):
            lams = [pyro.sample(f"lam_{j}", dist.Gamma(t(1.0), t(0.2))) for j in range(4)]
        with pyro.plate("data", 50):
            z = pyro.sample("z", dist.Categorical(w))
            for j in range(4):
                pyro.sample(f"x_{j}", dist.Poisson(Vindex(lams[j])[..., z]), obs=x[:, j])

    bounds = [AutoCAVI(laid_out, tol=1e-12).fit(x, deep).lower_bound_ for deep in (True, False)]
    bounds.append(AutoCAVI(per_feature, tol=1e-12).fit(x).lower_bound_)
    assert relative(bounds[0], bounds[2]) < 1e-10
    assert relative(bounds[1], bounds[2]) < 1e-10


def _hmm(per_feature: bool, k=3, d=4):
    """An HMM over sequences in a plate, its emission means per state and feature: [K, D]
    in plates, or one site per feature; the transition matrix known."""
    a = t([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    i = torch.arange(d)

    def model(y):  # y: [T, B, D]
        if per_feature:
            with pyro.plate("states", k):
                mus = [pyro.sample(f"mu_{j}", dist.Normal(t(0.0), t(3.0))) for j in range(d)]
        else:
            with pyro.plate("states", k, dim=-2), pyro.plate("features", d, dim=-1):
                mu = pyro.sample("mu", dist.Normal(t(0.0), t(3.0)))
        s = None
        with pyro.plate("sequences", y.shape[1], dim=-2 + per_feature):
            for step in pyro.markov(range(len(y))):
                probs = torch.ones(k, dtype=F64) / k if s is None else a[s]
                s = pyro.sample(f"s_{step}", dist.Categorical(probs))
                if per_feature:
                    for j in range(d):
                        loc = Vindex(mus[j])[..., s]
                        pyro.sample(f"y_{step}_{j}", dist.Normal(loc, 1.0), obs=y[step, :, j])
                else:
                    with pyro.plate(f"features_{step}", d, dim=-1):
                        loc = Vindex(mu)[..., s, i]
                        pyro.sample(f"y_{step}", dist.Normal(loc, 1.0), obs=y[step])

    return model


def test_a_chain_whose_emissions_read_components_in_plates_fits_as_its_per_feature_form():
    """Sequences in a plate: each chain's emission steps are contracted stacked, and the
    stack's message to the [K, D] means must be laid back out too (tester 25's F1: with
    K = D it was read transposed, 1,309 nats low with no warning; with K != D it raised)."""
    y = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(11), dtype=F64) * 3
    plated = AutoCAVI(_hmm(False), tol=1e-10, random_state=1).fit(y)
    unrolled = AutoCAVI(_hmm(True), tol=1e-10, random_state=1).fit(y)
    assert len(plated.fitted_chains_) == len(unrolled.fitted_chains_) == 1
    assert relative(plated.lower_bounds_, unrolled.lower_bounds_) < 1e-10
    mean = torch.stack([unrolled.variational_distributions()[f"mu_{j}"].mean for j in range(4)], -1)
    assert relative(plated.variational_distributions()["mu"].mean, mean) < 1e-8


def test_as_many_data_as_components_and_a_mixture_of_groups_fit_as_their_per_feature_forms():
    """N = K (the data plate at the components' dim with K elements: refused before,
    tester 25's F2), and a mixture of groups (each group's z, read by its data through an
    index: Vindex(mu)[..., z[..., group, :], i], tester 25's F3)."""
    x, _ = _gaussian_data(n=60, k=3, d=4)
    group = torch.arange(60) % 12
    i = torch.arange(4)

    def groups(x, per_feature):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3, dtype=F64)))
        if per_feature:
            with pyro.plate("components", 3):
                mus = [pyro.sample(f"mu_{j}", dist.Normal(t(0.0), t(3.0))) for j in range(4)]
            with pyro.plate("groups", 12):
                z = pyro.sample("z", dist.Categorical(w))
            with pyro.plate("data", len(x)):
                for j in range(4):
                    loc = Vindex(mus[j])[..., z[..., group]]
                    pyro.sample(f"x_{j}", dist.Normal(loc, 1.0), obs=x[:, j])
            return
        with pyro.plate("components", 3, dim=-2), pyro.plate("features", 4, dim=-1):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(3.0)))
        with pyro.plate("groups", 12, dim=-2):
            z = pyro.sample("z", dist.Categorical(w))
        with pyro.plate("data", len(x), dim=-2), pyro.plate("features_", 4, dim=-1):
            pyro.sample("x", dist.Normal(Vindex(mu)[..., z[..., group, :], i], 1.0), obs=x)

    bounds = [AutoCAVI(groups, tol=1e-10, random_state=0).fit(x, flag).lower_bound_
              for flag in (False, True)]  # fmt: skip
    assert relative(bounds[0], bounds[1]) < 1e-10
    few = x[:3]
    plated = AutoCAVI(_diagonal_mixture(3, 4), tol=1e-10, random_state=0).fit(few)
    unrolled = AutoCAVI(_per_feature_mixture(3, 4), tol=1e-10, random_state=0).fit(few)
    assert relative(plated.lower_bound_, unrolled.lower_bound_) < 1e-10


def test_a_component_in_one_plate_left_of_a_size_one_dim_is_a_component():
    """Tester AT's F5: per-component means mu [K, 1] under a plate of components at dim -2
    (room for a features dim), read Vindex(mu)[..., z, 0], were refused as picked by a
    latent: a component had to be in the K categories' plate at dim -1 or in more plates.
    Its dims right of the K dim, of size 1 and in no plate, are no obstacle now: the fit
    is the one declared with the plate at dim -1 (to 1e-10), and below the exact evidence
    by enumeration of the 2¹² assignments (μ and the weights integrated out)."""
    y = torch.randn(12, generator=torch.Generator().manual_seed(4), dtype=F64) * 2.0

    def mixture(y, dim):  # the components' plate at dim -2, mu [2, 1], or at dim -1
        weights = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
        with pyro.plate("components", 2, dim=dim):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(2.0)))
        with pyro.plate("data", 12, dim=-1):
            z = pyro.sample("z", dist.Categorical(weights))
            mean = Vindex(mu)[..., z, 0] if dim == -2 else Vindex(mu)[..., z]
            pyro.sample("y", dist.Normal(mean, t(1.0)), obs=y)

    fit = AutoCAVI(mixture).fit(y, -2)
    declared = AutoCAVI(mixture).fit(y, -1).lower_bound_
    assert abs(fit.lower_bound_ - declared) < 1e-10 * abs(declared)
    z = torch.tensor(list(itertools.product([0, 1], repeat=12)))
    ones = z.sum(-1).to(F64)
    log_p = math.lgamma(2) + torch.lgamma(13 - ones) + torch.lgamma(1 + ones) - math.lgamma(14)
    for k in range(2):  # cell k: y = μ_k + ε, log N(y; 0, I + 4·11ᵀ) by Sherman-Morrison
        cell = (z == k).to(F64)
        n, s1, s2 = cell.sum(-1), (cell * y).sum(-1), (cell * y**2).sum(-1)
        log_p += (-n / 2 * math.log(2 * math.pi) - 0.5 * torch.log1p(4 * n)
                  - 0.5 * (s2 - 4 * s1**2 / (1 + 4 * n)))  # fmt: skip
    assert fit.lower_bound_ < float(torch.logsumexp(log_p, 0))


def test_components_copy_with_their_dims_and_a_fitted_mixture_deep_copies():
    """Tester DP: ``copy.deepcopy`` of a fitted mixture raised ("dictionary update sequence
    element #0 has length 16"): a frozenset subclass is rebuilt from its members alone."""
    import copy

    import numpy as np

    from models.gmm import GaussianMixtureModel
    from pyro_vae.cavi import AutoCAVI
    from pyro_vae.cavi.mixture_components import Components

    components = Components({"means": -2, "weights": None})
    copied = copy.deepcopy(components)
    assert copied == components and copied.dims == {"means": -2}
    rng = np.random.default_rng(0)
    centres = ([0.0, 0.0], [5.0, 5.0])
    X = torch.from_numpy(np.concatenate([rng.normal(c, 1.0, size=(30, 2)) for c in centres]))
    model = GaussianMixtureModel.from_data(X, 2, precision_parameterization="wishart").double()
    fit = AutoCAVI(model, blocks=[("means", "precisions")]).fit(X)
    assert copy.deepcopy(fit).lower_bound_ == fit.lower_bound_
