"""One rank of the data-parallel equivalence test (tests/pyro_vae/test_distributed.py).

Run as ``python -m tests.pyro_vae.distributed_worker OUT`` with torchrun's variables
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) set: it fits the tiny VAE below
with every estimator of :data:`CASES` and saves each fit's weights to ``OUT/rank{RANK}.pt``,
and the start of parameters made from the first batch (:func:`autoguide_start`). The test
fits the same in one process with the global batch and compares. Then it trains
3 epochs straight and 2 + a resume to 3 in run folders under ``OUT``, which must agree.

Each rank draws its own noise, so the difference between the two would be Monte Carlo
error, not rounding. :func:`aligned_noise` removes it for the test: every ``Normal`` draw
of a ``[..., rows, latent]`` sample takes the global batch's noise (``world`` times the
local rows) from one generator seeded alike in every process, and keeps its rank's slice.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta, init_to_median
from torch import nn

import pyro_vae.train as train_module
from pyro_vae import estimators
from pyro_vae.checkpoint import RunFolder
from pyro_vae.data_source import shard_of
from pyro_vae.distributed import SynchronizedELBO, current, session
from pyro_vae.minibatch import Minibatched
from pyro_vae.tensor_data import TensorData
from pyro_vae.train import TrainConfig, fit

CASES = {
    "trace": {},
    "analytic-kl": {},
    "iwae": {"num_particles": 3},
    "score": {"control_variate": "leave-one-out", "num_particles": 3},
}
ROWS, FEATURES, LATENT, BATCH = 32, 5, 2, 8


@contextlib.contextmanager
def aligned_noise(rank: int, world: int, seed: int = 0):
    """``Normal`` draws of shape ``[..., b, d]`` as rank ``rank``'s slice of a
    ``[..., world·b, d]`` draw, the i-th draw of a process from a generator seeded by
    ``(seed, i)`` (set-up draws of other sizes leave the later ones aligned). The draws of
    fit's check on several ranks (``_refuse_terms_that_differ_by_rank``, on a forked
    random stream there) are not counted: one process makes no such check."""
    generator, calls = torch.Generator(), [0]
    rsample, sample = dist.Normal.rsample, dist.Normal.sample
    check = train_module._refuse_terms_that_differ_by_rank

    def uncounted_check(*args, **kwargs):
        counted = calls[0]
        try:
            return check(*args, **kwargs)
        finally:
            calls[0] = counted

    def aligned(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        rows = shape[-2]
        generator.manual_seed(seed * 1_000_003 + calls[0])
        calls[0] += 1
        whole = torch.randn((*shape[:-2], rows * world, shape[-1]), generator=generator)
        return self.loc.expand(shape) + whole.narrow(-2, rank * rows, rows) * self.scale.expand(
            shape
        )

    def aligned_sample(self, sample_shape=()):
        with torch.no_grad():
            return aligned(self, sample_shape)

    dist.Normal.rsample, dist.Normal.sample = aligned, aligned_sample
    train_module._refuse_terms_that_differ_by_rank = uncounted_check
    try:
        yield
    finally:
        dist.Normal.rsample, dist.Normal.sample = rsample, sample
        train_module._refuse_terms_that_differ_by_rank = check


class TinyVAE(nn.Module):
    """A linear-Gaussian VAE, 5 features, 2 latent dims."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(FEATURES, 2 * LATENT)
        self.decoder = nn.Linear(LATENT, FEATURES)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", len(x)):
            prior = dist.Normal(x.new_zeros(len(x), LATENT), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        loc, scale = h[:, :LATENT], nn.functional.softplus(h[:, LATENT:]) + 1e-3
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def train(name: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """The weights after 2 epochs of 4 steps (global batch 8 of 32 rows) with estimator
    ``name``, noise aligned as for rank ``rank`` of ``world``."""
    torch.manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=torch.Generator().manual_seed(1))
    vae = TinyVAE()
    config = TrainConfig(
        epochs=2, batch_size=BATCH, lr=0.05, progress=False, val_samples=2, validate_every=2
    )
    with aligned_noise(rank, world):
        fit(vae.model, vae.guide, TensorData(x), estimators.get(name, **CASES[name]), config)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def gradients(rank: int, world: int) -> dict[str, torch.Tensor]:
    """One :class:`SynchronizedELBO` loss and gradient of ``trace`` on a batch of 8 of the
    32 rows, rank ``rank``'s half of it (all of it for ``world`` 1), noise aligned. Adam's
    step does not see a gradient's scale, so this checks the N / |B| bookkeeping directly."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = TinyVAE()
    x = torch.randn(8, FEATURES, generator=torch.Generator().manual_seed(2))
    part = shard_of(8, rank, world)
    model, guide = (Minibatched(f, "data", ROWS) for f in (vae.model, vae.guide))
    elbo = SynchronizedELBO(estimators.get("trace"), current())
    with aligned_noise(rank, world):
        loss, params = elbo.loss_and_grads_and_params(
            model, guide, x[part], subsample=torch.arange(8)[part]
        )
    store = pyro.get_param_store()
    return {"loss": torch.tensor(loss), **{store.param_name(p): p.grad for p in params}}


def m2_train(rank: int, world: int) -> dict[str, torch.Tensor]:
    """M2's weights (model and guide) after 2 epochs of ``enum`` (global batch 8 of 32
    rows, 4 of them labelled), noise aligned as for rank ``rank`` of ``world``. Its
    classifier term is a term of each labelled row, with N_l given by fit (tester DW), so
    the ranks' step is one process's, where each rank's own mean over its part's labelled
    rows was not (tester AA)."""
    from models.m2 import M2
    from pyro_vae import load_data

    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.rand(ROWS, FEATURES, generator=torch.Generator().manual_seed(4)).round()
    data = load_data(x.numpy(), labels=(torch.arange(ROWS) % 2).numpy(), val_fraction=0.0)
    data = data.with_labelled_subset(count=4, seed=0)
    model = M2(FEATURES, num_classes=2, latent_dim=LATENT, hidden_dims=(6,), alpha=5.0)
    config = TrainConfig(epochs=2, batch_size=BATCH, lr=0.05, progress=False, val_samples=2)
    guide = model.make_guide()
    with aligned_noise(rank, world):
        fit(model, guide, data, estimators.get("enum"), config)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    return {**weights, **{f"guide.{k}": v for k, v in guide.state_dict().items()}}


class TwoEncoders(TinyVAE):
    """TinyVAE with a BatchNorm in its encoder, and a second such encoder that rank 1
    alone calls (``by_rank``): the ranks then call different networks."""

    def __init__(self, by_rank: bool) -> None:
        super().__init__()
        self.by_rank = by_rank
        for name in ("encoder", "other"):
            layers = nn.Sequential(nn.Linear(FEATURES, 2 * LATENT), nn.BatchNorm1d(2 * LATENT))
            setattr(self, name, layers)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        pyro.module("other", self.other)
        rank_1 = self.by_rank and torch.distributed.get_rank() == 1
        h = (self.other if rank_1 else self.encoder)(x)
        loc, scale = h[:, :LATENT], nn.functional.softplus(h[:, LATENT:]) + 1e-3
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def batchnorm_buffers(by_rank: bool = False) -> dict[str, torch.Tensor]:
    """The buffers of the networks after 1 epoch of ``trace``, each rank seeing its own
    rows (tester DH: a BatchNorm's drifted apart by rank), and, ``by_rank``, each rank
    calling its own encoder (tester DI: the broadcast of the networks called hung)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=torch.Generator().manual_seed(1))
    vae = TwoEncoders(by_rank)
    config = TrainConfig(epochs=1, batch_size=BATCH, progress=False, val_samples=2)
    fit(vae.model, vae.guide, TensorData(x), estimators.get("trace"), config)
    return {k: v.clone() for k, v in vae.state_dict().items() if "1." in k}


