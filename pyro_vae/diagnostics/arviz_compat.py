"""ArviZ, imported in one place (the code is written for ArviZ 0.23's ``InferenceData``).

Every ArviZ call of :mod:`pyro_vae` goes through this module's ``az``, so that a path for
ArviZ 1.x (which needs Python ≥ 3.12) can be added here alone.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # ArviZ's once-a-day notice about its 1.0 refactor
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    import arviz as az
    from arviz.plots.plot_utils import default_grid

__all__ = ["az", "default_grid"]
