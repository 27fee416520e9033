import json

import pyro
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO

from models.autoencoder import Autoencoder
from models.vae import VAE
from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.estimators import get as get_estimator
from pyro_vae.tensor_data import TensorData
from pyro_vae.train import TrainConfig, TrainingDiverged, fit


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", Preprocessing("bernoulli"))


def small_vae(data, seed=0):
    pyro.set_rng_seed(seed)
    model = VAE(data.x_dim, latent_dim=4, hidden_dims=(32,))
    return model, model.make_guide()


def quiet(**kwargs):
    return TrainConfig(progress=False, **kwargs)


def test_training_improves_the_validation_elbo(digits):
    model, guide = small_vae(digits)
    result = fit(model, guide, digits, Trace_ELBO(), quiet(epochs=8, batch_size=64, lr=3e-3))
    history = result.history
    assert [r["epoch"] for r in history] == list(range(1, 9))
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 3
    assert result.best_epoch == max(history, key=lambda r: r["val_elbo"])["epoch"]


def test_without_a_validation_set_the_last_weights_are_kept():
    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0)
    assert data.val_x.shape == (0, 64) and data.info["num_train"] == 1617
    model, guide = small_vae(data)
    result = fit(model, guide, data, Trace_ELBO(), quiet(epochs=2))
    assert result.best_epoch is None and "val_elbo" not in result.history[-1]


def test_resume_continues_exactly_like_an_uninterrupted_run(digits, tmp_path):
    config = dict(batch_size=64, lr=3e-3, seed=7, kl_warmup_epochs=1.5)
    straight_model, straight_guide = small_vae(digits)
    fit(
        straight_model,
        straight_guide,
        digits,
        Trace_ELBO(),
        quiet(epochs=4, **config),
        RunFolder(tmp_path / "a"),
    )

    run = RunFolder(tmp_path / "b")
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2, **config), run)
    assert run.load_checkpoint()["epoch"] == 2
    model, guide = small_vae(digits, seed=123)  # fresh process: weights come from the folder
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=4, **config), run, resume=True)

    a, b = RunFolder(tmp_path / "a").load_checkpoint(), run.load_checkpoint()
    assert a["history"] == b["history"] or all(
        ra["train_elbo"] == rb["train_elbo"] and ra["val_elbo"] == rb["val_elbo"]
        for ra, rb in zip(a["history"], b["history"], strict=True)
    )
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["beta"] for r in b["history"]][:2] == [pytest.approx(2 / 3, abs=0.05), 1.0]


def test_a_batch_norm_model_whose_validation_cannot_vectorize_resumes_exactly(digits, tmp_path):
    """Tester BE: BatchNorm1d fails on the particle dim, so validation falls back to
    drawing particles one at a time. The uninterrupted fit stopped trying after its first
    validation; the resumed one tried again first, and that attempt's draws made every
    validation and epoch after it differ (final train ELBO −31.53 against −31.52)."""

    def bn_vae(seed):
        pyro.set_rng_seed(seed)
        model = VAE(digits.x_dim, latent_dim=4, hidden_dims=(32,))
        model.decoder = torch.nn.Sequential(torch.nn.BatchNorm1d(4), model.decoder)
        return model, model.make_guide()

    config = dict(batch_size=256, lr=3e-3, seed=5)
    fit(*bn_vae(0), digits, Trace_ELBO(), quiet(epochs=3, **config), RunFolder(tmp_path / "a"))
    run = RunFolder(tmp_path / "b")
    fit(*bn_vae(0), digits, Trace_ELBO(), quiet(epochs=1, **config), run)
    fit(*bn_vae(123), digits, Trace_ELBO(), quiet(epochs=3, **config), run, resume=True)
    a, b = RunFolder(tmp_path / "a").load_checkpoint(), run.load_checkpoint()
    assert [(r["train_elbo"], r["val_elbo"]) for r in a["history"]] == [
        (r["train_elbo"], r["val_elbo"]) for r in b["history"]
    ]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


class _OwnNoise(torch.nn.Module):
    """Adds noise drawn from a generator of its own, seeded in the constructor."""

    def __init__(self, seed):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, h):
        if not self.training:
            return h
        return h + 0.1 * torch.randn(h.shape, generator=self.generator).to(h)


def test_a_model_s_own_generator_resumes_where_it_left_off(digits, tmp_path):
    """Tester EX: a model drawing from a torch.Generator of its own was rebuilt with it at
    its constructor's seed, so the resumed epochs replayed the first epochs' noise and
    every weight left the straight run's (by up to 6.8e-5). Expected: the straight run."""

    def noisy_vae(seed):
        pyro.set_rng_seed(seed)
        model = VAE(digits.x_dim, latent_dim=4, hidden_dims=(32,))
        model.decoder = torch.nn.Sequential(_OwnNoise(11), model.decoder)
        return model, model.make_guide()

    config = dict(batch_size=256, lr=3e-3, seed=5)
    fit(*noisy_vae(0), digits, Trace_ELBO(), quiet(epochs=3, **config), RunFolder(tmp_path / "a"))
    run = RunFolder(tmp_path / "b")
    fit(*noisy_vae(0), digits, Trace_ELBO(), quiet(epochs=1, **config), run)
    model, guide = noisy_vae(123)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, **config), run, resume=True)
    a, b = RunFolder(tmp_path / "a").load_checkpoint(), run.load_checkpoint()
    assert list(b["generators"]) == ["model.decoder.0.generator"]
    assert torch.equal(
        a["generators"]["model.decoder.0.generator"], model.decoder[0].generator.get_state()
    )
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_compiled_run_resumed_equals_an_uncompiled_run_straight_through(digits, tmp_path):
    config = dict(batch_size=64, lr=3e-3, seed=7)
    straight = RunFolder(tmp_path / "straight")
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, **config), straight)

    run = RunFolder(tmp_path / "compiled")
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1, compile=True, **config), run)
    model, guide = small_vae(digits, seed=123)  # fresh process: weights come from the folder
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, compile=True, **config), run, True)

    # The checkpoints hold the last epoch's weights (the best are only kept in memory).
    last, reference = run.load_checkpoint(), straight.load_checkpoint()
    for part in ("model", "guide"):
        for key, value in reference[part].items():
            assert torch.equal(last[part][key], value), (part, key)


class ExplodesAfter(torch.nn.Module):
    """Wraps a model; after ``steps`` training steps its log-density becomes NaN. A training
    step is a call in training mode with gradients on (set-up and validation are not)."""

    def __init__(self, inner, steps):
        super().__init__()
        self.inner, self.steps, self.calls = inner, steps, 0

    def forward(self, x, num_data=None):
        self.calls += self.training and torch.is_grad_enabled()
        if self.calls > self.steps:
            pyro.factor("boom", torch.tensor(float("nan")))
        return self.inner(x, num_data)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("validation", [True, False])
def test_a_non_finite_loss_stops_and_keeps_the_last_good_weights(digits, tmp_path, validation):
    # With validation, Pyro raises on the NaN factor; without, the loss itself is NaN.
    pyro.enable_validation(validation)
    inner, guide = small_vae(digits)
    steps_per_epoch = -(-digits.train_x.shape[0] // 64)
    model = ExplodesAfter(inner, steps_per_epoch + 3)  # at step 4 of epoch 2
    run = RunFolder(tmp_path / "run")
    with pytest.raises(
        TrainingDiverged, match=r"at epoch 2, step 4; the weights are back to the end of epoch 1"
    ):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=5, batch_size=64), run)
    saved = run.load_checkpoint()
    assert saved["epoch"] == 1
    for key, value in model.state_dict().items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, saved["model"][key]), key
    pyro.enable_validation(True)