def train_run(run: Path, epochs: int, resume: bool = False) -> dict[str, torch.Tensor]:
    """The weights after ``epochs`` epochs of ``trace`` with the ranks' own noise, written
    to (or resumed from) the run folder ``run``. A resumed fit starts from other initial
    weights, which only its checkpoint can overwrite."""
    torch.manual_seed(5 if resume else 0)
    x = torch.randn(ROWS, FEATURES, generator=torch.Generator().manual_seed(1))
    vae = TinyVAE()
    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05, progress=False, val_samples=2)
    elbo = estimators.get("trace")
    fit(vae.model, vae.guide, TensorData(x), elbo, config, RunFolder(run), resume=resume)
    torch.distributed.barrier()  # rank 0 has written its checkpoint
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def autoguide_start() -> dict[str, torch.Tensor]:
    """The param store as :func:`fit` starts its first step (after the broadcast of the
    initial weights), for parameters made lazily from the first batch the pair sees: an
    ``AutoDelta`` over per-datapoint latents started by ``init_to_median`` (draws of the
    batch's shape, repeated over the 32 rows) and a model's ``pyro.param`` made from its
    rows' mean; global batches of 8."""
    import pyro_vae.distributed as distributed

    pyro.clear_param_store()
    x = torch.randn(ROWS, FEATURES, generator=torch.Generator().manual_seed(3))

    def model(x):
        shift = pyro.param("shift", lambda: x.mean(0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), LATENT), 1.0).to_event(1))
            mean = z.sum(-1, keepdim=True) + shift
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

    guide = AutoDelta(model, init_loc_fn=init_to_median)
    started, broadcast = {}, distributed.Group.broadcast_params

    def captured(group) -> None:
        broadcast(group)
        started.update({k: v.detach().clone() for k, v in pyro.get_param_store().items()})

    config = TrainConfig(epochs=1, batch_size=BATCH, progress=False, val_samples=2)
    distributed.Group.broadcast_params = captured
    try:
        fit(model, guide, TensorData(x), estimators.get("trace"), config)
    finally:
        distributed.Group.broadcast_params = broadcast
    return started


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with session() as group:
        assert current().world == group.world > 1
        weights = {name: train(name, group.rank, group.world) for name in CASES}
        weights["gradients"] = gradients(group.rank, group.world)
        weights["m2"] = m2_train(group.rank, group.world)
        weights["start"] = autoguide_start()
        weights["batchnorm"] = batchnorm_buffers()
        weights["batchnorm_by_rank"] = batchnorm_buffers(by_rank=True)
        if group.rank == 0:
            (out / "straight").mkdir(), (out / "resumed").mkdir()
        torch.distributed.barrier()
        weights["straight"] = train_run(out / "straight", epochs=3)
        train_run(out / "resumed", epochs=2)
        weights["resumed"] = train_run(out / "resumed", epochs=3, resume=True)
    torch.save(weights, out / f"rank{group.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
