# %% [markdown]
# # 3. The variational autoencoder on Fashion-MNIST
#
# This tutorial follows §18.3 of the lecture. When $p(x \mid z)$ is a neural network,
# the posterior $p(z \mid x)$ is intractable. The lecture's answer is to make $q$ a
# neural network too. The generative model, for each image $x_n$, is
#
# $$z_n \sim p(z) = \mathcal{N}(0, I), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n),$$
#
# where $p_\theta(x \mid z)$ is decoded from $z$ by an MLP. One encoder serves every
# image, the lecture's amortized Gaussian
#
# $$q_\lambda(z) = \mathcal{N}\big(w^1 \phi_1(x; \lambda),\; w^2 \phi_2(x; \lambda)\big),$$
#
# where $\phi_1, \phi_2$ are networks (here one shared trunk with two linear heads, $w^1$
# for the mean and $w^2$ for the log standard deviation). Encoder and decoder are trained
# together by maximizing the ELBO (lecture eq. 18.4):
#
# $$\mathcal{L}(x) = -\mathrm{KL}\big(q_\lambda(z) \,\|\, p(z)\big)
#   + E_{q_\lambda}\big[\log p_\theta(x \mid z)\big] \;\le\; \log p(x).$$
#
# Its gradient in $\lambda$ goes through the reparameterization $z = f_\lambda(s) = \mu +
# \sigma \odot s$, $s \sim \mathcal{N}(0, I)$:
# $\nabla_\lambda E_{q_\lambda} \log p(x \mid z) \approx \frac{1}{N}\sum_{n=1}^N
# \nabla_\lambda \log p(x \mid f_\lambda(s_n))$. In Pyro that is `Trace_ELBO`.
#
# Set `PYRO_VAE_TUTORIAL_FAST=1` to train on a thousand images for one epoch (CI does
# this). The numbers below come from a full run.

# %%
import dataclasses
import os

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import Trace_ELBO
from sklearn.decomposition import PCA

from models.vae import VAE
from pyro_vae import (
    Preprocessing,
    TrainConfig,
    active_units,
    elbo_per_datapoint,
    fit,
    iwae_log_likelihood,
    latent_means,
    load_data,
)
from pyro_vae.image_grid import image_grid

FAST = os.environ.get("PYRO_VAE_TUTORIAL_FAST", "") not in ("", "0")
EPOCHS = 1 if FAST else 10
SWAP_EPOCHS = 1 if FAST else 10
SIZES = (1000, 200, 200) if FAST else (None, None, None)  # train, validation, test images
SWAP_SIZES = (500, 100, 100) if FAST else (10000, 1000, 500)
IWAE_K, IWAE_POINTS = (20, 50) if FAST else (1000, 1000)
SWAP_IWAE_K = 20 if FAST else 200
CLASSES = (
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80})
print(f"{'fast' if FAST else 'full'} mode: {EPOCHS} epochs")
# %matplotlib inline


# %% [markdown]
# ## The data
#
# `load_data("fashion-mnist", ...)` reads the 70,000 images of Debian's
# `dataset-fashion-mnist` package, keeps the official 10,000 test images, and holds out
# a validation set from the 60,000 training images. For the Bernoulli likelihood the
# pixels are binarized once at intensity 0.5 (static binarization).


# %%
def head(data, sizes):
    """The first (train, validation, test) images of ``data``; ``None`` keeps a split whole."""
    n_train, n_val, n_test = sizes
    return dataclasses.replace(
        data,
        train_x=data.train_x[:n_train],
        train_y=data.train_y[:n_train],
        val_x=data.val_x[:n_val],
        val_y=data.val_y[:n_val],
        test_x=data.test_x[:n_test],
        test_y=data.test_y[:n_test],
    )


binarized = load_data("fashion-mnist", Preprocessing("bernoulli"), val_fraction=1 / 12)
data = head(binarized, SIZES)
print(
    f"{data.train_x.shape[0]} training, {data.val_x.shape[0]} validation and "
    f"{data.test_x.shape[0]} test images of {data.image_shape[0]}x{data.image_shape[1]} "
    f"pixels; {data.info['binarization']} binarization"
)
image_grid(
    [data.test_x[data.test_y == c][:10] for c in range(10)],
    data.image_shape,
    row_labels=CLASSES,
    title="binarized test images, one row per class",
)

# %% [markdown]
# ## Model, guide, estimator
#
# `models.vae.VAE` is the generative model above, with a 784-400-20 decoder and a
# Bernoulli likelihood $p_\theta(x \mid z) = \prod_d \mathrm{Bernoulli}(x_d;
# \mathrm{sigmoid}(\mathrm{Dec}(z))_d)$. `model.make_guide()` returns the amortized
# Gaussian $q_\lambda$ (`pyro_vae.guides.AmortizedNormal`, a 784-400-20 encoder). Both
# are ordinary Pyro programs, so `pyro_vae.fit` trains them with `pyro.infer.SVI`. After
# each epoch it scores the validation images and keeps the best weights.

