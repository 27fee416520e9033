"""pyro_vae: amortized variational inference on Pyro.

Models and guides are ordinary Pyro callables (functions, bound methods, ``PyroModule``s,
autoguides); their per-datapoint plate is found by one rule
(:func:`pyro_vae.plates.find_data_plate`) and given its full size and row indices by the
fit loop. Training is ``pyro.infer.SVI`` with any ``pyro.infer.ELBO``; evaluation and run
folders work for any such pair.
"""

from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.data import DataSplits, Preprocessing, load_data
from pyro_vae.datasets import DatasetNotFoundError
from pyro_vae.diagnostics.calibration import VSBCResult, vsbc, vsbc_with
from pyro_vae.evaluate import elbo_estimate, elbo_per_datapoint, iwae_log_likelihood
from pyro_vae.latent_summaries import active_units, latent_means, reconstruction_error
from pyro_vae.plates import DataPlateError, data_plate, find_data_plate
from pyro_vae.tensor_data import TensorData
from pyro_vae.traces import VectorizationWarning
from pyro_vae.train import FitResult, TrainConfig, TrainingDiverged, fit
from pyro_vae.training_pair import MinibatchScaleWarning

__version__ = "0.1.0"

# pyro_vae.diagnostics imports ArviZ (seconds, and a notice about its 1.0 refactor), so
# its names load on first use rather than with every `pyro-vae` command.
_DIAGNOSTICS = (
    "PointwiseKhat",
    "load_inference_data",
    "loo_approximate_posterior",
    "psis_khat",
    "psis_khat_per_datapoint",
    "save_inference_data",
    "to_inference_data",
    "variational_guide",
)


def __getattr__(name: str):
    if name in _DIAGNOSTICS:
        from pyro_vae import diagnostics

        return getattr(diagnostics, name)
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")


__all__ = [
    "DataPlateError",
    "DataSplits",
    "DatasetNotFoundError",
    "FitResult",
    "MinibatchScaleWarning",
    "PointwiseKhat",
    "Preprocessing",
    "RunFolder",
    "RunFolderError",
    "TensorData",
    "TrainConfig",
    "TrainingDiverged",
    "VSBCResult",
    "VectorizationWarning",
    "active_units",
    "data_plate",
    "elbo_estimate",
    "elbo_per_datapoint",
    "find_data_plate",
    "fit",
    "iwae_log_likelihood",
    "latent_means",
    "load_data",
    "load_inference_data",
    "loo_approximate_posterior",
    "psis_khat",
    "psis_khat_per_datapoint",
    "reconstruction_error",
    "save_inference_data",
    "to_inference_data",
    "variational_guide",
    "vsbc",
    "vsbc_with",
]