def test_model_and_guide_must_be_callable(digits):
    model, guide = small_vae(digits)
    with pytest.raises(TypeError, match="guide: expected a Pyro model/guide callable, got str"):
        fit(model, "guide", digits, Trace_ELBO(), quiet(epochs=1))


@pytest.mark.parametrize(
    "elbo, message",
    [
        (
            "trace",
            r"elbo: got the name 'trace'.*pyro_vae.estimators.get\('trace'\) \(names: .*iwae",
        ),
        (
            Trace_ELBO,
            r"elbo: got the class Trace_ELBO; expected an instance of it, e.g. Trace_ELBO\(\)",
        ),
        (
            object(),
            r"elbo: object has no loss or loss_and_grads method; expected a pyro.infer.ELBO",
        ),
    ],
)
def test_an_elbo_that_is_not_an_estimator_instance_is_named_before_any_work(
    digits, tmp_path, elbo, message
):
    model, guide = small_vae(digits)
    with pytest.raises(TypeError, match=message):
        fit(model, guide, digits, elbo, quiet(epochs=1), RunFolder(tmp_path / "r"))
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_early_stopping_when_validation_stops_improving(digits):
    pyro.set_rng_seed(0)
    model = Autoencoder(digits.x_dim, latent_dim=3, hidden_dims=(16,), noise_std=0.0)
    # Adam steps of 1e-30 leave float32 weights unchanged, so the deterministic validation
    # objective never improves after epoch 1.
    result = fit(
        model, model.make_guide(), digits, Trace_ELBO(), quiet(epochs=10, lr=1e-30, patience=2)
    )
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == 3 and result.best_epoch == 1


def test_early_stopping_waits_for_a_validation_that_is_no_better(digits, tmp_path):
    """Tester EB: validated every 3 epochs with a patience of 2, a fit stopped after epoch 5
    on its one validation (epoch 3), and lost epochs 4 and 5, trained after its last
    checkpoint. The validation objective never improves here (as above): the best is
    epoch 3, the validation of epoch 6 is 3 epochs after it, no better, and stops the fit
    there, checkpointed."""
    pyro.set_rng_seed(0)
    model = Autoencoder(digits.x_dim, latent_dim=3, hidden_dims=(16,), noise_std=0.0)
    config = quiet(epochs=12, lr=1e-30, patience=2, validate_every=3)
    result = fit(model, model.make_guide(), digits, Trace_ELBO(), config, run=tmp_path / "r")
    assert result.stop_reason == "early_stopping" and result.best_epoch == 3
    assert [r["epoch"] for r in result.history if "val_elbo" in r] == [3, 6]
    assert len(result.history) == 6 and RunFolder(tmp_path / "r").load_checkpoint()["epoch"] == 6


def test_bad_data_is_rejected_before_training(digits):
    model, guide = small_vae(digits)
    gaussian = load_data("digits", Preprocessing("gaussian"))
    with pytest.raises(
        ValueError, match=r"training data \(rows 0..1454\): Bernoulli likelihood needs binary"
    ):
        fit(model, guide, gaussian, Trace_ELBO(), quiet(epochs=1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs: 0"),
        ({"batch_size": 2.5}, "batch_size: 2.5"),
        ({"lr": -1.0}, "lr: -1.0"),
        ({"lr": float("nan")}, "lr: nan"),
        ({"patience": 0}, "patience: 0"),
        ({"kl_warmup_epochs": -1}, "kl_warmup_epochs: -1"),
        ({"compile_backend": "inductor"}, "compile_backend: 'inductor' needs compile=True"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_resume_needs_a_run_folder(digits):
    model, guide = small_vae(digits)
    with pytest.raises(ValueError, match="resume"):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), resume=True)


@pytest.mark.parametrize("control_variate", ["ema", "neural"])
def test_resume_keeps_the_score_estimators_control_variate_state(digits, tmp_path, control_variate):
    from models.sbn import SBN
    from pyro_vae.estimators import ScoreFunctionELBO

    def run(epochs, folder, resume=False, seed=0):
        pyro.set_rng_seed(seed)
        model = SBN(digits.x_dim, latent_dim=6)
        guide = model.make_guide()
        estimator = ScoreFunctionELBO(2, control_variate)
        fit(
            model,
            guide,
            digits,
            estimator,
            quiet(epochs=epochs, batch_size=256, seed=3),
            RunFolder(folder),
            resume=resume,
        )
        return model, estimator

    straight, straight_est = run(3, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed, resumed_est = run(3, tmp_path / "b", resume=True, seed=99)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert straight_est.state_dict()["averages"] == resumed_est.state_dict()["averages"]
    assert straight_est.state_dict()["moments"] == resumed_est.state_dict()["moments"]


def regression_problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 2, generator=g)
    y = X @ torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(60, generator=g)
    return TensorData(X, y)


def test_a_run_ended_off_the_validation_schedule_resumes_as_if_it_had_not_stopped(digits, tmp_path):
    """Tester EB: 5 epochs validated every 2 (and at the last), resumed to 8, trained
    epochs 6 to 8 on other draws than 8 straight: the validation of epoch 5, which the
    straight run never makes, drew from training's stream. Here 3 epochs resumed to 4."""
    config = dict(batch_size=256, validate_every=2, patience=None, val_samples=2)

    def run(epochs, folder, resume=False):
        model, guide = small_vae(digits)
        config_now = quiet(epochs=epochs, **config)
        result = fit(model, guide, digits, Trace_ELBO(), config_now, folder, resume=resume)
        return result, model

    straight, straight_model = run(4, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed, resumed_model = run(4, tmp_path / "b", resume=True)
    assert [r["epoch"] for r in resumed.history if "val_elbo" in r] == [2, 3, 4]
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in straight.history]
    for key, value in straight_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_global_latent_models_fit_on_tensor_data_and_resume_exactly(tmp_path):
    from pyro.infer.autoguide import AutoNormal

    from models.regression import BayesianRegression

    data = regression_problem()
    config = dict(batch_size=20, lr=0.05, seed=3, val_samples=50, validate_every=3, patience=None)

    def run(epochs, folder, resume=False):
        model = BayesianRegression()
        guide = AutoNormal(model)
        result = fit(
            model,
            guide,
            data,
            Trace_ELBO(),
            quiet(epochs=epochs, **config),
            RunFolder(folder),
            resume=resume,
        )
        return result, guide

    straight, straight_guide = run(9, tmp_path / "a")
    # Three minibatches an epoch; validation (a whole-data total) every third epoch and last.
    assert [r["epoch"] for r in straight.history if "val_elbo" in r] == [3, 6, 9]
    assert straight.history[-1]["val_elbo"] > straight.history[2]["val_elbo"]
    run(6, tmp_path / "b")
    resumed, resumed_guide = run(9, tmp_path / "b", resume=True)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in straight.history]
    for key, value in straight_guide.state_dict().items():
        assert torch.equal(value, resumed_guide.state_dict()[key]), key


def test_data_of_another_kind_is_refused():
    model, guide = small_vae(load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0))
    with pytest.raises(
        TypeError, match="data: expected pyro_vae.DataSplits or pyro_vae.TensorData"
    ):
        fit(model, guide, torch.zeros(3, 64), Trace_ELBO(), quiet(epochs=1))


