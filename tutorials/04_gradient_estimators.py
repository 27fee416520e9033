# %% [markdown]
# # 4. Gradient estimators: reparameterization against REINFORCE
#
# This tutorial follows §18.4 of the lecture. Fitting $q_\lambda$ needs the gradient of
# an expectation under $q_\lambda$ itself,
#
# $$\nabla_\lambda E_{q_\lambda}\big[f(z)\big], \qquad
#   f(z) = \log p(x, z) - \log q_\lambda(z) \ \text{for the ELBO}.$$
#
# There are two ways to move $\nabla_\lambda$ inside the expectation.
#
# - **Reparameterization.** Write $z = f_\lambda(s)$ with $s$ from a fixed distribution
#   ($z = \mu + \sigma \odot s$, $s \sim \mathcal{N}(0, I)$), so
#   $\nabla_\lambda E_{q_\lambda}[f(z)] = E_s[\nabla_\lambda f(f_\lambda(s))]$. This
#   needs a differentiable path from $\lambda$ to $z$, which continuous Gaussians have.
# - **REINFORCE** (the score function). The identity
#   $\nabla_\lambda q_\lambda = q_\lambda \nabla_\lambda \log q_\lambda$ gives
#   (lecture eqs. 18.5-18.7)
#
#   $$\nabla_\lambda E_{q_\lambda}[f(z)] = E_{q_\lambda}\big[f(z)\, \nabla_\lambda \log
#     q_\lambda(z)\big].$$
#
#   It needs only $\log q_\lambda(z)$, so it works for discrete $z$ too. Its variance is
#   high. Because $E_{q_\lambda}[\nabla_\lambda \log q_\lambda] = 0$, any *control
#   variate* $b$ that does not depend on $z$ can be subtracted,
#   $E_{q_\lambda}[(f(z) - b)\nabla_\lambda \log q_\lambda(z)]$, with no change in the mean
#   and, for a good $b$, much less variance.
#
# `pyro_vae.estimators.get(name, **options)` returns each estimator as a
# `pyro.infer.ELBO`, so the model, the guide and the training loop stay the same. We
# compare them on the digits VAE of tutorial 3's kind. Then we turn to the sigmoid belief
# network, whose latents are binary, where REINFORCE is the only choice.
#
# Set `PYRO_VAE_TUTORIAL_FAST=1` for a few epochs and draws (CI does this); the numbers
# below come from a full run.

# %%
import logging
import os

import matplotlib.pyplot as plt
import pyro
import torch

from models.sbn import SBN
from models.vae import VAE
from pyro_vae import Preprocessing, TrainConfig, elbo_per_datapoint, fit, load_data
from pyro_vae.diagnostics.gradient_variance import gradient_variance
from pyro_vae.estimators import get
from pyro_vae.image_grid import image_grid

FAST = os.environ.get("PYRO_VAE_TUTORIAL_FAST", "") not in ("", "0")
EPOCHS = 1 if FAST else 100
SBN_EPOCHS = 1 if FAST else 100
DRAWS = 4 if FAST else 200
NVIL_WARMUP = 2 if FAST else 500
K = 4  # samples per step for every estimator, so each step costs the same model evaluations
logging.getLogger("pyro").setLevel(logging.WARNING)  # Pyro's INFO lines on plate nesting
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80})
print(f"{'fast' if FAST else 'full'} mode: {EPOCHS} epochs, {DRAWS} gradient draws")
# %matplotlib inline

# %% [markdown]
# ## The estimators
#
# Every row uses $K = 4$ samples of $z$ per image and per step. The first is the pathwise
# gradient; the rest are REINFORCE (`score`) with each control variate:
#
# - `trace`: reparameterization, Pyro's `Trace_ELBO`;
# - `score` with `control_variate="none"`: plain REINFORCE,
#   $f(z)\nabla_\lambda \log q_\lambda(z)$;
# - `"ema"`: $b$ is a moving average of $f$ over past steps;
# - `"leave-one-out"`: $b_k$ is the mean of $f$ over the other $K - 1$ samples of the same
#   image (Kool et al. 2019);
# - `"neural"`: NVIL (Mnih & Gregor 2014), $b_\psi(x)$, a network of $x$ trained to
#   predict $f$, with running centring. NVIL's running scaling, `normalize_variance=True`,
#   divides each site's signal by its own running sd: a step size per site, so the
#   gradient is no longer the ELBO's, and it is off here.
#
# The `score` estimator is Rao-Blackwellized per image: image $n$'s $z_n$ is scored by
# image $n$'s own $f$, not by the whole minibatch's.

