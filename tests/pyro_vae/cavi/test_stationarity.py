"""The model's own gradient at draws of q: the step of each Normal mean in q's sds."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.stationarity import DRAWS, mean_steps
from tests.pyro_vae.cavi.float64 import F64, t

Y = t([0.3, -1.2, 2.0, 0.7])


def model(y):
    mu = pyro.sample("mu", dist.Normal(t(0.0), t(2.0)))
    with pyro.plate("n", len(y)):
        pyro.sample("y", dist.Normal(mu, t(0.5)), obs=y)


def _steps(fit, q, seed=0):
    def guide(*args, **kwargs):
        pyro.sample("mu", q["mu"])

    steps, unchecked = mean_steps(model, (Y,), {}, fit._latents, q, guide, seed,
                                  fit.markov_blankets_)  # fmt: skip
    assert not unchecked
    return steps


def test_the_exact_posterior_asks_for_no_step_and_a_moved_mean_for_its_newton_step():
    # a single Normal latent: q is the exact posterior N(m, 1/P), P = 1/4 + 4/0.25. At a
    # draw μ the gradient is P (m − μ), so over draws of q moved to m' it averages
    # P (m − m') with a standard error of sqrt(P / DRAWS): the step in q's sds is the
    # shift in sds, ± 1/sqrt(DRAWS) = 0.25 (5 of those allowed)
    fit = AutoCAVI(model).fit(Y)
    q = fit.variational_distributions()
    precision = 1 / 4 + len(Y) / 0.25
    assert float(q["mu"].loc) == pytest.approx(float(Y.sum() / 0.25 / precision), rel=1e-12)
    ((step, z, model_step),) = _steps(fit, q).values()
    assert step < 5 / math.sqrt(DRAWS) and z < 5
    # q's variance is the inverse curvature here: the model's sds are q's
    assert model_step == pytest.approx(step, rel=1e-9)
    for shift in (3.0, -40.0):
        moved = {"mu": dist.Normal(q["mu"].loc + shift / math.sqrt(precision), q["mu"].scale)}
        ((step, z, model_step),) = _steps(fit, moved).values()
        assert abs(step - abs(shift)) < 5 / math.sqrt(DRAWS) and z > 6
        assert model_step == pytest.approx(step, rel=1e-9)


def test_a_q_too_narrow_asks_for_the_step_in_the_sds_of_the_model_s_curvature():
    # q moved 40 posterior sds and 10⁶ times too narrow: in q's own sds the gradient
    # P·40/√P asks for 40·10⁻⁶, in the model's (its curvature P along the gradient, the
    # one latent's second derivative) for 40; the draws barely vary, so to 1e-4
    fit = AutoCAVI(model).fit(Y)
    q = fit.variational_distributions()
    precision = 1 / 4 + len(Y) / 0.25
    shifted = q["mu"].loc + 40 / math.sqrt(precision)
    ((step, z, model_step),) = _steps(
        fit, {"mu": dist.Normal(shifted, q["mu"].scale * 1e-6)}
    ).values()
    assert step == pytest.approx(40e-6, rel=1e-4) and z > 6
    assert model_step == pytest.approx(40.0, rel=1e-4)


def test_the_draws_are_seeded_and_leave_the_global_random_state_alone():
    fit = AutoCAVI(model).fit(Y)
    q = fit.variational_distributions()
    wider = {"mu": dist.Normal(q["mu"].loc + 0.1, q["mu"].scale * 3)}
    import random

    import numpy as np

    # the global streams a user's script draws from (NumPy's legacy one on purpose), at
    # another seed than the fit's random_state
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # noqa: NPY002
    before = torch.random.get_rng_state(), random.getstate(), np.random.get_state()  # noqa: NPY002
    first = _steps(fit, wider)
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.random.get_state()[1].tolist() == before[2][1].tolist()  # noqa: NPY002
    assert first == _steps(fit, wider)


def test_a_unit_with_a_factor_autograd_cannot_run_through_is_named_not_checked():
    def numpy_model(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(2.0)))
        shifted = torch.tensor(mu.detach().numpy(), dtype=F64)  # the likelihood leaves autograd
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(shifted, t(0.5)), obs=y)

    fit = AutoCAVI(model).fit(Y)
    q = fit.variational_distributions()

    def guide(*args, **kwargs):
        pyro.sample("mu", q["mu"])

    assert fit.markov_blankets_ == {"mu": ("mu", "y")}
    # its prior's term alone has a graph: a gradient of that alone would ask for a step
    steps, unchecked = mean_steps(numpy_model, (Y,), {}, fit._latents, q, guide, 0,
                                  fit.markov_blankets_)  # fmt: skip
    assert steps == {} and unchecked == {"mu": "y"}


class _OnceDifferentiableIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad


def test_the_curvature_of_a_model_autograd_differentiates_once_only_is_still_the_model_s():
    # a custom op whose backward is once_differentiable: a Hessian-vector product by
    # autograd saw the prior's second derivative alone (1/4 against 16.25) and asked for a
    # step of 320 sds where q is 40 off; a difference of gradients gives the model's own
    def once(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(2.0)))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(_OnceDifferentiableIdentity.apply(mu), t(0.5)), obs=y)

    fit = AutoCAVI(model).fit(Y)
    q = fit.variational_distributions()
    precision = 1 / 4 + len(Y) / 0.25
    moved = {"mu": dist.Normal(q["mu"].loc + 40 / math.sqrt(precision), q["mu"].scale)}

    def guide(*args, **kwargs):
        pyro.sample("mu", moved["mu"])

    steps, unchecked = mean_steps(once, (Y,), {}, fit._latents, moved, guide, 0,
                                  fit.markov_blankets_)  # fmt: skip
    ((step, z, model_step),) = steps.values()
    assert not unchecked and model_step == pytest.approx(step, rel=1e-9)  # q's sd is right
    assert abs(step - 40.0) < 5 / math.sqrt(DRAWS) and z > 6
