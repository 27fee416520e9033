import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.guides import AmortizedBernoulli, AmortizedCategorical


def test_bernoulli_guide_samples_binary_codes_with_baseline_options():
    guide = AmortizedBernoulli(6, 3, (5,), baseline={"use_decaying_avg_baseline": True})
    site = poutine.trace(guide).get_trace(torch.rand(4, 6)).nodes["z"]
    assert site["value"].shape == (4, 3) and set(site["value"].unique().tolist()) <= {0.0, 1.0}
    assert not site["fn"].has_rsample
    assert site["infer"]["baseline"] == {"use_decaying_avg_baseline": True}


def test_categorical_guide_samples_classes_per_latent():
    guide = AmortizedCategorical(6, latent_dim=3, num_categories=5)
    q = guide.encode(torch.rand(4, 6))
    assert q.batch_shape == (4, 3) and q.probs.shape == (4, 3, 5)
    z = poutine.trace(guide).get_trace(torch.rand(4, 6), num_data=8).nodes["z"]
    assert z["value"].shape == (4, 3) and z["value"].max() < 5 and z["scale"] == 2.0
    with pytest.raises(ValueError, match="num_categories: 1"):
        AmortizedCategorical(6, 3, 1)


def test_no_latent_dimensions_are_refused():
    """Tester CN: ``AmortizedBernoulli(2, 0)`` drew an empty z, ``AmortizedCategorical(2,
    0, 3)`` failed in a reshape."""
    for make in (lambda: AmortizedBernoulli(2, 0), lambda: AmortizedCategorical(2, 0, 3)):
        with pytest.raises(ValueError, match="latent_dim: 0 is not a positive integer"):
            make()


@pytest.mark.parametrize(
    "make",
    [lambda x_dim: AmortizedBernoulli(x_dim, 2),
     lambda x_dim: AmortizedCategorical(x_dim, 2, num_categories=3)],
)  # fmt: skip
@pytest.mark.parametrize("x_dim", [0, 4.0, "4"])
def test_x_dim_that_is_not_a_positive_integer_is_refused_by_name(make, x_dim):
    """Tester FK: x_dim 0 built guides drawing from rows of nothing, and "4" or 4.0 failed
    inside torch's Linear."""
    with pytest.raises(ValueError, match=f"^x_dim: {x_dim!r} is not a positive integer"):
        make(x_dim)
