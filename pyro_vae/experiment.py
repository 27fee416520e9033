"""An experiment: data, model, guide and estimator rebuilt from a run folder's config.

The config is plain JSON, so ``pyro-vae evaluate RUN`` and ``pyro-vae sample RUN`` rebuild
exactly what ``pyro-vae fit`` trained, from the folder alone::

    {"model": "models.vae:VAE", "model_options": {...}, "guide": null,
     "data": {"name": "digits", "likelihood": "bernoulli", ...},
     "estimator": {"name": "trace", "options": {}},
     "train": {...TrainConfig...}, "evaluation": {"ll_samples": 1000, "ll_points": 1000}}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO

from pyro_vae import estimators
from pyro_vae.checkpoint import RunFolder
from pyro_vae.data import DataSplits, Preprocessing, load_data
from pyro_vae.evaluate import (
    active_units,
    elbo_per_datapoint,
    eval_mode,
    iwae_log_likelihood,
    latent_means,
    reconstruction_error,
)
from pyro_vae.plots import plot_elbo_curves, plot_latent, plot_reconstructions, plot_samples
from pyro_vae.spec import call_with_supported, load_object

DEFAULT_MODEL = "models.vae:VAE"
STANDARD_MODEL_OPTIONS = ("latent_dim", "hidden_dims", "activation")


@dataclass
class Experiment:
    """Everything a config describes, built and ready to train or evaluate."""

    config: dict[str, Any]
    data: DataSplits
    model: torch.nn.Module
    guide: torch.nn.Module
    elbo: ELBO

    @property
    def generative(self) -> bool:
        """Whether the model defines p(x) (a VAE does; the deterministic autoencoder does not)."""
        return bool(getattr(self.model, "generative", True))


def build(config: dict[str, Any]) -> Experiment:
    """Load the data and construct model, guide and estimator as ``config`` says.

    Seeds Pyro with ``config["train"]["seed"]`` first, so initial weights are reproducible.
    """
    pyro.set_rng_seed(config["train"]["seed"])
    d = config["data"]
    data = load_data(
        d["name"],
        Preprocessing(d["likelihood"], d["binarize"], d["threshold"], d["levels"]),
        val_fraction=d["val_fraction"],
        test_fraction=d["test_fraction"],
        split_seed=d["split_seed"],
    )
    standard = {
        k: config["model_options"][k]
        for k in STANDARD_MODEL_OPTIONS
        if k in config["model_options"]
    }
    standard.update(x_dim=data.x_dim, likelihood=d["likelihood"], levels=data.info.get("levels"))
    extra = {k: v for k, v in config["model_options"].items() if k not in STANDARD_MODEL_OPTIONS}
    factory = load_object(config["model"], "model")
    try:
        model = call_with_supported(factory, standard, extra)
    except TypeError as err:
        raise ValueError(f"model: {config['model']} rejected its options {extra}: {err}") from err
    if config.get("guide"):
        guide_factory = load_object(config["guide"], "guide")
        guide_standard = {**standard, "hidden_dims": tuple(standard.get("hidden_dims", ()))[::-1]}
        guide = call_with_supported(guide_factory, guide_standard, {})
    elif hasattr(model, "make_guide"):
        guide = model.make_guide()
    else:
        raise ValueError(
            f"guide: none given and model {config['model']} has no make_guide(); pass --guide "
            "SPEC, e.g. pyro_vae.guides:AmortizedNormal"
        )
    est = config["estimator"]
    return Experiment(config, data, model, guide, estimators.get(est["name"], **est["options"]))


def load(run: RunFolder) -> Experiment:
    """Rebuild a run's experiment and load its kept (best-validation) weights."""
    experiment = build(run.read_config())
    state = run.load_checkpoint()
    weights = state["best"] or state
    experiment.model.load_state_dict(weights["model"])
    experiment.guide.load_state_dict(weights["guide"])
    return experiment


def evaluate_test_set(
    exp: Experiment,
    ll_samples: int,
    ll_points: int | None,
    elbo_samples: int = 10,
    progress: bool = False,
) -> dict[str, Any]:
    """Test-set ELBO, importance-weighted log-likelihood, reconstruction, active units.

    The log-likelihood estimate uses K = ``ll_samples`` on the first ``ll_points`` test
    images (all when ``None``); both are recorded beside the number.
    """
    x = exp.data.test_x
    metrics: dict[str, Any] = {"num_test": int(x.shape[0])}
    started = time.perf_counter()
    key = "elbo" if exp.generative else "reconstruction_log_likelihood"
    metrics[key] = elbo_per_datapoint(exp.model, exp.guide, x, elbo_samples).mean().item()
    if exp.generative and ll_samples > 0:
        x_ll = x if ll_points is None else x[:ll_points]
        metrics["log_likelihood"] = (
            iwae_log_likelihood(exp.model, exp.guide, x_ll, ll_samples, progress=progress)
            .mean()
            .item()
        )
        metrics["log_likelihood_samples"] = ll_samples
        metrics["log_likelihood_points"] = int(x_ll.shape[0])
    metrics["reconstruction_mse"] = (
        reconstruction_error(exp.model, exp.guide, x, exp.data.pixel_max).mean().item()
    )
    if hasattr(exp.guide, "encode") or hasattr(exp.model, "encode"):
        units, _ = active_units(exp.model, exp.guide, x)
        metrics["active_units"] = units
        metrics["latent_dim"] = int(latent_means(exp.model, exp.guide, x[:1]).shape[1])
    metrics["seconds"] = time.perf_counter() - started
    return metrics


@torch.no_grad()
def write_figures(
    exp: Experiment,
    run: RunFolder,
    history: list[dict[str, Any]],
    test: dict[str, Any],
    num_samples: int = 64,
) -> list[Path]:
    """reconstructions.png, samples.png (generative models), elbo.png and latent.png."""
    data, model, guide = exp.data, exp.model, exp.guide
    x = data.test_x[:24]
    paths = []
    with eval_mode(model, guide):
        x_hat = model.decode(latent_means(model, guide, x))
        paths.append(
            plot_reconstructions(
                x, x_hat, data.image_shape, data.pixel_max, run.file("reconstructions.png")
            )
        )
        if exp.generative and hasattr(model, "generate"):
            paths.append(
                plot_samples(
                    model.generate(num_samples),
                    data.image_shape,
                    data.pixel_max,
                    run.file("samples.png"),
                )
            )
        z = latent_means(model, guide, data.test_x)
    lines = {
        f"test {k.replace('_', ' ')}": test[k] for k in ("elbo", "log_likelihood") if k in test
    }
    ylabel = "ELBO per datapoint (nats)" if exp.generative else "log Pr(x | z') per datapoint"
    paths.append(plot_elbo_curves(history, run.file("elbo.png"), lines, ylabel))
    paths.append(plot_latent(z, data.test_y, run.file("latent.png")))
    return paths
