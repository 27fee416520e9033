"""The package's one count check and the run configuration's value checks."""

import numpy as np
import pytest
import torch

from pyro_vae.checks import MAX_LEVELS, as_real, check_count, check_learning_rate, check_levels


def test_counts_are_refused_with_the_argument_the_value_and_the_reason():
    check_count("num_samples", 21, 21)
    check_count("num_samples", np.int64(21), 21)  # a NumPy integer is a count
    with pytest.raises(ValueError, match=r"^num_samples: 20 is not an integer ≥ 21; PSIS$"):
        check_count("num_samples", 20, 21, "; PSIS")
    with pytest.raises(ValueError, match=r"^num_draws: 2.5 is not an integer ≥ 2$"):
        check_count("num_draws", 2.5, 2)
    with pytest.raises(ValueError, match=r"^num_draws: 21.0 is not an integer ≥ 2$"):
        check_count("num_draws", 21.0, 2)  # a float is not a count, even an integral one
    with pytest.raises(ValueError, match="num_steps: True is not a positive integer"):
        check_count("num_steps", True, 1)
    with pytest.raises(ValueError, match="patience: None is not a positive integer"):
        check_count("patience", None, 1)
    check_count("patience", None, 1, allow_none=True)


@pytest.mark.parametrize("lr", [0, -1e-3, float("nan"), float("inf"), True, "0.1"])
def test_a_learning_rate_must_be_a_finite_positive_number(lr):
    with pytest.raises(ValueError, match="lr: .* is not a positive learning rate"):
        check_learning_rate("lr", lr)


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.5, 0.5),
        (3, 3.0),
        (np.float32(0.25), 0.25),  # a sweep over np.linspace hands these over (tester EW)
        (np.int64(2), 2.0),
        (np.array(0.75), 0.75),
        (torch.tensor(0.125), 0.125),
        (torch.tensor(4), 4.0),
    ],
)
def test_real_numbers_of_python_numpy_and_torch_become_python_floats(value, expected):
    number = as_real(value)
    assert type(number) is float and number == expected


@pytest.mark.parametrize(
    "value", [True, np.bool_(False), torch.tensor(True), "0.5", None, [0.5], torch.tensor([0.5])]
)
def test_booleans_strings_and_arrays_are_not_real_numbers(value):
    assert as_real(value) is None


def test_pixel_levels_lie_between_two_and_the_values_of_an_8_bit_image():
    check_levels("levels", None)
    check_levels("levels", 2)
    check_levels("levels", MAX_LEVELS)
    with pytest.raises(ValueError, match="levels: 1 is not an integer ≥ 2"):
        check_levels("levels", 1)
    with pytest.raises(ValueError, match="levels: 257 pixel levels; expected at most 256"):
        check_levels("levels", 257)


def test_check_memory_refuses_past_half_the_machine_naming_the_most_that_fit(monkeypatch):
    """A machine of 2,000 bytes leaves 1,000: ten items of 100 bytes fit, eleven do not."""
    import pyro_vae.checks as checks

    assert checks.machine_memory() > 2**20  # this machine's, read from the system
    monkeypatch.setattr(checks, "machine_memory", lambda: 2000)
    checks.check_memory("n", 10, 100, "items")
    with pytest.raises(ValueError, match=r"^n: 11 items need about 0.0 GiB \(note\), more than "
                       r"half this machine's 0.0 GiB; expected at most 10 \(hint\)$"):  # fmt: skip
        checks.check_memory("n", 11, 100, "items", " (note)", " (hint)")