# %%
ESTIMATORS = {
    "reparameterization": ("trace", {"vectorize_particles": True}),
    "REINFORCE": ("score", {}),
    "REINFORCE + moving average": ("score", {"control_variate": "ema"}),
    "REINFORCE + leave-one-out": ("score", {"control_variate": "leave-one-out"}),
    "REINFORCE + NVIL": ("score", {"control_variate": "neural"}),
}


def make(label: str, **extra):
    name, options = ESTIMATORS[label]
    return get(name, num_particles=K, **options, **extra)


data = load_data("digits", Preprocessing("bernoulli"))
print(data.info)


# %% [markdown]
# ## Gradient variance at fixed weights
#
# Variance is a property of an estimator at given parameters, so we fix them first: a
# VAE (10-dimensional $z$, 64-200-10 encoder) trained for a few epochs by
# reparameterization. At those weights `gradient_variance` draws each estimator's gradient
# 200 times on the same minibatch of 128 images, without stepping, and reports for the
# guide's parameters
#
# $$\text{variance} = \sum_i \mathrm{Var}(\hat g_i), \qquad
#   \text{SNR} = \lVert E\,\hat g \rVert / \sqrt{\text{variance}}.$$
#
# Both are estimated from the draws. The mean of $n$ draws, $\bar g$, is itself noisy:
# $E\lVert \bar g \rVert^2 = \lVert E\,\hat g \rVert^2 + \text{variance}/n$, so the
# plug-in $\lVert \bar g \rVert / \sqrt{\text{variance}}$ never falls much below
# $1/\sqrt{n}$ (0.071 at 200 draws), whatever the true SNR. `gradient_variance`
# subtracts that term, $\sqrt{\max(0, \lVert \bar g \rVert^2 - V/n)} / \sqrt{V}$; an
# SNR below about $1/\sqrt{n}$ is still not resolved by $n$ draws and reads as 0 or close
# to it (the dashed line in the figures).
#
# NVIL's baseline network is itself learned, so before its draws it is trained for a few
# hundred steps at the same fixed weights (without NVIL's scaling, as by default, so that
# the variances compare).


# %%
def new_vae(seed: int = 0):
    pyro.set_rng_seed(seed)
    model = VAE(data.x_dim, latent_dim=10, hidden_dims=(200,))
    return model, model.make_guide()


def warm_baseline(estimator, model, guide, x, num_data: int, steps: int) -> None:
    """Fit a neural control variate's network alone, with model and guide weights fixed."""
    estimator.loss_and_grads(model, guide, x, num_data=num_data)
    store = pyro.get_param_store()
    baseline = [p for n, p in store.named_parameters() if n.startswith("score_function_baseline")]
    optimizer = torch.optim.Adam(baseline, lr=1e-2)
    for _ in range(steps):
        for p in store.values():
            p.grad = None
        estimator.loss_and_grads(model, guide, x, num_data=num_data)
        optimizer.step()


def variance_table(model, guide, labels, fixed_weights):
    x, _ = next(iter(data.train_batches(128, epoch=0, seed=0)))
    n = data.train_x.shape[0]
    rows = []
    for label in labels:
        model.load_state_dict(fixed_weights[0])
        guide.load_state_dict(fixed_weights[1])
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if ESTIMATORS[label][1].get("control_variate") == "neural":
            estimator = make(label)
            warm_baseline(estimator, model, guide, x, n, NVIL_WARMUP)
        else:
            estimator = make(label)
        stats = gradient_variance(model, guide, estimator, x, num_data=n, num_draws=DRAWS)
        rows.append((label, stats["guide"]))
        print(
            f"{label:<28} variance {stats['guide'].variance:10.4g}   "
            f"SNR {stats['guide'].snr:7.3f}   {1000 * stats['guide'].seconds_per_draw:5.1f} ms/draw"
        )
    return rows


