# %% [markdown]
# # 5. Mean field and structured mean field
#
# §18.2 of the lecture lists the choices of $q$. Two of them need no neural network:
#
# - **mean field**, $q(\theta) = \prod_i q_i(\theta_i)$, where each factor is updated in
#   turn given its Markov blanket (coordinate ascent, CAVI);
# - **structured mean field**, which splits the graph into tractable subgraphs, runs exact
#   inference (for example forward-backward) inside each one, and uses mean field between
#   them. This $q$ is closer to the true posterior and gives a better bound.
#
# Both maximize the same bound from eqs. 18.1-18.4,
# $\log p(x) \ge E_q[\log p(x, \theta) - \log q(\theta)]$. We check both against exact
# answers on two models small enough to solve exactly. The first is the Ising model that
# the lecture names as hard for inference; the second is a factorial hidden Markov model.
# Everything here is closed-form coordinate ascent from `pyro_vae.cavi`, in
# scikit-learn's conventions: `fit` returns the estimator, and the fitted bound is
# `lower_bound_`.
#
# Set `PYRO_VAE_TUTORIAL_FAST=1` for smaller models and fewer settings (CI does this).

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vae import elbo_estimate
from pyro_vae.cavi import (
    AutoCAVI,
    ConditionalCAVIGuide,
    FactorialHMM,
    IsingMeanField,
    NaiveMeanField,
    NotConjugateError,
    StructuredMeanField,
    grid_couplings,
    ising_log_partition_exact,
)

FAST = os.environ.get("PYRO_VAE_TUTORIAL_FAST", "") not in ("", "0")
GRID = 3 if FAST else 5
BETAS = np.linspace(0.0, 1.0, 6 if FAST else 26)
RESTARTS = 2 if FAST else 5
NUM_MODELS = 2 if FAST else 10
T = 40 if FAST else 100
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80})
print(f"{'fast' if FAST else 'full'} mode: {GRID}x{GRID} Ising grid, {len(BETAS)} values of β")
# %matplotlib inline

# %% [markdown]
# ## The Ising model
#
# Spins $s \in \{-1, +1\}^n$ on a grid, coupled to their nearest neighbours:
#
# $$p(s) = \frac{1}{Z(\beta)} \exp\Big(\beta \sum_{i \sim j} s_i s_j\Big).$$
#
# The inverse temperature $\beta$ sets how strongly neighbours agree. $\log Z(\beta)$ sums
# over $2^n$ states, which is impossible for large grids. On a 5x5 grid ($2^{25}$ states)
# `ising_log_partition_exact` still enumerates them in blocks of dense algebra.
#
# Naive mean field takes $q(s) = \prod_i q_i(s_i)$ with magnetizations
# $m_i = E_q[s_i]$, and bounds
#
# $$\log Z \;\ge\; L(m) = \beta \sum_{i \sim j} m_i m_j
#   + \sum_i H\Big(\tfrac{1 + m_i}{2}\Big),$$
#
# where $H$ is the binary entropy. Coordinate ascent sets each
# $m_i \leftarrow \tanh\big(\beta \sum_{j \sim i} m_j\big)$ given its neighbours, which
# are its Markov blanket. Each update can only raise $L$. The bound has several local
# maxima, so `IsingMeanField` starts from `n_init` random points and keeps the best.

# %%
J = grid_couplings(GRID, GRID)
exact, bound, magnetization = [], [], []
for beta in BETAS:
    exact.append(ising_log_partition_exact(J, beta=float(beta)))
    fitted = IsingMeanField(beta=float(beta), n_init=RESTARTS, random_state=0).fit(J)
    bound.append(fitted.lower_bound_)
    magnetization.append(fitted.magnetization_.abs().mean().item())
exact, bound = np.array(exact), np.array(bound)
gap = exact - bound
peak = int(np.argmax(gap))
print(f"{GRID}x{GRID} grid, {GRID * GRID} spins, no field")
for i in np.linspace(0, len(BETAS) - 1, 6).round().astype(int):
    print(
        f"β = {BETAS[i]:.2f}: exact log Z {exact[i]:7.3f}, mean-field bound {bound[i]:7.3f}, "
        f"gap {gap[i]:.3f}, mean |m_i| {magnetization[i]:.2f}"
    )
