"""The local flow guide: an amortized flow's frozen steps with free base and context per row."""

import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.guides import AmortizedIAF, AmortizedSplineFlow, LocalFlow
from tests.pyro_vae.guides import amortized_checks as checks


def _local(encoder, x):
    h = encoder.trunk(x)
    loc, scale = encoder.loc_head(h), encoder.log_scale_head(h).exp()
    return LocalFlow(loc, scale, h, encoder.flows)


@pytest.mark.parametrize("family", [AmortizedIAF, AmortizedSplineFlow])
def test_started_from_an_encoder_it_is_that_encoders_q(family):
    torch.manual_seed(0)
    encoder, x = family(6, 3, (8,)), torch.rand(4, 6)
    local = _local(encoder, x)
    z = encoder.encode(x).sample((2,))
    torch.testing.assert_close(local.encode(x).log_prob(z), encoder.encode(x).log_prob(z))


def test_only_base_and_context_are_its_parameters():
    encoder, x = AmortizedIAF(6, 3, (8,)), torch.rand(4, 6)
    local = _local(encoder, x)
    assert {n for n, _ in local.named_parameters()} == {"loc", "log_scale", "context"}
    assert set(local.state_dict()) == {"loc", "log_scale", "context"}
    trace = poutine.trace(local).get_trace(x, num_data=8)
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 3) and site["fn"].event_dim == 1 and site["scale"] == 2.0
    site["value"].sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in local.parameters())


def test_shapes_that_do_not_agree_are_refused():
    flows = AmortizedIAF(6, 3, (8,)).flows
    with pytest.raises(ValueError) as info:
        LocalFlow(torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(3, 8), flows)
    assert str(info.value) == (
        "loc, scale, context: shapes (4, 3), (4, 3) and (3, 8); expected [N, latent_dim], "
        "[N, latent_dim] and [N, context_dim]"
    )
    # tester CN: an [N] context passed, then a raw matmul error
    with pytest.raises(ValueError, match=r"shapes \(4, 3\), \(4, 3\) and \(4,\)"):
        LocalFlow(torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(4), flows)


def test_it_holds_only_its_own_batch():
    encoder = AmortizedIAF(6, 3, (8,))
    local = _local(encoder, torch.rand(4, 6))
    with pytest.raises(ValueError, match="x: 2 rows.*holds 4 datapoints"):
        local(torch.rand(2, 6))


@pytest.mark.usefixtures("one_thread")
def test_the_recorded_step_equals_the_eager_one():
    assert LocalFlow.recordable is True
    x = (torch.rand(6, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()

    def make():
        torch.manual_seed(3)
        return _local(AmortizedIAF(16, 3, (8,)), x)

    checks.check_recorded_steps(make, [x], 1)
