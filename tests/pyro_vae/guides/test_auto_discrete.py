import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.evaluate import elbo_estimate
from pyro_vae.guides import AutoDiscreteMeanField


def discrete_model():
    pyro.sample("coin", dist.Bernoulli(0.3))
    pyro.sample("bits", dist.Bernoulli(torch.tensor([0.2, 0.9])).to_event(1))
    with pyro.plate("items", 3):
        pyro.sample("die", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])))


def test_one_free_factor_per_element_with_the_sites_shapes():
    guide = AutoDiscreteMeanField(discrete_model)
    values = guide()
    assert values["coin"].shape == () and values["bits"].shape == (2,)
    assert values["die"].shape == (3,)
    probs = guide.probabilities()
    assert probs["bits"].shape == (2,) and probs["die"].shape == (3, 3)
    assert torch.allclose(probs["die"].sum(-1), torch.ones(3))
    trace = pyro.poutine.trace(guide).get_trace()
    assert trace.nodes["die"]["cond_indep_stack"][0].name == "items"


def test_elbo_is_minus_the_kl_to_the_prior():
    # Without observations log p(x) = 0, so ELBO = −KL(q ‖ p), known in closed form.
    guide = AutoDiscreteMeanField(discrete_model, init_scale=1.0)
    guide()
    q = guide.factors()
    priors = {
        "coin": dist.Bernoulli(torch.tensor(0.3)),
        "bits": dist.Bernoulli(torch.tensor([0.2, 0.9])).to_event(1),
        "die": dist.Categorical(torch.tensor([0.5, 0.3, 0.2]).expand(3, 3)),
    }
    kl = sum(
        float(torch.distributions.kl_divergence(q[name], priors[name]).sum().detach())
        for name in priors
    )
    elbo, stderr = elbo_estimate(discrete_model, guide, num_samples=20000)
    assert elbo == pytest.approx(-kl, abs=4 * stderr)


def test_enumerated_sites_are_left_to_the_estimator():
    def model():
        pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("b", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    guide = AutoDiscreteMeanField(model)
    assert set(guide()) == {"a"}


def test_continuous_and_subsampled_sites_are_refused_by_name():
    def continuous():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"site 'x' has support Real\(\)"):
        AutoDiscreteMeanField(continuous)()

    def subsampled():
        with pyro.plate("data", 10, subsample_size=4):
            pyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="site 'z' is in the subsampled plate 'data'"):
        AutoDiscreteMeanField(subsampled)()
    with pytest.raises(ValueError, match="init_scale: -1"):
        AutoDiscreteMeanField(continuous, init_scale=-1)
    # tester CN: inf made every logit ±inf, q a point mass, unsaid
    with pytest.raises(ValueError, match="init_scale: inf is not a finite non-negative"):
        AutoDiscreteMeanField(continuous, init_scale=float("inf"))


PI_HMM = torch.tensor([0.6, 0.4])
A_HMM = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
MU_HMM = torch.tensor([-1.0, 1.5])


def padded_hmm(y, lengths):
    """Two-state HMMs in a plate of sequences, padded past each one's length (Pyro's
    examples/hmm.py): the padded steps masked off."""
    with pyro.plate("seqs", y.shape[0], dim=-1):
        s = 0
        for t in pyro.markov(range(y.shape[1])):
            with pyro.poutine.mask(mask=t < lengths):
                s = pyro.sample(f"s_{t}", dist.Categorical(PI_HMM if t == 0 else A_HMM[s]))
                pyro.sample(f"y_{t}", dist.Normal(MU_HMM[s], 0.9), obs=y[:, t])


def uniform_q_elbo(y, lengths) -> float:
    """The ELBO of q uniform over each real step's 2 states, summed over every state path
    of each sequence's real steps: Σ_paths 2^−L (log p(y, path) + L log 2), in float64."""
    pi, a, mu, y = PI_HMM.double(), A_HMM.double(), MU_HMM.double(), y.double()
    total = 0.0
    for row, length in zip(y, lengths.tolist(), strict=True):
        for path in itertools.product(range(2), repeat=length):
            lp = pi[path[0]].log() + sum(a[i, j].log() for i, j in itertools.pairwise(path))
            lp = lp + sum(dist.Normal(mu[s], 0.9).log_prob(row[t]) for t, s in enumerate(path))
            total += 0.5**length * (float(lp) + length * math.log(2))
    return total


@pytest.mark.parametrize("padded_to", [5, 8])
def test_padded_steps_are_masked_off_in_q_as_in_the_model(padded_to):
    """Tester AK: the factors of the padded steps, unmasked, put log 2 nats each of their
    entropy into the ELBO (6 and 15 steps here: −21.16 and −14.96 where the exact ELBO is
    −25.36, the second above log p(y) = −15.69). Expected, at any padding: the exact ELBO
    of the uniform q by enumeration, within 4 standard errors of 4,000 draws."""
    y5 = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([5, 3, 1])
    y = torch.cat([y5, torch.zeros(3, padded_to - 5)], 1)
    pyro.set_rng_seed(0)
    guide = AutoDiscreteMeanField(padded_hmm, init_scale=0.0)  # uniform q
    elbo, se = elbo_estimate(padded_hmm, guide, y, lengths, num_samples=4000, num_chunks=20)
    assert abs(elbo - uniform_q_elbo(y5, lengths)) < 4 * se
    assert guide.probabilities()["s_7" if padded_to == 8 else "s_4"].shape == (3, 2)


def test_a_float64_model_gets_float64_factors():
    """Logits were made in torch's default float32 beside a float64 model's log-densities:
    elbo_estimate failed with "both inputs should have same dtype". Expected: the padded
    HMM in float64, at its exact uniform-q ELBO (as above, within 4 standard errors)."""
    y = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lengths = torch.tensor([5, 3, 1])

    def model(y, lengths):
        with pyro.plate("seqs", y.shape[0], dim=-1):
            s = 0
            for t in pyro.markov(range(y.shape[1])):
                with pyro.poutine.mask(mask=t < lengths):
                    probs = (PI_HMM if t == 0 else A_HMM[s]).double()
                    s = pyro.sample(f"s_{t}", dist.Categorical(probs))
                    pyro.sample(f"y_{t}", dist.Normal(MU_HMM.double()[s], 0.9), obs=y[:, t])

    pyro.set_rng_seed(0)
    guide = AutoDiscreteMeanField(model, init_scale=0.0)
    elbo, se = elbo_estimate(model, guide, y, lengths, num_samples=4000, num_chunks=20)
    assert guide.probabilities()["s_0"].dtype == torch.float64
    assert abs(elbo - uniform_q_elbo(y, lengths)) < 4 * se
