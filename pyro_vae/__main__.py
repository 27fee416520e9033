"""``python -m pyro_vae``: the ``pyro-vae`` command, as torchrun starts it
(``torchrun --nproc_per_node N -m pyro_vae fit ...``)."""

import os
import sys
import time
import traceback

from pyro_vae.cli import FOLLOWED_A_LOST_RANK, main
from pyro_vae.distributed import die_with_agent, started_by_torchrun

#: Seconds a rank that stopped because another had waits before leaving.
_AFTER_THE_LOST_RANK = 3.0

if __name__ == "__main__":
    try:
        several = started_by_torchrun()
    except ValueError as err:  # WORLD_SIZE=abc raised in a traceback (tester CD)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not several:
        sys.exit(main())
    die_with_agent()  # a SIGTERM when torchrun's agent dies, by kill -9 too (tester BJ)
    # a rank skips the interpreter's teardown: there a gloo rank's C++ threads aborted it
    # ("terminate called without an active exception", exit 134) in about 1 run of 20,
    # which torchrun's agent reported as the run failing (tester AA)
    try:
        status = main()
    except SystemExit as stop:  # argparse's usage error (its message printed) or --help
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:  # a crash: its traceback, and exit 1 as Python's would be
        traceback.print_exc()
        status = 1
    if FOLLOWED_A_LOST_RANK["followed"]:  # the agent names the rank that left first
        time.sleep(_AFTER_THE_LOST_RANK)  # (tester AB: the crashed rank 1, not rank 0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