def coin_flips(n=30):
    """z_n ~ Bernoulli(0.5), x_n ~ N(2 z_n − 1, 1); q(z_n) = Bernoulli(sigmoid(a x_n + b)),
    scored by TraceGraph_ELBO with its decaying-average baseline (kept in Pyro's param
    store, one value per batch row)."""
    x = torch.linspace(-2.0, 2.0, n)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Bernoulli(0.5))
            pyro.sample("x", pyro.distributions.Normal(2 * z - 1, 1.0), obs=x)

    def guide(x):
        a, b = pyro.param("a", torch.tensor(0.1)), pyro.param("b", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample(
                "z",
                pyro.distributions.Bernoulli(logits=a * x + b),
                infer={"baseline": {"use_decaying_avg_baseline": True}},
            )

    return model, guide, TensorData(x)


def test_pyros_baselines_in_the_param_store_resume_exactly(tmp_path):
    from pyro.infer import TraceGraph_ELBO

    model, guide, data = coin_flips()
    config = dict(batch_size=10, lr=0.05, seed=1, patience=None)
    fit(model, guide, data, TraceGraph_ELBO(), quiet(epochs=4, **config), RunFolder(tmp_path / "a"))
    run = RunFolder(tmp_path / "b")
    fit(model, guide, data, TraceGraph_ELBO(), quiet(epochs=2, **config), run)
    assert any(k.startswith("__baseline_avg") for k in run.load_checkpoint()["estimator_params"])
    fit(model, guide, data, TraceGraph_ELBO(), quiet(epochs=4, **config), run, resume=True)
    a, b = RunFolder(tmp_path / "a").load_checkpoint(), run.load_checkpoint()
    for name in ("a", "b"):
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert [r["train_elbo"] for r in a["history"]] == [r["train_elbo"] for r in b["history"]]


def test_a_per_row_baseline_with_a_partial_last_batch_is_refused_or_dropped():
    from pyro.infer import TraceGraph_ELBO

    model, guide, data = coin_flips(n=25)  # batches of 10: a last batch of 5
    with pytest.raises(ValueError, match="drop_last: the decaying-average baseline of guide"):
        fit(model, guide, data, TraceGraph_ELBO(), quiet(epochs=1, batch_size=10))
    result = fit(
        model, guide, data, TraceGraph_ELBO(), quiet(epochs=2, batch_size=10, drop_last=True)
    )
    assert len(result.history) == 2


def test_a_guide_site_marked_for_enumeration_is_refused_by_a_sampling_estimator(tmp_path):
    # M2 trained by trace ended at chance accuracy with only Pyro's warning (tester B's F2)
    from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO, TraceTMC_ELBO

    model, guide, data = coin_flips()

    def marked(x):
        a, b = pyro.param("a", torch.tensor(0.1)), pyro.param("b", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample(
                "z", pyro.distributions.Bernoulli(logits=a * x + b), infer={"enumerate": "parallel"}
            )

    run = RunFolder(tmp_path / "run")
    with pytest.raises(ValueError, match=r"Trace_ELBO samples the sites \[.z.\]"):
        fit(model, marked, data, Trace_ELBO(), quiet(epochs=1, batch_size=10), run)
    assert not run.has_checkpoint  # refused before the first step
    enumerated = TraceEnum_ELBO(max_plate_nesting=1)
    assert len(fit(model, marked, data, enumerated, quiet(epochs=1, batch_size=10)).history) == 1

    # a model site marked for enumeration that the guide does not draw: drawn from its
    # prior and scored as if from q under trace (tester E's F2)
    def summed_out(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Bernoulli(0.5), infer={"enumerate": "parallel"})
            u = pyro.sample("u", pyro.distributions.Normal(2 * z - 1, 1.0))
            pyro.sample("x", pyro.distributions.Normal(u, 1.0), obs=x)

    def over_u(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("u", pyro.distributions.Normal(loc.expand(len(x)), 1.0))

    with pytest.raises(ValueError, match=r"TraceGraph_ELBO samples the sites \['z'\]"):
        fit(summed_out, over_u, data, TraceGraph_ELBO(), quiet(epochs=1, batch_size=10))
    assert len(fit(summed_out, over_u, data, enumerated, quiet(epochs=1, batch_size=10)).history)
    tmc = TraceTMC_ELBO(max_plate_nesting=1)  # enumerates too (tester G: it was refused)
    assert len(fit(summed_out, over_u, data, tmc, quiet(epochs=1, batch_size=10)).history)


def test_kl_warmup_leaves_enumerated_sites_to_enumeration():
    # TraceEnum_ELBO needs every enumerated site at one scale; warm-up scaled them as
    # latents and Pyro refused ("share a common poutine.scale").
    from pyro.infer.autoguide import AutoNormal

    from models.gmm import GaussianMixtureModel

    x = torch.cat([torch.randn(10, 2) + 3, torch.randn(10, 2) - 3])
    model = GaussianMixtureModel.from_data(x, 2)
    guide = AutoNormal(pyro.poutine.block(model, hide=["assignment"]))
    config = quiet(epochs=3, batch_size=20, kl_warmup_epochs=2)
    result = fit(model, guide, TensorData(x), get_estimator("enum"), config)
    assert [r["beta"] for r in result.history] == [0.5, 1.0, 1.0]


def test_a_compiled_run_resumed_has_the_history_of_one_straight_through(digits, tmp_path):
    # The step that records a batch shape used to sum its loss in float64 and the replays
    # in float32: a resumed run, which records again, differed in the 8th digit.
    config = dict(batch_size=64, lr=3e-3, seed=7, compile=True)
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, **config), RunFolder(tmp_path / "a"))
    run = RunFolder(tmp_path / "b")
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2, **config), run)
    model, guide = small_vae(digits, seed=5)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, **config), run, resume=True)
    a, b = RunFolder(tmp_path / "a").load_checkpoint(), run.load_checkpoint()
    assert [r["train_elbo"] for r in a["history"]] == [r["train_elbo"] for r in b["history"]]


def test_a_bad_row_in_a_late_batch_is_refused_before_the_first_step(digits):
    import dataclasses

    train_x = digits.train_x.clone()
    train_x[-1, 0] = 0.5  # a non-binary pixel in the last row: the first batch misses it
    data = dataclasses.replace(digits, train_x=train_x)
    model, guide = small_vae(data)
    with pytest.raises(ValueError, match=r"rows 0..1454\): Bernoulli likelihood needs binary"):
        fit(model, guide, data, Trace_ELBO(), quiet(epochs=1, batch_size=64))


