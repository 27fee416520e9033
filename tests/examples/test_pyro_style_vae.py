"""A VAE written as Pyro's examples write one (pyro_style_vae.py beside this file) trains,
evaluates, samples and diagnoses through pyro_vae unchanged: from Python and from the
command line, as a class with model/guide methods and as plain functions."""

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import TensorData, TrainConfig, elbo_per_datapoint, fit, iwae_log_likelihood
from pyro_vae.checkpoint import RunFolder
from pyro_vae.cli import main
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.diagnostics import to_inference_data, write_report
from pyro_vae.latent_summaries import latent_means
from pyro_vae.minibatch import Minibatched
from pyro_vae.predictive import prior_mean_images, reconstruct
from pyro_vae.spec import load_object

FILE = Path(__file__).with_name("pyro_style_vae.py")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", Preprocessing("bernoulli"))


@pytest.fixture(scope="module")
def trained(digits):
    pyro.set_rng_seed(0)
    vae = load_object(f"{FILE}:PyroStyleVAE")(x_dim=64, z_dim=4, hidden_dim=64)
    config = TrainConfig(epochs=10, batch_size=64, lr=5e-3, progress=False)
    result = fit(vae.model, vae.guide, digits, Trace_ELBO(), config)
    return vae, result


def test_minibatches_are_scaled_without_the_model_doing_it(digits):
    vae = load_object(f"{FILE}:PyroStyleVAE")(x_dim=64, z_dim=4, hidden_dim=16)
    n, rows = digits.train_x.shape[0], torch.arange(10, 74)
    x = digits.train_x[rows]
    pyro.set_rng_seed(1)
    unscaled = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    scaled = Trace_ELBO().loss(
        Minibatched(vae.model, "data", n), Minibatched(vae.guide, "data", n), x, subsample=rows
    )
    assert scaled == pytest.approx(n / len(rows) * unscaled, rel=1e-5)


def test_it_trains_with_the_training_elbo_on_the_validation_scale(trained):
    _, result = trained
    first, last = result.history[0], result.history[-1]
    assert last["val_elbo"] > first["val_elbo"] + 2
    # per datapoint both: a model left unscaled reported about −2 against −25 here
    assert abs(last["train_elbo"] - last["val_elbo"]) < 3
    assert result.data_plate == "data" and not result.local_guide


