"""The lean SVI step takes exactly the steps of pyro.infer.SVI with pyro.optim.Adam."""

import copy

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO

from models.vae import VAE
from pyro_vae.svi_step import GroupedAdam, SVIStep


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