def test_data_outside_the_support_is_reported_as_such_not_as_divergence():
    # Pyro says a value "found invalid values" both for NaN parameters (divergence) and
    # for data outside a distribution's support; the second is bad data.
    def model(x):
        p = pyro.param(
            "p", torch.tensor(0.3), constraint=pyro.distributions.constraints.unit_interval
        )
        with pyro.plate("data", len(x)):
            pyro.sample("x", pyro.distributions.Bernoulli(p), obs=x)

    data = TensorData(torch.tensor([0.0, 1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="Expected value argument"):
        fit(model, lambda x: None, data, Trace_ELBO(), quiet(epochs=1))


def test_resume_from_a_checkpoint_already_read(digits, tmp_path):
    config = dict(batch_size=128, lr=3e-3, seed=7)
    source = RunFolder(tmp_path / "source")
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1, **config), source)
    model, guide = small_vae(digits, seed=5)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2, **config), source, resume=True)
    from_folder = source.load_checkpoint()

    # resumed into a folder without a checkpoint: only the state handed over can be used
    first = RunFolder(tmp_path / "first")
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1, **config), first)
    state = first.load_checkpoint()
    elsewhere = RunFolder(tmp_path / "elsewhere")
    model, guide = small_vae(digits, seed=5)
    result = fit(
        model,
        guide,
        digits,
        Trace_ELBO(),
        quiet(epochs=2, **config),
        elsewhere,
        resume=True,
        resume_state=state,
    )
    assert [r["epoch"] for r in result.history] == [1, 2]
    resumed = elsewhere.load_checkpoint()
    assert [r["train_elbo"] for r in resumed["history"]] == [
        r["train_elbo"] for r in from_folder["history"]
    ]
    for key, value in from_folder["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_a_checkpoint_state_without_resume_is_refused(digits, tmp_path):
    model, guide = small_vae(digits)
    with pytest.raises(ValueError, match="resume_state: a checkpoint was given with resume=False"):
        fit(
            model,
            guide,
            digits,
            Trace_ELBO(),
            quiet(epochs=1),
            RunFolder(tmp_path),
            resume_state={},
        )


class RecordingSVI:
    """Stands in for the SVI step: records β, Pyro's validation and the rows it saw."""

    def __init__(self, warmup, losses):
        self.warmup, self.losses, self.calls = warmup, list(losses), []

    def step(self, x, subsample):
        from pyro.infer.util import is_validation_enabled

        self.calls.append((self.warmup.beta, is_validation_enabled(), subsample.tolist()))
        return self.losses.pop(0)


def test_a_train_step_sets_beta_checks_the_first_batch_only_and_counts():
    from pyro_vae.annealing import KLWarmup
    from pyro_vae.divergence import DivergenceGuard
    from pyro_vae.train import TrainStep

    class Weights:
        def snapshot(self):
            return {}

        def restore(self, state):
            pass

    warmup = KLWarmup(epochs=1, steps_per_epoch=4)
    svi = RecordingSVI(warmup, [3.0, 2.0, 1.0, float("nan")])
    step = TrainStep(svi, warmup, DivergenceGuard(Weights()), count=1)
    x = torch.zeros(2, 3)
    assert [step(0, b, torch.tensor([b]), (x,)) for b in range(3)] == [3.0, 2.0, 1.0]
    assert svi.calls == [(0.5, True, [0]), (0.75, False, [1]), (1.0, False, [2])]
    assert step.count == 4
    with pytest.raises(TrainingDiverged, match="at epoch 1, step 4"):
        step(0, 3, torch.tensor([3]), (x,))
    assert step.count == 4  # a diverged step is not counted


@pytest.mark.parametrize(
    "every, epochs, due",
    [(1, 3, [1, 2, 3]), (2, 5, [2, 4, 5]), (3, 9, [3, 6, 9]), (10, 4, [4])],
)
def test_validation_is_due_every_so_many_epochs_and_after_the_last(every, epochs, due):
    from pyro_vae.train import _validation_due

    config = quiet(epochs=epochs, validate_every=every)
    assert [e + 1 for e in range(epochs) if _validation_due(e, config)] == due


def test_about_twenty_epochs_of_a_run_are_logged_on_a_terminal(capsys, monkeypatch):
    from pyro_vae.train import _log_epoch

    monkeypatch.setattr("pyro_vae.train.interactive", lambda: True)

    config = TrainConfig(epochs=100, progress=True)
    for epoch in range(1, 101):
        record = {"epoch": epoch, "train_elbo": -1.0, "seconds": 0.25}
        if epoch == 100:
            record["val_elbo"] = -2.0
        _log_epoch(record, config)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20 and lines[0].startswith("epoch   5/100  train ELBO -1.000")
    assert lines[-1] == "epoch 100/100  train ELBO -1.000  val ELBO -2.000  (0.2 s)"
    _log_epoch({"epoch": 100, "train_elbo": -1.0, "seconds": 0.0}, quiet(epochs=100))
    assert capsys.readouterr().out == ""
    _log_epoch({"epoch": 100, "train_elbo": -1.0, "seconds": 0.0}, config, "objective")
    assert capsys.readouterr().out.startswith("epoch 100/100  train objective -1.000")


def test_a_model_s_training_terms_make_its_train_estimate_the_objective_not_the_elbo():
    """Tester BP: M2's "train ELBO" held its α classifier term (−202 against a validation
    ELBO of −42 at α = 10⁵), printed and kept as an ELBO. A model's ``batch_terms`` (its
    factors of the training objective) are named in the fit's objective, and its train
    estimate is called the training objective."""
    from models.m2 import M2
    from pyro_vae import load_data
    from pyro_vae.estimators import get

    x = torch.bernoulli(torch.full((40, 6), 0.4, dtype=torch.float32))
    data = load_data(x.numpy(), labels=(torch.arange(40) % 2).numpy())
    model = M2(6, num_classes=2, latent_dim=2, hidden_dims=(8,), alpha=10.0)
    config = TrainConfig(epochs=1, batch_size=20, progress=False)
    objective = fit(model, model.make_guide(), data, get("enum"), config).info()["objective"]
    assert objective["training_terms"] == ["classifier"]
    assert objective["train_elbo"] == (
        "the training objective (beta, warm-up, free bits, and the model's training terms "
        "['classifier']), not the ELBO"
    )


def test_an_iwae_fit_calls_its_train_estimate_the_iwae_bound_not_the_elbo(capsys):
    """Tester ET: ``iwae`` and ``vimco`` fits recorded and printed their training estimate
    as "the ELBO"; it is the K-sample bound, above the ELBO. z_n ~ N(θ, 1), x_n ~ N(z_n, 1),
    q(z_n) = N(m_n, 0.2²) held (lr 1e-9): the exact ELBO in closed form, and the train
    estimate's mean over 30 epochs sits well above it at K = 16."""
    import math

    import pyro.distributions as dist

    x = torch.linspace(-2.0, 2.0, 20)

    def model(x):
        theta = pyro.param("theta", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(theta, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        m = pyro.param("m", x / 2)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(m, 0.2))

    config = TrainConfig(epochs=30, batch_size=20, lr=1e-9, patience=None, progress=True)
    result = fit(model, guide, TensorData(x), get_estimator("iwae", num_particles=16), config)
    assert result.info()["objective"]["train_elbo"] == (
        "the IWAE bound at K = 16 (importance weighted: at or above the ELBO)"
    )
    assert "train IWAE bound" in capsys.readouterr().out  # tester EW: "train objective"
    m, s2, log2pi = x / 2, 0.04, math.log(2 * math.pi)
    exact = (
        -log2pi
        - 0.5 * ((x - m) ** 2 + s2)
        - 0.5 * (m**2 + s2)
        + 0.5 * math.log(2 * math.pi * math.e * s2)
    ).sum()
    estimates = torch.tensor([record["train_elbo"] for record in result.history])
    assert estimates.mean() > exact + 2.0  # 8.8 nats above in the tester's case


def test_into_a_log_file_every_epoch_is_a_line_and_no_bar_is_drawn(digits, capsys):
    # pytest captures stderr into a file, as a cluster job's log would: not a terminal
    model, guide = small_vae(digits)
    config = TrainConfig(epochs=3, batch_size=64, progress=True)
    fit(model, guide, digits, Trace_ELBO(), config)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "\r" not in captured.err and "\r" not in captured.out


def test_only_per_row_baseline_estimators_are_checked_against_a_partial_batch():
    from pyro.infer import TraceGraph_ELBO

    from pyro_vae.train import _keeps_one_baseline_per_batch_row

    assert _keeps_one_baseline_per_batch_row(TraceGraph_ELBO())
    assert not _keeps_one_baseline_per_batch_row(Trace_ELBO())
    assert not _keeps_one_baseline_per_batch_row(get_estimator("score"))


def test_a_run_folder_may_be_given_as_a_path(digits, tmp_path, capsys):
    # the user's case: run="runs/x" failed with an AttributeError after a whole epoch
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2), run=str(tmp_path / "x"))
    assert RunFolder(tmp_path / "x").load_checkpoint()["epoch"] == 2
    # tester CJ: each epoch's write said metrics.json "was missing" on a new folder
    assert "note:" not in capsys.readouterr().out
    metrics = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]


