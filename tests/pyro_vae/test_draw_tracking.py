"""Tests for pyro_vae.draw_tracking: provenance through torch operations, and the reads of
draws into Python, with the operation and the line that made each."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_vae.draw_tracking import DrawTracker, called_in_eval_mode

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


def test_called_in_eval_mode_runs_modules_in_eval_mode_and_puts_their_mode_back():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    before = net[1].running_mean.clone()
    with called_in_eval_mode(), torch.no_grad():
        net(torch.randn(5, 2))
    assert net.training and net[1].training
    assert torch.equal(net[1].running_mean, before)