ordered = next((b for b, m in zip(BETAS, magnetization, strict=True) if m > 0.01), math.nan)
print(f"largest gap {gap[peak]:.3f} nats at β = {BETAS[peak]:.3f}; smallest {gap.min():.2e}")
print(f"gap at β = {BETAS[-1]:.2f}: {gap[-1]:.3f} nats; log 2 = {math.log(2):.3f}")
print(
    f"mean field first orders (mean |m_i| > 0.01) at β = {ordered:.3f}; its linear stability "
    f"limit is 1/λ_max(J) = {1 / torch.linalg.eigvalsh(J).max().item():.3f}"
)
print(f"Onsager's transition on the infinite grid: β_c = {math.log(1 + math.sqrt(2)) / 2:.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
axes[0].plot(BETAS, exact, label="exact log Z")
axes[0].plot(BETAS, bound, "--", label="mean-field bound L(m)")
axes[0].set_ylabel("nats")
axes[0].legend()
axes[1].plot(BETAS, gap, color="tab:red")
axes[1].axhline(math.log(2), color="gray", ls=":", label="log 2")
axes[1].set_ylabel("log Z − L(m) (nats)")
axes[1].legend()
axes[2].plot(BETAS, magnetization, color="tab:green")
axes[2].set_ylabel("mean |m_i| under q")
for ax in axes:
    ax.set_xlabel("inverse temperature β")
    ax.grid(alpha=0.3)
fig.suptitle(f"naive mean field on a {GRID}x{GRID} Ising grid")
plt.show()

# %% [markdown]
# At $\beta = 0$ the spins are independent, and mean field is exact:
# $\log Z = n \log 2$. The gap opens as $\beta$ grows, because $q$ cannot represent
# correlations between neighbours. It peaks shortly after mean field switches from
# $m = 0$ to an ordered solution (right panel). The switch comes near
# $\beta = 1/\lambda_{\max}(J)$, where $m = 0$ stops being a stable solution. On the
# infinite grid, mean field predicts order at $\beta = 1/4$, while the true transition is
# at $\beta_c = \tfrac{1}{2}\log(1 + \sqrt{2}) \approx 0.44$ (Onsager): by ignoring
# fluctuations, mean field overstates order. The exact model on a finite grid has no
# symmetry breaking at all; by symmetry its $E[s_i]$ is 0 at every $\beta$.
#
# At large $\beta$, $p$ puts almost all its mass on two states, all spins $+1$ or all
# $-1$. A factorized $q$ can cover only one of them, so the gap tends to $\log 2$.
#
# ## The factorial HMM: structured against naive mean field
#
# A factorial HMM (Ghahramani & Jordan 1997) has $M$ independent Markov chains
# $s^{(m)}_{1:T}$, each with $K$ states, which together emit
#
# $$y_t \sim \mathcal{N}\Big(\sum_{m=1}^M W^{(m)} s^{(m)}_t,\; C\Big).$$
#
# Given $y$, the chains are coupled (explaining away), and exact inference runs on $K^M$
# joint states. Two variational families:
#
# - **naive mean field**, $q(S) = \prod_m \prod_t q(s^{(m)}_t)$, which breaks every time
#   link as well;
# - **structured mean field**, $q(S) = \prod_m q_m(s^{(m)}_{1:T})$, which keeps each chain
#   an exact HMM. Updating $q_m$ is one forward-backward pass with emissions that the
#   other chains' expectations adjust. This is the lecture's "belief propagation inside
#   the subgraphs, mean field between them".
#
# We draw 3 chains of 2 states in 2 dimensions, then compare both bounds with the exact
# $\log p(y)$ from the forward algorithm on the $2^3$ joint states.


# %%
def random_factorial_hmm(seed: int, chains: int = 3, states: int = 2, dim: int = 2):
    """A factorial HMM with sticky chains (stay probability 0.8) and random means."""
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.log_softmax(torch.randn(chains, states, generator=g, dtype=torch.float64), -1)
    A = torch.full((chains, states, states), 0.2 / (states - 1), dtype=torch.float64)
    A[:, torch.arange(states), torch.arange(states)] = 0.8
    W = 2.0 * torch.randn(chains, dim, states, generator=g, dtype=torch.float64)
    return FactorialHMM(log_pi, A.log(), W, 0.8 * torch.eye(dim, dtype=torch.float64))


def best_of(family, model, y):
    """The fit with the highest bound over RESTARTS random initializations."""
    fits = [family(model, random_state=r).fit(y) for r in range(RESTARTS)]
    return max(fits, key=lambda f: f.lower_bound_)


# %% [markdown]
# With a single chain, structured mean field *is* the exact posterior, so its bound
# should equal $\log p(y)$:

# %%
one_chain = random_factorial_hmm(seed=100, chains=1)
_, y1 = one_chain.sample(T, seed=101)
single = StructuredMeanField(one_chain).fit(y1)
print(
    f"one chain: exact log p(y) {one_chain.log_likelihood_exact(y1):.6f}, "
    f"structured bound {single.lower_bound_:.6f}"
)

# %%
rows = []
for seed in range(NUM_MODELS):
    model = random_factorial_hmm(seed)
    states, y = model.sample(T, seed=seed + 1000)
    exact_ll = model.log_likelihood_exact(y)
    structured, naive = best_of(StructuredMeanField, model, y), best_of(NaiveMeanField, model, y)
    rows.append((exact_ll, structured.lower_bound_, naive.lower_bound_))
    if seed == 0:
        example = (model, states, y, structured, naive)
gaps = np.array([(e - s, e - n) for e, s, n in rows])
print(f"{NUM_MODELS} random factorial HMMs, T = {T}, best of {RESTARTS} starts per family")
print("model   exact log p(y)   structured gap   naive gap   (nats)")
for seed, ((e, _, _), (gs, gn)) in enumerate(zip(rows, gaps, strict=True)):
    print(f"{seed:>5}   {e:14.2f}   {gs:14.2f}   {gn:9.2f}")
print(
    f"mean gap: structured {gaps[:, 0].mean():.2f}, naive {gaps[:, 1].mean():.2f} nats; "
    f"structured is tighter on {(gaps[:, 0] < gaps[:, 1]).sum()} of {NUM_MODELS} models"
)

# %%
model, states, y, structured, naive = example
exact_ll = model.log_likelihood_exact(y)
window = slice(0, min(T, 80))
fig = plt.figure(figsize=(12, 5.5))
grid = fig.add_gridspec(3, 2, width_ratios=(1, 2.2))
curve = fig.add_subplot(grid[:, 0])
for label, fitted in (("structured", structured), ("naive", naive)):
    curve.plot(range(1, fitted.n_iter_ + 1), fitted.lower_bounds_, "o-", ms=3, label=label)
curve.axhline(exact_ll, color="black", ls=":", label="exact log p(y)")
curve.set_xlabel("coordinate-ascent sweep")
curve.set_ylabel("bound (nats)")
spread = exact_ll - naive.lower_bound_
curve.set_ylim(exact_ll - 3 * spread, exact_ll + 0.3 * spread)
curve.legend()
curve.grid(alpha=0.3)
curve.set_title("bound per sweep (model 0)")
t = np.arange(T)[window]
first = None
for c in range(3):
    ax = fig.add_subplot(grid[c, 1], sharex=first)
    first = first or ax
    ax.step(t, states[window, c], where="mid", color="black", lw=1, label="true state")
    ax.plot(t, structured.expectations_[window, c, 1], label="structured q(s = 1)")
    ax.plot(t, naive.expectations_[window, c, 1], "--", label="naive q(s = 1)")
    ax.set_ylabel(f"chain {c + 1}")
    ax.set_ylim(-0.1, 1.1)
    ax.tick_params(labelbottom=c == 2)
    if c == 0:
        ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
ax.set_xlabel("time t")
ax.set_xlim(t[0] - 0.5, t[-1] + 0.5)
fig.tight_layout()
plt.show()

# %% [markdown]
# For any $q$ the gap is $\log p(y) - L(q) = \mathrm{KL}(q \,\|\, p(S \mid y))$, so
# the bounds rank the two families by how close they come to the true posterior. Keeping
# each chain's time dependence gives the tighter bound on most models (the count above);
# on a few, the naive family's best start ends higher, for the reason below. Where the
# data are clear, the two families' expectations agree with each other and with the true
# states.
# Where the data are ambiguous, they differ, and only the bound says which one is closer.
#
# Both methods are coordinate ascent on a non-convex objective, and a single start can end
# in a poor local optimum. That is why each family keeps the best of several starts.
#
# On the Ising grid no tractable subgraph is as natural as a chain. There, the same idea
# gives structured mean field over rows or trees of spins. Tutorial 3's VAE goes the other
# way: its $q$ is a neural network of $x$.

# %% [markdown]
# ## Your own conjugate model: `AutoCAVI`
#
# The classes above are hand-written, one per model. `pyro_vae.cavi.AutoCAVI` runs the
# same closed-form coordinate ascent on a model you declare in Pyro syntax, as long as it
# is conditionally conjugate: each latent's prior is an exponential family and each factor
# that mentions it is linear in its sufficient statistics (Normal means, Gamma precisions,
# Dirichlet weights, Categorical assignments, …). It finds each latent's Markov blanket
# from a trace, recovers how each factor depends on the latents by re-running the model at
# probe points, and then updates $q_j \propto \exp E_{-j}[\log p]$ in closed form.
#
# Here, a model none of the classes covers: groups share a mean $m$; each group $g$ has its
# own mean $\mu_g$ and precision $\tau_g$.


# %%
def groups_model(y):  # y: [N, G]
    m = pyro.sample("m", dist.Normal(y.new_tensor(0.0), 3.0))
    with pyro.plate("groups", y.shape[-1], dim=-1):
        tau = pyro.sample("tau", dist.Gamma(y.new_tensor(2.0), 1.0))
        mu = pyro.sample("mu", dist.Normal(m, tau.rsqrt()))
        with pyro.plate("points", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


g = torch.Generator().manual_seed(0)
scales = torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
y_groups = torch.tensor([-1.0, 0.5, 1.5, 3.0], dtype=torch.float64) + scales * torch.randn(
    20, 4, generator=g, dtype=torch.float64
)
start = time.perf_counter()
auto = AutoCAVI(groups_model, tol=1e-10).fit(y_groups)
auto_seconds = time.perf_counter() - start
print(
    f"AutoCAVI: bound {auto.lower_bound_:.3f} nats after {auto.n_iter_} sweeps, "
    f"{auto_seconds:.2f} s ({auto.probe_seconds_:.2f} s of it probing the model)"
)
print("Markov blankets:", auto.markov_blankets_)
q = auto.variational_distributions()
print("E_q[tau] per group:", (q["tau"].concentration / q["tau"].rate).numpy().round(2))

# %% [markdown]
# The same model by mean-field SVI (`AutoNormal`: Normal factors for $m$, $\mu$, and
# $\log \tau$), for comparison: its ELBO is noisy and climbs towards CAVI's bound.

# %%
pyro.clear_param_store()
pyro.set_rng_seed(0)
guide = AutoNormal(groups_model)
svi = SVI(groups_model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
steps = 200 if FAST else 1500
history, start = [], time.perf_counter()
for _ in range(steps):
    history.append(-svi.step(y_groups))
svi_seconds = time.perf_counter() - start
svi_elbo, svi_se = elbo_estimate(groups_model, guide, y_groups, num_samples=2000)
print(f"SVI: ELBO {svi_elbo:.3f} ± {svi_se:.3f} nats after {steps} steps, {svi_seconds:.1f} s")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(np.convolve(history, np.ones(20) / 20, mode="valid"), label="SVI ELBO (20-step mean)")
ax.axhline(auto.lower_bound_, color="black", ls=":", label="AutoCAVI bound")
ax.set_ylim(auto.lower_bound_ - 40, auto.lower_bound_ + 5)
ax.set_xlabel("SVI step")
ax.set_ylabel("nats")
ax.legend()
plt.show()

# %% [markdown]
# Mean field splits each group's $q(\mu_g)\,q(\tau_g)$, but $\mu_g$'s prior is scaled by
# $\tau_g$ and so are its data: the pair is a Normal-Gamma block, whose joint factor
# $q(\mu_g, \tau_g) = N(\mu_g \mid m_g, (\tau_g p_g)^{-1})\,\mathrm{Gamma}(\tau_g \mid a_g, b_g)$
# keeps their posterior coupling. `blocks="auto"` finds such pairs from the model's
# dependencies (or name them: `blocks=[("mu", "tau")]`); its family holds every product
# of the mean-field one, so the bound can only rise.

# %%
structured = AutoCAVI(groups_model, blocks="auto", tol=1e-10).fit(y_groups)
print("blocks:", structured.blocks_)
print(
    f"bound {structured.lower_bound_:.3f} nats with the blocks, {auto.lower_bound_:.3f} "
    f"with mean field (+{structured.lower_bound_ - auto.lower_bound_:.3f})"
)
print("q(mu_g), marginally:", structured.variational_distributions()["mu"])

# %% [markdown]
# A model that is not conjugate is refused before any work, with the site, its
# distribution and the factor that breaks conjugacy: here a Normal latent enters the
# likelihood's scale through `exp`.


# %%
def log_scale_model(y):
    u = pyro.sample("u", dist.Normal(y.new_tensor(0.0), 1.0))
    with pyro.plate("points", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, u.exp()), obs=y)


try:
    AutoCAVI(log_scale_model).fit(y_groups[:, 0])
except NotConjugateError as error:
    print(error)

# %% [markdown]
# ## Many sequences: a Bayesian HMM in a plate
#
# Categorical sites chained by `pyro.markov` are kept whole: $q$ of a chain is an HMM,
# updated by one exact forward-backward pass (structured mean field, as for the factorial
# HMM above). Written with the sequences in a plate around the one loop, each element of
# the plate is its own chain, and all of them are updated by one batched pass. Here 30
# sequences of 60 steps from a sticky 3-state chain, with the transition rows
# $A_k \sim \mathrm{Dirichlet}(1, 1, 1)$ and the emission means $\mu_k \sim N(0, 10^2)$
# latent (MacKay 1997; Beal 2003): $q(A)\,q(\mu)\,\prod_n q(s_{n,0}, \dots, s_{n,59})$.

# %%
from pyro.ops.indexing import Vindex  # noqa: E402

K_STATES, N_SEQUENCES, T_STEPS = 3, (10 if FAST else 30), 60
true_A = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]]).double()
true_means = torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64)
g = torch.Generator().manual_seed(1)
true_states = [torch.randint(0, K_STATES, (N_SEQUENCES,), generator=g)]
for _ in range(1, T_STEPS):
    true_states.append(torch.multinomial(true_A[true_states[-1]], 1, generator=g).squeeze(-1))