def test_beta_and_warmup_compose_and_the_fit_records_its_objective(digits):
    model, guide = small_vae(digits)
    config = quiet(epochs=2, batch_size=512, kl_warmup_epochs=1, beta=4.0, patience=None)
    result = fit(model, guide, digits, Trace_ELBO(), config)
    assert [r["beta"] for r in result.history] == [4.0, 4.0]  # 3 steps: 4/3, 8/3, 4, then 4
    objective = result.info()["objective"]
    assert objective["beta"] == 4.0 and objective["free_bits"] is None
    assert "not the ELBO" in objective["train_elbo"] and "beta = 1" in objective["val_elbo"]
    assert "free_bits_groups" not in objective


def test_the_objective_records_free_bits_groups(digits):
    """Tester CN: runs of free bits per site and per dimension recorded one objective,
    while their training objectives differ by design."""
    from pyro_vae.estimators import get

    for groups in (None, "dims", 2):
        model, guide = small_vae(digits)
        elbo = get("analytic-kl", free_bits=0.5, free_bits_groups=groups)
        objective = fit(model, guide, digits, elbo, quiet(epochs=1)).info()["objective"]
        assert objective["free_bits"] == 0.5
        assert objective.get("free_bits_groups") == groups


def test_a_pair_wrapped_in_scale_latents_trains_as_beta_and_validates_the_elbo(digits):
    from pyro_vae.annealing import ScaleLatents

    config = dict(epochs=1, batch_size=256, seed=3)
    model, guide = small_vae(digits)
    wrapped = fit(
        ScaleLatents(4.0)(model), ScaleLatents(4.0)(guide), digits, Trace_ELBO(), quiet(**config)
    )
    model, guide = small_vae(digits)
    given = fit(model, guide, digits, Trace_ELBO(), quiet(beta=4.0, **config))
    assert wrapped.history[0]["val_elbo"] == given.history[0]["val_elbo"]
    assert wrapped.history[0]["beta"] == 4.0
    with pytest.raises(ValueError, match=r"beta: 2.0 in the config and 4.0 in the ScaleLatents"):
        fit(
            ScaleLatents(4.0)(model),
            ScaleLatents(4.0)(guide),
            digits,
            Trace_ELBO(),
            quiet(beta=2.0, **config),
        )
    with pytest.raises(ValueError, match=r"model, guide: wrapped in ScaleLatents with β 4.0"):
        fit(ScaleLatents(4.0)(model), guide, digits, Trace_ELBO(), quiet(**config))


class GlobalW:
    """Tester U's model: a global latent W ~ N(0, 1) of shape [2, 64] outside the data
    plate, used as ``z @ W`` inside it; the guide keeps pyro.param entries for W."""

    def __init__(self):
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(64, 4)

    def model(self, x):
        w = pyro.sample("W", pyro.distributions.Normal(x.new_zeros(2, 64), 1.0).to_event(2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("obs", pyro.distributions.Bernoulli(logits=z @ w).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc = pyro.param("W_loc", torch.zeros(2, 64))
        scale = pyro.param("W_scale", torch.ones(2, 64), constraint=constraints.positive)
        pyro.sample("W", pyro.distributions.Normal(loc, scale).to_event(2))
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("z", pyro.distributions.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))


@pytest.mark.parametrize("val_fraction", [0.1, 0.0])
def test_a_site_outside_the_data_plate_is_refused_before_training_where_scored_per_datapoint(
    val_fraction,
):
    """Tester U: the model trained every epoch and was refused only by the per-datapoint
    evaluation after it (or the first held-out validation), with the run folder written."""
    from pyro_vae.evaluate import elbo_per_datapoint
    from pyro_vae.plates import DataPlateError

    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=val_fraction)
    pair, ready = GlobalW(), []
    with pytest.raises(DataPlateError) as refused:
        fit(pair.model, pair.guide, data, Trace_ELBO(), quiet(epochs=2, seed=0),
            on_ready=lambda: ready.append(1), evaluated_per_datapoint=True)  # fmt: skip
    message = str(refused.value)
    assert not ready  # refused before on_ready: pyro-vae fit writes nothing
    with pytest.raises(DataPlateError) as evaluation:  # the evaluation's own refusal
        elbo_per_datapoint(pair.model, pair.guide, data.test_x[:4])
    assert message.startswith("model: " + str(evaluation.value))
    assert "its test evaluation" in message and "pyro_vae.TensorData" in message
    assert ("its held-out validation" in message) == (val_fraction > 0)


class NoPlate:
    """Tester U's leftover: a model with no plate at all (batch-shaped sites under
    ``to_event(2)``), fitted in one batch."""

    def __init__(self):
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(64, 4)

    def model(self, x):
        z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
        logits = z @ x.new_ones(2, 64)
        pyro.sample("obs", pyro.distributions.Bernoulli(logits=logits).to_event(2), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        pyro.sample("z", pyro.distributions.Normal(h[:, :2], h[:, 2:].exp()).to_event(2))


@pytest.mark.parametrize("val_fraction", [0.1, 0.0])
def test_a_model_without_a_data_plate_is_refused_before_training_where_scored_per_datapoint(
    val_fraction,
):
    """Tester U's leftover: fitted in one batch, it trained an epoch before the held-out
    validation refused it, or every epoch before the test evaluation did."""
    from pyro_vae.evaluate import elbo_per_datapoint
    from pyro_vae.plates import DataPlateError

    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=val_fraction)
    pair, ready = NoPlate(), []
    with pytest.raises(DataPlateError) as refused:
        fit(pair.model, pair.guide, data, Trace_ELBO(), quiet(epochs=2, seed=0, batch_size=2000),
            on_ready=lambda: ready.append(1), evaluated_per_datapoint=True)  # fmt: skip
    message = str(refused.value)
    assert not ready  # refused before on_ready: pyro-vae fit writes nothing
    with pytest.raises(DataPlateError, match="needs a per-datapoint plate"):  # the evaluation's
        elbo_per_datapoint(pair.model, pair.guide, data.test_x[:4])
    assert message.startswith("model: no per-datapoint plate") and "none)" in message
    assert "its test evaluation" in message and "pyro_vae.TensorData" in message
    assert ("its held-out validation" in message) == (val_fraction > 0)
    # from Python with neither scored per datapoint, it trains as before
    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0)
    result = fit(
        pair.model, pair.guide, data, Trace_ELBO(), quiet(epochs=1, seed=0, batch_size=2000)
    )
    assert len(result.history) == 1


def test_a_site_outside_the_data_plate_trains_where_nothing_is_scored_per_datapoint():
    # from Python, no validation rows and no per-datapoint evaluation asked for: it trains
    # as before (the joint bound is pyro_vae.elbo_estimate's), and on TensorData as well
    pair = GlobalW()
    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0)
    result = fit(pair.model, pair.guide, data, Trace_ELBO(), quiet(epochs=1, seed=0))
    assert len(result.history) == 1
    rows = TensorData(data.train_x[:64])
    config = quiet(epochs=1, seed=0, batch_size=32, val_samples=2)
    result = fit(pair.model, pair.guide, rows, Trace_ELBO(), config)
    assert result.validation == "whole-data ELBO (total nats)"


