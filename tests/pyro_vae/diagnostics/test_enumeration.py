"""A discrete guide with few states: enumerated, and checked against a hand computation.

A sigmoid belief net with 3 binary latents has 2³ states per datapoint; log p(x_n, z) and
log q(z | x_n) at each are computed in float64 from its networks without Pyro.
"""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from models.sbn import SBN
from pyro_vae.diagnostics.psis import psis_khat_per_datapoint
from pyro_vae.diagnostics.report import write_report

pytestmark = pytest.mark.usefixtures("one_thread")


def _sbn_by_hand(sbn, guide, x):
    """log p(x_n, z) and log q(z | x_n) at each of the 2^J states z, ``[2^J, N]``, in float64
    from the SBN's prior, decoder and guide network, without Pyro."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=sbn.latent_dim)))
    with torch.no_grad():
        log_prior = dist.Bernoulli(logits=sbn.prior_logits.double()).log_prob(states.double())
        logits = sbn.decoder(states).double()[:, None, :]
        log_lik = dist.Bernoulli(logits=logits).log_prob(x.double()).sum(-1)
        q_logits = guide.net(x).double()
        log_q = dist.Bernoulli(logits=q_logits).log_prob(states.double()[:, None, :]).sum(-1)
    return log_prior.sum(-1)[:, None] + log_lik, log_q


def test_a_discrete_guide_with_few_states_is_enumerated_exactly(tmp_path):
    pyro.set_rng_seed(6)
    sbn = SBN(16, latent_dim=3)
    guide = sbn.make_guide()
    for net in (sbn.decoder, guide.net):  # away from the initial weights, as after a fit
        for param in net.parameters():
            param.data += 0.5 * torch.randn_like(param)
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    result = psis_khat_per_datapoint(sbn, guide, x, num_samples=100)
    # 8 states ≤ 100 draws: enumerated. 8 ratios, bounded, with an atom on top: no k̂.
    assert result.num_states == 8 and np.isnan(result.khat).all()
    log_joint, log_q = _sbn_by_hand(sbn, guide, x)
    log_evidence = torch.logsumexp(log_joint, 0)
    log_post = log_joint - log_evidence
    kl = (log_q.exp() * (log_q - log_post)).sum(0)
    chi2 = (torch.exp(2 * log_post - log_q)).sum(0) - 1
    # Ours: float32 log-densities of ~22 terms of a few nats each, summed in another
    # order: within 2 ε Σ|terms| ≈ 2e-5 (measured 7e-7); χ² = E_q[(r / p(x))²] − 1
    # inherits twice that as a relative error of 1 + χ².
    np.testing.assert_allclose(result.log_evidence, log_evidence.numpy(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(result.kl, kl.numpy(), rtol=0, atol=4e-5)
    np.testing.assert_allclose(result.chi2, chi2.numpy(), rtol=1e-4, atol=4e-5)
    summary = result.summary(num_worst=3)
    assert summary["khat_not_applicable"] == 30 and math.isnan(summary["share_above_0.7"])
    assert summary["num_states"] == 8
    assert [w["index"] for w in summary["worst"]] == torch.argsort(-chi2)[:3].tolist()

    report = write_report(
        sbn,
        guide,
        x,
        tmp_path,
        num_samples=100,
        idata_points=5,
        idata_samples=20,
        num_worst=4,
        image_shape=(4, 4),
    )
    assert report["chi2_max"] == pytest.approx(float(chi2.max()), rel=1e-4)
    rows = (tmp_path / "khat.csv").read_text().splitlines()
    assert rows[0] == "index,khat,log_evidence,kl,chi2" and len(rows) == 31
    assert float(rows[1].split(",")[2]) == pytest.approx(float(log_evidence[0]), abs=1e-4)
    assert (tmp_path / "khat_worst.png").stat().st_size > 1000


def test_states_of_a_model_that_cannot_broadcast_are_enumerated_in_a_loop():
    from pyro_vae.plates import data_plate
    from pyro_vae.traces import VectorizationWarning

    def model(x):
        with data_plate(x):
            z = pyro.sample("z", dist.Bernoulli(torch.full((len(x),), 0.3)))
            assert z.dim() == 1, "this model handles one draw at a time"
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with data_plate(x):
            pyro.sample("z", dist.Bernoulli(logits=x))

    x = torch.tensor([-1.0, 0.2, 1.5, 3.0])
    with pytest.warns(VectorizationWarning, match="2 enumerated states"):
        result = psis_khat_per_datapoint(model, guide, x, num_samples=30)
    assert result.num_states == 2 and np.isnan(result.khat).all()
    states = torch.tensor([0.0, 1.0])[:, None]
    log_joint = dist.Bernoulli(0.3).log_prob(states) + dist.Normal(states, 1.0).log_prob(x)
    expected = torch.logsumexp(log_joint.double(), 0)
    np.testing.assert_allclose(result.log_evidence, expected.numpy(), rtol=0, atol=1e-5)


def test_a_guide_masked_like_its_padded_model_takes_the_drawn_ratios():
    """Tester T's F4: a guide masking a padded step as its model does scored 0 at each of the
    step's 3 values, and the exact path refused it as "q(z | x_n) sums to 1 to 3 ...,
    sites whose supports do not depend on one another", a cause it does not have. A masked
    site leaves the states uncounted: the drawn ratios take it (their k̂ is NaN here: the
    100 ratios of a row take at most 9 values)."""
    from pyro import poutine

    from pyro_vae.diagnostics.enumeration import discrete_support
    from tests.pyro_vae.padded import X, padded_pair

    model, guide = padded_pair(guide_masked=True)
    probe = poutine.trace(guide).get_trace(X)
    assert discrete_support(probe, "data").count == math.inf
    pyro.set_rng_seed(0)
    found = psis_khat_per_datapoint(model, guide, X, num_samples=100)
    assert found.num_states == 0 and found.log_evidence is None and found.khat.shape == (3,)