# %%
pyro.set_rng_seed(0)
model = VAE(data.x_dim, latent_dim=20, hidden_dims=(400,))
guide = model.make_guide()
print(guide)
result = fit(
    model,
    guide,
    data,
    Trace_ELBO(),
    TrainConfig(epochs=EPOCHS, batch_size=128, lr=1e-3, patience=None, progress=False),
)
for record in result.history:
    print(
        f"epoch {record['epoch']:>2}: train ELBO {record['train_elbo']:8.2f}, "
        f"validation ELBO {record['val_elbo']:8.2f} nats per image ({record['seconds']:.0f} s)"
    )

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
epochs = [r["epoch"] for r in result.history]
ax.plot(epochs, [r["train_elbo"] for r in result.history], "o-", label="training (running mean)")
ax.plot(epochs, [r["val_elbo"] for r in result.history], "s-", label="validation")
ax.set_xlabel("epoch")
ax.set_ylabel("ELBO (nats per image)")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## Test ELBO, its two terms, and the log-likelihood
#
# The ELBO of each test image is estimated with 10 draws from $q_\lambda$. Its two terms
# can be read off separately: $\mathrm{KL}(q_\lambda \| p)$ is in closed form for two
# Gaussians, and the expected log-likelihood is the ELBO plus the KL.
#
# The ELBO is only a lower bound on $\log p(x)$. The importance-weighted estimate
# (Burda et al. 2015)
#
# $$\log p(x) \approx \log \frac{1}{K} \sum_{k=1}^K
#   \frac{p(x, z_k)}{q_\lambda(z_k)}, \qquad z_k \sim q_\lambda,$$
#
# is also a lower bound in expectation. It rises with $K$ and reaches $\log p(x)$ as
# $K \to \infty$. The difference $\log p(x) - \mathcal{L}(x) = \mathrm{KL}(q_\lambda(z)
# \,\|\, p(z \mid x))$ measures how far the amortized Gaussian is from the true posterior.

# %%
pyro.set_rng_seed(1)
test_x, test_y = data.test_x, data.test_y
elbo = elbo_per_datapoint(model, guide, test_x, num_samples=10)
with torch.no_grad():
    q = guide.encode(test_x).to_event(1)
    kl = torch.distributions.kl_divergence(q, model.prior((test_x.shape[0],)))
log_p = iwae_log_likelihood(model, guide, test_x[:IWAE_POINTS], num_samples=IWAE_K)
n_active, _ = active_units(model, guide, test_x)
print(f"test ELBO                     {elbo.mean():8.2f} nats per image ({len(elbo)} images)")
print(f"  E_q log p(x | z)            {(elbo + kl).mean():8.2f}")
print(f"  - KL(q || p)                {-kl.mean():8.2f}")
print(f"log p(x), IWAE K={IWAE_K:<5}       {log_p.mean():8.2f} (first {len(log_p)} images)")
print(f"ELBO on those images          {elbo[:IWAE_POINTS].mean():8.2f}")
print(f"gap log p(x) - ELBO           {(log_p - elbo[:IWAE_POINTS]).mean():8.2f}")
print(f"active latent units           {n_active} of {model.latent_dim}")

# %% [markdown]
# ## Reconstructions and samples
#
# The lecture's decoding step is $\hat{x} = \operatorname{argmax}_x \log p(x \mid z)$. For
# a Bernoulli likelihood the argmax thresholds the pixel probabilities at 1/2. We show the
# probabilities themselves, $E[x \mid z]$, with $z$ the encoder's mean and with one draw
# $z \sim q_\lambda$. New images come from the prior, $z \sim \mathcal{N}(0, I)$, which
# the autoencoder of tutorial 1 did not have.

# %%
picks = torch.cat([torch.nonzero(test_y == c)[:1, 0] for c in range(10)])
x = test_x[picks]
pyro.set_rng_seed(2)
with torch.no_grad():
    q = guide.encode(x)
    rows = [x, model.decode(q.mean), model.decode(q.sample()), model.decode(q.mean) > 0.5]
image_grid(
    [r.float() for r in rows],
    data.image_shape,
    row_labels=["data x", "E[x | z = μ]", "E[x | z ~ q]", "argmax x̂"],
    title="test images and their reconstructions",
)

# %%
pyro.set_rng_seed(3)
with torch.no_grad():
    samples = model.generate(40)
image_grid(samples.reshape(4, 10, -1), data.image_shape, title="E[x | z], z ~ p(z) = N(0, I)")

# %% [markdown]
# ## The latent space
#
# The encoder's means $\mu_\lambda(x) = w^1\phi_1(x;\lambda)$ of the test images,
# projected on their first two principal axes and coloured by class (the VAE never saw
# the labels). Walking in a straight line between two images' codes and decoding along
# the way gives images that change smoothly. The prior keeps the space between codes
# populated, which is what the autoencoder of tutorial 1 lacked.

