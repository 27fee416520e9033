"""Devices: the names a run accepts, and that every shipped model, guide, estimator and
evaluator creates its tensors on the device of its inputs or parameters.

CI has no GPU, so the second is checked on the CPU with ``torch.set_default_device("meta")``:
data and parameters are made on the CPU first, then the step runs with meta as the default
device, so a tensor created without an explicit device lands on meta and the step fails
loudly (mixing meta and CPU tensors raises). Running everything on meta would not work:
Pyro's ELBOs call ``.item()``.
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import pyro.distributions.unit
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from models.autoencoder import Autoencoder
from models.cvae import CVAE
from models.gmm import GaussianMixtureModel
from models.hmm import FactorialHMMModel
from models.ising import IsingModel
from models.m2 import M2
from models.regression import BayesianRegression
from models.sbn import SBN
from models.vae import VAE
from pyro_vae import TensorData, TrainConfig, estimators
from pyro_vae.amortization import amortization_gap
from pyro_vae.cavi import grid_couplings
from pyro_vae.data import DataSplits
from pyro_vae.devices import (
    DataOnDevice,
    available_devices,
    check_device_name,
    on_device,
    resolve_device,
    to_device,
)
from pyro_vae.diagnostics import (
    psis_khat,
    psis_khat_per_datapoint,
    to_inference_data,
    vsbc,
)
from pyro_vae.diagnostics.gradient_variance import gradient_variance
from pyro_vae.diagnostics.psis import PSIS_MIN_SAMPLES
from pyro_vae.evaluate import elbo_estimate, elbo_per_datapoint, iwae_log_likelihood
from pyro_vae.guides import (
    AmortizedCategorical,
    AmortizedIAF,
    AmortizedLowRankNormal,
    AmortizedSplineFlow,
    AutoDiscreteMeanField,
    EmptyGuide,
    LocalNormal,
)
from pyro_vae.labels import for_model
from pyro_vae.latent_summaries import latent_means, reconstruction_error
from pyro_vae.model_protocol import uses_labels
from pyro_vae.train import prepare_pair
from tests.pyro_vae.cavi.test_hmm import random_fhmm, sample

# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["auto", "cpu", "cpu:0", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_are_accepted(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "", None, 0, "cpu:1"])
def test_a_bad_device_name_is_refused_naming_argument_value_and_choices(name):
    with pytest.raises(ValueError) as info:
        check_device_name(name, "train.device")
    message = str(info.value)
    assert message.startswith(f"train.device: {name!r} is not a device")
    assert "'auto', 'cpu', 'cpu:0', 'cuda', 'cuda:N', 'mps'" in message


def test_auto_and_cpu_resolve_to_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_the_cpu_with_its_index_is_the_cpu():
    """``str(torch.device("cpu", 0))`` is "cpu:0", which a tensor's device never is: a
    device passed as torch spells it resolves to the plain CPU its tensors are on (it was
    refused as not a device)."""
    assert str(torch.device("cpu", 0)) == "cpu:0"
    assert resolve_device(torch.device("cpu", 0)) == torch.empty(1, device="cpu").device
    assert resolve_device("cpu:0", "--device") == torch.device("cpu")


def test_auto_picks_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_one_is_a_clear_error(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as info:
        resolve_device(name)
    assert str(info.value).startswith(f"device: {name!r} is not available on this machine")
    assert "it has cpu" in str(info.value)


def test_a_gpu_index_beyond_the_machine_s_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="'cuda:2' is not available.*cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_forked_streams_fork_every_cuda_stream_once_cuda_is_initialized(monkeypatch):
    """Tester EE: a recording, a plate-nesting guess and a validation's seeded draws forked
    only the CPU's stream (``fork_rng(devices=[])``), so on a GPU they moved the GPU's, and
    a compiled or resumed run there differed from a straight one by 0.003 in its weights.
    The device's generator is asked for through torch.random.fork_rng's own arguments."""
    from pyro_vae.devices import forked_streams

    asked = []
    monkeypatch.setattr(
        torch.random, "fork_rng", lambda devices, device_type="cuda": asked.append(
            (list(devices), device_type)) or contextlib.nullcontext()
    )  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    forked_streams()  # no GPU used yet: no GPU stream moved to put back
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    forked_streams()
    assert asked == [([], "cuda"), ([0, 1], "cuda")]


def test_only_forked_streams_forks_the_random_streams():
    """The kind of tester EE's fault: every fork of the random streams in the package goes
    through ``devices.forked_streams`` (CAVI computes on the CPU alone, and is exempt)."""
    from pathlib import Path

    import pyro_vae

    root = Path(pyro_vae.__file__).parent
    forks = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "fork_rng(" in path.read_text() and path.parent.name != "cavi"
    ]
    assert forks == ["devices.py"]


def test_available_devices_start_with_the_cpu():
    assert available_devices()[0] == "cpu"


def test_to_device_moves_nested_tensors_and_leaves_the_rest():
    x = torch.ones(2)
    moved = to_device({"a": (x, [x, 3]), "b": "text"}, torch.device("meta"))
    assert moved["a"][0].is_meta and moved["a"][1][0].is_meta
    assert moved["a"][1][1] == 3 and moved["b"] == "text"
    assert to_device(x, torch.device("cpu")) is x


def test_data_on_the_cpu_is_left_as_it_is_and_moved_otherwise():
    data = TensorData(torch.arange(6.0))
    assert on_device(data, torch.device("cpu")) is data
    moved = on_device(data, torch.device("meta"))
    assert isinstance(moved, DataOnDevice) and moved.num_train == 6
    rows, args = next(moved.indexed_batches(4, 0, 0))
    assert rows.is_meta and args[0].is_meta and args[0].shape == (4,)
    assert moved.validation_set(False, None).args[0].is_meta
    assert moved.steps_per_epoch(4) == 2 and moved.num_data == 6  # the source's own


# --- every tensor on the device of its inputs --------------------------------------------


class _TorchKeepingTensors:
    """``torch`` as Pyro's ``Unit`` distribution (``pyro.factor``) sees it in these tests:
    its ``torch.as_tensor(log_factor)`` on a tensor would move the tensor to the default
    device (meta here), which only a test that sets a default device meets; a tensor is
    kept where it is, as without a default device."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def as_tensor(value, *args, **kwargs):
        if isinstance(value, torch.Tensor) and not args and not kwargs:
            return value
        return torch.as_tensor(value, *args, **kwargs)