model, guide = new_vae()
config = TrainConfig(epochs=1 if FAST else 5, lr=3e-3, progress=False)
fit(model, guide, data, make("reparameterization"), config)
vae_weights = (
    {k: v.clone() for k, v in model.state_dict().items()},
    {k: v.clone() for k, v in guide.state_dict().items()},
)
vae_rows = variance_table(model, guide, list(ESTIMATORS), vae_weights)


# %%
def plot_variance(rows, title):
    labels = [label for label, _ in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.4), sharey=True)
    left.barh(labels, [s.variance for _, s in rows], color="tab:red")
    right.barh(labels, [s.snr for _, s in rows], color="tab:blue")
    right.axvline(1 / DRAWS**0.5, color="grey", linestyle="--", linewidth=1)
    left.set_xlabel("variance of the guide gradient (log scale)")
    right.set_xlabel(f"signal-to-noise ratio ‖E g‖ / √variance\n(dashed: 1/√{DRAWS} draws)")
    left.set_xscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="x")
    left.invert_yaxis()
    fig.suptitle(title)
    plt.show()


plot_variance(vae_rows, f"VAE on digits: guide gradient at fixed weights, K = {K}")
base = vae_rows[1][1].variance
for label, stats in vae_rows:
    print(f"{label:<28} variance of plain REINFORCE / this one: {base / stats.variance:7.1f}")

# %% [markdown]
# Plain REINFORCE is hundreds of times noisier than the pathwise gradient, which uses the
# decoder's derivative $\nabla_z \log p(x \mid z)$ instead of the value of $f$ alone. A
# moving average removes only part of that noise: one number for all images cannot follow
# $f$, which differs a lot from image to image. The two baselines that depend on the image
# do much better. Leave-one-out (the other samples of the same image) and NVIL (a network
# of $x$) bring REINFORCE down to the pathwise gradient's level on this 10-dimensional
# Gaussian code. That is not a general rule. The pathwise gradient's advantage grows when
# many latent dimensions share one learning signal $f$, and the comparison depends on $K$.
#
# ## Training curves, side by side
#
# Lower variance should mean faster learning. We train the same VAE from the same initial
# weights with each estimator for the same number of epochs, and record the validation
# ELBO after each epoch. Every step costs the same $K = 4$ model evaluations per image.

# %%
curves = {}
for label in ESTIMATORS:
    model, guide = new_vae()
    config = TrainConfig(epochs=EPOCHS, lr=3e-3, patience=None, progress=False)
    history = fit(model, guide, data, make(label), config).history
    pyro.set_rng_seed(1)
    test = elbo_per_datapoint(model, guide, data.test_x, num_samples=10).mean().item()
    seconds = sum(r["seconds"] for r in history)
    curves[label] = history
    print(
        f"{label:<28} best validation ELBO {max(r['val_elbo'] for r in history):8.2f}, "
        f"test ELBO {test:8.2f} nats ({seconds / len(history):.2f} s per epoch)"
    )