# %%
mu = latent_means(model, guide, test_x)
xy = PCA(n_components=2).fit_transform(mu.numpy())
fig, ax = plt.subplots(figsize=(6.5, 5))
for c in range(10):
    ax.scatter(*xy[test_y.numpy() == c].T, s=3, alpha=0.6, label=CLASSES[c])
ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
ax.set_xlabel("principal axis 1 of μ(x)")
ax.set_ylabel("principal axis 2 of μ(x)")
ax.set_title("latent means of the test images")
plt.show()

# %%
ends = [(0, 9), (5, 7), (1, 3)]  # T-shirt to ankle boot, sandal to sneaker, trouser to dress
weights = torch.linspace(0, 1, 10)[:, None]
with torch.no_grad():
    rows = [model.decode((1 - weights) * mu[picks[a]] + weights * mu[picks[b]]) for a, b in ends]
image_grid(
    rows,
    data.image_shape,
    row_labels=[f"{CLASSES[a]} → {CLASSES[b]}" for a, b in ends],
    title="decoding (1 - t) μ(x_a) + t μ(x_b), t from 0 to 1",
)

# %% [markdown]
# ## Swapping the likelihood
#
# Only the likelihood $p_\theta(x \mid z)$ needs to change for a different kind of pixel,
# and the guide and estimator stay the same:
#
# - **Bernoulli** on binarized pixels, as above;
# - **Gaussian** on intensities in $[0, 1]$,
#   $x_d \sim \mathcal{N}(\mathrm{sigmoid}(h_d), s_d^2)$, with a decoded per-pixel scale
#   $s_d \ge 0.05$;
# - **Categorical**, the lecture's $\Pr(x \mid z) = \mathrm{softmax}(w\phi(z))$: each
#   pixel is one of $L = 8$ intensity levels, with a softmax over the levels.
#
# `Preprocessing(likelihood)` prepares the pixels to match, and `VAE(..., likelihood=...)`
# builds the decoder. Each model is trained on the same images for the same number of
# epochs.
#
# The three ELBOs are in different units and cannot be ranked against each other. The
# Bernoulli and categorical numbers are log-probabilities of *different* discrete data
# (2 levels and 8 levels), and the Gaussian one is a log-density of continuous
# intensities, which can be positive. What can be compared is the gap
# $\log p(x) - \mathcal{L}(x) = \mathrm{KL}(q_\lambda(z) \,\|\, p(z \mid x))$, a KL between
# distributions over the same 20-dimensional $z$.

# %%
swap = {}
for likelihood in ("bernoulli", "gaussian", "categorical"):
    if likelihood == "bernoulli":
        full = binarized
    else:
        full = load_data("fashion-mnist", Preprocessing(likelihood), val_fraction=1 / 12)
    split = head(full, SWAP_SIZES)
    pyro.set_rng_seed(0)
    m = VAE(split.x_dim, 20, (400,), likelihood=likelihood, levels=split.info.get("levels"))
    g = m.make_guide()
    config = TrainConfig(epochs=SWAP_EPOCHS, lr=1e-3, patience=None, progress=False)
    fit(m, g, split, Trace_ELBO(), config)
    pyro.set_rng_seed(1)
    bound = elbo_per_datapoint(m, g, split.test_x, num_samples=10)
    ll = iwae_log_likelihood(m, g, split.test_x, num_samples=SWAP_IWAE_K)
    swap[likelihood] = (split, m, g)
    print(
        f"{likelihood:<12} test ELBO {bound.mean():9.2f}   log p(x) (IWAE K={SWAP_IWAE_K}) "
        f"{ll.mean():9.2f}   gap {(ll - bound).mean():6.2f} nats per image"
    )

# %%
rows, labels = [], []
pyro.set_rng_seed(4)
for likelihood, (split, m, g) in swap.items():
    x = split.test_x[:10]
    with torch.no_grad():
        rows += [x, m.decode(g.encode(x).mean), m.generate(10)]
    scale = split.pixel_max
    rows[-3:] = [r / scale for r in rows[-3:]]
    labels += [f"{likelihood}: data", "reconstruction", "samples"]
image_grid(rows, data.image_shape, row_labels=labels, title="one VAE, three likelihoods")

# %% [markdown]
# The Bernoulli VAE models silhouettes only, because binarized data have no shading. The
# Gaussian and categorical VAEs reproduce shading, but fine texture such as a shirt's
# checks is lost in a 20-number code trained for a few epochs on 10,000 images. Samples
# from the prior are blurrier than reconstructions for all three.
#
# The gaps in the table are lower bounds on $\mathrm{KL}(q_\lambda(z) \,\|\, p(z \mid
# x))$, since the importance-weighted estimate is itself a bound. Compare them across the
# three likelihoods: the larger the gap, the worse the one family of amortized Gaussians
# fits that model's posterior.
#
# Tutorial 4 keeps this VAE and changes only the *estimator* of the ELBO's gradient:
# reparameterization against REINFORCE.