def test_a_local_autoguide_evaluated_on_its_training_rows_is_not_refused(capsys):
    # AutoNormal over per-image latents: every site inside the plate; pyro-vae fit scores
    # it on the training set (fix 1 of tester U's findings keeps that working)
    from pyro.infer.autoguide import AutoNormal

    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0)
    model, _ = small_vae(data)
    config = TrainConfig(epochs=1, seed=0, batch_size=256, progress=True)
    result = fit(model, AutoNormal(model), data, Trace_ELBO(), config, evaluated_per_datapoint=True)
    assert result.local_guide and len(result.history) == 1
    # its epoch line names the rows it was validated on (tester CV: it said "val ELBO")
    record = result.history[0]
    line = f"val ELBO (training set) {record['val_elbo']:.3f}"
    assert line in capsys.readouterr().out


def test_a_path_gradient_on_a_flow_guide_is_refused_for_compile_before_any_work(digits, tmp_path):
    """Tester CV: ``compile=True`` with ``gradient="stl"`` on an IAF guide failed in
    Dynamo's words, blaming the model for reading values out of tensors; the command line
    said why (scoring the draws under detached parameters runs the flow's inverse).
    Expected: that refusal from Python too, before any work."""
    from pyro_vae.estimators import get
    from pyro_vae.estimators.compiled import CaptureError
    from pyro_vae.guides import AmortizedIAF

    model, _ = small_vae(digits)
    guide = AmortizedIAF(digits.x_dim, latent_dim=4, hidden_dims=(16,))
    config = quiet(epochs=1, compile=True)
    refusal = "AmortizedIAF with gradient='stl': scoring its draws under detached parameters"
    refusal += ".* cannot be recorded; use compile=False, or gradient='reparam'"
    with pytest.raises(CaptureError, match=refusal):
        fit(model, guide, digits, get("trace", gradient="stl"), config, run=tmp_path / "run")
    assert not (tmp_path / "run").exists()


class _TwoRanks:
    """A group of two ranks whose other rank reports ``other(terms)`` for this rank's."""

    world, rank = 2, 0

    def __init__(self, other):
        self.other = other

    def gather_json(self, terms):
        return [terms, self.other(terms)]


def _pair_and_batches(model, guide):
    from pyro_vae.data_source import TrainingBatches
    from pyro_vae.training_pair import TrainingPair

    data = TensorData(torch.rand(40, 3))
    batches = TrainingBatches(data, 10, seed=0, drop_last=False)
    return TrainingPair.set_up(model, guide, batches, TrainConfig(batch_size=10)), batches


def test_a_bound_refused_only_for_the_ranks_split_says_so(monkeypatch):
    """Tester EA: IWAE with a global latent, each step's batch the whole data, was refused
    on two ranks with the advice to use the whole data in each step, as it did; each
    rank's part of the batch is a minibatch of the data."""
    from types import SimpleNamespace

    from pyro_vae.data_source import ShardedSource, TrainingBatches
    from pyro_vae.plates import DataPlateError
    from pyro_vae.train import _dry_loss
    from pyro_vae.training_pair import TrainingPair

    def model(x):
        b = pyro.sample("b", pyro.distributions.Normal(0.0, 3.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(b, 1.0), obs=x)

    def guide(x):
        pyro.sample("b", pyro.distributions.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    x = torch.randn(10)
    whole = TrainingBatches(TensorData(x), 10, seed=0)
    part = TrainingBatches(ShardedSource(TensorData(x), 0, 2), 10, seed=0)
    first = (whole.first_batch, whole.first_rows)
    pair = TrainingPair.set_up(model, guide, part, TrainConfig(batch_size=10), first)
    iwae = get_estimator("iwae", num_particles=4)
    _dry_loss(iwae, pair, whole)  # one process takes the whole data
    monkeypatch.setattr("pyro_vae.train.current", lambda: SimpleNamespace(world=2))
    split = r"\(scale 2\).* Each step's batch of 10 rows is the whole data here, .* on 2 ranks"
    with pytest.raises(DataPlateError, match=split + r".*expected one process") as refused:
        _dry_loss(iwae, pair, part, first)
    assert "Use the whole data" not in str(refused.value)
    minibatch = TrainingBatches(ShardedSource(TensorData(x), 0, 2), 4, seed=0)
    first = (TrainingBatches(TensorData(x), 4, seed=0).first_batch, first[1][:4])
    # a minibatch in one process too: the step's scale, 10 rows over 4, not the rank's 5
    # (tester ED), and the whole data advised in one process
    one = r"\(scale 2\.5\).*Use the whole data in each step.* On 2 ranks .* in one process"
    with pytest.raises(DataPlateError, match=one):
        _dry_loss(iwae, pair, minibatch, first)


def test_a_term_made_from_the_batch_is_refused_on_several_ranks():
    """Tester AA: M2's classifier term, a mean over the batch's labelled rows outside the
    data plate, was each rank's own part's on --nproc 2 (0 where it held no label), and the
    classifier trained at about 0.75 of its weight, silently. A declared term is refused
    outright; an undeclared one where two ranks' parts of the first batch score it apart."""
    from pyro_vae.train import _refuse_terms_that_differ_by_rank

    class BatchMean:
        def model(self, x):
            w = pyro.sample("w", pyro.distributions.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.factor("penalty", -(x @ w).mean())  # a mean over the batch's rows
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", pyro.distributions.Normal(w, 1.0).to_event(1), obs=x)

        def guide(self, x):
            loc = pyro.param("loc", torch.zeros(3))
            pyro.sample("w", pyro.distributions.Normal(loc, 1.0).to_event(1))

    pyro.clear_param_store()
    pair, batches = _pair_and_batches(BatchMean().model, BatchMean().guide)
    same = _TwoRanks(lambda terms: dict(terms))
    _refuse_terms_that_differ_by_rank(BatchMean().model, pair, batches, same)  # as before
    moved = _TwoRanks(lambda terms: {k: v + (k == "model penalty") for k, v in terms.items()})
    with pytest.raises(ValueError, match="model: site 'penalty', outside the per-datapoint"):
        _refuse_terms_that_differ_by_rank(BatchMean().model, pair, batches, moved)

    class Declared(BatchMean):
        batch_terms = ("penalty",)

    with pytest.raises(ValueError, match=r"'penalty' is a training term the model declares"):
        _refuse_terms_that_differ_by_rank(Declared().model, pair, batches, same)
    from models.m2 import M2
    from pyro_vae.model_protocol import batch_terms, training_terms

    m2 = M2(x_dim=4, latent_dim=2, hidden_dims=(4,))  # a term of each row: ranks take it
    assert batch_terms(m2) == () and training_terms(m2) == ("classifier",)
    assert training_terms(Declared().model) == ("penalty",)  # a batch term trains only


def test_sites_outside_the_plate_draw_alike_on_parts_of_different_sizes():
    # tester AB: a guide drawing its rows' z before the global W drew two different W on
    # parts of 5 and 4 rows, and the ranks' check refused a valid model as batch-made
    from pyro_vae.traces import run_pair
    from pyro_vae.train import _SeededOutside

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(x.new_zeros(x.shape[0]), 1.0))
        pyro.sample("W", pyro.distributions.Normal(x.new_zeros(3), 1.0).to_event(1))

    def model(x):
        pyro.sample("W", pyro.distributions.Normal(x.new_zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(x.new_zeros(x.shape[0]), 1.0))

    drawn = []
    for rows in (5, 4):
        torch.manual_seed(rows)  # each rank's own stream
        seeded = _SeededOutside("data")
        _, guide_trace = run_pair(seeded(model), seeded(guide), (torch.zeros(rows),), {})
        drawn.append(guide_trace.nodes["W"]["value"])
    assert torch.equal(drawn[0], drawn[1])
    torch.manual_seed(5)
    _, unseeded = run_pair(model, guide, (torch.zeros(5),), {})
    torch.manual_seed(4)
    _, other = run_pair(model, guide, (torch.zeros(4),), {})
    assert not torch.equal(unseeded.nodes["W"]["value"], other.nodes["W"]["value"])


def _normal_normal_pair():
    """z_n ~ N(0, 1), x_n ~ N(z_n, 1); guide N(a x_n, s²) with a and s learned."""
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.1))
        s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(a * x, s))

    return model, guide


