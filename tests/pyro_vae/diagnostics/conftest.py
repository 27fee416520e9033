"""Data shared by the diagnostics tests: a regression data set and linear-Gaussian inputs."""

import pyro.distributions as dist
import pytest
import torch

from tests.pyro_vae.test_evaluate import SIGMA, B, W

N, D = 40, 3  # as test_inference_data.N, D


@pytest.fixture
def data():
    X = torch.randn(N, D, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.7 * torch.randn(N).double()
    return X, y


@pytest.fixture
def gaussian_x():
    return dist.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(3)).sample((20,))