def test_it_evaluates_without_decode_encode_or_generate(trained, digits):
    vae, _ = trained
    x = digits.test_x[:50]
    elbo = elbo_per_datapoint(vae.model, vae.guide, x, 10)
    log_p = iwae_log_likelihood(vae.model, vae.guide, x, 200)
    assert elbo.shape == log_p.shape == (50,) and log_p.mean() > elbo.mean()
    # E_q z by Monte Carlo, against the encoder's own mean
    z_loc, z_scale = vae.encoder(x)
    mean = latent_means(vae.model, vae.guide, x, num_samples=400)
    assert ((mean - z_loc).abs() <= 4 * z_scale / 20).all()
    # the reconstruction is the model's observation mean at that centre
    pyro.set_rng_seed(2)
    x_hat = reconstruct(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    expected = vae.decoder(latent_means(vae.model, vae.guide, x))
    torch.testing.assert_close(x_hat, expected)


def test_prior_samples_come_from_the_model_itself(trained, digits):
    vae, _ = trained
    images = prior_mean_images(vae.model, digits.test_x, 3000)
    assert images.shape == (3000, 64)
    reference = vae.decoder(torch.randn(3000, 4)).detach()
    se = (images.var(0) / 3000 + reference.var(0) / 3000).sqrt()
    assert ((images.mean(0) - reference.mean(0)).abs() <= 4 * se + 1e-6).all()


def test_it_diagnoses(trained, digits, tmp_path):
    vae, _ = trained
    idata = to_inference_data(vae.model, vae.guide, digits.test_x[:5], num_samples=30)
    assert idata.posterior["latent"].dims == ("chain", "draw", "data", "latent_dim_0")
    result = write_report(
        vae.model,
        vae.guide,
        digits.test_x[:20],
        tmp_path,
        num_samples=30,
        idata_points=5,
        idata_samples=20,
        num_worst=4,
        image_shape=(8, 8),
    )
    assert result["num_points"] == 20 and "skipped" not in result
    assert (tmp_path / "khat_worst.png").stat().st_size > 1000


def test_plain_functions_with_param_store_weights_resume_exactly(tmp_path):
    # weights that live only in Pyro's param store (pyro.param) go into checkpoints and
    # come back bit for bit: 10 + 10 epochs resumed equal 20 straight (fit clears the
    # param store first, as a new process would start without it)
    def model(x, y):
        w = pyro.param("w", torch.zeros(3))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    def guide(x, y):
        pass

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(40, generator=generator)
    data = TensorData(x, y)
    config = dict(batch_size=8, lr=0.05, progress=False, patience=None)
    straight = RunFolder(tmp_path / "a")
    fit(model, guide, data, Trace_ELBO(), TrainConfig(epochs=20, **config), straight)
    run = RunFolder(tmp_path / "b")
    fit(model, guide, data, Trace_ELBO(), TrainConfig(epochs=10, **config), run)
    fit(model, guide, data, Trace_ELBO(), TrainConfig(epochs=20, **config), run, resume=True)
    a, b = RunFolder(tmp_path / "a").load_checkpoint(), run.load_checkpoint()
    assert set(a["params"]) == {"w"} and torch.equal(a["params"]["w"], b["params"]["w"])
    assert torch.allclose(a["params"]["w"], torch.tensor([1.0, -2.0, 0.5]), atol=0.2)


FAST = ["--data", "digits", "--epochs", "2", "--no-progress", "--ll-samples", "20"]


def test_the_command_line_takes_the_class_as_pyro_wrote_it(tmp_path, capsys):
    run = tmp_path / "class"
    spec = f"{FILE}:PyroStyleVAE"
    options = ["--model-opt", "z_dim=4", "--model-opt", "hidden_dim=32", "--latent-dim", "3"]
    assert main(["fit", "--model", spec, *options, *FAST, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "note: --latent-dim was not passed" in out and "'latent_dim' argument" in out
    config = json.loads((run / "config.json").read_text())
    assert "latent_dim" not in config["model_options"]
    assert config["model_options"]["z_dim"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_arguments"] == {"x_dim": 64, "z_dim": 4, "hidden_dim": 32}
    assert metrics["data_plate"] == "data" and metrics["test"]["active_units"] <= 4
    assert {"reconstructions.png", "samples.png", "latent.png"} <= {p.name for p in run.iterdir()}
    assert main(["evaluate", str(run), "--ll-samples", "20"]) == 0
    assert main(["sample", str(run), "--num", "9"]) == 0
    diagnose = ["--points", "20", "--samples", "30", "--idata-points", "5", "--idata-samples", "20"]
    assert main(["diagnose", str(run), *diagnose]) == 0
    assert (run / "khat_worst.png").is_file()


def test_the_command_line_takes_plain_functions(tmp_path):
    run = tmp_path / "functions"
    args = ["--model", f"{FILE}:model", "--guide", f"{FILE}:guide", *FAST, "--out", str(run)]
    assert main(["fit", *args]) == 0
    saved = RunFolder(run).load_checkpoint()
    # the global networks the functions run are found on a run of the pair and saved whole,
    # buffers included (pyro_vae.weights.PairWeights), not as param-store entries
    assert set(saved["model"]) >= {"fc1.weight", "fc1.bias"}
    assert set(saved["guide"]) >= {"fc1.weight", "fc1.bias"}
    assert not any(name.startswith(("decoder$$$", "encoder$$$")) for name in saved["params"])
    assert main(["evaluate", str(run), "--ll-samples", "20"]) == 0


def test_an_autoguide_from_the_command_line_is_evaluated_on_its_own_rows(
    tmp_path, capsys, monkeypatch
):
    # AutoNormal over the per-image latents: one q per training image and none for test
    # images, so metrics are the training images' (on the first --ll-points of them) and
    # k̂ per test image is refused with the reason.
    from pyro_vae import experiment

    drawn = []  # elbo.png's curves and lines, as named in its legend

    def plot(history, path, lines, ylabel, train, validation):
        drawn.append((sorted(lines), validation))
        return plot_elbo_curves(history, path, lines, ylabel, train, validation)

    plot_elbo_curves = experiment.plot_elbo_curves
    monkeypatch.setattr(experiment, "plot_elbo_curves", plot)
    monkeypatch.chdir(FILE.parent)
    run = tmp_path / "auto"
    args = ["--model", f"{FILE.name}:model", "--guide", "pyro.infer.autoguide:AutoNormal"]
    assert main(["fit", *args, *FAST, "--ll-points", "100", "--out", str(run)]) == 0
    assert "these are the training images' metrics" in capsys.readouterr().out
    # tester CW: its legend called the training set's numbers test and validation
    lines = ["training set elbo", "training set log likelihood"]
    assert drawn == [(lines, "validation (training set)")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["local_guide"] and metrics["test"]["evaluated_on"] == "training set"
    assert metrics["test"]["log_likelihood_points"] == 100
    assert "active_units" in metrics["test"]  # AutoNormal's auxiliary site is no latent
    # the spec was stored with the file's absolute path: it evaluates from anywhere
    assert json.loads((run / "config.json").read_text())["model"] == f"{FILE}:model"
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--ll-samples", "20", "--ll-points", "50"]) == 0
    assert main(["diagnose", str(run), "--points", "20", "--samples", "30"]) == 2
    assert "free per-datapoint parameters" in capsys.readouterr().err
