"""Guide draws outside a plate that read a plate's scored draws (tester DA: q(z) q(g | Σ z)
gave every plate-Rao-Blackwellizing estimator a biased gradient, 5 to 18 standard errors
from the exact one, with no word)."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import estimators
from pyro_vae.estimators.compiled import CompiledELBO
from pyro_vae.estimators.plate_escapes import PlateEscape, plate_escapes, scored_by_pyro
from pyro_vae.svi_step import GroupedAdam, SVIStep

X = torch.tensor([0.4, 1.7])


def model(x):
    g = pyro.sample("g", dist.Bernoulli(logits=torch.tensor(0.2)))
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Bernoulli(logits=-0.3 + 1.1 * g))
        pyro.sample("x", dist.Normal(1.5 * z - 0.8 * g, 1.0), obs=x)


def reading_guide(x):  # g drawn after the z's, given their sum
    u = pyro.param("u", torch.tensor([0.3, -0.5]))
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Bernoulli(logits=u))
    pyro.sample("g", dist.Bernoulli(logits=0.1 + 0.9 * z.sum(-1)))


def independent_guide(x):  # g drawn after the z's, not reading them
    u = pyro.param("u", torch.tensor([0.3, -0.5]))
    with pyro.plate("data", 2):
        pyro.sample("z", dist.Bernoulli(logits=u))
    pyro.sample("g", dist.Bernoulli(logits=torch.tensor(0.4)))


def global_first_guide(x):  # q(g) q(z_n | g): what the plates declare
    u = pyro.param("u", torch.tensor([0.3, -0.5]))
    g = pyro.sample("g", dist.Bernoulli(logits=torch.tensor(0.4)))
    with pyro.plate("data", 2):
        pyro.sample("z", dist.Bernoulli(logits=u + g))


def exact_elbo(u):
    """The ELBO of ``reading_guide``, summed over the 8 states (an independent answer)."""
    total = 0.0
    for g, z0, z1 in itertools.product([0.0, 1.0], repeat=3):
        g, z = torch.tensor(g), torch.tensor([z0, z1])
        log_p = (
            dist.Bernoulli(logits=torch.tensor(0.2)).log_prob(g)
            + dist.Bernoulli(logits=-0.3 + 1.1 * g).log_prob(z).sum()
            + dist.Normal(1.5 * z - 0.8 * g, 1.0).log_prob(X).sum()
        )
        log_q = dist.Bernoulli(logits=u).log_prob(z).sum()
        log_q = log_q + dist.Bernoulli(logits=0.1 + 0.9 * z.sum()).log_prob(g)
        total = total + log_q.exp() * (log_p - log_q)
    return total


def test_a_global_draw_reading_the_plate_s_draws_is_found_and_others_are_not():
    pyro.clear_param_store()
    found = plate_escapes(reading_guide, (X,), {}, scored_by_pyro)
    assert found == [PlateEscape("z", "data", "g")]
    for guide in (independent_guide, global_first_guide):
        assert plate_escapes(guide, (X,), {}, scored_by_pyro) == []


def test_a_read_through_a_sum_that_moving_every_element_keeps_is_found_by_the_first_alone():
    """z = [1, 0] always: every element moved gives [0, 1], the same sum; the first alone
    moved gives [0, 0]."""

    def guide(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(probs=torch.tensor([1.0, 0.0])))
        pyro.sample("g", dist.Normal(z.sum(-1), 1.0))

    assert plate_escapes(guide, (X,), {}, lambda site: True) == [PlateEscape("z", "data", "g")]


def test_reparameterized_draws_are_not_scored_by_pyro_s_elbos():
    def guide(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0))
        pyro.sample("g", dist.Normal(z.sum(-1), 1.0))

    assert plate_escapes(guide, (X,), {}, scored_by_pyro) == []
    assert plate_escapes(guide, (X,), {}, lambda site: True) == [PlateEscape("z", "data", "g")]


@pytest.mark.parametrize("name", ["trace", "tracegraph", "enum"])
def test_pyro_s_plate_rao_blackwellizing_elbos_refuse_such_a_guide(name):
    pyro.clear_param_store()
    estimator = estimators.get(name)
    refusal = "guide: site 'g', drawn outside plate 'data', reads the draws of 'z' inside it"
    with pytest.raises(ValueError, match=refusal):
        estimator.loss_and_grads(model, reading_guide, X)
    if name == "trace":  # a compiled step checks the guide outside its recording
        pyro.clear_param_store()
        elbo = CompiledELBO(estimators.get(name))
        with pytest.raises(ValueError, match=refusal):
            SVIStep(model, reading_guide, GroupedAdam({"lr": 0.01}), elbo).step(X)
    for guide in (independent_guide, global_first_guide):
        estimators.get(name).loss_and_grads(model, guide, X)


def test_score_scores_such_a_draw_by_the_whole_batch_and_is_unbiased():
    """Leave-one-out REINFORCE on ``reading_guide``: its mean gradient was 18.5 standard
    errors from the exact one (3,000 draws of 3 particles), and is 11.4 at these 500 draws
    of 4 when the escaped plate is ignored; expected within 4."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    X64, draws = X.double(), 500
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float64)
        try:
            reading_guide(X64)
            u = pyro.param("u").unconstrained()
            exact = -torch.autograd.grad(exact_elbo(u), u)[0]
            estimator = estimators.get(
                "score", control_variate="leave-one-out", num_particles=4,
                vectorize_particles=False,
            )  # fmt: skip
            grads = []
            for _ in range(draws):
                u.grad = None
                estimator.loss_and_grads(model, reading_guide, X64)
                grads.append(u.grad.clone())
        finally:
            torch.set_default_dtype(torch.float32)
    grads = torch.stack(grads)
    se = grads.std(0) / draws**0.5
    assert ((grads.mean(0) - exact).abs() < 4 * se).all(), (grads.mean(0), exact, se)


