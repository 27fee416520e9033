import pyro.poutine as poutine
import torch

from pyro_vae.guides import AmortizedNormal


def test_encode_is_a_diagonal_normal_per_row():
    guide = AmortizedNormal(6, 3, (8, 5))
    q = guide.encode(torch.rand(4, 6))
    assert q.batch_shape == (4, 3) and (q.scale > 0).all()


def test_samples_are_reparameterized_and_scaled_by_the_data_plate():
    guide = AmortizedNormal(6, 3, (8,))
    x = torch.rand(4, 6)
    trace = poutine.trace(guide).get_trace(x, num_data=40)
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 3) and site["fn"].has_rsample
    assert site["scale"] == 10.0
    site["value"].sum().backward()
    assert guide.loc_head.weight.grad is not None and guide.log_scale_head.weight.grad is not None
