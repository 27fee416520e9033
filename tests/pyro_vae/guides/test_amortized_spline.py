"""The amortized neural spline flow guide (Durkan et al. 2019)."""

import pyro
import pytest
import torch

from models.vae import VAE
from pyro_vae.estimators import get
from pyro_vae.estimators.compiled import CaptureError, CompiledELBO, should_record
from pyro_vae.guides import AmortizedSplineFlow
from tests.pyro_vae.guides import amortized_checks as checks
from tests.pyro_vae.guides.test_amortized_flow import check_log_prob_is_base_minus_log_det_jacobian

pytestmark = pytest.mark.usefixtures("one_thread")


def test_encode_shapes():
    checks.check_encode_shapes(AmortizedSplineFlow)
    checks.check_encode_shapes(AmortizedSplineFlow, count_bins=4, bound=2)


def test_log_prob_is_the_base_density_minus_the_log_det_jacobian():
    torch.manual_seed(0)
    # a small bound puts part of the draws outside the box, where a step is the identity
    check_log_prob_is_base_minus_log_det_jacobian(AmortizedSplineFlow(6, 3, (8,), bound=1.0))


def test_each_step_is_a_spline_with_the_options_given():
    guide = AmortizedSplineFlow(6, 3, (8,), num_flows=3, count_bins=5, bound=2.5)
    assert len(guide.flows) == 3
    assert all(f.kwargs == {"count_bins": 5, "bound": 2.5, "order": "linear"} for f in guide.flows)
    assert guide.flows[0].nn.param_dims == [5, 5, 4, 5]


def test_draws_are_reparameterized():
    checks.check_draws_are_reparameterized(AmortizedSplineFlow)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"count_bins": 1}, "count_bins: 1 is not an integer ≥ 2; a spline needs at least two"),
        ({"bound": 0}, "bound: 0 is not a finite positive number"),
        ({"bound": float("inf")}, "bound: inf is not a finite positive number"),  # tester FA
        ({"bound": "3"}, "bound: '3' is not a finite positive number"),
        ({"num_flows": 0}, "num_flows: 0 is not a positive integer"),
    ],
)
def test_bad_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError) as info:
        AmortizedSplineFlow(6, 3, (8,), **options)
    assert str(info.value).startswith(message)


def test_a_short_fit_improves_the_elbo():
    checks.check_a_short_fit_improves_the_elbo(AmortizedSplineFlow)


def test_a_recording_is_refused_since_its_shapes_depend_on_the_draws():
    # Pyro's spline picks the coordinates inside [-bound, bound] with a boolean mask: a
    # recording made when k draws fell outside would fail (a shape error) on a step where
    # a different number do, so it is not declared recordable and CompiledELBO refuses it.
    assert AmortizedSplineFlow.recordable is False
    pyro.set_rng_seed(0)
    model, guide = VAE(16, latent_dim=3, hidden_dims=(8,)), AmortizedSplineFlow(16, 3, (8,))
    x = (torch.rand(5, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with pytest.raises(CaptureError, match="indexing with a boolean mask"):
        CompiledELBO(get("trace")).loss_and_grads(model, guide, x)
    assert "recordable" in should_record(get("trace"), model, guide)


def test_tensors_stay_on_the_inputs_device():
    checks.check_tensors_stay_on_the_inputs_device(AmortizedSplineFlow)


# The command line's round trip (fit, evaluate, load) is tested on AmortizedIAF, which
# shares this guide's base class (AmortizedFlow: encode, forward, its Monte Carlo mean);
# the command line builds every guide from its spec alike.


def test_a_conv_encoder_gives_the_same_heads():
    checks.check_a_conv_encoder(AmortizedSplineFlow, recorded=False)
