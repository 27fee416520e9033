"""pyro_vae.compiled: the old home of the recorded ELBO, a re-export that warns once."""

import importlib
import importlib.util
import warnings

import pytest

import pyro_vae.compiled as old
import pyro_vae.estimators.compiled as new


@pytest.mark.parametrize("name", ["COMPILABLE", "CaptureError", "CompiledELBO", "compilable"])
def test_each_name_resolves_to_its_new_home_with_one_warning(monkeypatch, name):
    monkeypatch.setattr(old, "_WARNED", set())
    with pytest.warns(FutureWarning, match=f"moved to pyro_vae.estimators.compiled.{name}"):
        assert getattr(old, name) is getattr(new, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(old, name) is getattr(new, name)


def test_importing_the_module_does_not_warn():
    spec = importlib.util.spec_from_file_location("fresh_compiled", old.__file__)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_other_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute '_drop_no_ops'"):
        importlib.import_module("pyro_vae.compiled")._drop_no_ops  # noqa: B018
