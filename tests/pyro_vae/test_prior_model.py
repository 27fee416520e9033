"""A run's model rebuilt without its data: the record fit writes, the model and weights
load_for_prior puts together from the folder alone, and the prior draws they give."""

import json

import numpy as np
import pyro
import pytest
import torch
from sklearn.datasets import load_digits

from pyro_vae.cli import main
from pyro_vae.experiment import label_samples, load
from pyro_vae.predictive import prior_mean_images
from pyro_vae.prior_model import RECORD, load_for_prior
from pyro_vae.weights import module_of

FAST = ["--latent-dim", "4", "--hidden", "32", "--no-progress", "--ll-samples", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VAE and a CVAE trained one epoch on an .npz copy of the digits (in [0, 1])."""
    folder = tmp_path_factory.mktemp("prior")
    digits = load_digits()
    data = folder / "digits.npz"
    np.savez(data, x=(digits.images / 16).astype(np.float32), y=digits.target)
    made = {}
    for spec in ("models.vae:VAE", "models.cvae:CVAE"):
        made[spec] = run = folder / spec.rpartition(":")[2]
        argv = ["fit", "--data", str(data), "--model", spec, "--epochs", "1", *FAST]
        assert main([*argv, "--out", str(run), "--seed", "3"]) == 0
    return data, made


def test_fit_records_what_the_prior_needs_of_the_data(runs):
    _, made = runs
    vae = json.loads((made["models.vae:VAE"] / "metrics.json").read_text())[RECORD]
    assert vae == {"x_dim": 64, "image_shape": [8, 8], "pixel_max": 1.0, "levels": None}
    cvae = json.loads((made["models.cvae:CVAE"] / "metrics.json").read_text())[RECORD]
    assert cvae["classes"] == [str(c) for c in range(10)]


@pytest.mark.parametrize("spec", ["models.vae:VAE", "models.cvae:CVAE"])
def test_the_model_without_its_data_draws_what_the_loaded_run_draws(runs, spec):
    _, made = runs
    full = load(made[spec])
    alone = load_for_prior(made[spec])
    assert alone.data.image_shape == full.data.image_shape
    assert alone.data.pixel_max == full.data.pixel_max
    assert alone.weights_epoch == full.weights_epoch
    mine, theirs = module_of(alone.model).state_dict(), module_of(full.model).state_dict()
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(mine[name], value), name
    draws = []
    for exp in (full, alone):
        pyro.set_rng_seed(5)
        with torch.no_grad():
            if spec == "models.cvae:CVAE":
                draws.append(label_samples(exp, 20, per_class=2))
            else:
                draws.append(prior_mean_images(exp.model, exp.data.test_x[:4], 4))
    assert torch.equal(*draws)


def test_a_run_without_the_record_is_none(runs, tmp_path):
    import shutil

    _, made = runs
    copy = tmp_path / "old"
    shutil.copytree(made["models.vae:VAE"], copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    del metrics[RECORD]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert load_for_prior(copy) is None
