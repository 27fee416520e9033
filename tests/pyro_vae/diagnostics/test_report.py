"""The files of the diagnostics report, drawn without pyplot's global state."""

import pytest
import torch

from models.vae import VAE
from pyro_vae.diagnostics.inference_data import load_inference_data
from pyro_vae.diagnostics.report import write_report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_write_report_for_an_image_model(tmp_path):
    vae = VAE(x_dim=16, latent_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    result = write_report(
        vae,
        vae.make_guide(),
        x,
        tmp_path,
        num_samples=50,
        idata_points=10,
        idata_samples=20,
        num_worst=4,
        image_shape=(4, 4),
    )
    names = {"khat.csv", "khat.png", "khat_worst.png", "diagnostics.nc", "summary.csv"}
    assert names | {"posterior.png", "ppc.png"} == {p.name for p in tmp_path.iterdir()}
    assert len((tmp_path / "khat.csv").read_text().splitlines()) == 31
    assert len(result["worst"]) == 4 and 0 <= result["share_above_0.7"] <= 1
    assert load_inference_data(tmp_path / "diagnostics.nc").posterior["z"].shape == (1, 20, 10, 2)
