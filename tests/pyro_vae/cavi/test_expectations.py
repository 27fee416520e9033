import pytest
import torch

from pyro_vae.cavi.expectations import component_message, contract, product_sum, sum_to
from pyro_vae.cavi.factor_form import Factor
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


@pytest.mark.parametrize(
    "kept, other, axis",
    [
        ((300, 1, 23), (10, 23), -1),  # a mixture's shared block against the components' E[T]
        ((300, 1, 23), (300, 10, 1), 0),  # against the responsibilities, over the data
        ((300, 1, 23), (300, 1, 23), -1),  # the other does not span K: K stays in the product
        ((1, 4, 3), (5, 4, 1), 1),  # small: made and summed
        ((300, 1, 23), (300, 1, 23, "expanded"), 1),  # both expanded along K: summed K times
        ((300, 1, 23), (300, 1, 23, "expanded"), -1),  # both expanded: K kept in the result
    ],
)
def test_product_sum_reads_an_expanded_operand_once_to_the_same_result(kept, other, axis):
    # an operand expanded along K (stride 0, as a mixture's coefficients shared by its
    # components) gives what its materialized copy gives, in shape and value
    g = torch.Generator().manual_seed(1)
    a = torch.randn(kept, generator=g, dtype=F64)
    a = a.expand(kept[:1] + (10,) + kept[2:]) if kept[1] == 1 else a
    b = torch.randn(other[:3], generator=g, dtype=F64)
    b = b.expand(a.shape) if other[3:] else b
    expected = (a.contiguous() * b.contiguous()).sum(axis)
    got = product_sum(a, b, axis)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0, atol=1e-11)


@pytest.mark.parametrize("shared", [False, True])
def test_a_component_s_message_is_the_sum_of_its_per_element_messages(shared):
    # Σ_n q(z_n = k) Σ_x C[n, k, x, b] E[T_x]: the message to component μ of a mixture
    # factor over N = 7 data, K = 3, another member x (B = 2) and μ's statistics (B = 3),
    # against einsum; ``shared``: C expanded along K (one block for every component)
    g = torch.Generator().manual_seed(2)
    c = torch.randn(7, 1 if shared else 3, 2, 3, generator=g, dtype=F64).expand(7, 3, 2, 3)
    factor = Factor(
        "y", "Normal", ("x", "mu"), c, rank=2, selector="z", components=frozenset({"mu"})
    )
    z = torch.softmax(torch.randn(7, 3, generator=g, dtype=F64), -1)
    stats = {"z": z, "x": torch.randn(2, generator=g, dtype=F64),
             "mu": torch.randn(3, 3, generator=g, dtype=F64)}  # fmt: skip
    got = component_message(factor, stats, "mu", torch.Size((3, 3)))
    expected = torch.einsum("nkxb,nk,x->kb", c, z, stats["x"])
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # the per-element path gives the same (as _update took it before)
    per_element = contract(factor, stats, ("mu",)).sum(0)
    assert torch.allclose(per_element, expected, rtol=0, atol=1e-12)