@pytest.fixture(autouse=True)
def _pyro_factor_keeps_its_tensor(monkeypatch):
    monkeypatch.setattr(pyro.distributions.unit, "torch", _TorchKeepingTensors())


@contextlib.contextmanager
def meta_default():
    """Meta as the default device for the block; the previous default put back, whatever
    happens inside."""
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(previous)


def test_meta_default_is_restored_after_a_failure():
    with pytest.raises(RuntimeError), meta_default():
        raise RuntimeError("inside")
    assert torch.empty(1).device.type == "cpu"


def images(n=6, d=8, levels=None):
    g = torch.Generator().manual_seed(0)
    if levels is None:
        x = (torch.rand(n, d, generator=g) > 0.5).float()
    else:
        x = torch.randint(0, levels, (n, d), generator=g).float()
    return x


def splits(x):
    y = torch.zeros(len(x), dtype=torch.long)
    return DataSplits(x, y, x[:3], y[:3], x[:3], y[:3], (2, 4), 1.0)


def _step(elbo, pair, batches_args, rows):
    """One loss with gradients and one validation, under meta as the default device."""
    with meta_default():
        loss = elbo.loss_and_grads(pair.model, pair.guide, *batches_args, subsample=rows)
        if pair.validate is not None:
            pair.validate()
    return loss


def _run(model, guide, data, elbo, **config):
    pyro.clear_param_store()
    config = TrainConfig(batch_size=4, progress=False, device="cpu", val_samples=2, **config)
    pair = prepare_pair(model, guide, data, config)
    # a model that uses labels gets (x, y, observed) batches, as fit gives them
    source = for_model(uses_labels(model), type(model).__name__, data)
    rows, args = next(iter(source.indexed_batches(config.batch_size, 0, 0)))
    loss = _step(elbo, pair, args, rows)
    assert torch.isfinite(torch.as_tensor(loss))


