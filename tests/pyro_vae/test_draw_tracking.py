"""Tests for pyro_vae.draw_tracking: provenance through torch operations, and the reads of
draws into Python, with the operation and the line that made each."""

import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.draw_tracking import DrawTracker, buffers_set_aside

THIS_FILE = __file__


def run_tracked(fn, tracked=None):
    tracker = DrawTracker(tracked)
    try:
        trace = poutine.trace(tracker(fn)).get_trace()
    finally:
        tracker.close()
    return tracker, trace


def test_provenance_follows_arithmetic_and_reads_are_recorded_where_they_happen():
    seen = {}

    def guide():
        z = pyro.sample("z", dist.Bernoulli(0.5).expand([3]).to_event(1))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        seen["sum"] = (2 * z).sum() + 1.0  # provenance {z}
        seen["both"] = z * w  # provenance {z, w}
        line = _line_of("if z.sum() > 0.5")
        if z.sum() > 0.5:
            pass
        pyro.sample("g", dist.Normal(0.0, 1.0))
        seen["line"] = line

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    from pyro.ops.provenance import get_provenance

    assert get_provenance(seen["sum"]) == frozenset({"z"})
    assert get_provenance(seen["both"]) == frozenset({"z", "w"})
    [read] = tracker.reads
    assert read.sites == frozenset({"z"})
    assert read.operation == "__bool__"
    assert read.where == f"{THIS_FILE}:{seen['line']}"
    assert tracker.read_before == {"z": frozenset(), "w": frozenset(), "g": frozenset({"z"})}


def _line_of(text: str) -> int:
    lines = open(THIS_FILE).read().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(text))


def test_each_kind_of_read_is_recorded_and_plain_arithmetic_is_not():
    def guide():
        z = pyro.sample("z", dist.Poisson(3.0).expand([4]).to_event(1))
        torch.exp(z).sum()  # arithmetic: no read
        int(z[0])
        z.nonzero()
        buffer = torch.zeros(4)
        buffer[:] = z
        z.tolist()

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [r.operation for r in tracker.reads] == ["__int__", "nonzero", "__setitem__", "tolist"]


def test_only_the_chosen_sites_are_tracked_and_a_sampler_s_own_reads_are_not_counted():
    def guide():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        bool(x > 0)  # x is not tracked: no read
        angle = pyro.sample("angle", dist.VonMises(0.0, 2.0))  # rejection loop reads
        bool(angle > 0)

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide, tracked=lambda msg: msg["name"] != "x")
    assert [(r.sites, r.operation) for r in tracker.reads] == [(frozenset({"angle"}), "__bool__")]


def test_a_closed_tracker_records_nothing_more():
    def guide():
        return pyro.sample("z", dist.Normal(0.0, 1.0))

    tracker = DrawTracker()
    z = poutine.trace(tracker(guide)).get_trace().nodes["_RETURN"]["value"]
    tracker.close()
    bool(z > 0)
    assert tracker.reads == []


