"""Comparing two sets of probed factors, shared by the probe tests."""

import torch


def assert_same_factors(got: dict, expected: dict) -> None:
    """``got`` and ``expected`` ({site: Factor}) have the same factors, each on the same
    latents, with coefficients equal to float64 rounding (1e-9 of the largest: the factors
    are multilinear, so any set of probe points solves to them exactly but for rounding)."""
    assert got.keys() == expected.keys()
    for name, f in got.items():
        g = expected[name]
        assert (f.latents, f.rank, f.selector) == (g.latents, g.rank, g.selector)
        scale = 1 + g.coefficients.abs().max()
        assert torch.allclose(f.coefficients, g.coefficients, rtol=0, atol=1e-9 * scale), name
