"""Mixed precision (pyro_vae/precision.py): networks under autocast, densities in float32,
float32 weights, gradient scaling for 16-mixed, and its plumbing through fit and the CLI."""

import contextlib
import json

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from models.vae import VAE
from pyro_vae import precision as precision_module
from pyro_vae.checkpoint import RunFolder
from pyro_vae.cli import main
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.distributed import Group, SynchronizedELBO
from pyro_vae.divergence import DivergenceGuard
from pyro_vae.estimators.compiled import CompiledELBO
from pyro_vae.evaluate import elbo_per_datapoint
from pyro_vae.precision import (
    PRECISIONS,
    Precision,
    active,
    check_precision,
    networks_in,
    scaled_backward,
)
from pyro_vae.run_config import ModelConfig, RunConfig
from pyro_vae.svi_step import GroupedAdam, SVIStep
from pyro_vae.train import TrainConfig, fit
from pyro_vae.weights import PairWeights

FAST = ["--latent-dim", "4", "--hidden", "32", "--no-progress", "--ll-samples", "0"]


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", Preprocessing("bernoulli", binarize="static"))


def small_vae(data, seed=0):
    pyro.set_rng_seed(seed)
    model = VAE(data.x_dim, latent_dim=4, hidden_dims=(32,))
    return model, model.make_guide()


def sample_sites(model, guide, x, context):
    """``{(trace, site): (value dtype, log_prob dtype)}`` of the sample sites (not the
    plates' index draws) of a guide trace and the model replayed on it, run inside
    ``context``; log-densities computed as the ELBO does, after the run."""
    pyro.set_rng_seed(1)
    with context:
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    dtypes = {}
    for kind, trace in (("guide", guide_trace), ("model", model_trace)):
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and site["value"].is_floating_point():
                dtypes[kind, name] = (site["value"].dtype, site["log_prob"].dtype)
    return dtypes


# ---- names and refusals ---------------------------------------------------------------


def test_precisions_are_spelled_as_the_flag_spells_them():
    assert PRECISIONS == ("32", "bf16", "16-mixed")
    assert [check_precision(p) for p in (*PRECISIONS, 32)] == ["32", "bf16", "16-mixed", "32"]
    for bad in ("fp16", "16", 16, True, None, "BF16"):
        with pytest.raises(ValueError, match=r"precision: .* is not a precision; expected one of"):
            check_precision(bad)
    with pytest.raises(ValueError, match="precision: 'fp8'"):
        TrainConfig(precision="fp8")
    assert TrainConfig().precision == "32" and TrainConfig(precision=32).precision == "32"


def test_16_mixed_is_refused_on_the_cpu_before_any_work(digits, tmp_path):
    model, guide = small_vae(digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ready = []
    run = RunFolder(tmp_path / "run")
    with pytest.raises(ValueError) as err:
        fit(
            model,
            guide,
            digits,
            Trace_ELBO(),
            TrainConfig(precision="16-mixed", device="cpu", progress=False),
            run=run,
            on_ready=lambda: ready.append(1),
        )
    message = str(err.value)
    assert message.startswith("precision: '16-mixed'") and "expected '32' or 'bf16'" in message
    assert "GPU" in message and "--" not in message  # a Python error names no CLI flag
    assert not ready and not run.path.exists() and len(pyro.get_param_store()) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="precision: '16-mixed'"):
        Precision("16-mixed", "cpu")
    assert Precision("bf16", "cpu").dtype == torch.bfloat16


# ---- the boundary: networks low, densities float32 --------------------------------------


def test_every_log_prob_that_reaches_the_elbo_is_float32_under_bf16(digits):
    model, guide = small_vae(digits)
    x = digits.train_x[:16]
    plain = sample_sites(model, guide, x, contextlib.nullcontext())
    assert set(plain.values()) == {(torch.float32, torch.float32)}
    # autocast alone leaves the encoder's loc and scale in bfloat16: the check can fail
    autocast = sample_sites(model, guide, x, torch.autocast("cpu", dtype=torch.bfloat16))
    assert autocast["guide", "z"] == (torch.bfloat16, torch.bfloat16)
    assert sample_sites(model, guide, x, networks_in(torch.bfloat16, "cpu")) == plain
    assert active() is None


