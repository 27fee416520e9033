import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.ops.indexing import Vindex

import pyro_vae.cavi.probe_counts as probe_counts
from models.gmm import GaussianMixtureModel
from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.conjugate_forms import probe_factors
from pyro_vae.cavi.first_trace import find_dependencies
from pyro_vae.cavi.latent_units import find_latents
from pyro_vae.cavi.probe_enumeration import (
    agrees,
    enumerable,
    fit_rows,
    grid,
    to_rows,
)
from pyro_vae.cavi.probe_runs import ProbeRunner
from tests.pyro_vae.cavi.factors import assert_same_factors
from tests.pyro_vae.cavi.float64 import F64, t

G = torch.Generator().manual_seed(3)
Y = torch.cat([torch.randn(10, generator=G, dtype=F64) - 3, torch.randn(10, generator=G) + 3])
X6 = torch.randn(4, 6, generator=G, dtype=F64)


def mixture(y, vindex=True):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3, dtype=F64)))
    with pyro.plate("components", 3):
        means = pyro.sample("means", dist.Normal(t(0.0), t(5.0)))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(weights))
        if vindex:  # the means' plate dim is the one Vindex indexes: one dim left for z's
            loc = Vindex(means.unsqueeze(-2))[..., z]
        else:  # expanded to z's shape, which cannot be wider than the data plate's
            loc = means.unsqueeze(-2).expand(z.shape + (3,)).gather(-1, z.unsqueeze(-1))[..., 0]
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def mixture_and_a_wide_normal(y, x):
    # a mixture (3 components of 3 statistics) beside a 6-dim Normal of 28 statistics that no
    # assignment touches: its design needs 28 distinct points, not 28 / 3
    mixture(y)
    w = pyro.sample(
        "w", dist.MultivariateNormal(torch.zeros(6, dtype=F64), torch.eye(6, dtype=F64))
    )
    with pyro.plate("rows", len(x)):
        pyro.sample("x", dist.Normal((x * w).sum(-1), 1.0), obs=x.sum(-1))


def two_assignments(y):
    # two mixtures, each with its assignments in one plate: drawn, not enumerated (every
    # factor would get the 2 x 3 combinations' rows)
    with pyro.plate("a_components", 2):
        a = pyro.sample("a", dist.Normal(t(0.0), t(3.0)))
    with pyro.plate("b_components", 3):
        b = pyro.sample("b", dist.Normal(t(0.0), t(3.0)))
    with pyro.plate("data", len(y)):
        za = pyro.sample("za", dist.Categorical(torch.ones(2, dtype=F64) / 2))
        zb = pyro.sample("zb", dist.Categorical(torch.ones(3, dtype=F64) / 3))
        pyro.sample("ya", dist.Normal(Vindex(a.unsqueeze(-2))[..., za], 1.0), obs=y)
        pyro.sample("yb", dist.Normal(Vindex(b.unsqueeze(-2))[..., zb], 1.0), obs=-y)


def spike_and_slab(y):
    p = pyro.sample("p", dist.Beta(t(1.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), t(5.0)))
    with pyro.plate("data", len(y)):
        s = pyro.sample("s", dist.Bernoulli(p))
        pyro.sample("y", dist.Normal(s * mu, 1.0), obs=y)


def gaussian_mixture():
    model = GaussianMixtureModel.from_data(
        Y.reshape(10, 2), 2, precision_parameterization="wishart"
    )
    return model.double(), (Y.reshape(10, 2),)


def probed(model, args, monkeypatch, enumerate_):
    """{factor: Factor} and whether the fit points were enumerated (and solved from)."""
    used = []
    prefetch = ProbeRunner.prefetch_enumerated

    def spy(self, *a):
        used.append(prefetch(self, *a))
        return used[-1]

    monkeypatch.setattr(ProbeRunner, "prefetch_enumerated", spy)
    if not enumerate_:
        monkeypatch.setattr(probe_counts, "enumerable", lambda latents: ())
    latents = find_latents(poutine.trace(model).get_trace(*args))
    g = torch.Generator().manual_seed(0)
    depends, trace = find_dependencies(model, args, {}, latents, g)
    info = {}
    out = probe_factors(model, args, {}, latents, depends, trace, g, info=info)
    monkeypatch.undo()
    # batched: not redone one point per run after a misfit (which would hide a bad solve)
    return {f.name: f for f in out}, bool(used and used[0]) and info["batched"] == "plate"


