"""One vocabulary of what an estimator can do, declared by its own class."""

import pytest
from pyro.infer import Trace_ELBO

from pyro_vae.estimators import IWAELBO, Capabilities, capabilities_of
from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.estimators.capabilities import declare

STATELESS = dict(keeps_state=False, needs_reparameterized=False, per_datapoint=False)


def test_a_recordable_estimator_cannot_keep_state():
    with pytest.raises(ValueError, match="recordable: True with keeps_state=True"):
        Capabilities(**{**STATELESS, "keeps_state": True}, recordable=True)


@pytest.mark.parametrize("field", ["keeps_state", "needs_reparameterized", "per_datapoint"])
def test_flags_must_be_bools(field):
    with pytest.raises(ValueError, match=f"{field}: 1 is not a bool"):
        Capabilities(**{**STATELESS, field: 1}, recordable=False)


def test_every_flag_is_stated():
    with pytest.raises(TypeError):
        Capabilities(keeps_state=False)


def test_an_estimator_that_declares_nothing_has_no_capabilities():
    class Undeclared(SurrogateELBO):
        _get_trace = IWAELBO._get_trace

    assert capabilities_of(Undeclared(num_particles=1)) is None
    assert capabilities_of(object()) is None


def test_a_subclass_inherits_no_declaration():
    # It may add state its parent lacked (a moving average), so it must say so itself.
    class WithAnAverage(IWAELBO):
        pass

    assert capabilities_of(IWAELBO()).recordable
    assert capabilities_of(WithAnAverage()) is None


def test_pyros_classes_get_theirs_by_declaration():
    assert capabilities_of(Trace_ELBO()).recordable

    class NotTrace(Trace_ELBO):
        pass

    assert capabilities_of(NotTrace()) is None


def test_a_class_declares_once():
    known = capabilities_of(Trace_ELBO())
    assert declare(Trace_ELBO, known) is Trace_ELBO  # the same again is harmless
    other = Capabilities(**STATELESS, recordable=False)
    with pytest.raises(ValueError, match="cls: Trace_ELBO already declares"):
        declare(Trace_ELBO, other)
    with pytest.raises(ValueError, match="capabilities: 'yes' is not a Capabilities"):
        declare(Trace_ELBO, "yes")


def test_a_declaration_of_another_type_is_named():
    class Wrong(SurrogateELBO):
        _get_trace = IWAELBO._get_trace
        capabilities = {"recordable": True}

    with pytest.raises(TypeError, match="Wrong.capabilities: .* is not a"):
        capabilities_of(Wrong(num_particles=1))
