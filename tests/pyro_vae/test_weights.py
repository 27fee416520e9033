import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.minibatch import Minibatched
from pyro_vae.weights import PairWeights, WeightsMismatchError, check_dtypes, module_of


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def model(self, x):
        pyro.module("net", self)
        loc = pyro.param("loc", torch.zeros(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(self.linear(x).squeeze(-1) + loc, 1.0), obs=x[:, 0])


def guide(x):
    pyro.param("unused_by_model", torch.ones(3))


def test_the_module_behind_a_model_is_found_through_methods_and_wrappers():
    net = Net()
    assert module_of(net) is net and module_of(net.model) is net
    assert module_of(Minibatched(net.model, "data", 10)) is net
    assert module_of(guide) is None and module_of(lambda x: x) is None


def test_weights_are_the_modules_and_every_other_parameter_the_pair_reads():
    net = Net()
    x = torch.randn(4, 2)
    weights = PairWeights(net.model, guide, (x,), {})
    assert weights.names == ["unused_by_model", "loc"]
    assert len(weights.parameters()) == 4  # weight, bias, and the two params
    snapshot = weights.snapshot()
    assert set(snapshot) == {"model", "guide", "params"} and snapshot["guide"] == {}
    with torch.no_grad():
        net.linear.weight.add_(1.0)
        pyro.param("loc").add_(2.0)
    kept = pyro.param("loc").unconstrained()
    weights.restore(snapshot)
    assert torch.equal(net.linear.weight, snapshot["model"]["linear.weight"])
    assert torch.equal(pyro.param("loc"), torch.zeros(1))
    assert pyro.param("loc").unconstrained() is kept  # restored in place, optimizer intact
    assert weights.finite()


def test_the_param_stores_other_entries_are_the_estimators():
    net = Net()
    weights = PairWeights(net.model, guide, (torch.randn(4, 2),), {})
    pyro.param("__baseline_avg_z", torch.ones(2))
    assert list(weights.others()) == ["__baseline_avg_z"]


def test_weights_that_do_not_fit_are_named():
    net = Net()
    weights = PairWeights(net.model, guide, (torch.randn(4, 2),), {})
    saved = weights.snapshot()
    saved["params"]["loc"] = torch.zeros(5)
    with pytest.raises(WeightsMismatchError, match=r"'loc' has shape \(1,\) here.*hold \(5,\)"):
        weights.restore(saved)
    del saved["params"]["loc"]
    with pytest.raises(WeightsMismatchError, match="hold nothing for it"):
        weights.restore(saved)
    with pytest.raises(WeightsMismatchError, match="the saved model does not fit Net"):
        weights.restore({**saved, "model": {}})


def test_non_finite_weights_are_noticed():
    net = Net()
    weights = PairWeights(net.model, guide, (torch.randn(4, 2),), {})
    with torch.no_grad():
        net.linear.bias.fill_(float("nan"))
    assert not weights.finite()


def test_data_of_another_dtype_than_the_weights_is_refused_by_name():
    net = Net()
    check_dtypes((torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)), net.model, guide)
    check_dtypes((torch.zeros(2, 2, dtype=torch.float64),), guide, guide)  # no modules
    with pytest.raises(ValueError, match="data: argument 0 is torch.float64 and the model's"):
        check_dtypes((torch.zeros(2, 2, dtype=torch.float64),), net.model, guide)
