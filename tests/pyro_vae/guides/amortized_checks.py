"""Checks every amortized continuous guide is held to, shared by the guides' test files.

Each takes the guide's class (constructed as the CLI constructs it: ``x_dim``,
``latent_dim``, ``hidden_dims``) and asserts; the test files call them with their guide.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from models.vae import VAE
from pyro_vae import TrainConfig, estimators, fit
from pyro_vae.cli import main
from pyro_vae.estimators.compiled import CompiledELBO
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood
from pyro_vae.experiment import load
from pyro_vae.latent_summaries import latent_means, reconstruction_error
from pyro_vae.svi_step import GroupedAdam, SVIStep
from tests.pyro_vae.test_devices import _run, images, meta_default, splits

ROOT = Path(__file__).resolve().parents[3]


def check_encode_shapes(guide_class, **options) -> None:
    """``encode(x)``: batch ``[N]``, event ``[latent_dim]``; draws ``[S, N, latent_dim]``
    with a log-density per draw and row; the guide's site holds one event per row."""
    guide = guide_class(6, 3, (8,), **options)
    x = torch.rand(4, 6)
    q = guide.encode(x)
    assert q.batch_shape == (4,) and q.event_shape == (3,)
    z = q.sample((5,))
    assert z.shape == (5, 4, 3) and q.log_prob(z).shape == (5, 4)
    assert q.rsample().shape == (4, 3) and q.log_prob(q.rsample()).shape == (4,)
    trace = pyro.poutine.trace(guide).get_trace(x, num_data=40)
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 3) and site["fn"].event_dim == 1
    assert site["scale"] == 10.0 and site["fn"].has_rsample