# %%
def plot_curves(curves, title):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for label, history in curves.items():
        epochs = [r["epoch"] for r in history]
        elapsed = torch.tensor([r["seconds"] for r in history]).cumsum(0)
        val = [r["val_elbo"] for r in history]
        left.plot(epochs, val, label=label)
        right.plot(elapsed, val, label=label)
    everything = [r["val_elbo"] for history in curves.values() for r in history]
    low = sorted(everything)[len(everything) // 20]  # keep the first epochs from hiding the rest
    left.set_ylim(low, max(everything) + 0.05 * (max(everything) - low))
    left.set_xlabel("epoch")
    right.set_xlabel("training time (s)")
    left.set_ylabel("validation ELBO (nats per image)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    plt.show()


plot_curves(curves, f"VAE on digits, K = {K} samples per step for every estimator")

# %% [markdown]
# The curves follow the variances. Reparameterization and leave-one-out REINFORCE climb
# together, the moving average trails them, and plain REINFORCE is last. NVIL ends level
# with the moving average although its variance at fixed weights was as low as
# leave-one-out's: in training, its baseline network has to learn $f$ before it helps.
# (With NVIL's variance normalization on, `normalize_variance=True`, it ended near
# −21.2 nats on the test set: dividing each site's signal by $\sqrt{v}$ is a smaller step
# for the guide, not the ELBO's gradient.) The right panel shows the same curves against
# training time, which depends on the machine (these timings come from a shared 2-core
# machine).
#
# ## The sigmoid belief network: where only REINFORCE applies
#
# `models.sbn.SBN` replaces the Gaussian code by $J = 50$ binary latents,
#
# $$z_j \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(a_j)), \qquad
#   x \mid z \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(W z + c)),$$
#
# with a logistic-regression guide $q_\lambda(z \mid x) = \prod_j
# \mathrm{Bernoulli}(z_j; \mathrm{sigmoid}(V x + d)_j)$. No differentiable $f_\lambda$
# maps fixed noise to a binary $z$: a Bernoulli has no `rsample`. So the guide can only
# learn through $\nabla_\lambda \log q_\lambda(z)$.

# %%
pyro.set_rng_seed(0)
sbn = SBN(data.x_dim, latent_dim=50)
q = sbn.make_guide().encode(data.train_x[:2])
print(f"q(z | x) is {type(q).__name__}; has_rsample = {q.has_rsample}")
SBN_ESTIMATORS = [label for label in ESTIMATORS if label != "reparameterization"]

sbn_curves, sbn_models = {}, {}
for label in SBN_ESTIMATORS:
    pyro.set_rng_seed(0)
    model = SBN(data.x_dim, latent_dim=50)
    guide = model.make_guide()
    config = TrainConfig(epochs=SBN_EPOCHS, lr=3e-3, patience=None, progress=False)
    sbn_curves[label] = fit(model, guide, data, make(label), config).history
    pyro.set_rng_seed(1)
    test = elbo_per_datapoint(model, guide, data.test_x, num_samples=10).mean().item()
    sbn_models[label] = (model, guide)
    print(
        f"{label:<28} best validation ELBO "
        f"{max(r['val_elbo'] for r in sbn_curves[label]):8.2f}, test ELBO {test:8.2f} nats"
    )
plot_curves(sbn_curves, f"sigmoid belief network on digits, 50 binary latents, K = {K}")

# %% [markdown]
# The ranking of the training curves is the VAE's again: leave-one-out first, NVIL level
# with the moving average, plain REINFORCE last. At the weights that leave-one-out
# training reached, the variances follow the VAE's pattern: the moving average removes a
# part of plain REINFORCE's variance, and leave-one-out and NVIL remove far more.

# %%
model, guide = sbn_models["REINFORCE + leave-one-out"]
sbn_weights = (
    {k: v.clone() for k, v in model.state_dict().items()},
    {k: v.clone() for k, v in guide.state_dict().items()},
)
sbn_rows = variance_table(model, guide, SBN_ESTIMATORS, sbn_weights)
plot_variance(sbn_rows, f"SBN on digits: guide gradient at fixed weights, K = {K}")

# %%
pyro.set_rng_seed(5)
with torch.no_grad():
    x = data.test_x[:12]
    z = guide.encode(x).sample()
    rows = [x, model.decode(z), model.generate(12), model.generate(12)]
image_grid(
    rows,
    data.image_shape,
    row_labels=["data x", "E[x | z ~ q]", "samples", "samples"],
    title="sigmoid belief network (REINFORCE + leave-one-out)",
)

# %% [markdown]
# To sum up: the pathwise gradient needs no tuning when $z$ is continuous and
# reparameterizable. When it is not, REINFORCE is the way, and never without a control
# variate. Leave-one-out costs nothing beyond the $K$ samples and has no parameters to
# tune; NVIL has to learn its baseline first. `pyro-vae grad-variance RUN` measures the
# same table for a saved run.
