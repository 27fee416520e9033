"""The amortized flow base: its arguments, the order of its steps, and the density of a
flow checked against an independent Jacobian (used by the IAF and spline tests too)."""

import pytest
import torch

from pyro_vae.guides import AmortizedFlow, AmortizedIAF

pytestmark = pytest.mark.usefixtures("one_thread")


def check_log_prob_is_base_minus_log_det_jacobian(guide) -> None:
    """log q(z | x) of a draw z = f(z₀) equals log N(z₀; μ, σ²) − log |det ∂f/∂z₀|, the
    Jacobian taken by ``torch.autograd.functional.jacobian`` row by row (float64)."""
    guide = guide.double()
    x = torch.rand(3, guide.x_dim, dtype=torch.float64)
    q = guide.encode(x)
    torch.manual_seed(0)
    z = q.rsample()
    h = guide.trunk(x)
    base = torch.distributions.Normal(guide.loc_head(h), torch.exp(guide.log_scale_head(h)))
    torch.manual_seed(0)
    z0 = base.rsample()
    cached, inverted = q.log_prob(z), q.log_prob(z.detach().clone())  # the flow inverted
    for i in range(3):
        steps = [flow.condition(h[i : i + 1]) for flow in guide.flows]

        def f(v, steps=steps):
            v = v[None]
            for step in steps:
                v = step(v)
            return v[0]

        torch.testing.assert_close(f(z0[i]), z[i])
        jacobian = torch.autograd.functional.jacobian(f, z0[i])
        log_det = torch.linalg.slogdet(jacobian).logabsdet
        expected = base.log_prob(z0)[i].sum() - log_det
        torch.testing.assert_close(cached[i], expected)
        torch.testing.assert_close(inverted[i], expected)


def test_the_base_class_says_it_needs_a_flow_step():
    with pytest.raises(NotImplementedError, match="AmortizedFlow does not say which flow step"):
        AmortizedFlow(6, 3, (8,))


def test_steps_alternate_the_autoregressive_order():
    guide = AmortizedIAF(6, 4, (8,), num_flows=3)
    orders = [flow.nn.permutation.tolist() for flow in guide.flows]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]


def test_encode_has_no_closed_form_mean():
    q = AmortizedIAF(6, 3, (8,)).encode(torch.rand(2, 6))
    with pytest.raises(NotImplementedError):
        _ = q.mean


@pytest.mark.parametrize("num_flows", [0, -1, 1.5, None])
def test_a_bad_num_flows_is_refused_naming_it(num_flows):
    with pytest.raises(ValueError) as info:
        AmortizedIAF(6, 3, (8,), num_flows=num_flows)
    assert str(info.value) == (
        f"num_flows: {num_flows!r} is not a positive integer; AmortizedNormal is the guide "
        "without flows"
    )


@pytest.mark.parametrize(
    "widths, message",
    [
        ((2,), "flow_hidden_dims: (2,); expected at least one width, each ≥ latent_dim = 3"),
        ((), "flow_hidden_dims: (); expected at least one width, each ≥ latent_dim = 3"),
        ((8, 0), "flow_hidden_dims: width 0 in (8, 0) is not a positive integer"),
        ("8", "flow_hidden_dims: '8' is not a layer width or a list of them"),
    ],
)
def test_bad_flow_widths_are_refused_naming_them(widths, message):
    with pytest.raises(ValueError) as info:
        AmortizedIAF(6, 3, (8,), flow_hidden_dims=widths)
    assert str(info.value).startswith(message)


def test_one_flow_width_is_one_layer():
    """As ``hidden_dims`` and the models' widths take it (``--guide-opt flow_hidden_dims=8``)."""
    guide = AmortizedIAF(6, 3, (8,), flow_hidden_dims=8)
    assert guide.flow_hidden_dims == (8,) and guide.flows[0].nn.hidden_dims == [8]


def test_flow_widths_default_to_ten_per_latent_coordinate():
    guide = AmortizedIAF(6, 3, (8,))
    assert guide.flow_hidden_dims == (30,) and guide.flows[0].nn.hidden_dims == [30]