def test_a_pair_with_beta_handlers_deep_inside_trains_beta_and_validates_the_elbo():
    """F3: ScaleLatents under a wrapper function, which fit's unwrap cannot see. Training
    keeps the handlers' β-objective, and validation reports the ELBO: the fit goes step for
    step (and validation for validation) as the bare pair with TrainConfig(beta=4) does
    (β 4 and N/|B| = 2 are powers of 2, so the scales multiply exactly in either order).
    With a β of fit's own as well, β would apply twice: refused, naming both."""
    import warnings

    from pyro_vae.annealing import ScaleLatents

    x = torch.linspace(-2.0, 2.0, 8)
    config = dict(epochs=3, batch_size=4, lr=0.05, seed=2, val_samples=50)
    model, guide = _normal_normal_pair()
    handler = ScaleLatents(4.0)
    deep = (lambda x: handler(model)(x)), (lambda x: handler.for_guide()(guide)(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MinibatchScaleWarning for the handlers' scale
        wrapped = fit(*deep, TensorData(x), Trace_ELBO(), quiet(**config))
    wrapped_a = float(pyro.param("a"))
    given = fit(model, guide, TensorData(x), Trace_ELBO(), quiet(beta=4.0, **config))
    assert [r["val_elbo"] for r in wrapped.history] == [r["val_elbo"] for r in given.history]
    assert [r["train_elbo"] for r in wrapped.history] == [r["train_elbo"] for r in given.history]
    assert wrapped_a == float(pyro.param("a"))
    assert [r["beta"] for r in wrapped.history] == [4.0] * 3
    assert wrapped.info()["objective"]["beta"] == 4.0
    with pytest.raises(ValueError, match=r"beta: 2.0 from the config .* and 4.0 from ScaleLat"):
        fit(*deep, TensorData(x), Trace_ELBO(), quiet(beta=2.0, **config))


@pytest.mark.parametrize("lazy", [False, True], ids=["BatchNorm1d", "LazyBatchNorm1d"])
def test_set_up_runs_leave_running_statistics_to_the_training_steps(lazy):
    """fit's set-up runs model and guide some seven times before the first step (finding
    the plate, the weights, the scales, β, the first traces, a dry loss), with the
    modules in training mode: each moved a BatchNorm's running statistics as a training
    step would (8 updates after one step). Expected after one step on the whole data
    (no other run in training mode): BatchNorm's rule from its made values, momentum 0.1,
    running mean 0.1 · mean(x) and one batch tracked. (The norm is not given to
    pyro.module, which cannot take a lazy module before its first call: Pyro's own limit.)"""
    pyro.set_rng_seed(0)
    norm = torch.nn.LazyBatchNorm1d() if lazy else torch.nn.BatchNorm1d(2)
    linear = torch.nn.Linear(2, 1)

    def model(x):
        pyro.module("linear", linear)
        with pyro.plate("data", len(x)):
            loc = linear(norm(x)).squeeze(-1)
            pyro.sample("y", pyro.distributions.Normal(loc, 1.0), obs=x[:, 0])

    x = torch.randn(16, 2) * 2.0 + 1.0
    fit(model, lambda x: None, TensorData(x), get_estimator("trace"),
        quiet(epochs=1, batch_size=16, patience=None))  # fmt: skip
    assert int(norm.num_batches_tracked) == 1
    # float32 means of 16 values of order 1 in another summation order: within ~1e-7
    assert torch.allclose(norm.running_mean, 0.1 * x.mean(0), rtol=0, atol=1e-6)


def test_fit_refuses_a_latent_masked_by_the_model_alone_whatever_the_elbo(tmp_path):
    """Pyro's own Trace_ELBO, given to fit, trained on a guide scoring the elements the
    model masks off (tester AK): their entropy in every step's objective. Refused before
    the first step, nothing written."""
    mask = torch.tensor([True, False, True])

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0).mask(mask))
            pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", pyro.distributions.Normal(torch.zeros(len(x)), 0.01))

    x = torch.tensor([0.5, 0.0, -1.0])
    with pytest.raises(ValueError, match="site 'z' has elements the model masks off"):
        fit(model, guide, TensorData(x), Trace_ELBO(), quiet(epochs=1, patience=None),
            run=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_guide_drawing_a_latent_the_model_lacks_is_refused_before_training(digits, tmp_path):
    """Tester CJ: the evaluators refuse q(z, u)'s auxiliary u (no bound on log p(x)), and
    the fit trained its first epoch, wrote the folder, and only its validation refused it."""
    import pyro.distributions as dist

    from pyro_vae.plates import data_plate

    model, guide = small_vae(digits)

    def guide_with_extra(x, num_data=None):
        pyro.module("encoder", guide)
        with data_plate(x, num_data):
            pyro.sample("z", guide.encode(x).to_event(1))
            pyro.sample("extra", dist.Normal(torch.zeros(x.shape[0]), 1.0))

    run = tmp_path / "run"
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    with pytest.raises(ValueError, match=r"guide: it draws \['extra'\], which the model does"):
        fit(model, guide_with_extra, digits, Trace_ELBO(), quiet(epochs=1), run=run)
    assert all(torch.equal(v, before[k]) for k, v in guide.state_dict().items())  # no step
    assert not RunFolder(run).has_checkpoint
    assert not (run / "metrics.json").exists()


def test_a_fit_into_a_folder_with_a_checkpoint_is_refused_unless_it_resumes(digits, tmp_path):
    """Tester CM: a second ``fit(run=...)`` replaced a finished run's 5 epochs with 1,
    unsaid, where the command line refuses such a folder."""
    run = tmp_path / "run"
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2), run=run)
    saved = (run / "checkpoint.pt").read_bytes()
    model, guide = small_vae(digits)
    with pytest.raises(RunFolderError, match="holds a checkpoint, which a fit never overwrites"):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=run)
    assert (run / "checkpoint.pt").read_bytes() == saved
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3), run=run, resume=True)
    assert RunFolder(run).load_checkpoint()["epoch"] == 3


def test_a_python_fit_holds_its_folder_so_a_fit_started_beside_it_is_refused(digits, tmp_path):
    """Tester DD: two Python ``fit(run=...)`` started at the same moment both trained and
    both wrote the folder (only ``pyro-vae fit`` took its lock). Expected: a fit holds the
    folder before any work, as the command line does, and one beside it is refused; the
    folder is free again once the first lets it go."""
    from pyro_vae.checkpoint import RunInUseError

    run = tmp_path / "run"
    model, guide = small_vae(digits)
    with RunFolder(run).claim(command=False):  # another fit's hold, as its flock holds it
        with pytest.raises(RunInUseError, match="in use"):
            fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=run)
    assert not RunFolder(run).has_checkpoint
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=run)
    assert RunFolder(run).has_checkpoint