def test_the_check_between_a_step_s_passes_leaves_a_batchnorm_guide_training():
    """The check replays the guide after the step's forward pass, before its backward
    pass: a BatchNorm in training mode would move its running statistics in place, which
    that backward pass reads. It runs the networks in eval mode and puts their modes back;
    the step trains, its statistics moved by the step alone (as without the check)."""
    norm = torch.nn.BatchNorm1d(1)

    def guide(x):
        pyro.module("norm", norm)
        u = norm(x.unsqueeze(-1)).squeeze(-1)
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(logits=u))
        pyro.sample("g", dist.Bernoulli(logits=0.1 + 0.9 * z.sum(-1)))

    pyro.clear_param_store()
    estimator = estimators.get("score")
    estimator.loss_and_grads(model, guide, X)
    assert norm.training and norm.num_batches_tracked.item() == 1
    assert estimator._escaped_plates(guide, (X,), {}) == {"z": frozenset({"data"})}


def _reader_of(read, sample_z=None):
    """A guide drawing z in a plate of 3, then g outside it with logits ``read(z)``."""

    def guide(x):
        with pyro.plate("data", 3):
            z = sample_z() if sample_z else pyro.sample("z", dist.Bernoulli(logits=torch.zeros(3)))
        pyro.sample("g", dist.Bernoulli(logits=read(z)))

    return guide


@pytest.mark.parametrize(
    "read",
    [
        lambda z: 0.1 + 2.0 * (z[..., 1] - z[..., 2]).abs(),  # an xor of two elements
        lambda z: torch.tensor(2.0) if z.sum() == 3 else torch.tensor(-2.0),  # a branch
        lambda z: torch.tensor(float(int(z[..., -1]))),  # a number read out of z
    ],
    ids=["xor", "python-branch", "int"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reads_that_moving_the_draws_could_leave_unseen_are_found_whatever_the_draw(read, seed):
    """Tester DC: the first check, which replayed the guide with the draws moved, missed an
    xor of two elements (moving all, or the first, keeps it) on 20 of 20 seeds and a read
    through a Python branch on 15 of 20: gradients 4 to 14 standard errors off, no word.
    Tracked provenance, and any value read into Python, find them on every draw."""
    pyro.set_rng_seed(seed)
    found = plate_escapes(_reader_of(read), (X,), {}, lambda site: True)
    assert [(e.site, e.plate, e.reader) for e in found] == [("z", "data", "g")]


def test_a_count_with_no_enumerable_support_and_little_entropy_is_found():
    """Tester DC: z ~ Poisson(0.3) redrawn mostly equals itself, and the read by g of
    z[-1] was found on 12 of 50 seeds."""

    def guide(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Poisson(torch.full((2,), 0.3)))
        pyro.sample("g", dist.Normal(2 * z[..., -1], 1.0))

    for seed in range(5):
        pyro.set_rng_seed(seed)
        assert plate_escapes(guide, (X,), {}, scored_by_pyro) == [PlateEscape("z", "data", "g")]


def test_a_later_support_that_follows_the_draws_and_noise_outside_sample_sites_are_taken():
    """Tester DC: replaying with moved draws put g's own value outside its new support
    (Uniform(0, Σz + 1)), a ValueError from the check where the guide had trained; and
    noise drawn outside pyro.sample (functional dropout, torch.randn) moved g's density,
    a read of z that was not there, refused under trace."""

    def following(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(3)))
        pyro.sample("g", dist.Uniform(0.0, z.sum() + 1.0))

    def noisy(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Bernoulli(logits=torch.zeros(2)))
        m = torch.nn.functional.dropout(x, 0.5, training=True).mean() + 0.1 * torch.randn(())
        pyro.sample("g", dist.Normal(m, 1.0))

    for seed in range(6):
        pyro.set_rng_seed(seed)
        assert plate_escapes(following, (X,), {}, scored_by_pyro) == [PlateEscape("z", "data", "g")]
        assert plate_escapes(noisy, (X,), {}, scored_by_pyro) == []


def test_a_read_through_a_draw_inside_the_plate_is_followed_to_the_reader_outside_it():
    """z_n, then w_n given z_n (inside the plate, as declared), then g given Σ_n w_n: g
    reads every z_n through the w's."""

    def guide(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(2)))
            w = pyro.sample("w", dist.Bernoulli(logits=z - 0.5))
        pyro.sample("g", dist.Normal(w.sum(-1), 1.0))

    found = plate_escapes(guide, (X,), {}, scored_by_pyro)
    assert found == [PlateEscape("z", "data", "g"), PlateEscape("w", "data", "g")]


