# %% [markdown]
# # 1. Autoencoders: encode, corrupt the code, decode
#
# This tutorial follows §18.1 of the lecture (Rush, CS281 lecture 18). A signal $x$ is
# encoded into a code that is simpler than $x$,
#
# $$z = \mathrm{Enc}(x),$$
#
# the code is changed by noise into $z'$, and $x$ is recovered by inference:
#
# $$\hat{x} = \operatorname{argmax}_{x'} \Pr(x = x' \mid z').$$
#
# $\mathrm{Enc}$ and $\Pr(x \mid z)$ are both neural networks, learned from data. Their
# capacity is limited (here, by the size of $z$), so the model has to learn a compression
# that keeps the most important information about $x$ and drops the rest.
#
# We train `models.autoencoder.Autoencoder` on scikit-learn's 8x8 handwritten digits, with
# the library's ordinary SVI loop, and look at three things: how the code size limits
# reconstruction, what corrupting $z$ does, and why an autoencoder cannot generate new
# images. That last point leads to the variational autoencoder of tutorial 3.
#
# Set `PYRO_VAE_TUTORIAL_FAST=1` to run everything with a few epochs. CI does this to check
# that the notebook runs. The numbers below come from a full run.

# %%
import os

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import Trace_ELBO

from models.autoencoder import Autoencoder
from pyro_vae import Preprocessing, TrainConfig, fit, latent_means, load_data, reconstruction_error
from pyro_vae.image_grid import image_grid

FAST = os.environ.get("PYRO_VAE_TUTORIAL_FAST", "") not in ("", "0")
EPOCHS = 2 if FAST else 100
CODE_SIZES = (2, 8) if FAST else (2, 4, 8, 16)
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80})
print(f"{'fast' if FAST else 'full'} mode: {EPOCHS} epochs per model")
# %matplotlib inline

# %% [markdown]
# ## The data
#
# `load_data("digits", ...)` splits the 1,797 images into training, validation and test
# sets with a fixed seed. With `Preprocessing("gaussian")` the pixels are intensities in
# $[0, 1]$, and the likelihood is a Gaussian $\Pr(x \mid z) = \mathcal{N}(x;\,
# \mu_\theta(z), \operatorname{diag} s_\theta(z)^2)$ decoded per pixel. For a Gaussian,
# the lecture's $\operatorname{argmax}_{x'} \Pr(x = x' \mid z')$ is the mean
# $\mu_\theta(z')$, which is what `model.decode(z)` returns.

# %%
data = load_data("digits", Preprocessing("gaussian"))
print(data.info)
test_x, test_y = data.test_x, data.test_y
show = test_x[:12]
image_grid([show], data.image_shape, row_labels=["data x"], title="test images")

# %% [markdown]
# ## Training: maximum likelihood through the SVI loop
#
# The autoencoder is written in Pyro syntax with one sample site, the observed $x$. Its
# guide (`model.make_guide()`) samples nothing, so the `Trace_ELBO` loss is exactly the
# negative reconstruction log-likelihood $-\log \Pr(x \mid z')$. Training it with
# `pyro_vae.fit` is maximum likelihood for $\mathrm{Enc}$ and the decoder. During training
# the model corrupts its own code, $z' = z + s\,\varepsilon$ with
# $\varepsilon \sim \mathcal{N}(0, I)$, where $s$ is `noise_std`; in evaluation mode it
# does not.
#
# First, capacity. We train one autoencoder for each code size $d = \dim z$, without
# corruption ($s = 0$), and measure the test reconstruction error per pixel.


# %%
def train_autoencoder(latent_dim: int, noise_std: float) -> Autoencoder:
    pyro.set_rng_seed(0)
    model = Autoencoder(
        data.x_dim,
        latent_dim=latent_dim,
        hidden_dims=(128,),
        likelihood="gaussian",
        noise_std=noise_std,
    )
    config = TrainConfig(epochs=EPOCHS, lr=3e-3, patience=None, progress=False)
    fit(model, model.make_guide(), data, Trace_ELBO(), config)
    return model.eval()


by_size = {d: train_autoencoder(d, noise_std=0.0) for d in CODE_SIZES}
for d, model in by_size.items():
    mse = reconstruction_error(model, model.make_guide(), test_x).mean().item()
    print(f"d = {d:>2}: test reconstruction error {mse:.4f} per pixel")

# %%
with torch.no_grad():
    rows = [show] + [model.decode(model.encode(show)) for model in by_size.values()]
image_grid(
    rows,
    data.image_shape,
    row_labels=["data x"] + [f"x̂, d = {d}" for d in by_size],
    title="reconstructions x̂ = Dec(Enc(x)) for each code size",
)

# %% [markdown]
# A 2-dimensional code keeps the rough shape of each digit and little else. With 8 or
# 16 numbers per image the reconstructions are close to the data, because the capacity
# limit is what decides how much of $x$ survives.
#
# The 2-dimensional codes can be plotted directly. The encoder was never shown the labels,
# yet test images of the same digit land near each other.

