"""A local guide reads the q of the rows it is given among its N (tester J's F6)."""

import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.guides import AmortizedIAF, LocalFlow, LocalLowRankNormal, LocalNormal
from pyro_vae.guides.local_rows import check_rows, given_rows, rows_or_all
from pyro_vae.minibatch import DataPlateSubsample

G = torch.Generator().manual_seed(0)
X = torch.rand(6, 4, generator=G)


def _guides():
    loc, scale = torch.randn(6, 3, generator=G), torch.rand(6, 3, generator=G) + 0.5
    encoder = AmortizedIAF(4, 3, (8,))
    h = encoder.trunk(X).detach()
    return {
        "normal": LocalNormal(loc, scale),
        "low-rank": LocalLowRankNormal(loc, scale, torch.randn(6, 3, 2, generator=G)),
        "flow": LocalFlow(loc, scale, h, encoder.flows),
    }


@pytest.mark.parametrize("kind", ["normal", "low-rank", "flow"])
def test_the_rows_given_get_their_own_q_and_a_plain_call_all_of_them(kind):
    guide = _guides()[kind]
    whole = poutine.trace(guide).get_trace(X).nodes["z"]
    rows = torch.tensor([4, 1, 5])
    with DataPlateSubsample("data", 6, rows):
        part = poutine.trace(guide).get_trace(X[rows]).nodes["z"]
    z = whole["value"][rows].detach()
    with torch.no_grad():
        assert torch.allclose(part["fn"].log_prob(z), whole["fn"].log_prob(whole["value"])[rows])
    with pytest.raises(ValueError, match="x: 3 rows, but this local guide holds 6"):
        guide(X[:3])
    with pytest.raises(ValueError, match="data plate holds 7 rows, but this local guide holds 6"):
        with DataPlateSubsample("data", 7, torch.arange(3)):
            guide(X[:3])


def test_given_rows_are_none_in_a_plain_call_and_check_rows_names_both_counts():
    assert given_rows(torch.arange(3), 3) is None
    with DataPlateSubsample("data", 5, torch.arange(2)):
        assert torch.equal(given_rows(torch.tensor([3, 4]), 5), torch.tensor([3, 4]))
    check_rows(X, 6)
    assert (
        rows_or_all(X, None, 6) == slice(None)
        and rows_or_all(X[:2], torch.arange(2), 6) is not None
    )
    with pytest.raises(ValueError, match="x: 6 rows, but this local guide holds 4 datapoints"):
        check_rows(X, 4)


_MAKE = {
    "normal": lambda loc, scale: LocalNormal(loc, scale),
    "low-rank": lambda loc, scale: LocalLowRankNormal(loc, scale, torch.ones(2, 3, 1)),
    "flow": lambda loc, scale: LocalFlow(loc, scale, torch.zeros(2, 4), AmortizedIAF(4, 3).flows),
}


@pytest.mark.parametrize("kind", ["normal", "low-rank", "flow"])
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_a_negative_or_non_finite_initial_scale_is_refused_naming_it(kind, bad):
    """A negative scale was clamped to 1e-6 without a word (q then started 10⁶ times
    narrower than asked); NaN gave a NaN parameter. The first bad element is named."""
    scale = torch.ones(2, 3)
    scale[1, 2] = bad
    with pytest.raises(ValueError, match=rf"^scale: {bad} at index \[1, 2\]; expected finite"):
        _MAKE[kind](torch.zeros(2, 3), scale)


@pytest.mark.parametrize("kind", ["normal", "low-rank", "flow"])
def test_a_zero_initial_scale_starts_at_the_floor(kind):
    """An encoder's scale that underflowed to 0 starts at 1e-6 (its log finite), as
    documented; the other elements start as given."""
    scale = torch.tensor([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    guide = _MAKE[kind](torch.zeros(2, 3), scale)
    expected = torch.tensor([[1e-6, 2.0, 1.0], [1.0, 1.0, 1.0]]).log()
    assert torch.allclose(guide.log_scale.detach(), expected)


@pytest.mark.parametrize("kind", ["normal", "low-rank", "flow"])
def test_a_nan_initial_value_or_a_scale_that_is_no_tensor_is_refused_naming_it(kind):
    """Tester CR: a NaN ``loc`` (or ``cov_factor``) was taken without a word, and a float
    ``scale`` raised an AttributeError."""
    loc = torch.zeros(2, 3)
    loc[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^loc: nan at index \[0, 1\]; expected finite"):
        _MAKE[kind](loc, torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"^scale: a float; expected a torch.Tensor"):
        _MAKE[kind](torch.zeros(2, 3), 1.0)
    factor = torch.ones(2, 3, 1)
    factor[1, 2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^cov_factor: inf at index \[1, 2, 0\]"):
        LocalLowRankNormal(torch.zeros(2, 3), torch.ones(2, 3), factor)