true_states = torch.stack(true_states)  # [T, N]
noise = torch.randn(T_STEPS, N_SEQUENCES, generator=g, dtype=torch.float64)
y_seq = true_means[true_states] + noise


def sequences_hmm(y):  # y: [T, N]
    with pyro.plate("states", K_STATES):
        A = pyro.sample("A", dist.Dirichlet(y.new_ones(K_STATES)))
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
    with pyro.plate("sequences", y.shape[1]):
        s = pyro.sample("s_0", dist.Categorical(y.new_ones(K_STATES) / K_STATES))
        pyro.sample("y_0", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y[0])
        for t in pyro.markov(range(1, y.shape[0])):
            s = pyro.sample(f"s_{t}", dist.Categorical(Vindex(A)[..., s, :]))
            pyro.sample(f"y_{t}", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y[t])


start = time.perf_counter()
hmm_fit = AutoCAVI(sequences_hmm, tol=1e-8).fit(y_seq)
hmm_seconds = time.perf_counter() - start
naive_fit = AutoCAVI(sequences_hmm, tol=1e-8, markov_chains=False).fit(y_seq)
q_hmm = hmm_fit.variational_distributions()
order = q_hmm["mu"].loc.argsort()  # q's states are the truth's up to a relabelling
print(f"{N_SEQUENCES} sequences x {T_STEPS} steps: {hmm_seconds:.1f} s, {hmm_fit.n_iter_} sweeps")
print(
    f"bound {hmm_fit.lower_bound_:.1f} nats with each sequence's chain kept whole, "
    f"{naive_fit.lower_bound_:.1f} with naive mean field over the steps"
)
print("E_q[mu], sorted:", q_hmm["mu"].loc[order].numpy().round(2))
print("E_q[A], rows and columns in that order:")
print(q_hmm["A"].mean[order][:, order].numpy().round(2))

