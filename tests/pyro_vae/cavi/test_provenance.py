import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.inspect import TrackProvenance
from pyro.ops.provenance import ProvenanceTensor, get_provenance

from models.gmm import GaussianMixtureModel
from models.hmm import FactorialHMMModel
from models.regression import BayesianRegression
from pyro_vae.cavi import FactorialHMM
from pyro_vae.cavi.provenance import FastProvenanceTensor, TrackFastProvenance
from tests.pyro_vae.cavi.float64 import F64


def tracked(value, *names):
    return FastProvenanceTensor(value, frozenset(names))


def test_ops_union_the_provenance_of_every_tensor_argument():
    a, b = tracked(torch.ones(2, 2), "a"), tracked(2 * torch.eye(2), "b")
    c = torch.ones(2)
    assert get_provenance(a + c) == {"a"}
    assert get_provenance(torch.cat([a, b])) == {"a", "b"}  # a list argument
    assert get_provenance(torch.where(c > 0, input=a, other=b)) == {"a", "b"}  # kwargs
    sign, logdet = torch.linalg.slogdet(b)  # a structseq result: each part tracked
    assert get_provenance(logdet) == {"b"} and float(logdet) == pytest.approx(2 * 0.6931, 1e-4)
    assert get_provenance(a.sum(-1).log()) == {"a"}
    assert get_provenance(c * 2) == frozenset() and not isinstance(c * 2, ProvenanceTensor)
    mixed = ProvenanceTensor(torch.ones(2), frozenset({"p"})) * a  # Pyro's class in the mix
    assert get_provenance(mixed) == {"a", "p"} and isinstance(mixed, FastProvenanceTensor)


def gmm_model():
    X = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    return GaussianMixtureModel.from_data(X, 3, precision_parameterization="wishart").double(), (X,)


def regression_model():
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    return BayesianRegression(), (X, X[:, 0])


def hmm_model():
    g = torch.Generator().manual_seed(1)
    params = FactorialHMM(
        log_pi=torch.full((2, 3), 1 / 3, dtype=F64).log(),
        log_A=(torch.full((2, 3, 3), 0.1, dtype=F64) + 0.7 * torch.eye(3, dtype=F64)).log(),
        W=torch.randn(2, 2, 3, generator=g, dtype=F64),
        C=torch.eye(2, dtype=F64),
    )
    return FactorialHMMModel(params).double(), (params.sample(4, seed=2)[1],)


@pytest.mark.parametrize("make", [gmm_model, regression_model, hmm_model])
def test_the_dependencies_match_pyros_provenance_tracking(make):
    model, args = make()
    values = poutine.trace(model).get_trace(*args)

    def provenance(tracker):
        data = {n: s["value"] for n, s in values.nodes.items() if s["type"] == "sample"}
        with torch.no_grad(), tracker:
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args)
            trace.compute_log_prob()
        return {
            n: get_provenance(s["log_prob"])
            for n, s in trace.nodes.items()
            if s["type"] == "sample" and "log_prob" in s
        }

    ours, pyros = provenance(TrackFastProvenance()), provenance(TrackProvenance())
    assert ours == pyros and any(len(p) > 1 for p in ours.values())
