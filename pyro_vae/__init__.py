"""pyro_vae: amortized variational inference on Pyro.

Models and guides are ordinary Pyro callables ``f(x, num_data=None)`` whose per-datapoint
sites live in :func:`pyro_vae.plates.data_plate`; training is ``pyro.infer.SVI`` with any
``pyro.infer.ELBO``; evaluation and run folders work for any such pair.
"""

from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.data import DatasetNotFoundError, DataSplits, Preprocessing, load_data
from pyro_vae.evaluate import (
    active_units,
    elbo_estimate,
    elbo_per_datapoint,
    iwae_log_likelihood,
    latent_means,
    reconstruction_error,
)
from pyro_vae.plates import data_plate
from pyro_vae.tensor_data import TensorData
from pyro_vae.train import FitResult, TrainConfig, TrainingDiverged, fit

__version__ = "0.1.0"

__all__ = [
    "DataSplits",
    "DatasetNotFoundError",
    "FitResult",
    "Preprocessing",
    "RunFolder",
    "RunFolderError",
    "TensorData",
    "TrainConfig",
    "TrainingDiverged",
    "active_units",
    "data_plate",
    "elbo_estimate",
    "elbo_per_datapoint",
    "fit",
    "iwae_log_likelihood",
    "latent_means",
    "load_data",
    "reconstruction_error",
]
