"""hand_over: a moved name resolves from its new module with one FutureWarning."""

import warnings

import pytest

import pyro_vae.checks as new
from pyro_vae.moved import hand_over


def _getattr(warned, key=""):
    return lambda name: hand_over("pkg.old", "pyro_vae.checks", {"check_count"}, name, warned, key)


def test_each_name_warns_once_naming_its_new_path_and_is_the_same_object():
    get = _getattr(set())
    with pytest.warns(FutureWarning, match=r"pkg.old.check_count has moved to pyro_vae.checks"):
        assert get("check_count") is new.check_count
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get("check_count") is new.check_count


def test_a_key_makes_it_once_per_module():
    warned = {"pkg.old"}  # the module has warned already, for another name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _getattr(warned, key="pkg.old")("check_count") is new.check_count


def test_other_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="module 'pkg.old' has no attribute 'absent'"):
        _getattr(set())("absent")
