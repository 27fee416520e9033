# %% [markdown]
# # 6. Diagnosing a variational fit with ArviZ
#
# Every fit in tutorials 2 to 5 maximized the bound of eq. 18.4,
#
# $$\log p(x) \;\ge\; -\mathrm{KL}(q(\theta) \,\|\, p(\theta)) + E_q[\log p(x \mid \theta)],$$
#
# and the gap is $\mathrm{KL}(q(\theta) \,\|\, p(\theta \mid x))$. The optimizer always
# returns *some* $q$; the bound alone does not say whether that $q$ is close enough to the
# posterior to trust its means, spreads and tails. This tutorial shows four checks that
# `pyro_vae.diagnostics` and `pyro_vae.diagnostics.calibration` provide, with ArviZ for the
# bookkeeping:
#
# 1. **summaries**: draws of $q$ as an ArviZ `InferenceData`, `az.summary` and
#    `az.plot_posterior`;
# 2. **PSIS $\hat{k}$** (Yao et al. 2018): how heavy the tail of the importance ratios
#    $p(x, \theta)/q(\theta)$ is, once for a whole fit and once per datapoint for an
#    amortized guide;
# 3. **VSBC** (Yao et al. 2018, §4): is $q$ centred where the posterior is, on average
#    over data sets simulated from the model?
# 4. **the amortization gap** (Cremer et al. 2018): how much of the ELBO a VAE's encoder
#    loses against the best Gaussian fitted to each input separately.
#
# Set `PYRO_VAE_TUTORIAL_FAST=1` for fewer steps, draws and replications (CI does this).
# The numbers below come from a full run.

# %%
import os
import tempfile
from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from IPython.display import Image, display
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from scipy import integrate, special, stats
from sklearn.datasets import load_diabetes

from models.regression import BayesianRegression
from models.vae import VAE
from pyro_vae import (
    Preprocessing,
    TensorData,
    TrainConfig,
    fit,
    load_data,
    psis_khat,
    psis_khat_per_datapoint,
    to_inference_data,
    variational_guide,
    vsbc,
    vsbc_with,
)
from pyro_vae.amortization import amortization_gap
from pyro_vae.cavi import BayesianLinearRegression
from pyro_vae.diagnostics import plot_khat
from pyro_vae.estimators import get
from pyro_vae.image_grid import image_grid

FAST = os.environ.get("PYRO_VAE_TUTORIAL_FAST", "") not in ("", "0")
SVI_STEPS = 150 if FAST else 1000
DRAWS = 200 if FAST else 4000
VAE_EPOCHS = 5 if FAST else 150
VSBC_REPLICATIONS = 100 if FAST else 800
VSBC_STEPS = 200 if FAST else 1500
GAP_POINTS = 10 if FAST else 100
GAP_STEPS = 100 if FAST else 500
FIGURES = Path(tempfile.mkdtemp())
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80})
print(f"{'fast' if FAST else 'full'} mode: {SVI_STEPS} SVI steps, {DRAWS} draws of q")
# %matplotlib inline

# %% [markdown]
# ## A Bayesian regression on real data
#
# scikit-learn's diabetes data: ten standardized measurements $x_n$ of 442 patients (age,
# sex, body-mass index, blood pressure and six blood serum values) and a standardized
# measure $y_n$ of disease progression a year later. The model is
# `models.regression.BayesianRegression`, the Normal-Gamma regression:
#
# $$\tau \sim \mathrm{Gamma}(a_0, b_0), \qquad
#   w \mid \tau \sim \mathcal{N}(0, (\tau \lambda_0)^{-1} I), \qquad
#   y_n \mid w, \tau \sim \mathcal{N}(x_n^\top w, \tau^{-1}),$$
#
# with $a_0 = b_0 = \lambda_0 = 1$. Its latent variables are $\theta = (w, \tau)$, Pyro
# sites `weights` and `precision`. We fit two guides by SVI with `pyro_vae.fit`:
#
# - `AutoNormal`, the mean-field family: an independent Normal for each $w_d$ and for
#   $\log \tau$;
# - `AutoMultivariateNormal`: one joint Normal over $(w, \log \tau)$, which can carry the
#   correlations between the weights.
#
# Six of the measurements are blood serum values, and some of them are strongly
# correlated, so the posterior of their weights is too.

