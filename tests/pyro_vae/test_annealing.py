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


def _z_scale(fn) -> float:
    return float(poutine.trace(fn).get_trace().nodes["z"]["scale"])


def test_unscaled_switches_off_every_handler_wherever_it_sits():
    """The scale of z read off the trace: 0.25 from a handler outside, inside the model's
    code, or two levels down; 1 under unscaled(), whatever the wrapping."""
    import functools

    from pyro_vae.annealing import unscaled

    def inside():
        with ScaleLatents(0.25):
            model()

    wrappings = [
        ScaleLatents(0.25)(model),
        functools.partial(ScaleLatents(0.25)(model)),
        poutine.block(ScaleLatents(0.25)(model), hide_types=["param"]),
        lambda: ScaleLatents(0.25)(model)(),
        inside,
    ]
    assert [_z_scale(fn) for fn in wrappings] == [0.25] * 5
    with unscaled():
        assert [_z_scale(fn) for fn in wrappings] == [1.0] * 5


def test_unscaled_is_reentrant_left_on_an_exception_and_per_thread():
    import threading

    from pyro_vae.annealing import unscaled

    scaled = ScaleLatents(0.25)(model)
    with unscaled():
        with unscaled():
            assert _z_scale(scaled) == 1.0
        assert _z_scale(scaled) == 1.0  # the inner block's exit keeps the outer one's state
        seen_by_thread = []
        thread = threading.Thread(target=lambda: seen_by_thread.append(_z_scale(scaled)))
        thread.start()
        thread.join()
        assert seen_by_thread == [0.25]  # another thread trains on with its β
    try:
        with unscaled():
            raise KeyError("inside")
    except KeyError:
        pass
    assert _z_scale(scaled) == 0.25


def test_handlers_seen_lists_the_handlers_that_met_a_latent_site():
    from pyro_vae.annealing import handlers_seen, unscaled

    outer, inner, idle = ScaleLatents(2.0), ScaleLatents(3.0), ScaleLatents(5.0)

    def observed_only():
        with idle:  # meets only the observed site x: not listed
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))

    with handlers_seen() as seen, unscaled():
        poutine.trace(outer(inner(model))).get_trace()
        poutine.trace(outer(model)).get_trace()
        poutine.trace(observed_only).get_trace()
    assert seen == [inner, outer]  # inner handlers process a message first; once each