def check_draws_are_reparameterized(guide_class, **options) -> None:
    """A draw's gradient reaches every weight of the encoder (trunk, heads, flow steps)."""
    guide = guide_class(6, 3, (8,), **options)
    z = guide.encode(torch.rand(4, 6)).rsample()
    (z**2).sum().backward()
    missing = [n for n, p in guide.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def check_a_short_fit_improves_the_elbo(guide_class, **options) -> None:
    """``pyro_vae.fit`` with a VAE and this guide on random binary images: the held-out
    ELBO rises."""
    pyro.set_rng_seed(0)
    x = images(n=60, d=8)
    data = splits(x)
    model = VAE(8, latent_dim=2, hidden_dims=(16,))
    guide = guide_class(8, 2, (16,), **options)
    config = TrainConfig(epochs=15, batch_size=20, lr=0.02, progress=False, device="cpu")
    history = fit(model, guide, data, Trace_ELBO(), config).history
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 0.3


def check_the_recorded_step_equals_the_eager_one(guide_class, **options) -> None:
    """``CompiledELBO`` (``--compile``) takes exactly the uncompiled steps: the same
    weights bit for bit, the same losses up to float32 summation (as
    tests/pyro_vae/estimators/test_compiled.py holds the shipped guides to)."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(n, 16, generator=g) > 0.5).float() for n in (20, 20, 7)]
    check_recorded_steps(lambda: guide_class(16, 3, (8,), **options), batches, recordings=2)


def check_recorded_steps(
    make_guide,
    batches,
    recordings: int,
    make_model=None,
    estimator: str = "trace",
    num_data: int = 100,
) -> None:
    """Two passes of SVI steps over ``batches`` with ``make_model()`` (default: a 3-latent
    VAE of ``[N, 16]`` data) and ``make_guide()`` (``None``: the model's ``make_guide()``),
    trained by ``estimator``, recorded and not: same weights bit for bit, same losses up to
    float32 summation, one recording per batch shape."""

    def train(compiled: bool):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = VAE(16, latent_dim=3, hidden_dims=(8,)) if make_model is None else make_model()
        guide = model.make_guide() if make_guide is None else make_guide()
        elbo = estimators.get(estimator)
        elbo = CompiledELBO(elbo) if compiled else elbo
        svi = SVIStep(model, guide, GroupedAdam({"lr": 0.01}), elbo)
        losses = [svi.step(x, num_data=num_data) for _ in range(2) for x in batches]
        return losses, {**model.state_dict(), **guide.state_dict()}, elbo

    losses, weights, _ = train(False)
    ours, our_weights, elbo = train(True)
    for key, value in weights.items():
        assert torch.equal(our_weights[key], value), key
    assert ours == pytest.approx(losses, rel=1e-6)
    assert elbo.num_recordings == recordings


def check_tensors_stay_on_the_inputs_device(guide_class, **options) -> None:
    """One training step and the evaluators with meta as the default device
    (tests/pyro_vae/test_devices.py): a tensor made without the inputs' device fails."""
    pyro.set_rng_seed(0)
    model, guide = VAE(8, latent_dim=2, hidden_dims=(4,)), guide_class(8, 2, (4,), **options)
    data = splits(images())
    _run(model, guide, data, estimators.get("trace", num_particles=2))
    x = data.test_x
    with meta_default():
        assert elbo_per_datapoint(model, guide, x, 2, batch_size=2).device.type == "cpu"
        assert iwae_log_likelihood(model, guide, x, 4, batch_size=2).device.type == "cpu"
        assert latent_means(model, guide, x, 2).device.type == "cpu"
        assert reconstruction_error(model, guide, x).device.type == "cpu"


_LOAD = """
import json, sys, torch
from pyro_vae.experiment import load
exp = load(sys.argv[1], "cpu")
x = exp.data.test_x[:5]
torch.manual_seed(0)
q = exp.guide.encode(x)
z = q.sample()
print(json.dumps({"z": z.tolist(), "log_q": q.log_prob(z).tolist()}))
"""


def check_the_cli_round_trip(
    spec: str, tmp_path: Path, compile: str = "off", fresh_process: bool = False
) -> None:
    """``pyro-vae fit --guide SPEC`` (its test metrics and every figure), ``pyro-vae
    evaluate`` on the folder, and ``load`` giving the same q(z | x) as here (in a fresh
    process with ``fresh_process``, seconds of imports: the IAF case does it for all the
    flows, which share their base class). ``compile``: ``--compile`` (off by default:
    recording costs seconds, and the recorded step has a test of its own)."""
    run = tmp_path / "run"
    fast = ["--latent-dim", "3", "--hidden", "16", "--no-progress", "--ll-samples", "8"]
    fast += ["--compile", compile]
    assert main(["fit", "--guide", spec, "--epochs", "1", "--out", str(run), *fast]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"elbo", "log_likelihood", "reconstruction_mse", "active_units"} <= set(metrics["test"])
    figures = {"reconstructions", "samples", "elbo", "latent", "traversal", "interpolation"}
    assert {p.stem for p in run.glob("*.png")} == figures
    assert main(["evaluate", str(run), "--ll-samples", "8"]) == 0
    again = json.loads((run / "metrics.json").read_text())["test"]
    assert again["active_units"] == metrics["test"]["active_units"]
    if not fresh_process:
        first, second = load(run, "cpu"), load(run, "cpu")
        x = first.data.test_x[:5]
        torch.manual_seed(0)
        z = first.guide.encode(x).sample()
        torch.testing.assert_close(
            first.guide.encode(x).log_prob(z), second.guide.encode(x).log_prob(z)
        )
        return
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, str(run)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    fresh = json.loads(out.splitlines()[-1])
    exp = load(run, "cpu")
    q = exp.guide.encode(exp.data.test_x[:5])
    z = torch.tensor(fresh["z"])
    # here z is scored by inverting the flow, there from the draw's cache
    torch.testing.assert_close(q.log_prob(z), torch.tensor(fresh["log_q"]), rtol=1e-4, atol=1e-4)


def check_a_conv_encoder(guide_class, recorded: bool = True, **options) -> None:
    """``arch="conv"``: the trunk is convolutional (widths ``channels``) and feeds the same
    heads and context, and (``recorded``) the recorded step still equals the eager one."""
    conv = {"arch": "conv", "image_shape": (4, 4), "channels": (2, 4)}
    guide = guide_class(16, 3, (8,), **conv, **options)
    widths = [m.out_channels for m in guide.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [2, 4] and guide.loc_head.in_features == 8
    q = guide.encode(torch.rand(5, 16))
    assert q.batch_shape[:1] == (5,) and q.rsample().shape == (5, 3)
    if not recorded:
        return
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(n, 16, generator=g) > 0.5).float() for n in (6, 6, 3)]
    check_recorded_steps(lambda: guide_class(16, 3, (8,), **conv, **options), batches, 2)