# %%
diabetes = load_diabetes()
features = diabetes.feature_names
X = torch.tensor(stats.zscore(diabetes.data), dtype=torch.float32)
y = torch.tensor(stats.zscore(diabetes.target), dtype=torch.float32)
correlation = np.corrcoef(diabetes.data.T)
i, j = np.unravel_index(np.argmax(np.abs(correlation - np.eye(10))), correlation.shape)
print(
    f"N = {X.shape[0]}, D = {X.shape[1]}; most correlated pair: {features[i]} and "
    f"{features[j]}, r = {correlation[i, j]:.2f}"
)

model = BayesianRegression()
config = TrainConfig(
    epochs=SVI_STEPS,
    batch_size=10**6,
    lr=0.01,
    patience=None,
    validate_every=SVI_STEPS // 10,
    val_samples=200,
    progress=False,
    seed=0,
)
estimator = get("trace", num_particles=32, vectorize_particles=True, max_plate_nesting=1)
guides = {}
for family in (AutoNormal, AutoMultivariateNormal):
    guides[family.__name__] = guide = family(model)
    result = fit(model, guide, TensorData(X, y), estimator, config)
    best = max(record["val_elbo"] for record in result.history if "val_elbo" in record)
    print(f"{family.__name__:<24} ELBO {best:8.2f} nats")
exact = BayesianLinearRegression().fit(X.double(), y.double())
print(f"{'exact log p(y)':<24}      {exact.log_evidence_:8.2f} nats")

# %% [markdown]
# ## Summaries: `to_inference_data`, `az.summary`, `az.plot_posterior`
#
# `to_inference_data(model, guide, X, y, num_samples=S)` draws $\theta_s \sim q$ and
# replays each draw in the model. The groups are what ArviZ expects: `posterior` (one
# chain; the draws are from $q$, not from the posterior), `posterior_predictive`,
# `log_likelihood`, `observed_data`, and `sample_stats` with the log joint `lp`
# $= \log p(y, \theta_s)$ and `log_q` $= \log q(\theta_s)$. A weight's dimension is named
# `weights_dim_0`, a datapoint's `data`.

# %%
idata = {
    name: to_inference_data(model, guide, X, y, num_samples=DRAWS) for name, guide in guides.items()
}
print(idata["AutoNormal"])
print(dict(idata["AutoNormal"].posterior.sizes))

# %% [markdown]
# With one chain of independent draws, the convergence columns of `az.summary` (R-hat,
# effective sample size) say nothing about $q$, so we ask for the statistics only. The
# two guides agree on the means. The mean-field guide's standard deviations are smaller,
# much smaller for the correlated serum weights: a factorized $q$ that minimizes
# $\mathrm{KL}(q \,\|\, p)$ fits the narrow conditional spread of each weight, not its
# wider marginal.

# %%
summaries = {
    name: az.summary(data, var_names=["weights", "precision"], kind="stats")
    for name, data in idata.items()
}
mvn = summaries["AutoMultivariateNormal"][["mean", "sd"]]
table = summaries["AutoNormal"][["mean", "sd"]].join(
    mvn.rename(columns={"mean": "mean (MVN)", "sd": "sd (MVN)"})
)
table.index = [f"w[{name}]" for name in features] + ["tau"]
table["sd ratio"] = table["sd"] / table["sd (MVN)"]
print(table.round(3).to_string())

# %%
axes = az.plot_posterior(
    idata["AutoNormal"],
    var_names=["weights", "precision"],
    coords={"weights_dim_0": [2, 4, 5]},
    figsize=(13, 3),
    textsize=9,
)
for ax, name in zip(axes.ravel(), ["bmi", "s1", "s2", "tau"], strict=True):
    ax.set_title(f"{name} (AutoNormal)", fontsize=10)
plt.show()

# %% [markdown]
# `az.plot_density` draws both guides' marginals over each other:

# %%
serum = {"weights_dim_0": [4, 5, 8]}  # s1, s2, s5
az.plot_density(
    [idata[name].posterior[["weights"]].isel(serum) for name in guides],
    data_labels=list(guides),
    shade=0.1,
    figsize=(12, 3),
    textsize=9,
)
plt.show()