# %%
z2 = latent_means(by_size[2], by_size[2].make_guide(), test_x)
fig, ax = plt.subplots(figsize=(5, 4.2))
points = ax.scatter(z2[:, 0], z2[:, 1], c=test_y, cmap="tab10", s=12, vmin=-0.5, vmax=9.5)
fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
ax.set_xlabel("$z_1$")
ax.set_ylabel("$z_2$")
ax.set_title("codes z = Enc(x) of the test images, d = 2")
plt.show()

# %% [markdown]
# ## Corrupting the code
#
# Now the lecture's middle step. We take the $d = 8$ autoencoder, encode the test images,
# add noise to the codes, $z' = z + \sigma \varepsilon$, and decode
# $\hat{x} = \mu_\theta(z')$. The noise level $\sigma$ is measured in units of the
# codes' own spread, $\sigma = c \cdot \operatorname{sd}(z)$, so that "a lot of noise"
# means the same thing for every encoder.

# %%
NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0)


def corrupted_error(model: Autoencoder, x: torch.Tensor, relative_noise: float) -> float:
    """Mean squared error of μ_θ(z + σε), σ = relative_noise · sd(z), averaged over 20 draws."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = model.encode(x)
        sigma = relative_noise * z.std(0)
        errors = [
            (model.decode(z + sigma * torch.randn(z.shape, generator=generator)) - x).pow(2).mean()
            for _ in range(20)
        ]
    return torch.stack(errors).mean().item()


plain = by_size[8]
generator = torch.Generator().manual_seed(1)
with torch.no_grad():
    z = plain.encode(show)
    rows = [show] + [
        plain.decode(z + c * z.std(0) * torch.randn(z.shape, generator=generator))
        for c in NOISE_LEVELS
    ]
image_grid(
    rows,
    data.image_shape,
    row_labels=["data x"] + [f"σ = {c} sd(z)" for c in NOISE_LEVELS],
    title="decoding corrupted codes z' = z + σε (d = 8, trained without noise)",
)

# %% [markdown]
# Small perturbations of $z$ give plausible digits. Larger ones turn a digit into a
# different digit, or into a blur that is no digit at all. The decoder has only ever seen
# the codes of training images, and it is arbitrary between them.
#
# The autoencoder can be trained to expect the corruption: with `noise_std` $= s > 0$ it
# learns from $z' = z + s\varepsilon$. We train two such models and compare them with the
# plain one, at the same relative noise levels.

# %%
TRAIN_NOISE = (0.5, 1.0)
noisy = {s: train_autoencoder(8, noise_std=s) for s in TRAIN_NOISE}
models = {0.0: plain, **noisy}
print("trained with s   sd(z) per unit   error at σ = 0, 0.25, 0.5, 1 sd(z)")
for s, model in models.items():
    with torch.no_grad():
        spread = model.encode(test_x).std(0).mean().item()
    errors = "  ".join(f"{corrupted_error(model, test_x, c):.4f}" for c in NOISE_LEVELS)
    print(f"{s:>14}   {spread:>14.2f}   {errors}")

# %% [markdown]
# Training with noise makes the decoder more robust, but the codes' spread $\operatorname
# {sd}(z)$ tells how the model did it. Nothing fixes the scale of $z$, so the encoder
# moves the codes apart until a fixed noise $s\varepsilon$ is small next to them. The
# corruption then barely matters, and at the same *relative* noise the "robust" models
# lose about as much as the plain one.
#
# A scale has to be fixed for corruption to mean anything. The VAE fixes it with a prior
# $p(z) = \mathcal{N}(0, I)$, and the $-\mathrm{KL}(q \,\|\, p)$ term of the ELBO keeps
# the codes near it.
#
# ## Why an autoencoder does not generate
#
# To make a new image we would need a $z$ to decode. An autoencoder has no distribution
# over codes. We can guess one, a Gaussian with the codes' mean and spread, but the
# training codes fill only a small, oddly shaped part of that Gaussian.

# %%
generator = torch.Generator().manual_seed(2)
with torch.no_grad():
    codes = plain.encode(data.train_x)
    guesses = codes.mean(0) + codes.std(0) * torch.randn(24, 8, generator=generator)
    decoded = plain.decode(guesses)
image_grid(
    decoded.reshape(2, 12, -1),
    data.image_shape,
    title="decoding z ~ N(mean of codes, sd of codes): no model of p(z), few digits",
)

# %% [markdown]
# Some of these are digits, but many are blends or smudges. The variational autoencoder
# (tutorial 3) keeps the encoder and decoder and adds what is missing:
#
# - a prior $p(z)$ to sample new codes from;
# - an encoder that outputs a *distribution*,
#   $q_\lambda(z) = \mathcal{N}(w^1\phi_1(x;\lambda), w^2\phi_2(x;\lambda))$, so the
#   corruption $z \sim q_\lambda$ is part of the model and its scale is learned;
# - one objective for both, the ELBO $-\mathrm{KL}(q_\lambda \,\|\, p) +
#   E_{q_\lambda}[\log p(x \mid z)]$ (lecture eq. 18.4).
