"""Guide families, each a ``PyroModule`` called as ``guide(x, num_data=None)``."""

from pyro_vae.guides.amortized_discrete import AmortizedBernoulli, AmortizedCategorical
from pyro_vae.guides.amortized_flow import AmortizedFlow
from pyro_vae.guides.amortized_iaf import AmortizedIAF
from pyro_vae.guides.amortized_low_rank import AmortizedLowRankNormal
from pyro_vae.guides.amortized_normal import AmortizedNormal
from pyro_vae.guides.amortized_spline import AmortizedSplineFlow
from pyro_vae.guides.auto_discrete import AutoDiscreteMeanField
from pyro_vae.guides.empty import EmptyGuide
from pyro_vae.guides.local_flow import LocalFlow
from pyro_vae.guides.local_low_rank import LocalLowRankNormal
from pyro_vae.guides.local_normal import LocalNormal

__all__ = [
    "AmortizedBernoulli",
    "AmortizedCategorical",
    "AmortizedFlow",
    "AmortizedIAF",
    "AmortizedLowRankNormal",
    "AmortizedNormal",
    "AmortizedSplineFlow",
    "AutoDiscreteMeanField",
    "EmptyGuide",
    "LocalFlow",
    "LocalLowRankNormal",
    "LocalNormal",
]