# %% [markdown]
# ## PSIS $\hat{k}$ for the whole fit
#
# If $q$ were the posterior, the importance ratios $r_s = p(y, \theta_s)/q(\theta_s)$,
# $\theta_s \sim q$, would all equal $p(y)$. Where $q$ is too narrow, a rare draw in the
# posterior's tail gets an enormous ratio. Pareto-smoothed importance sampling fits a
# generalized Pareto distribution to the largest ratios; its shape $\hat{k}$ says that
# the ratios have finite moments of order below $1/\hat{k}$. Yao et al. read it as:
# $\hat{k} < 0.5$, $q$ is close to the posterior; $0.5$ to $0.7$, usable with care; above
# $0.7$, do not trust $q$ beyond its means.
#
# `psis_khat(model, guide, X, y)` gives one $\hat{k}$ for the joint $q(w, \tau)$. As a
# third guide we take the mean-field fit and deliberately halve every standard
# deviation, with `variational_guide`, which turns a dictionary of fixed distributions
# into a guide. Each $\hat{k}$ comes from a few thousand draws and varies from one set of
# draws to the next, so we compute it three times.

# %%
mean_field = guides["AutoNormal"]
halved = variational_guide(
    {
        "weights": dist.Normal(
            mean_field.locs.weights.detach(), mean_field.scales.weights.detach() / 2
        ).to_event(1),
        "precision": dist.LogNormal(
            mean_field.locs.precision.detach(), mean_field.scales.precision.detach() / 2
        ),
    }
)
candidates = {
    "AutoMultivariateNormal": guides["AutoMultivariateNormal"],
    "AutoNormal (mean field)": mean_field,
    "AutoNormal, sd halved": halved,
}
khats = {}
with torch.no_grad():
    for name, guide in candidates.items():
        khats[name] = []
        for seed in range(3):  # k̂ is itself an estimate: three independent sets of draws
            pyro.set_rng_seed(seed)
            khats[name].append(psis_khat(model, guide, X, y, num_samples=DRAWS))
for name, repeats in khats.items():
    khat = float(np.median(repeats))
    verdict = "close" if khat < 0.5 else "usable with care" if khat < 0.7 else "unreliable"
    shown = ", ".join(f"{k:.2f}" for k in repeats)
    print(f"{name:<26} k̂ = {shown}  (median {khat:.2f}: {verdict})")

# %% [markdown]
# By $\hat{k}$ the joint Gaussian is close to this posterior, though not equal to it: after
# its 1,000 steps the sds of the serum weights s1, s2, s3 and s5 are 10-15% below the
# exact posterior's (the Normal-Gamma posterior of this model is known in closed form), so
# the sd ratios in the table above understate how narrow mean field is (s1's is 0.145
# against the exact posterior, not 0.168). The mean-field guide's means are right, but
# its spread is not: $\hat{k}$ flags it, although its ELBO is only a few nats below.
# Halving the spread makes it worse still.
#
# ## $\hat{k}$ per datapoint for a VAE
#
# For an amortized guide the ratios factor over datapoints: each input $x_n$ has its own
# $q_\lambda(z \mid x_n)$ and its own ratios $p(x_n, z_s)/q_\lambda(z_s \mid x_n)$, so
# each gets its own $\hat{k}$. The high ones point at the inputs where the encoder's
# Gaussian is a poor fit to the true $p(z \mid x_n)$.
#
# We train a small VAE (tutorial 3) on the binarized 8x8 digits, then compute $\hat{k}$
# for every test image with `psis_khat_per_datapoint`. `plot_khat` draws each image's
# $\hat{k}$ and their histogram, with the 0.5 and 0.7 lines, into a file.

# %%
digits = load_data("digits", Preprocessing("bernoulli", binarize="static"))
pyro.set_rng_seed(0)
vae = VAE(digits.x_dim, latent_dim=8, hidden_dims=(200,))
encoder = vae.make_guide()
fit(
    vae,
    encoder,
    digits,
    Trace_ELBO(),
    TrainConfig(epochs=VAE_EPOCHS, patience=None, progress=False),
)
test_x = digits.test_x
pyro.set_rng_seed(0)
pointwise = psis_khat_per_datapoint(vae, encoder, test_x, num_samples=DRAWS)
summary = pointwise.summary(num_worst=8)
print(
    f"{summary['num_points']} test images, {summary['num_samples']} draws each: "
    f"median k̂ {summary['khat_median']:.2f}, max {summary['khat_max']:.2f}; "
    f"{100 * summary['share_above_0.5']:.1f}% above 0.5, "
    f"{100 * summary['share_above_0.7']:.1f}% above 0.7"
)
display(Image(filename=plot_khat(pointwise, FIGURES / "khat.png", title="digits VAE, test images")))