def _gmm():
    x = torch.cat([torch.randn(5, 2) - 2, torch.randn(5, 2) + 2])
    model = GaussianMixtureModel(2, 1.0, 1.0, torch.zeros(2), 3.0, torch.eye(2))
    return model, model.make_guide(), TensorData(x), "enum"


def _hmm():
    y = sample(random_fhmm(m=2, k=2, d=2, seed=3), t_len=4, seed=4).float()
    model = FactorialHMMModel(random_fhmm(m=2, k=2, d=2, seed=3))
    return model, AutoDiscreteMeanField(model), TensorData(y), "score"


def _hmm_enumerated():
    y = sample(random_fhmm(m=2, k=2, d=2, seed=3), t_len=4, seed=4).float()
    model = FactorialHMMModel(random_fhmm(m=2, k=2, d=2, seed=3), enumerate=True)
    return model, EmptyGuide(), TensorData(y), "enum"


def _ising():
    model = IsingModel(grid_couplings(2, 2, coupling=0.5), torch.linspace(-0.5, 0.5, 4))
    return model, AutoDiscreteMeanField(model), TensorData(), "score"


def _regression():
    X = torch.randn(8, 3)
    model = BayesianRegression()
    return model, AutoNormal(model), TensorData(X, X.sum(1)), "trace"


def _vae():
    model = VAE(8, latent_dim=2, hidden_dims=(4,))
    return model, model.make_guide(), splits(images()), "trace"


def _vae_prior(prior):
    model = VAE(8, latent_dim=2, hidden_dims=(4,), prior=prior, prior_components=3)
    return model, model.make_guide(), splits(images()), "trace"


def _vae_categorical():
    model = VAE(8, latent_dim=2, hidden_dims=(4,), likelihood="categorical", levels=5)
    guide = model.make_guide()
    return model, guide, splits(images(levels=5)), "trace"


