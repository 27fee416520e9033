"""A writer killed by SIGKILL inside a staging folder, for the tests of the folders it
leaves (:func:`pyro_vae.checkpoint.staging_folder`)."""

import signal
import subprocess
import sys


def killed_in_staging(parent) -> None:
    """Enter a staging folder under ``parent`` in a child process, write a file there and
    die by SIGKILL (no ``finally`` runs), as a killed ``diagnose`` does."""
    code = (
        "import os, signal, sys\n"
        "from pyro_vae.checkpoint import staging_folder\n"
        "with staging_folder(sys.argv[1], 'diagnose') as s:\n"
        "    (s / 'diagnostics.nc').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(parent)], timeout=120)
    assert done.returncode == -signal.SIGKILL