def _written_into_an_untracked_tensor(z):
    s = torch.zeros(3)
    s[:] = z
    return s


@pytest.mark.parametrize(
    "read",
    [
        lambda z: _written_into_an_untracked_tensor(z).sum(),  # s[:] = z
        lambda z: torch.tensor(float(len(z.nonzero()))),  # a count made from a shape
        lambda z: pyro.deterministic("s", z.sum()),  # a deterministic site between
    ],
    ids=["in-place", "nonzero-count", "deterministic"],
)
def test_reads_through_writes_shapes_and_deterministic_sites_are_found(read):
    """Tester DE: a write of z into an untracked tensor (s[:] = z, index_put_, out=),
    a count of z's nonzero elements, and a pyro.deterministic site between z and g each
    cut the provenance: trace trained 3 to 20 standard errors off, no word."""
    pyro.set_rng_seed(0)
    found = plate_escapes(_reader_of(read), (X,), {}, lambda site: True)
    assert ("z", "data", "g") in [(e.site, e.plate, e.reader) for e in found]


def test_a_sampler_s_own_value_reads_make_no_later_site_a_reader():
    """Tester DE: VonMises's rejection sampler calls .any() on its parameters, made from z:
    every later site, reading nothing, was refused as a reader of z."""

    def guide(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(3)))
            pyro.sample("a", dist.VonMises(z, 2.0))
        pyro.sample("w", dist.Normal(torch.tensor(0.0), 1.0))

    assert plate_escapes(guide, (X,), {}, scored_by_pyro) == []


def test_score_keeps_each_guide_it_checked_not_its_id():
    """Tester DE: the answer was kept under id(guide); a guide redefined in a notebook can
    take a freed one's id, and inherited its clean answer (33 to 86 standard errors off)."""
    pyro.clear_param_store()
    estimator = estimators.get("score")
    estimator.loss_and_grads(model, independent_guide, X)
    estimator.loss_and_grads(model, reading_guide, X)
    kept = [(guide, plates) for guide, _, plates in estimator._escaped._found]
    assert kept == [(independent_guide, {}), (reading_guide, {"z": frozenset({"data"})})]


def _categorical_then_global(body):
    """z, 6 Categorical draws in a plate, then ``body(z)``, then g, which reads nothing."""

    def guide(x):
        with pyro.plate("data", 6):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(6, 3)))
        body(z)
        pyro.sample("g", dist.Normal(torch.tensor(0.0), 1.0))

    return guide


def test_an_op_given_out_none_and_a_deterministic_record_read_nothing():
    """Tester DF: F.normalize, torch.norm and torch.tensordot pass out=None, taken for a
    write into another tensor; and a pyro.deterministic record of the draws, which scores
    nothing, was refused as a reader."""
    one_hot = torch.nn.functional.one_hot
    for body in (
        lambda z: torch.nn.functional.normalize(one_hot(z, 3).float(), dim=-1),
        lambda z: torch.norm(one_hot(z, 3).float(), dim=-1),
        lambda z: torch.tensordot(one_hot(z, 3).float(), torch.eye(3), 1),
        lambda z: pyro.deterministic("n0", (z == 0).sum()),
    ):
        assert plate_escapes(_categorical_then_global(body), (X,), {}, scored_by_pyro) == []


def test_a_site_that_only_may_read_is_warned_of_and_one_that_reads_is_refused():
    """Tester DF: valid guides assert on their draws, log them, or write them into a
    buffer (a one-hot by scatter_, a trajectory): each a value read, after which every
    site may read them. Pyro's ELBOs warn of those; a read the provenance follows is
    refused as before."""
    from pyro_vae.estimators.plate_escapes import PlateEscapeWarning

    def model_of(x):
        with pyro.plate("data", 6):
            pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("g", dist.Normal(0.0, 1.0))

    def checked(z):
        assert (z >= 0).all()

    pyro.clear_param_store()
    with pytest.warns(PlateEscapeWarning, match="may read the draws of 'z'"):
        estimators.get("trace").loss_and_grads(model_of, _categorical_then_global(checked), X)
    with pytest.raises(ValueError, match="reads the draws of 'z' inside it"):
        estimators.get("trace").loss_and_grads(model, reading_guide, X)


def test_a_bound_method_guide_made_afresh_at_each_step_is_checked_once():
    """``vae.guide`` is a new bound method at each access, equal to the last: compared by
    identity, the check would run the guide again at every step (review)."""

    class Pair:
        runs = 0

        def guide(self, x):
            Pair.runs += 1
            independent_guide(x)

    pair = Pair()
    for name in ("trace", "score"):
        pyro.clear_param_store()
        estimator = estimators.get(name)
        estimator.loss_and_grads(model, pair.guide, X)  # its run, and the check's
        Pair.runs = 0
        for _ in range(3):
            estimator.loss_and_grads(model, pair.guide, X)
        assert Pair.runs == 3, name  # one run a step: no check again