# %% [markdown]
# Each sequence's posterior over its states, $q(s_{n,t} = k)$, against the state that
# generated it (rows in the order of $E_q[\mu_k]$):

# %%
marginals = next(iter(hmm_fit.fitted_chains_.values()))[0]  # [T, N, K]
fig, axes = plt.subplots(2, 1, figsize=(8, 3.6), sharex=True)
for n, ax in enumerate(axes):
    ax.imshow(marginals[:, n, order].T.numpy(), aspect="auto", cmap="Greys", vmin=0, vmax=1,
              origin="lower", interpolation="nearest")  # fmt: skip
    ax.plot(true_states[:, n].numpy(), color="tab:red", lw=1, label="true state")
    ax.set_yticks(range(K_STATES))
    ax.set_ylabel(f"state k\n(sequence {n})")
axes[0].legend(loc="upper right", fontsize=8)
axes[0].set_title("q(s_t = k) in grey (black: 1), the true state in red")
axes[-1].set_xlabel("step t")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Images: a mixture of Bernoullis in plates
#
# A mixture's components may lie in more plates than the $K$ categories', as long as the
# data read them at their own element there. The mixture of Bernoullis (Bishop 2006,
# §9.3.3) on scikit-learn's 8x8 digits, binarized: each component $k$ has one probability
# per pixel, $\theta_{kd} \sim \mathrm{Beta}(1, 1)$ in plates of components and pixels,
# and image $n$'s pixel $d$ is $x_{nd} \sim \mathrm{Bernoulli}(\theta_{z_n d})$, read as
# `Vindex(theta)[..., z, torch.arange(D)]`. Its mean-field $q(w)\,q(\theta)\,\prod_n q(z_n)$
# is updated in closed form; one site per pixel (64 of them) would give the same fit.

