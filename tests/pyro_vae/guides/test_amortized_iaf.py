"""The amortized inverse autoregressive flow guide (Kingma et al. 2016)."""

import pytest
import torch

from pyro_vae.guides import AmortizedIAF
from tests.pyro_vae.guides import amortized_checks as checks
from tests.pyro_vae.guides.test_amortized_flow import check_log_prob_is_base_minus_log_det_jacobian

pytestmark = pytest.mark.usefixtures("one_thread")


def test_encode_shapes():
    checks.check_encode_shapes(AmortizedIAF)
    checks.check_encode_shapes(AmortizedIAF, num_flows=1, flow_hidden_dims=(5, 6))


def test_each_step_is_the_gated_update_of_kingma_et_al():
    guide = AmortizedIAF(6, 3, (8,), num_flows=1)
    x, z0 = torch.rand(2, 6), torch.randn(2, 3)
    step = guide.flows[0].condition(guide.trunk(x))
    m, s = guide.flows[0].nn(z0, context=guide.trunk(x))
    sigma = torch.sigmoid(s + step.sigmoid_bias)
    torch.testing.assert_close(step(z0), sigma * z0 + (1 - sigma) * m)


def test_log_prob_is_the_base_density_minus_the_log_det_jacobian():
    torch.manual_seed(0)
    check_log_prob_is_base_minus_log_det_jacobian(AmortizedIAF(6, 3, (8,), num_flows=2))


def test_draws_are_reparameterized():
    checks.check_draws_are_reparameterized(AmortizedIAF)


def test_a_short_fit_improves_the_elbo():
    checks.check_a_short_fit_improves_the_elbo(AmortizedIAF)


def test_the_recorded_step_equals_the_eager_one():
    assert AmortizedIAF.recordable is True
    checks.check_the_recorded_step_equals_the_eager_one(AmortizedIAF)


def test_tensors_stay_on_the_inputs_device():
    checks.check_tensors_stay_on_the_inputs_device(AmortizedIAF)


def test_the_cli_round_trip(tmp_path):
    # the case: a flow has no closed-form mean, and the figures, the test metrics,
    # evaluate and load all go through (Monte Carlo means where a centre is needed)
    # (recorded, as `pyro-vae fit` records a guide that declares recordable = True)
    checks.check_the_cli_round_trip(
        "pyro_vae.guides:AmortizedIAF", tmp_path, compile="auto", fresh_process=True
    )


def test_a_conv_encoder_gives_the_same_heads_and_records():
    checks.check_a_conv_encoder(AmortizedIAF)