class CategoricalCodes(torch.nn.Module):
    """z_n ~ Categorical(uniform) in each of 3 positions, x_n ~ Bernoulli(table[z_n]): a
    model for the Categorical guide, its tensors made from its data's."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(3, 2, 8))

    def forward(self, x, num_data=None):
        pyro.module("codes", self)
        with pyro.plate("data", num_data or len(x), subsample_size=len(x)):
            probs = x.new_ones(len(x), 3, 2) / 2
            z = pyro.sample("z", pyro.distributions.Categorical(probs).to_event(1))
            logits = self.table[torch.arange(3, device=x.device), z].sum(-2)
            pyro.sample("x", pyro.distributions.Bernoulli(logits=logits).to_event(1), obs=x)


def _amortized_categorical_guide():
    guide = AmortizedCategorical(8, 3, 2, hidden_dims=(4,))
    return CategoricalCodes(), guide, splits(images()), "score"


def _sbn():
    model = SBN(8, latent_dim=3, hidden_dims=(4,))
    return model, model.make_guide(), splits(images()), "score"


def _autoencoder():
    model = Autoencoder(8, latent_dim=2, hidden_dims=(4,))
    return model, model.make_guide(), splits(images()), "trace"


def _local_normal():
    model = VAE(8, latent_dim=2, hidden_dims=(4,))
    return model, LocalNormal(torch.zeros(4, 2), torch.ones(4, 2)), splits(images(4)), "trace"


def _labelled(x):
    y = torch.arange(len(x)) % 2  # two classes, alternating
    return DataSplits(x, y, x[:3], y[:3], x[:3], y[:3], (2, 4), 1.0)


def _cvae():
    model = CVAE(8, num_classes=2, latent_dim=2, hidden_dims=(4,))
    return model, model.make_guide(), _labelled(images()), "trace"


def _m2():
    model = M2(8, num_classes=2, latent_dim=2, hidden_dims=(4,))
    data = _labelled(images()).with_labelled_subset(count=2)  # some y summed out
    return model, model.make_guide(), data, "enum"


_CONV = {"arch": "conv", "image_shape": (2, 4), "channels": (2,)}  # one convolution: 2x4 -> 1x2


def _cvae_conv():
    model = CVAE(8, num_classes=2, latent_dim=2, hidden_dims=(4,), **_CONV)
    return model, model.make_guide(), _labelled(images()), "trace"


def _m2_conv():
    model = M2(8, num_classes=2, latent_dim=2, hidden_dims=(4,), **_CONV)
    data = _labelled(images()).with_labelled_subset(count=2)
    return model, model.make_guide(), data, "enum"


def _vae_with(guide_class):
    """The VAE with another amortized guide family (tester F: the README says every shipped
    guide; the low-rank and flow families were not here)."""

    def case():
        model = VAE(8, latent_dim=2, hidden_dims=(4,))
        return model, guide_class(8, 2, hidden_dims=(4,)), splits(images()), "trace"

    return case


def _vae_conv():
    model = VAE(8, latent_dim=2, hidden_dims=(4,), **_CONV)
    return model, model.make_guide(), splits(images()), "trace"


CASES = {
    "vae": _vae,
    "vae-conv": _vae_conv,
    "vae-lowrank-guide": _vae_with(AmortizedLowRankNormal),
    "vae-iaf-guide": _vae_with(AmortizedIAF),
    "vae-spline-guide": _vae_with(AmortizedSplineFlow),
    "cvae": _cvae,
    "cvae-conv": _cvae_conv,
    "m2": _m2,
    "m2-conv": _m2_conv,
    "vae-categorical": _vae_categorical,
    "vae-mog-prior": lambda: _vae_prior("mog"),
    "vae-vamp-prior": lambda: _vae_prior("vamp"),
    "sbn": _sbn,
    "categorical-guide": _amortized_categorical_guide,
    "autoencoder": _autoencoder,
    "local-normal-guide": _local_normal,
    "gmm": _gmm,
    "hmm": _hmm,
    "hmm-enumerated": _hmm_enumerated,
    "ising": _ising,
    "regression": _regression,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_shipped_model_and_guide_creates_tensors_on_its_inputs_device(case):
    pyro.set_rng_seed(0)
    model, guide, data, name = CASES[case]()
    _run(model, guide, data, estimators.get(name, num_particles=2))


def _estimator(name):
    per_datapoint = estimators.capabilities_of(estimators.get(name)).per_datapoint
    return estimators.get(name, num_particles=2) if per_datapoint else estimators.get(name)


@pytest.mark.parametrize("name", estimators.names())
def test_every_registered_estimator_creates_tensors_on_its_inputs_device(name):
    pyro.set_rng_seed(0)
    model, guide, data, _ = _vae()
    _run(model, guide, data, _estimator(name))


@pytest.mark.parametrize("groups", [None, "dims"])
@pytest.mark.parametrize("name", estimators.FREE_BITS)
def test_free_bits_create_tensors_on_their_inputs_device(name, groups):
    # torch.as_tensor(a tensor) moved each site's per-particle KL to the default device,
    # and analytic-kl's sum started from torch.zeros(()): every free-bits step failed here
    pyro.set_rng_seed(0)
    model, guide, data, _ = _vae()
    _run(model, guide, data, estimators.get(name, free_bits=0.5, free_bits_groups=groups))


@pytest.mark.parametrize("control_variate", estimators.CONTROL_VARIATES)
def test_every_control_variate_creates_tensors_on_its_inputs_device(control_variate):
    pyro.set_rng_seed(0)
    model, guide, data, _ = _sbn()
    elbo = estimators.get("score", control_variate=control_variate, num_particles=2)
    _run(model, guide, data, elbo)


def test_the_evaluators_create_tensors_on_their_inputs_device():
    pyro.set_rng_seed(0)
    model, guide, data, _ = _vae()
    pair = prepare_pair(model, guide, data, TrainConfig(progress=False, device="cpu"))
    x = data.test_x
    with meta_default():
        assert elbo_per_datapoint(model, guide, x, 2, batch_size=2).device.type == "cpu"
        assert iwae_log_likelihood(model, guide, x, 4, batch_size=2).device.type == "cpu"
        assert latent_means(model, guide, x, 2).device.type == "cpu"
        assert reconstruction_error(model, guide, x).device.type == "cpu"
    assert pair.weights.finite()


def test_the_whole_data_elbo_creates_tensors_on_its_inputs_device():
    pyro.set_rng_seed(0)
    model, guide, data, _ = _regression()
    guide(*data.tensors)
    with meta_default():
        elbo, _ = elbo_estimate(model, guide, *data.tensors, num_samples=4)
    assert elbo == elbo


# --- diagnostics --------------------------------------------------------------------------


def _fitted_regression():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, data, _ = _regression()
    guide(*data.tensors)
    return model, guide, data.tensors


def test_inference_data_and_joint_khat_create_tensors_on_their_inputs_device():
    model, guide, args = _fitted_regression()
    with meta_default():
        idata = to_inference_data(model, guide, *args, num_samples=4, device="cpu")
        khat = psis_khat(model, guide, *args, num_samples=PSIS_MIN_SAMPLES, device="cpu")
    assert idata.sample_stats["lp"].shape == (1, 4) and khat == khat


def test_inference_data_of_a_masked_site_creates_tensors_on_its_inputs_device():
    # reading the site's masks (torch.as_tensor of its CPU value) moved it to the default
    x, mask = torch.randn(6, dtype=torch.float64), torch.arange(6) != 2

    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))
        with pyro.plate("data", 6):
            pyro.sample("obs", dist.Normal(mu, 1.0).mask(mask), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))

    with meta_default():
        idata = to_inference_data(model, guide, x, num_samples=4, device="cpu")
    assert idata.log_likelihood["obs"].shape == (1, 4, 5)


def test_khat_per_datapoint_creates_tensors_on_its_inputs_device():
    pyro.set_rng_seed(0)
    model, guide, data, _ = _vae()
    guide(data.test_x)
    with meta_default():
        result = psis_khat_per_datapoint(
            model, guide, data.test_x, num_samples=PSIS_MIN_SAMPLES, device="cpu"
        )
    assert result.khat.shape == (3,)


def test_vsbc_and_gradient_variance_create_tensors_on_their_inputs_device():
    model, guide, args = _fitted_regression()
    with meta_default():
        result = vsbc(
            model, AutoNormal, *args, num_replications=3, num_steps=2, num_draws=4, device="cpu"
        )
        stats = gradient_variance(
            model, guide, estimators.get("trace"), *args, num_draws=2, device="cpu"
        )
    assert len(result.quantiles) > 0 and all(s.mean.device.type == "cpu" for s in stats.values())


def test_diagnostics_refuse_a_device_the_machine_does_not_have(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, guide, args = _fitted_regression()
    with pytest.raises(ValueError, match=r"device: 'cuda' is not available on this machine"):
        to_inference_data(model, guide, *args, num_samples=4, device="cuda")


def test_the_amortization_gap_creates_tensors_on_its_inputs_device():
    pyro.set_rng_seed(0)
    model, guide, data, _ = _vae()
    guide(data.test_x)
    with meta_default():
        result = amortization_gap(model, guide, data.test_x, steps=2, iwae_samples=4)
    assert result["num_points"] == 3


def test_a_whole_fit_under_meta_as_the_default_device_is_the_cpu_fit():
    """Tester CN: ``fit`` itself (its set-up, batches, plates and checks, not only the
    steps above) made tensors without a device: under meta as the default it failed in
    its first checks. The data's plate, the particle plate and the batch orders now take
    the data's or the generator's device; the whole fit matches the CPU one bit for bit."""
    from pyro.infer import Trace_ELBO

    from pyro_vae.train import fit

    histories = []
    for on_meta in (False, True):
        torch.manual_seed(0)
        model, guide, data, _ = _vae()
        config = TrainConfig(epochs=2, batch_size=4, progress=False, device="cpu", val_samples=2)
        with meta_default() if on_meta else contextlib.nullcontext():
            result = fit(model, guide, data, Trace_ELBO(), config)
        histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in result.history])
    assert histories[0] == histories[1]
