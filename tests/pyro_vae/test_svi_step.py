"""The lean SVI step takes exactly the steps of pyro.infer.SVI with pyro.optim.Adam."""

import copy

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from models.vae import VAE
from pyro_vae.svi_step import GroupedAdam, SVIStep, gradient_norm


def _run(make_optim, lean: bool, steps: int = 12, state=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = VAE(16, latent_dim=3, hidden_dims=(8,))
    guide = model.make_guide()
    x = (torch.rand(20, 16) > 0.5).float()
    optim = make_optim()
    if state is not None:
        # torch's load_state_dict shares the tensors, and steps update them in place.
        optim.set_state(copy.deepcopy(state))
    svi = (SVIStep if lean else SVI)(model, guide, optim, Trace_ELBO())
    losses = [svi.step(x, num_data=100) for _ in range(steps)]
    weights = {**model.state_dict(), **guide.state_dict()}
    return losses, weights, optim.get_state()


def test_grouped_adam_steps_bit_for_bit_like_pyro_adam():
    losses, weights, state = _run(lambda: pyro.optim.Adam({"lr": 0.01}), lean=False)
    ours = _run(lambda: GroupedAdam({"lr": 0.01}), lean=True)
    assert ours[0] == losses
    for key, value in weights.items():
        assert torch.equal(ours[1][key], value), key
    assert sorted(ours[2]) == sorted(state)
    for name, saved in state.items():
        assert ours[2][name]["param_groups"] == saved["param_groups"]
        for key, value in saved["state"][0].items():
            assert torch.equal(ours[2][name]["state"][0][key], value), (name, key)


def test_optimizer_state_loads_across_both_optimizers():
    _, _, pyro_state = _run(lambda: pyro.optim.Adam({"lr": 0.01}), lean=False, steps=3)
    _, _, our_state = _run(lambda: GroupedAdam({"lr": 0.01}), lean=True, steps=3)
    reference = _run(lambda: pyro.optim.Adam({"lr": 0.01}), lean=False, steps=4, state=pyro_state)
    from_pyro = _run(lambda: GroupedAdam({"lr": 0.01}), lean=True, steps=4, state=pyro_state)
    from_ours = _run(lambda: pyro.optim.Adam({"lr": 0.01}), lean=False, steps=4, state=our_state)
    for other in (from_pyro, from_ours):
        assert other[0] == reference[0]
        for key, value in reference[1].items():
            assert torch.equal(other[1][key], value), key


def test_parameters_left_out_of_a_step_are_not_moved():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    pyro.clear_param_store()
    pyro.param("a", a)
    pyro.param("b", b)
    optim = GroupedAdam({"lr": 0.1})
    (a.sum() + b.sum()).backward()
    optim([a, b])
    before = b.detach().clone()
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    optim([a])
    assert torch.equal(b.detach(), before)
    assert torch.equal(b.grad, torch.ones(3))


def test_an_elbo_that_names_its_parameters_is_asked_for_them():
    # CompiledELBO's replays issue no pyro.param statements a trace could capture.
    class Named(Trace_ELBO):
        calls = 0

        def loss_and_grads_and_params(self, model, guide, *args, **kwargs):
            Named.calls += 1
            loss = self.loss_and_grads(model, guide, *args, **kwargs)
            return loss, [p.unconstrained() for p in pyro.get_param_store().values()]

    def run(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = VAE(16, latent_dim=3, hidden_dims=(8,))
        guide = model.make_guide()
        x = (torch.rand(20, 16) > 0.5).float()
        svi = SVIStep(model, guide, GroupedAdam({"lr": 0.01}), elbo)
        return [svi.step(x, num_data=100) for _ in range(3)], guide.state_dict()

    losses, weights = run(Trace_ELBO())
    ours, our_weights = run(Named())
    assert Named.calls == 3 and ours == losses
    for key, value in weights.items():
        assert torch.equal(our_weights[key], value), key


class NormSeen(GroupedAdam):
    """Adam that notes the global gradient norm its step is given (unscaled, under
    16-mixed: GradScaler unscales before calling it)."""

    seen: list[float]

    def __call__(self, params, *args, **kwargs):
        params = list(params)
        grads = [p.grad for p in params if p.grad is not None]
        self.seen.append(torch.nn.utils.get_total_norm(grads).item())
        super().__call__(params, *args, **kwargs)


def _measured_steps(precision=None, steps=3):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)

    def model(x):
        loc = pyro.param("m", torch.zeros(2))
        scale = pyro.param("s", torch.ones(2), constraint=torch.distributions.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(loc, scale).to_event(1), obs=x)

    def guide(x):
        pass

    optim = NormSeen({"lr": 0.1})
    optim.seen = []
    svi = SVIStep(model, guide, optim, Trace_ELBO(), precision)
    x = torch.arange(8.0).reshape(4, 2)
    norms = []
    for i in range(steps):
        svi.measure_grad_norm = i != 1  # the middle step is not measured
        svi.step(x)
        norms.append(svi.grad_norm)
    return norms, optim.seen


def test_the_gradient_norm_is_measured_when_asked_before_the_step():
    norms, seen = _measured_steps()
    assert norms[1] is None
    assert norms[0] == pytest.approx(seen[0], rel=1e-6) and norms[2] == pytest.approx(seen[2])
    assert norms[0] > 0


def test_under_16_mixed_the_gradient_norm_is_the_unscaled_one(monkeypatch):
    from pyro_vae import precision as precision_module
    from pyro_vae.precision import Precision

    monkeypatch.setattr(precision_module, "refuse_on_device", lambda *args: None)
    mixed = Precision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    norms, seen = _measured_steps(mixed)
    assert mixed.skipped_steps == 0
    assert norms[0] == pytest.approx(seen[0], rel=1e-6) and norms[2] == pytest.approx(seen[2])
    float32 = _measured_steps()[0]
    assert [norms[0], norms[2]] == pytest.approx([float32[0], float32[2]], rel=1e-6)


def test_gradient_norm_is_the_global_two_norm():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert gradient_norm([a, b]) == 5.0 and gradient_norm([]) == 0.0