def test_a_finished_run_on_a_read_only_path_still_loads_by_resume(digits, tmp_path, monkeypatch):
    """Tester DE: once fit took the folder's lock, a finished run on a read-only mount (the
    command line's advice for scoring a Python run is fit(..., resume=True)) was refused as
    not writable, where it had loaded. Expected: it loads, trains no more, writes nothing;
    a folder without a checkpoint is still refused."""
    from pyro_vae.checkpoint import FolderNotWritableError, not_writable

    run = tmp_path / "run"
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2), run=run)
    saved = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def read_only(self, command=True):
        raise not_writable(self.path, PermissionError(30, "Read-only file system"))

    monkeypatch.setattr(RunFolder, "claim", read_only)
    model, guide = small_vae(digits)
    result = fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2), run=run, resume=True)
    assert len(result.history) == 2
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == saved
    with pytest.raises(FolderNotWritableError):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=tmp_path / "new")


def test_a_fit_in_one_of_torchrun_s_processes_outside_a_session_is_refused(
    digits, tmp_path, monkeypatch
):
    """Tester DD: a torchrun script calling ``fit`` without ``session()`` trained one model
    per rank on the whole data, each writing the folder (one run lost, the folder saying
    one process). Expected: refused before any work, naming the way out."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, guide = small_vae(digits)
    with pytest.raises(ValueError, match="torchrun started 2 processes, and this one joined no"):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _cli_config(tmp_path, **train) -> dict:
    """A command line's config.json of a digits run of ``small_vae``'s shape."""
    from pyro_vae.run_config import ModelConfig, RunConfig

    config = RunConfig(ModelConfig("models.vae:VAE", {"latent_dim": 4, "hidden_dims": [32]}))
    written = config.to_json()
    written["train"].update(train)
    return written


def test_a_python_fit_refuses_a_command_line_s_config_json_it_would_not_match(digits, tmp_path):
    """Tester CO: a fit from Python into a folder holding a command line's config.json
    (its fit died before a checkpoint) kept it beside new weights, and ``evaluate``
    rebuilt the old model and scored them as it; a Python resume of a command-line run
    with another lr trained on, config.json unchanged."""
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "config.json").write_text(json.dumps(_cli_config(tmp_path)))
    model, guide = small_vae(digits)
    with pytest.raises(RunFolderError, match="holds the config.json of a command-line fit"):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=stale)
    assert sorted(p.name for p in stale.iterdir()) == ["config.json"]
    # a command-line run resumed from Python: its recorded settings, but for epochs & co.
    run = tmp_path / "cli"
    with RunFolder(run).claim() as held:
        held.run.write_config(_cli_config(tmp_path, epochs=1, progress=False))
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=held.run)
    changed = quiet(epochs=2, lr=0.5)
    with pytest.raises(RunFolderError, match=r"config: lr=0.5 \(recorded 0.001\) differ from"):
        fit(model, guide, digits, Trace_ELBO(), changed, run=run, resume=True)
    assert RunFolder(run).load_checkpoint()["epoch"] == 1
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2, patience=None), run=run, resume=True)
    assert RunFolder(run).load_checkpoint()["epoch"] == 2


def test_a_python_run_resumes_with_its_own_settings_only(digits, tmp_path):
    """Tester EB: a fit from Python resumed with any other settings (β 3 from epoch 3 on,
    and metrics.json then said β = 3 for the whole run; an lr of 0.5, which diverged), and
    with fewer epochs than it had done. Refused, as the command line refuses them; epochs,
    patience and progress may change."""
    run = tmp_path / "py"
    model, guide = small_vae(digits)
    fit(model, guide, digits, Trace_ELBO(), quiet(epochs=2), run=run)
    before = (run / "checkpoint.pt").read_bytes()
    for changed, said in [
        ({"beta": 3.0}, r"beta=3.0 \(recorded 1.0\)"),
        ({"lr": 0.5, "seed": 9}, r"lr=0.5 \(recorded 0.001\), seed=9 \(recorded 0\)"),
        ({"precision": "bf16"}, r"precision='bf16' \(recorded '32'\)"),
    ]:
        model, guide = small_vae(digits)
        with pytest.raises(RunFolderError, match=rf"^config: {said} differ from the settings"):
            fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, **changed), run=run,
                resume=True)  # fmt: skip
    with pytest.raises(RunFolderError, match=r"epochs=1, but the run in .* has done 2"):
        fit(model, guide, digits, Trace_ELBO(), quiet(epochs=1), run=run, resume=True)
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing was changed
    result = fit(model, guide, digits, Trace_ELBO(), quiet(epochs=3, patience=5), run=run,
                 resume=True)  # fmt: skip
    assert len(result.history) == 3


def test_pyros_own_trace_elbo_is_refused_a_drawn_guide_factor_before_any_step():
    """Tester FK: the refusal lived in the registry's trace only, so fit trained Pyro's own
    Trace_ELBO on a has_rsample=False factor its learning signal leaves out (z = −11 from
    the enumerated gradient), then failed after training with another message."""
    import pyro.distributions as dist

    x = torch.tensor([1.5, 0.2, 0.9, 1.1])

    def model(x):
        t = pyro.sample("t", dist.Bernoulli(0.4))
        with pyro.plate("data", 4):
            pyro.sample("x", dist.Normal(2 * t, 1.0), obs=x)

    def guide(x):
        v = pyro.param("v", torch.tensor(0.2))
        t = pyro.sample("t", dist.Bernoulli(logits=v))
        pyro.factor("f", 0.8 * t, has_rsample=False)

    pyro.clear_param_store()
    config = TrainConfig(progress=False, epochs=2, batch_size=4, lr=0.1)
    with pytest.raises(ValueError, match="guide site 'f' is a pyro.factor with has_rsample=Fal"):
        fit(model, guide, TensorData(x), Trace_ELBO(), config)
    assert float(pyro.param("v")) == pytest.approx(0.2)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("pyros", ["TraceGraph_ELBO", "TraceEnum_ELBO", "RenyiELBO"])
def test_pyros_own_estimators_are_refused_a_drawn_factor_that_reads_a_parameter(pyros, tmp_path):
    """Tester FL: fit's first traces are taken without gradients, where no factor reads a
    parameter, so Pyro's own TraceGraph_ELBO, TraceEnum_ELBO and RenyiELBO trained on one
    (whose gradient the estimators read two ways) and wrote a run folder."""
    import pyro.distributions as dist
    import pyro.infer

    x = torch.randn(8, generator=torch.Generator().manual_seed(0))

    def model(x):
        with pyro.plate("data", 8):
            b = pyro.sample("b", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(b, 1.0), obs=x)

    def guide(x):
        v = pyro.param("v", torch.tensor(0.3))
        with pyro.plate("data", 8):
            b = pyro.sample("b", dist.Bernoulli(0.4))
            pyro.factor("f", v * b, has_rsample=False)

    pyro.clear_param_store()
    options = {"max_plate_nesting": 1} if pyros == "TraceEnum_ELBO" else {}
    elbo = getattr(pyro.infer, pyros)(**options)
    config = TrainConfig(progress=False, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="pyro.factor with has_rsample=False whose value depen"):
        fit(model, guide, TensorData(x), elbo, config, run=tmp_path / "run")
    assert not (tmp_path / "run").exists()
