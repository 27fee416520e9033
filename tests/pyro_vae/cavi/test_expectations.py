import pytest
import torch

from pyro_vae.cavi.conjugate_forms import Factor
from pyro_vae.cavi.expectations import contract, product_sum, sum_to
from tests.pyro_vae.cavi.float64 import F64


def test_contraction_is_the_expectation_under_independent_and_pairwise_q():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 2, 4, generator=g, dtype=F64)  # C[a, b, x] on one-hots a, b; x: T
    factor = Factor("f", "Categorical", ("a", "b", "x"), c, rank=0)
    pa, pb = torch.tensor([0.2, 0.5, 0.3], dtype=F64), torch.tensor([0.6, 0.4], dtype=F64)
    tx = torch.randn(4, generator=g, dtype=F64)
    stats = {"a": pa, "b": pb, "x": tx}
    assert torch.allclose(contract(factor, stats), torch.einsum("abx,a,b,x->", c, pa, pb, tx))
    message = contract(factor, stats, keep=("b",))
    assert torch.allclose(message, torch.einsum("abx,a,x->b", c, pa, tx))
    joint = torch.tensor([[0.1, 0.1], [0.4, 0.1], [0.1, 0.2]], dtype=F64)  # not pa ⊗ pb
    expected = torch.einsum("abx,ab,x->", c, joint, tx)
    assert torch.allclose(contract(factor, stats, pairs={("a", "b"): joint}), expected)


def test_sum_to_undoes_broadcasting():
    t = torch.ones(5, 3, 2, dtype=F64)
    assert torch.equal(sum_to(t, (3, 1)), torch.full((3, 1), 10.0, dtype=F64))


@pytest.mark.parametrize(
    "left, right, axis",
    [
        ((1, 300, 10, 23), (16, 1, 10, 23), -1),  # a mixture's coefficients at 16 points
        ((300, 10, 23), (16, 1, 10, 23), 2),  # ranks differ; a positive axis
        ((300, 10, 23), (300, 10, 1), 1),  # one operand size 1 along the summed axis
        ((1, 4, 3), (5, 4, 1), 1),  # small: made and summed
        ((300, 10, 23), (100, 1, 1, 23), -1),  # large only with the longer one's lead dim
    ],
)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_product_sum_is_the_broadcast_product_summed(left, right, axis, dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(left, generator=g, dtype=F64)
    b = torch.randn(right, generator=g, dtype=F64).to(dtype)  # float32: promoted, as * does
    expected = (a * b).sum(axis)
    got = product_sum(a, b, axis)
    assert got.shape == expected.shape
    # sums of at most 300 products of N(0, 1) draws in another order: float64 rounding
    assert torch.allclose(got, expected, rtol=0, atol=1e-11)