def test_buffers_set_aside_keeps_each_module_s_mode_and_its_own_buffers_untouched():
    """A BatchNorm in training mode runs as in training (its batch statistics), on copies
    of its buffers: its own running statistics keep their values and their version (a
    graph that saved them can still run its backward pass)."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    mean = net[1].running_mean
    before, version = mean.clone(), mean._version
    x = torch.randn(5, 2)
    seen = {}
    net.register_forward_hook(lambda module, inputs, out: seen.setdefault("out", out))
    with buffers_set_aside(), torch.no_grad():
        net(x)
        moved = net[1].running_mean.clone()
    assert net[1].running_mean is mean
    assert torch.equal(mean, before) and mean._version == version
    assert not torch.equal(moved, before)  # the copy moved: training mode ran
    hidden = net[0](x)
    expected = (hidden - hidden.mean(0)) / (hidden.var(0, unbiased=False) + 1e-5).sqrt()
    assert torch.allclose(seen["out"], expected, atol=1e-5)  # batch statistics


def test_reads_through_membership_masks_and_value_shaped_results_are_recorded():
    """Tester DG: each of these reads one value for every particle and was missed."""
    import torch.nn.functional as F

    reads = {
        "__contains__": lambda z: 1.0 in z,
        "__getitem__": lambda z: len(z[z > 0.5]),
        "where": lambda z: torch.where(z > 0.5)[0].numel(),
        "is_nonzero": lambda z: torch.is_nonzero(z.sum() > 0.5),
        "bincount": lambda z: torch.bincount(z.long()).shape,
        "one_hot": lambda z: F.one_hot(z.long()).shape,
        "repeat_interleave": lambda z: torch.repeat_interleave(z.long()).shape,
        "to_sparse": lambda z: z.to_sparse().values().shape,
        "unique": lambda z: torch.unique(z).shape,  # torch/functional.py passes it on
    }
    for operation, read in reads.items():

        def guide(read=read):
            read(pyro.sample("z", dist.Bernoulli(0.5).expand([3]).to_event(1)))

        pyro.set_rng_seed(0)
        tracker, _ = run_tracked(guide)
        assert [r.operation for r in tracker.reads][:1] == [operation], operation
        assert tracker.reads[0].kind in ("value", "shape")


def test_value_shaped_operations_called_with_fixed_shapes_are_no_reads():
    import torch.nn.functional as F

    def guide():
        z = pyro.sample("z", dist.Bernoulli(0.5).expand([3]).to_event(1))
        F.one_hot(z.long(), 2)  # its number of classes given
        torch.where(z > 0.5, z, 1 - z)
        torch.repeat_interleave(z, 2)
        z[torch.tensor([0, 2])]  # integer indices

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert tracker.reads == []


def test_torch_s_own_argument_checks_are_no_reads_and_writes_are_told_apart():
    """``validate_args=True`` reads values to raise on a bad one, deciding nothing (tester
    DG: it sent a valid pair to the loop); a write into an untracked tensor loses the
    provenance but reads nothing."""

    def guide():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        torch.distributions.Normal(mu, s, validate_args=True).log_prob(torch.tensor(0.5))
        loc = torch.zeros(2)
        loc[0] = mu

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [(r.operation, r.kind) for r in tracker.reads] == [("__setitem__", "write")]


def test_a_tensor_made_from_a_draw_is_followed_through_writes_into_it():
    """The README's line between the two: a tensor made from the draw (``new_zeros``,
    ``clone``, ``zeros_like``) carries its provenance, so a write into it is no read, and a
    branch on it later is still seen (made without the draw, ``torch.zeros``, the write is
    counted: see the test above)."""

    def guide():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        for made in (mu.new_zeros(3), mu.clone(), torch.zeros_like(mu)):
            made[..., :2] = mu
        later = mu.new_zeros(3)
        later[..., :2] = mu
        if later.sum() > 0:
            pass

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [(r.operation, r.kind, r.sites) for r in tracker.reads] == [
        ("__bool__", "value", frozenset({"mu"}))
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda mu: torch.tensor(mu),
        lambda mu: torch.as_tensor(mu, dtype=torch.float64),
        lambda mu: torch.full((2,), mu[..., 0]),
        lambda mu: torch.scalar_tensor(mu[..., 0]),
    ],
    ids=["tensor", "as_tensor", "full", "scalar_tensor"],
)
def test_a_copy_torch_makes_without_asking_the_draw_s_class_is_followed(make):
    """These functions convert their data in torch's C++ without the tracked class's
    ``__torch_function__``: their copies carried no provenance, and a branch on one went
    unseen (the README listed ``torch.tensor(z)`` as not seen)."""

    def guide():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.tensor(t)'s advice to clone instead
            copy = make(mu)
        if copy.sum() > 0:
            pass

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [(r.operation, r.kind, r.sites) for r in tracker.reads] == [
        ("__bool__", "value", frozenset({"mu"}))
    ]


def test_a_constant_mask_is_no_read_and_a_library_s_own_reads_are_not_counted():
    """A mask that no draw made fixes the shape (missing data; torch's triangular masks in
    the LKJ transform), and torch's and Pyro's own code is written for batched tensors
    (the ``assert`` of Pyro's spline inverse): tester DI, each sent valid pairs to the
    loop. A mask made from a draw still counts."""
    from pyro.distributions.transforms import Spline

    mask = torch.tensor([True, False, True])
    spline = Spline(3)

    def guide():
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        z[..., mask].sum()
        spline.inv(z)  # Pyro's inverse asserts on its discriminant
        z[z > 0]

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [(r.operation, r.kind) for r in tracker.reads] == [("__getitem__", "shape")]


def test_a_draw_inside_a_list_of_numbers_is_read_through_float():
    """A list that starts with a number is not walked for tracked tensors (tester DO: a
    guide's 200,000-float constant slowed its check 4-6x); a draw inside one is still
    seen, by the ``__float__`` torch reads it through."""

    def guide():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        torch.tensor([0.5, mu[..., 0]])

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [(r.operation, r.sites) for r in tracker.reads] == [("__float__", frozenset({"mu"}))]


@pytest.mark.parametrize(
    "escape",
    [
        lambda mu: torch.from_dlpack(mu.detach()),
        lambda mu: mu.untyped_storage(),
        lambda mu: __import__("pickle").dumps(mu),
    ],
    ids=["dlpack", "untyped_storage", "pickle"],
)
def test_memory_handed_out_of_torch_s_operations_counts_as_a_write(escape):
    """Tester DO: ``torch.from_dlpack(z)``, a view on ``z.untyped_storage()`` and a pickle
    round trip made copies no provenance follows, and a branch on one went unseen (32
    standard errors off); each now counts as a write the tracking cannot follow."""

    def guide():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        escape(mu)

    pyro.set_rng_seed(0)
    tracker, _ = run_tracked(guide)
    assert [(r.kind, r.sites) for r in tracker.reads][:1] == [("write", frozenset({"mu"}))]
