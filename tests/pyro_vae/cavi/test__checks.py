"""The CAVI estimators' argument checks: what each accepts, what it returns, and that every
refusal names the argument, the value and what was expected."""

import math

import numpy as np
import pytest
import torch

from pyro_vae.cavi._checks import (
    as_float64,
    finite,
    log_probabilities,
    non_negative,
    positive,
    positive_int,
    real,
    seed_of,
)


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(200)])
def test_positive_int_returns_a_python_int(value):
    out = positive_int("n", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -2, 2.0, True, "3", None, np.float64(2.0), torch.tensor(2)])
def test_positive_int_refuses_non_integers_bools_and_values_below_one(value):
    with pytest.raises(ValueError) as info:
        positive_int("n_components", value)
    assert str(info.value) == f"n_components: {value!r} is not a positive integer"


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0.0), (2, 2.0), (0.5, 0.5), (np.float32(1.5), 1.5), (torch.tensor(3.0), 3.0)],
)
def test_non_negative_accepts_finite_reals_from_zero_up(value, expected):
    out = non_negative("tol", value)
    assert out == expected and type(out) is float


@pytest.mark.parametrize(
    "value", [-1e-9, math.inf, math.nan, True, "1", torch.tensor([1.0]), torch.tensor(-1.0)]
)
def test_non_negative_refuses_negatives_non_finite_and_non_reals(value):
    with pytest.raises(ValueError) as info:
        non_negative("tol", value)
    assert str(info.value) == f"tol: {value!r} is not a finite non-negative number"


@pytest.mark.parametrize("value, expected", [(1e-12, 1e-12), (3, 3.0), (torch.tensor(0.25), 0.25)])
def test_positive_accepts_finite_reals_above_zero(value, expected):
    out = positive("scale", value)
    assert out == expected and type(out) is float


@pytest.mark.parametrize("value", [0, 0.0, -3.0, math.inf, -math.inf, math.nan, False, 1j, None])
def test_positive_refuses_zero_negatives_non_finite_and_non_reals(value):
    with pytest.raises(ValueError) as info:
        positive("scale", value)
    assert str(info.value) == f"scale: {value!r} is not a positive number"


@pytest.mark.parametrize(
    "value, expected",
    [
        (2, 2.0),
        (-0.5, -0.5),
        (np.int32(4), 4.0),
        (np.float64(-2.5), -2.5),
        (torch.tensor(7), 7.0),
        (torch.tensor(1.25, dtype=torch.float64), 1.25),
    ],
)
def test_real_reads_python_numpy_and_0d_tensor_scalars(value, expected):
    out = real(value)
    assert out == expected and type(out) is float


@pytest.mark.parametrize(
    "value",
    [
        True,
        np.bool_(True),
        torch.tensor(True),
        torch.tensor(1j),
        torch.tensor([1.0]),
        1j,
        "1",
        None,
    ],
)
def test_real_gives_none_for_bools_complex_strings_and_non_scalars(value):
    assert real(value) is None


def test_finite_returns_the_tensor_itself_and_ignores_integer_tensors():
    t = torch.tensor([1.0, -2.0])
    assert finite("x", t) is t
    i = torch.tensor([1, 2])
    assert finite("x", i) is i


@pytest.mark.parametrize(
    "values, what",
    [
        ([math.nan, 1.0, 2.0], "1 of its 3 entries is NaN"),
        ([math.nan, math.nan, 2.0, 0.0], "2 of its 4 entries are NaN"),
        ([math.inf, 1.0], "1 of its 2 entries is infinite"),
        ([math.inf, -math.inf, 1.0], "2 of its 3 entries are infinite"),
        ([math.nan, math.inf, -math.inf, 0.0], "1 of its 4 entries is NaN and 2 infinite"),
    ],
)
def test_finite_counts_nan_and_infinite_entries(values, what):
    with pytest.raises(ValueError) as info:
        finite("X", torch.tensor(values))
    assert str(info.value) == f"X: {what}; expected finite values"


def test_log_probabilities_allow_minus_infinity_but_not_nan_or_plus_infinity():
    t = torch.tensor([[0.0, -math.inf], [-1.0, -2.0]])
    assert log_probabilities("log_pi", t) is t
    with pytest.raises(ValueError, match=r"^log_pi: 1 of its 2 entries is infinite"):
        log_probabilities("log_pi", torch.tensor([math.inf, -math.inf]))
    with pytest.raises(ValueError, match=r"^log_pi: 1 of its 2 entries is NaN"):
        log_probabilities("log_pi", torch.tensor([math.nan, -math.inf]))


@pytest.mark.parametrize(
    "value",
    [
        [[1, 2], [3, 4]],
        np.array([[1.5, 2.0]], dtype=np.float32),
        np.array([True, False]),
        np.array([3], dtype=np.uint16),
        torch.tensor([1, 2], dtype=torch.int32),
        torch.tensor([0.1, 0.2], dtype=torch.float32),
    ],
)
def test_as_float64_converts_real_arrays_and_tensors(value):
    out = as_float64("X", value)
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), np.asarray(value, dtype=np.float64))


def test_as_float64_leaves_a_float64_tensor_as_it_is():
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert as_float64("X", t) is t


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.tensor([1j]), r"^X: dtype torch.complex64 is not real$"),
        (np.array(["a", "b"]), r"^X: dtype <U1 is not real numbers$"),
        (np.array([1 + 2j]), r"^X: dtype complex128 is not real numbers$"),
        ([[1, 2], [3]], r"^X: .*inhomogeneous"),
    ],
)
def test_as_float64_refuses_what_is_not_real_numbers(value, message):
    with pytest.raises(ValueError, match=message):
        as_float64("X", value)


def test_seed_of_draws_from_numpy_streams_as_scikit_learn_does():
    """A NumPy RandomState or Generator is a random state, as scikit-learn's
    check_random_state takes one (tester EP: refused as "not a seed"): the seed is the
    stream's next draw below 2³¹ − 1, and the stream advances."""
    stream = np.random.RandomState(7)
    assert seed_of("random_state", stream) == np.random.RandomState(7).randint(2**31 - 1)
    assert seed_of("random_state", stream) != seed_of("random_state", np.random.RandomState(7))
    generator = np.random.default_rng(7)
    assert seed_of("random_state", generator) == np.random.default_rng(7).integers(2**31 - 1)
    assert seed_of("random_state", np.int64(3)) == 3
    assert seed_of("random_state", None) is None
    with pytest.raises(ValueError, match="random_state: 'a' is not a seed; expected None, an"):
        seed_of("random_state", "a")