# %%
worst = pointwise.worst(8)
with torch.no_grad():
    reconstruction = vae.decode(encoder.encode(test_x[worst]).mean)
typical = np.argsort(np.abs(pointwise.khat - np.median(pointwise.khat)))[:8]
with torch.no_grad():
    typical_reconstruction = vae.decode(encoder.encode(test_x[typical]).mean)
fig = image_grid(
    [test_x[worst], reconstruction, test_x[typical], typical_reconstruction],
    digits.image_shape,
    row_labels=["highest k̂", "E[x | z = E_q z]", "median k̂", "E[x | z = E_q z]"],
    title="test images by k̂: " + ", ".join(f"{k:.2f}" for k in pointwise.khat[worst]),
)
display(fig)

# %% [markdown]
# ## VSBC: is $q$ centred where the posterior is?
#
# $\hat{k}$ judges one fit to one data set. Variational simulation-based calibration judges
# the procedure: draw $\theta^{(m)} \sim p(\theta)$ and $y^{(m)} \sim p(y \mid
# \theta^{(m)})$ for $m = 1, \dots, M$, fit $q$ to each $y^{(m)}$, and record the quantile
# of the truth under $q$,
#
# $$p_m = \Pr_q\big(\theta < \theta^{(m)} \mid y^{(m)}\big).$$
#
# Since $\theta^{(m)}$ given $y^{(m)}$ follows the exact posterior, an exact $q$ gives
# uniform $p_m$. VI is rarely exact, so Yao et al. ask for less: if $q$ is centred where
# the posterior is, the $p_m$ are symmetric about 0.5. They test the $p_m$ against
# $1 - p_m$ with a Kolmogorov-Smirnov statistic; `pyro_vae` gives its exact p-value.
#
# The test case from the README: the same regression with one observation and sixteen
# weights ($N = 1$, $D = 16$, $a_0 = b_0 = 1/2$), where the posterior of $\tau$ is broad
# and skewed. `vsbc` fits an `AutoNormal` to all $M$ simulated data sets at once, in one
# vectorized SVI run. `vsbc_with` takes any fitting procedure; we give it CAVI
# (`pyro_vae.cavi.BayesianLinearRegression`), whose mean-field optimum $q(w)\, q(\tau)$
# is known in closed form.

# %%
small = BayesianRegression(a0=0.5, b0=0.5)
X_small = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
y_small = torch.zeros(1)  # only its shape is used: vsbc simulates y


def pvalue(p: float) -> str:
    """Below double precision's resolution near 1, the exact p-value prints as a bound."""
    return f"{p:.1e}" if p >= 1e-16 else "< 1e-16"


def cavi_guide(data):
    fitted = BayesianLinearRegression(0.5, 0.5, 1.0).fit(X_small.double(), data["y"].double())
    return variational_guide(
        fitted.variational_distributions(weights="weights", precision="precision")
    )


pyro.set_rng_seed(0)
by_svi = vsbc(
    small,
    AutoNormal,
    X_small,
    y_small,
    num_replications=VSBC_REPLICATIONS,
    num_steps=VSBC_STEPS,
    lr=0.1,
)
pyro.set_rng_seed(0)
by_cavi = vsbc_with(small, cavi_guide, X_small, y_small, num_replications=VSBC_REPLICATIONS)
print(f"M = {VSBC_REPLICATIONS} simulated data sets")
print("fit                 parameter     mean p         KS statistic   exact p-value")
for name, result in (("AutoNormal, SVI", by_svi), ("mean field, CAVI", by_cavi)):
    rows = {row["parameter"]: row for row in result.table()}
    for parameter in ("precision", "weights[0]", "weights[1]"):
        row = rows[parameter]
        print(
            f"{name:<19} {parameter:<12} {row['mean_p']:.3f} ± {row['se_mean_p']:.3f}"
            f"     {row['ks_statistic']:.3f}          {pvalue(row['ks_pvalue'])}"
        )
    smallest = min(row["ks_pvalue"] for key, row in rows.items() if key.startswith("weights"))
    print(f"{'':<19} smallest p-value over the 16 weights: {smallest:.2f}")