class _Seen(nn.Linear):
    """A linear layer that records whether it ran under autocast and its product's dtype
    (before the boundary casts what it returns)."""

    def __init__(self, features: int) -> None:
        super().__init__(features, features)
        self.seen = []

    def forward(self, x):
        out = nn.functional.linear(x, self.weight, self.bias)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def test_a_model_written_as_pyros_examples_write_one_needs_no_change():
    """A plain function with ``pyro.module`` and networks in closures (Pyro's
    examples/vae): the networks compute in bfloat16, every density in float32."""
    decoder, encoder = _Seen(3), _Seen(3)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    x = torch.randn(5, 3)
    dtypes = sample_sites(model, guide, x, networks_in(torch.bfloat16, "cpu"))
    assert set(dtypes.values()) == {(torch.float32, torch.float32)}
    assert decoder.seen == encoder.seen == [(True, torch.bfloat16)]
    assert not torch.is_autocast_enabled("cpu")


def test_layers_inside_a_sequential_pass_bf16_on_and_the_sequential_returns_float32():
    seq = nn.Sequential(nn.Linear(3, 3), nn.Softplus(), nn.Linear(3, 3))
    seen = []
    seq[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with networks_in(torch.bfloat16, "cpu"):
        assert seq(torch.ones(2, 3)).dtype == torch.float32
        assert seq[2](torch.ones(2, 3)).dtype == torch.float32  # called on its own: cast
    assert seen == [torch.bfloat16]


def test_a_forward_that_raises_leaves_no_autocast_behind():
    class Fails(nn.Module):
        def forward(self, x):
            raise RuntimeError("inside")

    with networks_in(torch.bfloat16, "cpu"):
        with pytest.raises(RuntimeError, match="inside"):
            Fails()(torch.ones(1))
        assert not torch.is_autocast_enabled("cpu")
        assert nn.Linear(2, 2)(torch.ones(2)).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_a_bf16_fit_on_the_cpu_keeps_float32_weights_and_float32_losses(digits):
    """The fit trains; on its weights and the same noise, the per-datapoint loss under bf16
    is the float32 one to within what bfloat16's 8-bit significand allows. Each network
    output is a float32-accumulated sum of products of inputs rounded to bf16 (unit roundoff
    u = 2⁻⁸ each), so a logit is off by at most about 2u times the sum of its products'
    magnitudes (≈ 0.01-0.05 here); the 64 pixels' Bernoulli terms have |∂ℓ/∂logit| ≤ 1 and
    their rounding errors have random signs. 0.25 nats per datapoint bounds one image's
    loss (tens of nats) and 0.02 the mean over 300 images; both are far below the
    single-draw Monte Carlo spread of the ELBO (several nats)."""
    model, guide = small_vae(digits)
    config = TrainConfig(epochs=1, batch_size=128, lr=3e-3, precision="bf16", progress=False)
    result = fit(model, guide, digits, Trace_ELBO(), config)
    assert all(torch.isfinite(torch.tensor(r["train_elbo"])) for r in result.history)
    weights = PairWeights(model, guide, (digits.train_x[:8],), {})
    assert {p.dtype for p in weights.parameters()} == {torch.float32}
    x = digits.test_x[:300]
    torch.manual_seed(5)
    float32 = elbo_per_datapoint(model, guide, x, num_samples=1)
    torch.manual_seed(5)
    with networks_in(torch.bfloat16, "cpu"):
        bf16 = elbo_per_datapoint(model, guide, x, num_samples=1)
    assert float32.dtype == bf16.dtype == torch.float32
    difference = (bf16 - float32).abs()
    assert 0 < difference.max() < 0.25 and (bf16 - float32).mean().abs() < 0.02


@pytest.mark.parametrize("where", ["model", "guide"])
def test_bf16_with_float64_networks_is_refused_before_any_work(digits, tmp_path, where):
    """Tester CP: a ``.double()`` VAE's bf16 losses were its float32-setting ones bit for
    bit (CPU autocast lowers float32 operations only), and nothing said so."""
    model, guide = small_vae(digits)
    (model if where == "model" else guide).double()
    config = TrainConfig(epochs=1, precision="bf16", progress=False)
    owner = type(model if where == "model" else guide).__name__
    with pytest.raises(ValueError, match=rf"^precision: 'bf16' with float64 networks \({owner}'s "):
        fit(model, guide, digits, Trace_ELBO(), config, run=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bf16_with_float64_networks_of_a_function_model_is_refused_before_any_work(
    digits, tmp_path
):
    """Tester CR: a function model's float64 network, registered with ``pyro.module``,
    trained under bf16 as under precision 32, bit for bit (the refusal above read only
    modules passed as model or guide; Pyro's param store holds these once the pair runs)."""
    decoder = torch.nn.Linear(2, 64).double()
    encoder = torch.nn.Linear(64, 4)

    def model(x, subsample=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2).double(), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x.double())

    def guide(x, subsample=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            h = encoder(x.to(encoder.weight.dtype)).double()
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    config = TrainConfig(epochs=1, precision="bf16", progress=False)
    refusal = r"^precision: 'bf16' with float64 networks \(parameter '(weight|bias)' of pyro"
    refusal += r"\.module 'decoder' is float64\)"
    with pytest.raises(ValueError, match=refusal):
        fit(model, guide, digits, Trace_ELBO(), config, run=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    encoder.double()  # so float64 at last: the same run trains under precision 32
    config = TrainConfig(epochs=1, progress=False, batch_size=512)
    assert fit(model, guide, digits, Trace_ELBO(), config).history


@pytest.mark.parametrize("held", ["PyroModule", "closed over"])
def test_bf16_with_float64_networks_a_function_model_calls_is_refused(digits, held):
    """Tester CW: the refusal above read Pyro's param store for ``pyro.module`` names, and
    a float64 ``PyroModule`` in a function model (or a module the function closes over)
    trained under bf16 as under precision 32, bit for bit. Every network whose forward
    runs in the first run of the pair is read now."""
    from pyro.nn import PyroModule

    linear = PyroModule[torch.nn.Linear] if held == "PyroModule" else torch.nn.Linear
    decoder = linear(2, 64).double()

    def model(x, subsample=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2).double(), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x.double())

    def guide(x, subsample=None):
        with pyro.plate("data", x.shape[0]):
            loc = pyro.param("loc", torch.zeros(2, dtype=torch.float64))
            pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 2), 1.0).to_event(1))

    config = TrainConfig(epochs=1, precision="bf16", progress=False)
    owner = "PyroLinear" if held == "PyroModule" else "Linear"
    with pytest.raises(ValueError, match=rf"with float64 networks \({owner}'s '(weight|bias)' is"):
        fit(model, guide, digits, Trace_ELBO(), config)