# %%
from sklearn.datasets import load_digits  # noqa: E402

digits = load_digits()
n_images = 500 if FAST else len(digits.data)
pixels = torch.tensor(digits.data[:n_images] >= 8, dtype=torch.float64)  # [N, 64], 0 or 1
labels = digits.target[:n_images]
K_CLUSTERS, D_PIXELS = 10, pixels.shape[1]


def bernoulli_mixture(x):  # x: [N, D] of 0 and 1
    w = pyro.sample("w", dist.Dirichlet(x.new_ones(K_CLUSTERS)))
    with pyro.plate("components", K_CLUSTERS, dim=-2), pyro.plate("pixels", D_PIXELS, dim=-1):
        theta = pyro.sample("theta", dist.Beta(x.new_tensor(1.0), x.new_tensor(1.0)))
    with pyro.plate("images", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Categorical(w))
        with pyro.plate("pixels_of_image", D_PIXELS, dim=-1):
            pixel = torch.arange(D_PIXELS)
            pyro.sample("x", dist.Bernoulli(Vindex(theta)[..., z, pixel]), obs=x)


start = time.perf_counter()
bernoulli_fit = AutoCAVI(bernoulli_mixture, tol=1e-6, max_iter=500, random_state=0).fit(pixels)
print(
    f"{n_images} images: {time.perf_counter() - start:.1f} s ({bernoulli_fit.n_iter_} sweeps), "
    f"bound {bernoulli_fit.lower_bound_:.1f} nats "
    f"({bernoulli_fit.lower_bound_ / n_images:.2f} per image)"
)
q_digits = bernoulli_fit.variational_distributions()
clusters = q_digits["z"].probs.squeeze(1).argmax(-1).numpy()  # [N]
share = q_digits["w"].mean.numpy()

