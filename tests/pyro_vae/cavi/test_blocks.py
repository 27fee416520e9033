import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.gmm import GaussianMixtureModel
from models.regression import BayesianRegression
from pyro_vae.cavi import AutoCAVI, NotConjugateError
from tests.pyro_vae.cavi.float64 import F64, t


def hierarchical(y):
    """m ~ N(0, 9); per group τ_g ~ Gamma(2, 1), μ_g ~ N(m, 1/τ_g), y_ng ~ N(μ_g, 1/τ_g)."""
    m = pyro.sample("m", dist.Normal(t(0.0), t(3.0)))
    with pyro.plate("groups", y.shape[-1], dim=-1):
        tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
        mu = pyro.sample("mu", dist.Normal(m, tau.rsqrt()))
        with pyro.plate("points", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def known_noise_child(y):
    """μ's prior is scaled by τ, but one child of μ has a known variance: μ and μ² appear
    without τ, outside the Normal-Gamma block's statistics."""
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
    pyro.sample("z", dist.Normal(mu, t(1.0)), obs=t(0.5))
    with pyro.plate("points", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def two_precisions(y):
    """μ's prior mentions two Gamma precisions: no single partner, so no block."""
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    rho = pyro.sample("rho", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), (tau * rho).rsqrt()))
    with pyro.plate("points", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, (tau * rho).rsqrt()), obs=y)


def test_auto_blocks_pair_each_mean_with_the_precision_that_scales_its_prior():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2, generator=g, dtype=F64)
    y = X @ t([1.0, -1.0]) + 0.5 * torch.randn(30, generator=g, dtype=F64)
    fit = AutoCAVI(BayesianRegression(), blocks="auto", tol=1e-12).fit(X, y)
    assert fit.blocks_ == [("weights", "precision")]
    explicit = AutoCAVI(BayesianRegression(), blocks=[("weights", "precision")], tol=1e-12)
    assert fit.lower_bound_ == pytest.approx(explicit.fit(X, y).lower_bound_, rel=1e-12)
    y = t([[0.3, 2.0], [1.9, 2.5], [1.1, 1.7]])
    fit = AutoCAVI(hierarchical, blocks="auto", tol=1e-12).fit(y)
    assert fit.blocks_ == [("mu", "tau")] and set(fit.fitted_blocks_) == {"mu+tau"}
    # the joint factor holds every product q(μ) q(τ): its bound is at least mean field's
    assert fit.lower_bound_ > AutoCAVI(hierarchical, tol=1e-12).fit(y).lower_bound_
    mixture = GaussianMixtureModel.from_data(X, 2, precision_parameterization="wishart")
    fit = AutoCAVI(mixture.double(), blocks="auto", max_iter=3).fit(X)
    assert fit.blocks_ == [("means", "precisions")]


@pytest.mark.parametrize("model", [known_noise_child, two_precisions])
def test_auto_blocks_leave_pairs_whose_factors_the_block_does_not_span(model):
    fit = AutoCAVI(model, blocks="auto", tol=1e-12).fit(t([0.3, 1.9, 1.1]))
    assert fit.blocks_ == [] and fit.fitted_blocks_ == {}
    mean_field = AutoCAVI(model, tol=1e-12).fit(t([0.3, 1.9, 1.1]))
    assert fit.lower_bound_ == pytest.approx(mean_field.lower_bound_, rel=1e-12)


def test_blocks_other_than_auto_or_pairs_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="blocks: 'all' is neither 'auto' nor a list"):
        AutoCAVI(hierarchical, blocks="all").fit(t([[0.3]]))


def _broad_normal_wishart(d: int, s: float, beta: float, df: float):
    """Λ ~ Wishart(ν, s I), μ | Λ ~ N(0, (βΛ)⁻¹), x_n ~ N(μ, Λ⁻¹)."""

    def model(X):
        lam = pyro.sample("lam", dist.Wishart(t(df), covariance_matrix=s * torch.eye(d, dtype=F64)))
        mu = pyro.sample("mu", dist.MultivariateNormal(X.new_zeros(d), precision_matrix=beta * lam))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(mu, precision_matrix=lam), obs=X)

    return model


def _normal_wishart_evidence(X, s: float, beta: float, df: float) -> float:
    """log p(X) under :func:`_broad_normal_wishart` (nats, all of X): Murphy 2007, eq. 266,
    with W₀ = s I, κ₀ = β, m₀ = 0 and W_n⁻¹ = W₀⁻¹ + Σ (x − x̄)(x − x̄)ᵀ + κ₀n/(κ₀ + n) x̄x̄ᵀ."""
    n, d = X.shape
    mean = X.mean(0)
    centred = X - mean
    prior = torch.eye(d, dtype=F64) / s
    posterior = prior + centred.T @ centred + beta * n / (beta + n) * torch.outer(mean, mean)
    mvlgamma = lambda a: float(torch.mvlgamma(t(a), d))  # noqa: E731
    return (-n * d / 2 * math.log(math.pi) + mvlgamma((df + n) / 2) - mvlgamma(df / 2)
            + df / 2 * float(torch.logdet(prior)) - (df + n) / 2 * float(torch.logdet(posterior))
            + d / 2 * math.log(beta / (beta + n)))  # fmt: skip


