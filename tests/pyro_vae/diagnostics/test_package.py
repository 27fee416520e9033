"""The package's public face: the names `pyro_vae.diagnostics` offered as one module."""

import subprocess
import sys

import pyro_vae.diagnostics as diagnostics

BEFORE_THE_SPLIT = {
    "CONSTANT_NATS",
    "FORMAT",
    "PSIS_MIN_SAMPLES",
    "PointwiseKhat",
    "ROUND_OFF_ULPS",
    "load_inference_data",
    "pareto_khat",
    "plot_khat",
    "psis_khat",
    "psis_khat_per_datapoint",
    "save_inference_data",
    "to_inference_data",
    "variational_guide",
    "write_report",
    "write_summaries",
}


def test_every_name_of_the_single_module_is_still_importable_from_the_package():
    assert BEFORE_THE_SPLIT <= set(diagnostics.__all__) <= set(dir(diagnostics))
    for name in diagnostics.__all__:
        value = getattr(diagnostics, name)
        module = getattr(value, "__module__", None)
        # variational_guide moved below evaluate, which elbo_estimate's fits need
        where = ("pyro_vae.diagnostics.", "pyro_vae.guides.fixed")
        assert module is None or module.startswith(where), name
    from pyro_vae.diagnostics import psis_khat, to_inference_data, vsbc

    assert psis_khat.__module__ == "pyro_vae.diagnostics.psis"
    assert to_inference_data.__module__ == "pyro_vae.diagnostics.inference_data"
    assert vsbc.__module__ == "pyro_vae.diagnostics.calibration"


def test_importing_the_package_loads_no_arviz_and_no_estimators_cycle():
    code = (
        "import sys\n"
        "import pyro_vae.diagnostics\n"
        "assert 'arviz' not in sys.modules\n"
        "import pyro_vae.diagnostics.gradient_variance as g\n"
        "assert 'arviz' not in sys.modules\n"
        "import pyro_vae.estimators\n"
        "assert callable(g.gradient_variance)\n"
    )
    for first in ("pyro_vae.estimators", "pyro_vae.diagnostics"):
        subprocess.run([sys.executable, "-c", f"import {first}\n{code}"], check=True)
