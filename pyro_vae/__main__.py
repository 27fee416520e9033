"""``python -m pyro_vae``: the ``pyro-vae`` command, as torchrun starts it
(``torchrun --nproc_per_node N -m pyro_vae fit ...``)."""

import sys

from pyro_vae.cli import main

if __name__ == "__main__":
    sys.exit(main())