@pytest.mark.parametrize(
    ("d", "s", "beta", "df", "collinear", "seed", "refused"),
    [(2, 1e7, 1.0, 2.0, False, 1, False), (3, 1e5, 1.0, 5.0, True, 0, True)],
)
def test_a_mean_field_refusal_of_a_normal_wishart_pair_advises_the_block_that_fits(
    d, s, beta, df, collinear, seed, refused
):
    """Broad priors (Wishart(ν, s I), s = 10⁵ to 10⁷) and one datum or collinear data:
    fitted apart, μ's q moves far between the probes, and mean field refused 36 of 144
    such valid fits (none of the 144 a kink). The refusal now says blocks="auto" would
    fit ('mu', 'lam') as one Normal-Wishart factor; so fitted, the factor is the exact
    posterior and the bound the exact log evidence, to 1e-6 nats (float64 solves on
    statistics conditioned up to 10⁷ round to ~10⁻⁸ nats here). The first case is no
    longer refused: since a factor's check measures its misfit against the part of its
    log-density that moves with the latents (tester DL), a first solve it then misses
    sends it to the frames around q, where mean field fits; its bound lies below the
    log evidence (and agreed with the Monte Carlo ELBO of its q: −11.2582 ± 0.0028
    against −11.2597, 100,000 draws)."""
    g = torch.Generator().manual_seed(100 * d + seed)
    if collinear:
        direction = torch.randn(d, generator=g, dtype=F64)
        X = torch.randn(4, 1, generator=g, dtype=F64) * direction
    else:
        X = torch.randn(1, d, generator=g, dtype=F64)
    model = _broad_normal_wishart(d, s, beta, df)
    evidence = _normal_wishart_evidence(X, s, beta, df)
    if refused:
        with pytest.raises(NotConjugateError) as refusal:
            AutoCAVI(model, tol=1e-10, max_iter=200, random_state=seed).fit(X)
        assert "'mu' with 'lam' (Normal-Wishart) apart (mean field)" in str(refusal.value)
        assert "blocks=\"auto\" (or blocks=[('mu', 'lam')])" in str(refusal.value)
    else:
        apart = AutoCAVI(model, tol=1e-10, max_iter=200, random_state=seed).fit(X)
        assert apart.lower_bound_ < evidence - 0.1  # mean field's gap: 0.56 nats
    fit = AutoCAVI(model, blocks="auto", tol=1e-12, max_iter=200, random_state=seed).fit(X)
    assert fit.blocks_ == [("mu", "lam")]
    assert fit.lower_bound_ == pytest.approx(evidence, abs=1e-6)


def test_a_refusal_with_no_mean_precision_pair_or_already_a_block_gives_no_block_advice():
    """The advice names only pairs find_blocks would form among the refused factor's
    latents: none in a clamped Gamma-Poisson (tester 29's), none once the pair is a block
    (a kink refused as a block is not the mean-field instability the advice is for)."""
    k = 0.0069212

    def clamped():
        lam = pyro.sample("lam", dist.Gamma(t(0.5), t(1.0)))
        with pyro.plate("data", 5):
            pyro.sample("y", dist.Poisson(lam.clamp(min=k)), obs=t([1.0, 0.0, 0.0, 0.0, 0.0]))

    with pytest.raises(NotConjugateError, match="'y' \\(Poisson\\)") as refused:
        AutoCAVI(clamped, tol=1e-10).fit()
    assert "blocks=" not in str(refused.value)
    X = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    def jump(X):  # μ shifted by 0.5 where μ₁ passes the data's mean: q's bulk straddles it
        lam = pyro.sample("lam", dist.Wishart(t(4.0), covariance_matrix=torch.eye(2, dtype=F64)))
        mu = pyro.sample("mu", dist.MultivariateNormal(X.new_zeros(2), precision_matrix=lam))
        loc = torch.where(mu[..., 1:] > X[:, 1].mean(), mu + 0.5, mu)
        with pyro.plate("data", X.shape[0]):
            pyro.sample(
                "x",
                dist.MultivariateNormal(loc.unsqueeze(-2), precision_matrix=lam.unsqueeze(-3)),
                obs=X,
            )

    with pytest.raises(NotConjugateError, match="'x' \\(MultivariateNormal\\)") as refused:
        AutoCAVI(jump, blocks="auto", tol=1e-10).fit(X)
    assert "'mu+lam'" in str(refused.value) and "blocks=" not in str(refused.value)
    with pytest.raises(NotConjugateError, match="latent site 'mu'") as refused:
        AutoCAVI(jump, tol=1e-10).fit(X)  # apart, the probe itself sees the jump: no advice
    assert "blocks=" not in str(refused.value)


def test_a_block_given_precision_first_is_refused_with_the_order_that_works():
    with pytest.raises(NotConjugateError, match=r"\(Gamma, Normal\).*the mean comes first, "
                                                r"\('mu', 'tau'\)"):  # fmt: skip
        AutoCAVI(hierarchical, blocks=[("tau", "mu")]).fit(t([[0.3, 2.0], [1.9, 2.5]]))
    with pytest.raises(NotConjugateError) as refused:  # not a swap: no order suggested
        AutoCAVI(two_precisions, blocks=[("tau", "rho")]).fit(t([0.3, 1.9]))
    assert "comes first" not in str(refused.value)