def test_adam_state_stays_float32_under_bf16(digits):
    model, guide = small_vae(digits)
    optim = GroupedAdam({"lr": 1e-3})
    svi = SVIStep(model, guide, optim, Trace_ELBO(), Precision("bf16"))
    svi.step(digits.train_x[:32])
    state = [s for s in optim._optimizer.state.values()]
    assert state and {t.dtype for s in state for t in s.values() if t.dim()} == {torch.float32}


# ---- the recorded step -----------------------------------------------------------------


def _linear_model(x, subsample=None):
    """A network and a product outside any module (``z @ w``): the replay must keep the
    latter float32, as the uncompiled step computes it."""
    net = pyro.module("net", _NET)
    w = pyro.param("w", torch.eye(3) + 0.1)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(net(z) + z @ w, 1.0).to_event(1), obs=x)


def _linear_guide(x, subsample=None):
    loc = pyro.param("loc", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc + 0 * x, 0.5).to_event(1))


_NET = nn.Linear(3, 3)


def _steps(elbo, name: str, steps: int = 4):
    pyro.clear_param_store()
    _NET.load_state_dict({"weight": torch.eye(3) * 0.5, "bias": torch.zeros(3)})
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    # The parameters exist before the first step, as fit makes them: a CompiledELBO whose
    # recording creates them bakes their initial values into the recording.
    Trace_ELBO().loss(_linear_model, _linear_guide, x)
    pyro.set_rng_seed(0)
    svi = SVIStep(_linear_model, _linear_guide, GroupedAdam({"lr": 0.05}), elbo, Precision(name))
    losses = [svi.step(x, subsample=torch.arange(8)) for _ in range(steps)]
    return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_the_recorded_bf16_step_equals_the_uncompiled_bf16_step():
    losses, weights = _steps(Trace_ELBO(), "bf16")
    compiled = CompiledELBO(Trace_ELBO())
    recorded_losses, recorded = _steps(compiled, "bf16")
    assert compiled.num_recordings == 1
    assert recorded_losses == pytest.approx(losses, rel=1e-6)
    assert all(torch.equal(weights[k], recorded[k]) for k in weights)
    float32_losses, _ = _steps(Trace_ELBO(), "32")
    assert losses != float32_losses  # bf16 did change the networks' arithmetic


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by dynamo
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_backend_compiles_the_recorded_bf16_step(backend):
    """Tester CP: ``--compile inductor --precision bf16`` failed in every fit, in Dynamo
    ("already tracked for mutation" in pyro_vae.precision's forward hook: the compiled
    recording was called as a module, which runs the global hooks; aot_eager's backward
    graph, a module too, then ran under autocast and mixed bfloat16 with float32 in a
    matmul). The compiled bf16 step equals the uncompiled one to float32 rounding."""
    from tests.pyro_vae.estimators.test_compiled import _inductor_works

    if backend == "inductor" and (reason := _inductor_works()) is not None:
        pytest.skip(f"inductor cannot compile here: {reason}")
    losses, weights = _steps(Trace_ELBO(), "bf16")
    compiled_losses, compiled = _steps(CompiledELBO(Trace_ELBO(), backend=backend), "bf16")
    assert compiled_losses == pytest.approx(losses, rel=1e-5)
    for key, value in weights.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5)


