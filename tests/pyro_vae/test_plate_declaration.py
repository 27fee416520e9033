"""data_plate: the per-datapoint plate a model or guide declares, scaled to the dataset."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.plate_declaration import DATA_DIM, DATA_PLATE, data_plate


def test_minibatch_scale_is_num_data_over_batch():
    def model(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    trace = poutine.trace(model).get_trace(torch.zeros(5), num_data=20)
    assert trace.nodes["x"]["scale"] == 4.0
    trace.compute_log_prob()
    full = dist.Normal(0.0, 1.0).log_prob(torch.zeros(5)).sum() * 4
    torch.testing.assert_close(trace.log_prob_sum(), full)
    assert poutine.trace(model).get_trace(torch.zeros(5)).nodes["x"]["scale"] == 1.0


def test_num_data_smaller_than_the_batch_is_rejected():
    with pytest.raises(ValueError, match="num_data: 3 is smaller than the minibatch of 5"):
        data_plate(torch.zeros(5), 3)


def test_the_plate_is_named_data_at_the_rightmost_batch_dim_on_the_data_s_device():
    def model(x):
        with data_plate(x) as rows:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        return rows

    x = torch.zeros(3)
    trace = poutine.trace(model).get_trace(x)
    (frame,) = trace.nodes["x"]["cond_indep_stack"]
    assert (frame.name, frame.dim, frame.size) == (DATA_PLATE, DATA_DIM, 3) == ("data", -1, 3)
    assert torch.equal(trace.nodes["_RETURN"]["value"], torch.arange(3))
