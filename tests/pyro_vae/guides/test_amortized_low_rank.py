"""The amortized low-rank multivariate Normal guide, N(μ(x), D(x) + V(x)V(x)ᵀ)."""

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.guides import AmortizedLowRankNormal
from tests.pyro_vae.guides import amortized_checks as checks

pytestmark = pytest.mark.usefixtures("one_thread")


def test_encode_is_a_low_rank_normal_per_row_with_its_closed_form_mean():
    guide = AmortizedLowRankNormal(6, 4, (8,), rank=3)
    x = torch.rand(5, 6)
    q = guide.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (4,)
    assert q.cov_factor.shape == (5, 4, 3) and q.cov_diag.shape == (5, 4)
    torch.testing.assert_close(q.mean, guide.loc_head(guide.trunk(x)))
    checks.check_encode_shapes(AmortizedLowRankNormal)


def test_log_prob_equals_the_dense_multivariate_normal():
    torch.manual_seed(0)
    guide = AmortizedLowRankNormal(6, 4, (8,), rank=2).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    h = guide.trunk(x)
    V = guide.factor_head(h).reshape(5, 4, 2)
    covariance = torch.diag_embed(torch.exp(2 * guide.log_scale_head(h))) + V @ V.mT
    dense = torch.distributions.MultivariateNormal(guide.loc_head(h), covariance)
    q = guide.encode(x)
    z = q.sample((3,))
    torch.testing.assert_close(q.log_prob(z), dense.log_prob(z))
    torch.testing.assert_close(q.covariance_matrix, covariance)


def test_draws_are_reparameterized():
    checks.check_draws_are_reparameterized(AmortizedLowRankNormal)


@pytest.mark.parametrize("rank, kept", [(1, 1), (2, 2), (3, 3), (7, 3)])
def test_rank_is_clipped_to_the_latent_dimension(rank, kept):
    guide = AmortizedLowRankNormal(6, 3, (8,), rank=rank)
    assert guide.rank == kept and guide.encode(torch.rand(2, 6)).cov_factor.shape == (2, 3, kept)


@pytest.mark.parametrize("rank", [0, -1, 2.0, True, "2", None])
def test_a_bad_rank_is_refused_naming_it(rank):
    with pytest.raises(ValueError) as info:
        AmortizedLowRankNormal(6, 3, (8,), rank=rank)
    assert str(info.value) == (
        f"rank: {rank!r} is not a positive integer; expected the number of columns of the factor V"
    )


def test_a_short_fit_improves_the_elbo():
    checks.check_a_short_fit_improves_the_elbo(AmortizedLowRankNormal)


def test_the_recorded_step_equals_the_eager_one():
    assert AmortizedLowRankNormal.recordable is True
    checks.check_the_recorded_step_equals_the_eager_one(AmortizedLowRankNormal)


def test_tensors_stay_on_the_inputs_device():
    checks.check_tensors_stay_on_the_inputs_device(AmortizedLowRankNormal)


def test_the_cli_round_trip(tmp_path, capsys):
    checks.check_the_cli_round_trip("pyro_vae.guides:AmortizedLowRankNormal", tmp_path)
    # the default family (diagonal) cannot hold a low-rank q: said, and the family named
    # (tester DV: only a flow encoder's run had the note)
    capsys.readouterr()
    gap = ["amortization-gap", str(tmp_path / "run"), "--points", "3", "--steps", "2"]
    assert main([*gap, "--iwae-samples", "5"]) == 0
    assert "compare two families; --family lowrank compares like with like" in (
        capsys.readouterr().out
    )


def test_a_conv_encoder_gives_the_same_heads_and_records():
    checks.check_a_conv_encoder(AmortizedLowRankNormal, rank=2)