# ---- 16-mixed: gradient scaling (its mechanics, on the CPU) ------------------------------


@pytest.fixture
def mixed_on_cpu(monkeypatch):
    """``Precision("16-mixed")`` on the CPU, refused in a run, built here to test the
    scaler's arithmetic: ``scale`` is its initial loss scale."""
    monkeypatch.setattr(precision_module, "refuse_on_device", lambda *args: None)

    def make(scale: float) -> Precision:
        return Precision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=scale))

    return make


def _param_only_steps(precision: Precision, steps: int = 3, elbo=None):
    """Steps of a model without networks: autocast changes nothing, so only the scaler's
    arithmetic can make a difference."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)

    def model(x, subsample=None):
        loc = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x, subsample=None):
        pass

    x, rows = torch.arange(8.0).reshape(4, 2), torch.arange(4)
    svi = SVIStep(model, guide, GroupedAdam({"lr": 0.1}), elbo or Trace_ELBO(), precision)
    guard = DivergenceGuard(PairWeights(model, guide, (x,), {}))
    losses = [guard.step(lambda: svi.step(x, subsample=rows), 0, i) for i in range(steps)]
    return losses, pyro.param("m").detach().clone()


def test_the_scaled_step_is_the_unscaled_step(mixed_on_cpu):
    precision = mixed_on_cpu(2.0**10)
    losses, weights = _param_only_steps(precision)
    float32_losses, float32_weights = _param_only_steps(Precision("32"))
    assert losses == float32_losses and torch.equal(weights, float32_weights)
    assert precision.skipped_steps == 0 and precision.scaler.get_scale() == 2.0**10


def test_an_overflowing_scaled_gradient_skips_the_step_and_is_not_divergence(mixed_on_cpu):
    # The gradient is (−12, −16) at the start: 16·2¹²⁴ = 2¹²⁸ overflows float32, 16·2¹²³
    # does not.
    precision = mixed_on_cpu(2.0**124)
    losses, weights = _param_only_steps(precision, steps=1)
    assert torch.isfinite(torch.tensor(losses)).all()  # the guard saw a finite loss
    assert precision.skipped_steps == 1 and torch.equal(weights, torch.zeros(2))
    assert precision.scaler.get_scale() == 2.0**123  # halved, as GradScaler does
    losses, weights = _param_only_steps(precision, steps=2)  # at 2¹²³ the steps are taken
    assert precision.skipped_steps == 1 and not torch.equal(weights, torch.zeros(2))
    assert torch.equal(weights, _param_only_steps(Precision("32"), steps=2)[1])


def test_scaled_backward_scales_the_gradient_not_the_value():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    with scaled_backward(lambda g: g * 4):
        loss = (p**2).sum()
        loss.backward()
        (p * torch.ones(2)).backward(torch.tensor([1.0, 0.0]))
    assert loss.item() == 5.0 and p.grad.tolist() == [12.0, 16.0]
    (p.sum()).backward()  # the patch is gone after the block
    assert p.grad.tolist() == [13.0, 17.0]


def test_data_parallel_reduce_keeps_bf16_and_scaled_gradients_float32(mixed_on_cpu):
    """The gradients SynchronizedELBO reduces are float32 under bf16, and under 16-mixed it
    reduces the scaled ones, which the step unscales after (one rank: the reduce is the
    identity, so the steps equal the unsynchronized ones)."""
    losses, weights = _steps(SynchronizedELBO(Trace_ELBO(), Group()), "bf16")
    plain_losses, plain = _steps(Trace_ELBO(), "bf16")
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    assert all(torch.equal(weights[k], plain[k]) for k in plain)
    assert {w.dtype for w in weights.values()} == {torch.float32}
    synced = _param_only_steps(mixed_on_cpu(2.0**10), elbo=SynchronizedELBO(Trace_ELBO(), Group()))
    assert torch.equal(synced[1], _param_only_steps(Precision("32"))[1])


# ---- configuration and command line ----------------------------------------------------


def test_a_config_json_without_precision_loads_as_float32(digits):
    config = RunConfig(model=ModelConfig("models.vae:VAE")).to_json()
    assert config["train"]["precision"] == "32"
    del config["train"]["precision"]
    assert RunConfig.from_json(json.loads(json.dumps(config))).training.precision == "32"


def test_the_flag_goes_into_config_json_and_resume_keeps_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pyro_vae.cli.write_figures", lambda *args, **kwargs: ([], {}))
    run = tmp_path / "run"
    argv = ["fit", "--epochs", "1", "--batch-size", "256", "--precision", "bf16"]
    assert main([*argv, "--out", str(run), *FAST]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bf16"
    assert main(["fit", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["precision"] == "bf16" and saved["train"]["epochs"] == 2
    capsys.readouterr()
    assert main(["fit", "--resume", str(run), "--precision", "32"]) == 2
    assert "--precision cannot change a run being resumed" in capsys.readouterr().err


def test_the_cli_refuses_a_bad_precision_and_16_mixed_on_the_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--out", str(tmp_path / "a"), "--precision", "fp8"])
    assert exit_.value.code == 2 and "--precision" in capsys.readouterr().err
    run = tmp_path / "b"
    argv = ["fit", "--out", str(run), "--precision", "16-mixed", "--device", "cpu", *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--precision: '16-mixed'" in err and "expected '32' or 'bf16'" in err
    assert not (run / "config.json").exists()