@pytest.mark.parametrize(
    "model, args, enumerates",
    [
        (mixture, (Y,), True),
        (mixture_and_a_wide_normal, (Y, X6), True),
        (two_assignments, (Y,), False),
        (spike_and_slab, (Y,), True),
        (*gaussian_mixture(), True),
    ],
    ids=["mixture", "mixture-and-wide-normal", "two-assignments", "bernoulli", "normal-wishart"],
)
def test_enumerated_fit_points_solve_to_the_factors_of_drawn_ones(
    model, args, enumerates, monkeypatch
):
    # the coefficients are exact (multilinear factors): points drawn one assignment per
    # point (tested against the looped runs and the hand-written classes) and points with
    # every assignment enumerated must solve to them, to float64 rounding
    enumerated, used = probed(model, args, monkeypatch, True)
    drawn, not_used = probed(model, args, monkeypatch, False)
    assert used == enumerates and not not_used
    assert_same_factors(enumerated, drawn)


def test_a_model_that_cannot_take_enumerated_values_is_probed_with_drawn_ones(monkeypatch):
    # means.gather(-1, z) needs z as wide as the means: the enumerated run raises, and the
    # fit (points drawn one assignment each) is the Vindex model's
    _, used = probed(lambda y: mixture(y, vindex=False), (Y,), monkeypatch, True)
    assert not used
    start = {"z": torch.nn.functional.one_hot((torch.arange(20) >= 10).long(), 3).to(F64)}
    reference = AutoCAVI(mixture, tol=1e-12, init=start).fit(Y)
    fit = AutoCAVI(lambda y: mixture(y, vindex=False), tol=1e-12, init=start).fit(Y)
    assert fit.probe_batched_
    assert fit.lower_bound_ == pytest.approx(reference.lower_bound_, rel=1e-10)


def test_rows_and_log_densities_line_up_combination_by_combination():
    # two enumerated latents (2 and 3 categories) at 4 points: row c·4 + s holds point s at
    # combination c, and a log-density 100 z_b + 10 z_a + s, computed on the run's
    # [3, 2, 4, ...] layout, must land on the row that holds those values
    class Latent:
        def __init__(self, name, k):
            self.name, self.batch_shape = name, torch.Size([5])
            self.family = type("F", (), {"k": k, "name": "Categorical"})()

    za, zb = Latent("za", 2), Latent("zb", 3)
    values = grid([za, zb])
    points = {"za": None, "zb": None, "mu": torch.arange(4, dtype=F64)}
    rows = fit_rows({"mu": points["mu"]}, [za, zb], values, 4)
    assert rows["za"].shape == (24, 5) and rows["za"].stride(1) == 0
    s = torch.arange(4, dtype=F64).reshape(1, 1, 4, 1)
    lp = 100 * torch.arange(3).reshape(3, 1, 1, 1) + 10 * torch.arange(2).reshape(1, 2, 1, 1) + s
    out = to_rows({"y": lp.expand(3, 2, 4, 5)}, [za, zb], {"y": torch.Size([5])}, 4, 1)
    expected = 100 * rows["zb"] + 10 * rows["za"] + rows["mu"].unsqueeze(-1)
    assert torch.equal(out["y"], expected.to(out["y"].dtype))
    # a log-density with a stray dim left of the probes, or a wrong probe size, is refused
    assert to_rows({"y": torch.zeros(3, 3, 4, 5)}, [za, zb], {"y": torch.Size([5])}, 4, 1) is None
    assert to_rows({"y": lp.expand(3, 2, 4, 5)}, [za, zb], {"y": torch.Size([5])}, 3, 1) is None
    assert agrees({"y": out["y"]}, {"y": out["y"][::4]}, 4)
    assert not agrees({"y": out["y"]}, {"y": out["y"][::4] + 1e-6}, 4)


def test_only_a_lone_discrete_latent_in_a_plate_is_enumerated():
    class Latent:
        def __init__(self, k, batch=(5,), name="Categorical"):
            self.batch_shape = torch.Size(batch)
            self.family = type("F", (), {"k": k, "name": name})()

    assert enumerable({"z": Latent(8), "w": Latent(3, batch=())}) == ("z",)
    assert enumerable({"s": Latent(2, name="Bernoulli")}) == ("s",)
    assert enumerable({"a": Latent(2), "b": Latent(2)}) == ()  # drawn: see two_assignments
    assert enumerable({"a": Latent(3, batch=())}) == ()  # outside any plate: drawn
