import subprocess
import sys


def test_arviz_loads_without_its_refactor_notice():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import; the package's
    # single ArviZ import keeps it out of every command's output.
    code = (
        "import warnings\n"
        "warnings.filterwarnings('error', message=r'\\s*ArviZ is undergoing')\n"
        "from pyro_vae.diagnostics.arviz_compat import az, default_grid\n"
        "assert hasattr(az, 'InferenceData') and default_grid(5) == (2, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