# %% [markdown]
# Each component's $E_q[\theta_k]$ as an image, with its share $E_q[w_k]$ and the digit most
# of its images are:

# %%
fig, axes = plt.subplots(1, K_CLUSTERS, figsize=(12, 1.8))
for k, ax in enumerate(axes):
    ax.imshow(q_digits["theta"].mean[k].reshape(8, 8).numpy(), cmap="Greys", vmin=0, vmax=1)
    members = labels[clusters == k]
    common = np.bincount(members, minlength=10).argmax() if len(members) else -1
    ax.set_title(f"{share[k]:.2f}\nmostly {common}", fontsize=8)
    ax.axis("off")
plt.suptitle("E_q[theta_k] (black: 1); E_q[w_k] and the commonest digit", fontsize=9, y=1.1)
plt.show()

# %% [markdown]
# ## Conjugate in part: closed form for what is, SVI for the rest
#
# Most real models are conjugate only in part. Take Bayesian logistic regression with
# automatic relevance determination (ARD): each feature $j$ has its own prior precision
# $\tau_j \sim \mathrm{Gamma}(1, 1)$ and weight $w_j \sim N(0, \tau_j^{-1})$, and the
# labels are Bernoulli with logits $Xw + b$. `AutoCAVI` refuses the model: its likelihood
# reads every $w_j$ at once, so `AutoCAVI` takes $w$ as one vector over its plate, and the
# logistic link has no conjugate form for it. But given $w$, each $\tau_j$ is
# conditionally conjugate. (With a Gaussian likelihood ARD is conjugate throughout, and
# `AutoCAVI` fits this very model whole, $w$ and $\tau$ each one vector over the plate:
# `fit.plates_as_events_` names them.)
#
# `ConditionalCAVIGuide(model, svi_sites=["w", "b"])` is the Pyro guide
# $q(w, b, \tau) = q_\phi(w, b)\, q^*(\tau \mid w)$: `AutoNormal` over the sites you name,
# and for the rest `AutoCAVI`'s closed-form fit of the model conditioned on each draw of
# them (here $q^*(\tau \mid w)$ is the exact conditional, a Gamma per feature). This
# is a structured $q$, like structured stochastic VI's (Hoffman & Blei 2015): it contains
# every mean-field $q(w, b)\,q(\tau)$, so its best ELBO is at least mean field's.
# `Trace_ELBO`'s gradient through $w$'s draw, with $\tau$ drawn from $q^*$ held fixed, is
# the unbiased gradient of this ELBO (the envelope theorem: $q^*$ is optimal given $w$).
# The data are scikit-learn's breast-cancer table (569 tumours, 30 standardized features).