# %% [markdown]
# The mean-field $q(\tau)$ of CAVI has the exact posterior mean but the wrong shape:
# $a_0 + (N + D)/2$ instead of $a_0 + N/2$, so it is far too narrow. The exact marginal
# of $\tau$ is right-skewed, so the truth falls below the centre of $q$ more often than
# above it, and the $p_m$ pile up below 0.5. The expected mean of $p$ has a closed form,
# which we check:

# %%
a, a_q = 0.5 + 1 / 2, 0.5 + (1 + 16) / 2
predicted = integrate.quad(
    lambda g: special.gammainc(a_q, a_q * g / a) * stats.gamma(a).pdf(g), 0, np.inf
)[0]
print(f"predicted mean p of tau at the CAVI optimum: {predicted:.3f}")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
panels = [
    (by_svi, "precision", "τ, AutoNormal by SVI"),
    (by_cavi, "precision", "τ, mean field by CAVI"),
    (by_cavi, "weights[0]", "w₀, mean field by CAVI"),
]
bins = np.linspace(0, 1, 21)
for ax, (result, parameter, title) in zip(axes, panels, strict=True):
    p = result.quantiles[parameter]
    ax.hist(p, bins=bins, color="C0", alpha=0.6, label="p")
    ax.hist(1 - p, bins=bins, histtype="step", color="C3", lw=1.5, label="1 − p")
    ax.set_title(f"{title}\nKS p-value {pvalue(result.ks_test(parameter)[1])}", fontsize=10)
    ax.set_xlabel("quantile of the truth under q")
axes[0].set_ylabel("simulated data sets")
axes[0].legend()
plt.show()

# %% [markdown]
# Both fits of $\tau$ are skewed the same way, and the test rejects symmetry: the fault is
# the mean-field family, not the optimizer. The weights' $q(w)$ is too narrow as well,
# but it has the exact mean, and its $p$ is U-shaped yet symmetric (right panel): VSBC
# does not flag underdispersion on its own, only a $q$ centred in the wrong place.
#
# ## The amortization gap
#
# A VAE's encoder is one network for all inputs, so its $q_\lambda(z \mid x)$ may be worse
# than the best Gaussian for each $x$. For a fixed decoder, Cremer et al. (2018) split the
# gap between $\log p(x)$ and the ELBO:
#
# $$\log p(x) - \mathrm{ELBO}(q_\lambda) =
#   \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation gap}}
#   + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\lambda)}_{\text{amortization gap}},$$
#
# where $q^*$ is a Gaussian fitted to each $x$ on its own (started from the encoder's
# output). `amortization_gap` does this, and estimates $\log p(x)$ by importance sampling
# from $q^*$.

# %%
pyro.set_rng_seed(0)
gap = amortization_gap(vae, encoder, test_x[:GAP_POINTS], steps=GAP_STEPS)
print(f"{gap['num_points']} test images, {gap['steps']} steps per image (nats per image):")
for key in (
    "elbo_amortized",
    "elbo_local",
    "log_likelihood",
    "amortization_gap",
    "approximation_gap",
):
    print(f"  {key:<18} {gap[key]:8.3f}")

fig, ax = plt.subplots(figsize=(6, 3))
parts = [gap["approximation_gap"], gap["amortization_gap"]]
ax.barh(["gap"], [parts[0]], color="C0", label="approximation: Gaussian family")
ax.barh(["gap"], [parts[1]], left=[parts[0]], color="C1", label="amortization: one encoder")
ax.set_xlabel("log p(x) − ELBO of the encoder (nats per image)")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# The two parts measure different fixes: a larger approximation gap calls for a richer
# family of $q$ (a full-covariance or flow guide, or training on an importance-weighted
# bound: tutorial 3 uses importance weighting only to estimate $\log p(x)$), a larger
# amortization gap for a better encoder or a few steps of per-input refinement. Per-image $\hat{k}$
# tells which inputs suffer; the gaps tell by how much, on average.
