import pytest

from pyro_vae.diagnostics.checks import check_count


def test_counts_are_refused_with_the_argument_the_value_and_the_reason():
    check_count("num_samples", 21, 21)
    check_count("num_samples", 21.0, 21)  # an integral float is a count
    with pytest.raises(ValueError, match=r"^num_samples: 20 is not an integer ≥ 21; PSIS$"):
        check_count("num_samples", 20, 21, "PSIS")
    with pytest.raises(ValueError, match=r"^num_draws: 2.5 is not an integer ≥ 2$"):
        check_count("num_draws", 2.5, 2)
    with pytest.raises(ValueError, match="num_steps: True is not an integer ≥ 1"):
        check_count("num_steps", True, 1)
