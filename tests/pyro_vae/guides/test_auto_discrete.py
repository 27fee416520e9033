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
