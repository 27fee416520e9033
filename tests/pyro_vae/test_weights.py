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


def test_the_module_is_found_through_partials_pyro_handlers_and_wrapped_chains():
    """Review's finding: any wrapping but Minibatched hid the module."""
    import functools

    import pyro.poutine as poutine

    from pyro_vae.annealing import ScaleLatents

    net = Net()
    for wrapped in (
        functools.partial(net.model),
        functools.partial(functools.partial(net.model)),
        poutine.block(net.model),
        poutine.scale(net.model, 0.5),
        ScaleLatents(2.0)(net.model),
        Minibatched(ScaleLatents(2.0)(Minibatched(net.model, "data", 10)), "data", 10),
        functools.wraps(net.model)(lambda x: net.model(x)),
    ):
        assert module_of(wrapped) is net, wrapped


class Normed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(2)
        self.linear = torch.nn.Linear(2, 1)


def _normed_pair(net):
    def model(x):
        pyro.module("normed", net)
        with pyro.plate("data", len(x)):
            loc = net.linear(net.norm(x)).squeeze(-1)
            pyro.sample("y", dist.Normal(loc, 1.0), obs=x[:, 0])

    return model, lambda x: None


def test_a_plain_function_models_buffers_are_snapshot_and_restored():
    """Review's finding: around a plain function the module was not found, so BatchNorm's
    running statistics were in no snapshot and a best-weights restore (or a resume) kept
    the ones the last steps left. Restored, every entry of the module's state_dict is the
    one from before a training step, exactly."""
    pyro.set_rng_seed(0)
    net = Normed()
    model, guide = _normed_pair(net)
    x = torch.randn(6, 2) * 3.0 + 1.0
    weights = PairWeights(model, guide, (x,), {})
    # the model calls the children, never net itself: they are what it runs
    assert list(weights.model_module) == [net.norm, net.linear] and weights.guide_module is None
    assert weights.names == []  # the module's weights are its state_dict, not params
    before = {k: v.clone() for k, v in net.state_dict().items()}
    snapshot = weights.snapshot()
    assert {"0.running_mean", "0.running_var"} <= set(snapshot["model"])
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    svi.step(x)
    assert not torch.equal(net.norm.running_mean, before["norm.running_mean"])
    assert not torch.equal(net.linear.weight, before["linear.weight"])
    weights.restore(snapshot)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_modules_used_as_globals_by_model_and_guide_are_each_sides():
    """An encoder and a decoder that are globals: the guide's is the guide's; two roots
    on one side are one ModuleList, so one state_dict per side."""
    encoder, decoder, extra = torch.nn.Linear(2, 1), torch.nn.Linear(1, 2), torch.nn.Linear(2, 2)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(1))
            loc = extra(decoder(z))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    weights = PairWeights(model, guide, (torch.randn(3, 2),), {})
    assert weights.guide_module is encoder
    assert isinstance(weights.model_module, torch.nn.ModuleList)
    assert list(weights.model_module) == [decoder, extra]
    snapshot = weights.snapshot()
    assert set(snapshot["model"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert set(snapshot["guide"]) == {"weight", "bias"}
    assert len(weights.parameters()) == 6


def test_a_checkpoint_saved_before_the_module_was_found_is_read_from_its_params():
    """Before, a wrapped pair's module weights were saved by param-store name under
    "params" and "model" was empty; such a checkpoint restores into the found module."""
    pyro.set_rng_seed(0)
    net = Normed()
    model, guide = _normed_pair(net)
    x = torch.randn(6, 2)
    weights = PairWeights(model, guide, (x,), {})
    store = dict(pyro.get_param_store().named_parameters())
    old = {"model": {}, "guide": {}, "params": {n: p.detach() + 1.0 for n, p in store.items()}}
    expected = net.linear.weight.detach() + 1.0
    weights.restore(old)
    assert torch.equal(net.linear.weight, expected)
    with pytest.raises(WeightsMismatchError, match="the saved model does not fit ModuleList"):
        weights.restore({"model": {}, "guide": {}, "params": {}})


def test_an_old_checkpoint_restores_beside_a_network_outside_the_param_store():
    """Review of cb181f9..c795b70: a guide calling a fixed network without pyro.module had
    "guide": {} and its registered encoder under "params" in older checkpoints; the found
    ModuleList([features, encoder]) was refused as a whole ("Missing key(s)"), and the run
    could not resume. Expected: the encoder from its params, the fixed network as it is."""
    torch.manual_seed(0)
    features, encoder = torch.nn.Linear(3, 3), torch.nn.Linear(3, 4)

    def model(x):
        with pyro.plate("d", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("d", x.shape[0]):
            h = encoder(features(x))
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    weights = PairWeights(model, guide, (torch.randn(5, 3),), {})
    kept = features.weight.detach().clone()
    saved = {"encoder$$$weight": torch.ones(4, 3), "encoder$$$bias": torch.zeros(4)}
    weights.restore({"model": {}, "guide": {}, "params": saved})
    assert torch.equal(encoder.weight, torch.ones(4, 3))
    assert torch.equal(features.weight, kept)
