import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_vae.annealing import ScaleLatents, linear_warmup


def model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.3))


def test_only_latent_sites_are_scaled():
    pyro.set_rng_seed(0)
    plain = poutine.trace(model).get_trace()
    pyro.set_rng_seed(0)
    scaled = poutine.trace(ScaleLatents(0.25)(model)).get_trace()
    plain.compute_log_prob()
    scaled.compute_log_prob()
    torch.testing.assert_close(
        scaled.nodes["z"]["log_prob_sum"], 0.25 * plain.nodes["z"]["log_prob_sum"]
    )
    torch.testing.assert_close(scaled.nodes["x"]["log_prob_sum"], plain.nodes["x"]["log_prob_sum"])


def test_annealed_elbo_is_likelihood_plus_beta_times_kl_term():
    def guide():
        pyro.sample("z", dist.Normal(0.5, 0.7))

    annealer = ScaleLatents(0.4)
    pyro.set_rng_seed(1)
    guide_tr = poutine.trace(annealer(guide)).get_trace()
    model_tr = poutine.trace(poutine.replay(annealer(model), trace=guide_tr)).get_trace()
    elbo = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    z = guide_tr.nodes["z"]["value"]
    expected = dist.Normal(z, 1.0).log_prob(torch.tensor(0.3)) + 0.4 * (
        dist.Normal(0.0, 1.0).log_prob(z) - dist.Normal(0.5, 0.7).log_prob(z)
    )
    torch.testing.assert_close(elbo, expected)


def test_linear_warmup_schedule():
    assert [linear_warmup(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert linear_warmup(0, 0) == 1.0


def test_kl_warmup_rises_over_its_epochs_of_steps():
    from pyro_vae.annealing import KLWarmup

    warmup = KLWarmup(epochs=1.5, steps_per_epoch=4)
    assert warmup.steps == 6 and isinstance(warmup.handler, ScaleLatents)
    betas = [warmup.at_step(s) for s in range(8)]
    assert betas == [linear_warmup(s, 6) for s in range(8)] and betas[-3:] == [1.0] * 3
    assert warmup.beta == 1.0 and warmup.handler.beta == 1.0


def test_without_warmup_beta_is_one_and_no_handler_runs():
    from pyro_vae.annealing import KLWarmup

    warmup = KLWarmup(epochs=0, steps_per_epoch=10)
    assert warmup.handler is None and warmup.at_step(0) == 1.0 and warmup.beta == 1.0