# %%
from sklearn.datasets import load_breast_cancer  # noqa: E402

table = load_breast_cancer()
X_bc = torch.tensor(table.data, dtype=torch.float64)
X_bc = (X_bc - X_bc.mean(0)) / X_bc.std(0)
y_bc = torch.tensor(table.target, dtype=torch.float64)


def ard_logistic(X, y):
    with pyro.plate("features", X.shape[-1]):
        tau = pyro.sample("tau", dist.Gamma(X.new_tensor(1.0), 1.0))
        w = pyro.sample("w", dist.Normal(X.new_tensor(0.0), tau.rsqrt()))
    b = pyro.sample("b", dist.Normal(X.new_tensor(0.0), 5.0))
    logits = (X * w.unsqueeze(-2)).sum(-1) + b  # X @ w, written to broadcast over draws
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


try:
    AutoCAVI(ard_logistic).fit(X_bc, y_bc)
except NotConjugateError as error:
    print("AutoCAVI alone:", error)

ard_steps = 150 if FAST else 1500
ard = {}
for label, make_guide in [
    (
        "closed-form q*(tau | w), SVI for w, b",
        lambda: ConditionalCAVIGuide(ard_logistic, ["w", "b"]),
    ),
    ("mean-field SVI (AutoNormal)", lambda: AutoNormal(ard_logistic)),
]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ard_guide = make_guide()
    ard_svi = SVI(ard_logistic, ard_guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    start = time.perf_counter()
    trace = [-ard_svi.step(X_bc, y_bc) for _ in range(ard_steps)]
    seconds = time.perf_counter() - start
    estimate, stderr = elbo_estimate(ard_logistic, ard_guide, X_bc, y_bc, num_samples=500)
    ard[label] = trace
    print(
        f"{label}: ELBO {estimate:.2f} ± {stderr:.2f} nats, {seconds:.1f} s for {ard_steps} steps"
    )

fig, ax = plt.subplots(figsize=(7, 3.5))
for label, trace in ard.items():
    ax.plot(np.convolve(trace, np.ones(25) / 25, mode="valid"), label=label)
ax.set_ylim(-140, -65)
ax.set_xlabel("SVI step")
ax.set_ylabel("ELBO, nats (25-step mean)")
ax.legend()
plt.show()

# %% [markdown]
# Each step fits $q^*(\tau \mid w)$ afresh (one `AutoCAVI` fit, a few milliseconds), so a
# step costs about three plain SVI steps (the README's timing: 9.3 ms against 3.1);
# in exchange the bound is tighter, by the coupling
# between each weight and its precision that mean field cannot hold. Draws of the pair go
# to the diagnostics as any guide's do: `to_inference_data(ard_logistic, guide, X, y)` and
# `psis_khat` draw $(w, b)$ from $q_\phi$ and $\tau$ from $q^*(\tau \mid w)$.
