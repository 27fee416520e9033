"""The files of the diagnostics report, drawn without pyplot's global state."""

import pytest
import torch

from models.vae import VAE
from pyro_vae.diagnostics.inference_data import load_inference_data
from pyro_vae.diagnostics.report import write_report
from tests.pyro_vae.killed_writer import killed_in_staging

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


def _report(vae, x, out, **options):
    settings = dict(num_samples=50, idata_points=10, idata_samples=20, image_shape=(4, 4))
    return write_report(vae, vae.make_guide(), x, out, **{**settings, **options})


def test_a_report_that_fails_part_way_leaves_the_last_one_whole(tmp_path, monkeypatch):
    # tester BH: `diagnose --worst 0` failed after rewriting khat.csv and khat.png, and
    # the folder held two reports' files
    import pyro_vae.diagnostics.report as report

    vae = VAE(x_dim=16, latent_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    _report(vae, x, tmp_path, num_worst=4)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fails(*args, **kwargs):
        raise RuntimeError("the model could not be replayed")

    monkeypatch.setattr(report, "to_inference_data", fails)
    with pytest.raises(RuntimeError, match="could not be replayed"):
        _report(vae, x[:20], tmp_path, num_worst=4)  # its khat.csv would have 21 lines
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_report_removes_the_staging_folder_a_killed_report_left(tmp_path):
    # a `diagnose` killed with SIGKILL left RUN/.diagnose-* for good, with its part-made
    # files (a diagnostics.nc can be large)
    killed_in_staging(tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    vae = VAE(x_dim=16, latent_dim=2, hidden_dims=(8,))
    _report(vae, torch.bernoulli(torch.full((30, 16), 0.3)), tmp_path, num_worst=4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_num_worst_zero_draws_no_figure_and_removes_the_last_report_s(tmp_path):
    vae = VAE(x_dim=16, latent_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    _report(vae, x, tmp_path, num_worst=4)
    assert (tmp_path / "khat_worst.png").exists()
    result = _report(vae, x, tmp_path, num_worst=0)
    assert result["skipped"] == {"khat_worst.png": "no inputs asked for (num_worst = 0)"}
    assert result["worst"] == []
    assert not (tmp_path / "khat_worst.png").exists()
    assert {p.name for p in tmp_path.iterdir()} == {
        "khat.csv", "khat.png", "diagnostics.nc", "summary.csv", "posterior.png", "ppc.png"
    }  # fmt: skip
    with pytest.raises(ValueError, match="num_worst: -1"):
        _report(vae, x, tmp_path, num_worst=-1)


def test_ppc_draws_ecdfs_where_a_draw_takes_one_value_at_every_datapoint(tmp_path):
    """Tester CF: a VAE with no active units gave a posterior predictive draw whose
    per-datapoint means were alike over 5 test images; ArviZ's KDE of that draw had
    another length than the others', plot_ppc failed ("inhomogeneous shape") and diagnose
    lost its k̂ results. Expected: ppc.png drawn (as ECDFs, which take ties)."""
    import arviz as az
    import numpy as np

    from pyro_vae.diagnostics.report import write_summaries

    rng = np.random.default_rng(0)
    predictive = rng.integers(0, 64, (1, 100, 5)) / 64
    predictive[0, 3] = 0.25  # one draw: the same mean at every datapoint
    idata = az.from_dict(
        posterior={"z": rng.normal(size=(1, 100, 5))},
        posterior_predictive={"obs": predictive},
        observed_data={"obs": rng.integers(0, 64, 5) / 64},
        dims={"z": ["data"], "obs": ["data"]},
    )
    idata.attrs["data_plate"] = "data"
    files = write_summaries(idata, tmp_path)
    assert [f.name for f in files] == ["summary.csv", "posterior.png", "ppc.png"]
    assert (tmp_path / "ppc.png").stat().st_size > 0


def test_draws_beyond_half_the_machine_s_memory_are_refused_before_any_work(tmp_path, monkeypatch):
    """Tester CO: ``--idata-samples 100000000`` grew to 20 GB of 23 and was killed. With
    a machine of 2 MiB, half is 1 MiB = 1,048,576 bytes; 10 rows of 16 values at 32 bytes
    a value are 5,120 bytes a draw, so 204 draws fit and 205 do not."""
    import pyro_vae.checks as checks

    monkeypatch.setattr(checks, "machine_memory", lambda: 2 * 2**20)
    vae = VAE(x_dim=16, latent_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    with pytest.raises(ValueError, match=r"idata_samples: 205 draws of 10 rows of 16 values "
                       r"need about 0.0 GiB, .*; expected at most 204"):  # fmt: skip
        write_report(vae, vae.make_guide(), x, tmp_path, num_samples=50, idata_points=10,
                     idata_samples=205)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_ppc_of_one_datapoint_is_a_histogram_of_the_draws_beside_the_observed_value():
    """``diagnose --points 1``: each draw's statistic is a single number, and ppc.png drew
    ECDFs with only the mean's curve, the observed value nowhere. Expected: a histogram of
    the draws (a density: its bars' area is 1) and a vertical line at the observed value."""
    import arviz as az
    import numpy as np

    from pyro_vae.diagnostics.report import _ppc_statistic, ppc_figure

    rng = np.random.default_rng(0)
    idata = az.from_dict(
        posterior={"z": rng.normal(size=(1, 200, 1))},
        posterior_predictive={"obs": rng.normal(0.4, 0.1, (1, 200, 1))},
        observed_data={"obs": np.array([0.3125])},
        dims={"z": ["data"], "obs": ["data"]},
    )
    ax = ppc_figure(_ppc_statistic(idata, "data")).axes[0]
    assert [list(line.get_xdata()) for line in ax.lines] == [[0.3125, 0.3125]]
    centres = np.array([bar.get_x() + bar.get_width() / 2 for bar in ax.patches])
    bin_width = np.diff(centres)  # the bars are drawn narrower than their bins
    assert len(centres) > 3 and np.allclose(bin_width, bin_width[0])
    area = bin_width[0] * sum(bar.get_height() for bar in ax.patches)
    assert area == pytest.approx(1.0, rel=1e-9)
    assert ax.get_xlabel() == "mean of obs"
