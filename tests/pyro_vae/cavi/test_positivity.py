"""Signs tracked through a provenance run: which tensors are positive, in (0, 1), or
positive definite wherever the latents may go."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex

from pyro_vae.cavi.positivity import (
    BELOW,
    DEFINITE,
    DIAGONAL,
    NONNEGATIVE,
    POSITIVE,
    UNIT,
    in_domain,
    of_support,
)
from pyro_vae.cavi.provenance import FastProvenanceTensor, TrackFastProvenance
from tests.pyro_vae.cavi.float64 import F64, t


@pytest.mark.parametrize(
    "fn, sign",
    [
        (dist.Gamma(t(2.0), 1.0), POSITIVE),
        (dist.Chi2(t(3.0)), POSITIVE),
        (dist.Gamma(t([2.0, 3.0]), 1.0).to_event(1), POSITIVE),
        (dist.Uniform(t(0.0), 5.0), POSITIVE),
        (dist.Beta(t(2.0), 2.0), UNIT),
        (dist.Dirichlet(t([1.0, 2.0])), UNIT),
        (dist.Wishart(t(3.0), torch.eye(2, dtype=F64)), DEFINITE),
        (dist.Normal(t(0.0), 1.0), None),
        (dist.Uniform(t(-1.0), 1.0), None),
        (dist.MultivariateNormal(t([0.0, 0.0]), torch.eye(2, dtype=F64)), None),
    ],
    ids=["gamma", "chi2", "gamma-event", "uniform-positive", "beta", "dirichlet", "wishart",
         "normal", "uniform-straddling", "mvn"],
)  # fmt: skip
def test_a_latents_sign_is_its_supports(fn, sign):
    assert of_support(fn) == sign


def signs(compute, **latents):
    """The sign of each result of ``compute(**tracked)``, each latent given as (value,
    sign), inside a recording provenance run."""
    with pyro.validation_enabled(False), TrackFastProvenance([]):
        tracked = {}
        for name, (value, sign) in latents.items():
            tracked[name] = FastProvenanceTensor(value, frozenset({name}))
            tracked[name]._sign = sign
        return [getattr(out, "_sign", None) for out in compute(**tracked)]


def test_positive_and_unit_signs_follow_arithmetic():
    tau, p = (t([0.5, 2.0]), POSITIVE), (t([0.2, 0.7]), UNIT)
    assert signs(
        lambda tau, p: [2 * tau, tau / 3, tau + tau, tau.sqrt(), tau**-1.5, tau.sum(),
                        tau - 1, torch.add(tau, tau, alpha=-1), -tau, 2.0 - tau],
        tau=tau, p=p,
    ) == [POSITIVE] * 6 + [None] * 4  # fmt: skip
    assert signs(
        lambda tau, p: [p * p, 1 - p, -p, p * tau, p / p, p.exp(), p.sigmoid(), p[0]],
        tau=tau, p=p,
    ) == [UNIT, UNIT, BELOW, POSITIVE, POSITIVE, POSITIVE, UNIT, UNIT]  # fmt: skip


def test_counts_plus_a_positive_are_positive_where_the_counts_alone_are_not():
    k = (t([0.0, 3.0]), NONNEGATIVE)  # data, as the provenance run signs observed values
    assert signs(lambda k: [k + 1, k + k, k * 2, k - 1, k[1]], k=k) == [
        POSITIVE, NONNEGATIVE, None, None, NONNEGATIVE
    ]  # fmt: skip


def test_definite_matrices_keep_their_sign_only_where_it_holds():
    L = t([[2.0, 0.0], [0.5, 1.0]])
    lam = (torch.stack([L @ L.T, 3 * torch.eye(2, dtype=F64)]), DEFINITE)
    identity = torch.eye(2, dtype=F64)
    z = torch.tensor([1, 0, 1])

    def compute(lam):
        chol = torch.linalg.cholesky(lam)
        return [
            2.0 * lam, lam / 2.0, lam * t([[[2.0]], [[3.0]]]), lam + lam, lam.unsqueeze(0),
            lam.expand(3, 2, 2, 2), torch.flip(lam, (-2, -1)), lam.transpose(-2, -1),
            Vindex(lam)[..., z, :, :], lam[1], torch.linalg.inv(lam),
            chol, torch.linalg.solve_triangular(chol, identity, upper=False),
            torch.transpose(torch.flip(chol, (-2, -1)), -2, -1), chol.diagonal(dim1=-2, dim2=-1),
            # no longer definite, or no longer whole matrices
            2.0 / lam, lam - lam, lam * t([2.0, 3.0]), torch.flip(lam, (-1,)),
            lam[..., 0, :], lam.reshape(2, 4),
            torch.linalg.solve_triangular(chol, lam, upper=False),
        ]  # fmt: skip

    assert signs(compute, lam=lam) == ([DEFINITE] * 11 + [DIAGONAL] * 3 + [POSITIVE] + [None] * 7)


def test_branch_ops_are_in_their_domain_only_on_an_argument_shown_positive():
    assert in_domain("log", (t(1.0),), {}, [POSITIVE], [True])
    assert in_domain("log", (t(1.0),), {}, [UNIT], [True])
    assert not in_domain("log", (t(1.0),), {}, [None], [True])
    assert in_domain("log", (t(1.0),), {}, [None], [False])  # a constant
    assert in_domain("log1p", (t(-0.5),), {}, [BELOW], [True])
    assert in_domain("pow", (t(-1.0), 2), {}, [None, None], [True, False])  # x²: entire
    assert not in_domain("pow", (t(-1.0), 0.5), {}, [None, None], [True, False])
    assert in_domain("__rpow__", (t(-1.0), 2.0), {}, [None, None], [True, False])  # 2^x
    assert not in_domain("__rpow__", (t(-1.0), -2.0), {}, [None, None], [True, False])
    assert in_domain("linalg_cholesky", (torch.eye(2),), {}, [DEFINITE], [True])
    assert not in_domain("linalg_cholesky", (torch.eye(2),), {}, [POSITIVE], [True])
    assert not in_domain("mvlgamma", (t(3.0), 2), {}, [POSITIVE, None], [True, False])
    assert in_domain("xlogy", (t(1.0), t(2.0)), {}, [None, POSITIVE], [True, True])
