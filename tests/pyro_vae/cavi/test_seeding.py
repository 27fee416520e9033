import pytest
import torch

from pyro_vae.cavi.seeding import cpu_rng


def test_a_seeded_block_draws_as_torch_manual_seed_does_and_restores_the_state():
    torch.manual_seed(123)
    expected_after = torch.rand(3)  # what the global stream gives next, untouched
    torch.manual_seed(7)
    reference = torch.randn(4)
    torch.manual_seed(123)
    with cpu_rng(7):
        drawn = torch.randn(4)
    assert torch.equal(drawn, reference)
    assert torch.equal(torch.rand(3), expected_after)


def test_the_state_is_restored_when_the_block_raises_and_left_unseeded_without_a_seed():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="inside"), cpu_rng(11):
        torch.rand(10)
        raise RuntimeError("inside")
    assert torch.equal(torch.rand(2), expected)
    torch.manual_seed(5)
    with cpu_rng():  # unseeded: continues the stream, then rewinds it
        inside = torch.rand(2)
    assert torch.equal(inside, expected) and torch.equal(torch.rand(2), expected)
