"""Tests of pyro_vae.latent_summaries: E_q[z | x], the active units and a model's own label
metrics, against what the guide's family gives in closed form."""

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.latent_summaries import active_units, label_metrics, latent_means
from tests.pyro_vae.test_evaluate import POST_GAIN, POST_VAR, SIGMA, B, W, make_guide, model


@pytest.fixture
def x():
    return dist.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(3)).sample((20,))


def test_active_units_counts_latent_variance():
    class Encoder:
        def encode(self, x):
            return dist.Normal(torch.stack([x[:, 0], 0.01 * x[:, 0]], -1), 1.0)

    n_active, variances = active_units(object(), Encoder(), torch.randn(500, 1))
    assert n_active == 1 and variances[0] > 0.5 and variances[1] < 0.01


def test_latent_means_of_a_guide_without_encode_are_a_monte_carlo_mean(x):
    guide = make_guide(0.8, 1.0)
    loc = (x - B) @ (0.8 * POST_GAIN).T
    mean = latent_means(model, guide, x, num_samples=400)
    # 400 draws of sd √POST_VAR: a standard error of √(POST_VAR / 400) per entry
    se = (POST_VAR / 400).sqrt()
    assert ((mean - loc).abs() <= 4 * se).all()


class _WithLabelMetrics:
    """A model object whose label_metrics hook reports what it was given."""

    def __init__(self, values=None):
        self.values, self.calls = values, []

    def model(self, x, y, observed):
        pass

    def label_metrics(self, guide, x, y):
        self.calls.append((guide, x.shape, y.dtype, torch.is_grad_enabled()))
        return self.values if self.values is not None else {"test_label_mean": y.float().mean()}


def test_label_metrics_come_from_the_model_s_hook_without_gradients():
    owner = _WithLabelMetrics()
    y = torch.tensor([0, 1, 1, 1])
    assert label_metrics(owner.model, "guide", torch.zeros(4, 3), y) == {"test_label_mean": 0.75}
    assert owner.calls == [("guide", (4, 3), torch.long, False)]
    assert label_metrics(lambda x: None, None, torch.zeros(4, 3), y) == {}
    with pytest.raises(ValueError, match="label_metrics: list returned by the model; expected a"):
        label_metrics(_WithLabelMetrics([0.5]).model, None, torch.zeros(4, 3), y)
    # the evaluation's log p(x) draws reach a hook that takes them (tester U: M2 kept its
    # 100 whatever --ll-samples said), and a hook that does not is called as before
    assert label_metrics(owner.model, "guide", torch.zeros(4, 3), y, iwae_samples=10)

    class Counted:
        def model(self, x, y, observed):
            pass

        def label_metrics(self, guide, x, y, iwae_samples=100, iwae_rows=1000):
            return {"test_log_px_unlabelled_K": iwae_samples, "rows": iwae_rows}

    found = label_metrics(Counted().model, None, torch.zeros(4, 3), y, iwae_samples=10)
    assert found == {"test_log_px_unlabelled_K": 10, "rows": 1000}
    # and its rows, --ll-points (tester BP: M2 kept its own 1,000)
    found = label_metrics(Counted().model, None, torch.zeros(4, 3), y, 0, iwae_rows=7)
    assert found == {"test_log_px_unlabelled_K": 0, "rows": 7}


def test_the_names_that_moved_here_still_resolve_from_evaluate_with_a_warning(monkeypatch):
    """Split of evaluate.py: the latent summaries moved to pyro_vae.latent_summaries; the
    old import path gives the same objects, with a FutureWarning naming the new one."""
    import pyro_vae.evaluate as evaluate
    import pyro_vae.latent_summaries as latent_summaries

    monkeypatch.setattr(evaluate, "_WARNED", set())  # once per process: whatever ran before
    new = "pyro_vae.latent_summaries"
    with pytest.warns(FutureWarning, match=rf"pyro_vae.evaluate.latent_means has moved to {new}"):
        assert evaluate.latent_means is latent_summaries.latent_means
    with pytest.warns(FutureWarning, match="active_units has moved"):
        assert evaluate.active_units is latent_summaries.active_units
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        evaluate.nothing  # noqa: B018


@pytest.mark.parametrize(
    ("rows", "refusal"),
    [
        (lambda x: x[0], r"x: shape \(64,\), rows of 1 value; the model takes x_dim=64"),
        (lambda x: x[:0], r"x: shape \(0, 64\) has no rows"),
        (lambda x: x[:, :63], r"x: shape \(5, 63\), rows of 63 values"),
    ],
)
def test_rows_the_model_does_not_take_are_refused_by_shape(rows, refusal):
    """Tester CO: ``x[0]`` failed in a reshape, ``x[:0]`` in another, ``x[:, :63]`` in a
    matmul, each in PyTorch's words."""
    from models.vae import VAE
    from pyro_vae.latent_summaries import reconstruction_error

    torch.manual_seed(0)
    vae = VAE(64, latent_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 64).round()
    for summary in (latent_means, reconstruction_error):
        with pytest.raises(ValueError, match=refusal):
            summary(vae, vae.make_guide(), rows(x))
