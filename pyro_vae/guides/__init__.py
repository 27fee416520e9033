"""Guide families, each a ``PyroModule`` called as ``guide(x, num_data=None)``."""

from pyro_vae.guides.amortized_discrete import AmortizedBernoulli, AmortizedCategorical
from pyro_vae.guides.amortized_normal import AmortizedNormal
from pyro_vae.guides.auto_discrete import AutoDiscreteMeanField
from pyro_vae.guides.empty import EmptyGuide
from pyro_vae.guides.local_normal import LocalNormal

__all__ = [
    "AmortizedBernoulli",
    "AmortizedCategorical",
    "AmortizedNormal",
    "AutoDiscreteMeanField",
    "EmptyGuide",
    "LocalNormal",
]
