"""The registry: every estimator by name, each with the capabilities it declares."""

import inspect
import warnings

import pytest

from pyro_vae import estimators
from pyro_vae.estimators import CONTROL_VARIATES, capabilities_of
from pyro_vae.estimators.compiled import CompiledELBO, compilable

# name, options -> keeps_state, needs_reparameterized, per_datapoint, recordable
EXPECTED = {
    ("trace", ()): (False, False, False, True),
    ("trace", (("gradient", "stl"),)): (False, True, False, True),
    ("analytic-kl", ()): (False, True, False, True),
    ("enum", ()): (False, False, False, False),
    ("iwae", ()): (False, True, True, True),
    ("iwae", (("gradient", "dreg"),)): (False, True, True, True),
    ("iwae", (("gradient", "stl"),)): (False, True, True, True),
    ("tracegraph", ()): (True, False, False, False),
    ("score", (("control_variate", "none"),)): (False, False, False, True),
    ("score", (("control_variate", "ema"),)): (True, False, False, False),
    ("score", (("control_variate", "leave-one-out"), ("num_particles", 2))): (
        False,
        False,
        False,
        True,
    ),
    ("score", (("control_variate", "neural"),)): (True, False, False, False),
    ("vimco", ()): (False, False, True, True),
}


def test_the_table_covers_the_registry_and_every_control_variate():
    assert {name for name, _ in EXPECTED} == set(estimators.names())
    assert {dict(o)["control_variate"] for n, o in EXPECTED if n == "score"} == set(
        CONTROL_VARIATES
    )


@pytest.mark.parametrize(("name", "options"), list(EXPECTED))
def test_every_registered_estimator_declares_its_capabilities(name, options):
    elbo = estimators.get(name, **dict(options))
    capabilities = capabilities_of(elbo)
    assert capabilities is not None
    flags = (
        capabilities.keeps_state,
        capabilities.needs_reparameterized,
        capabilities.per_datapoint,
        capabilities.recordable,
    )
    assert flags == EXPECTED[name, options]
    assert (compilable(elbo) is None) is capabilities.recordable
    if capabilities.recordable:
        compiled = CompiledELBO(elbo)
        assert capabilities_of(compiled) == capabilities.__class__(
            **{**capabilities.__dict__, "recordable": False}
        )
        assert compilable(compiled) == "it is compiled already"


@pytest.mark.parametrize("name", ["GradientStats", "gradient_variance"])
def test_moved_names_resolve_with_one_warning(monkeypatch, name):
    monkeypatch.setattr(estimators, "_WARNED", set())
    with pytest.warns(FutureWarning, match=f"pyro_vae.diagnostics.gradient_variance.{name}"):
        first = getattr(estimators, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(estimators, name) is first
    assert first.__name__ == name


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        estimators.nothing  # noqa: B018


PYROS_OWN = ("trace", "analytic-kl", "enum", "tracegraph")  # Pyro's ELBO's options too
FLAG_OPTIONS = [
    (name, flag)
    for name in estimators.names()
    for flag in ("vectorize_particles", "strict_enumeration_warning")
] + [(name, flag) for name in PYROS_OWN for flag in ("ignore_jit_warnings", "retain_graph")]
FLAG_OPTIONS += [("score", "normalize_variance")]


@pytest.mark.parametrize(("name", "flag"), FLAG_OPTIONS)
def test_a_boolean_option_refuses_a_string(name, flag):
    # "--estimator-opt normalize_variance=False" is not JSON, so it arrives as the string
    # 'False', which is truthy: NVIL's normalization stayed on with no word (tester's F3).
    with pytest.raises(ValueError, match=rf"{flag}: 'False' is not a boolean; expected true or"):
        estimators.get(name, **{flag: "False"})
    assert estimators.get(name, **{flag: False}) is not None


def test_an_unknown_option_is_refused_naming_the_options_taken():
    """Tester FE: ``iwae:k=3`` was answered with Python's TypeError text. The options
    listed are the constructor's own, and Pyro's ELBO's where it passes them on."""
    with pytest.raises(ValueError) as raised:
        estimators.get("iwae", k=3)
    assert "['k'] not among its options (num_particles, " in str(raised.value)
    assert "gradient" in str(raised.value) and "TypeError" not in str(raised.value)
    assert {"control_variate", "num_particles", "vectorize_particles"} <= set(
        estimators.accepted_options("score")
    )
    assert "retain_graph" in estimators.accepted_options("trace")  # Pyro's Trace_ELBO's
    for name in estimators.names():  # every option listed is taken, at its default
        defaults = {}
        for cls in type(estimators.get(name)).__mro__:
            if "__init__" in vars(cls):
                for p in inspect.signature(cls.__init__).parameters.values():
                    defaults.setdefault(p.name, p.default)
        for option in estimators.accepted_options(name):
            if defaults[option] is not inspect.Parameter.empty and option != "max_iarange_nesting":
                estimators.get(name, **{option: defaults[option]})
