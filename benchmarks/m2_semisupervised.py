"""The semi-supervised M2 model on Fashion-MNIST with 3,000 labels (300 per class), against
a classifier trained on the labels alone and a plain Pyro script.

Three contenders, on the same data, networks and epochs, run one after the other:

1. ``pyro_vae M2``: what ``pyro-vae fit --model models.m2:M2 --estimator enum --labelled
   3000 --data fashion-mnist --val-fraction 0`` builds (:func:`pyro_vae.experiment.build`
   of the same :class:`~pyro_vae.run_config.RunConfig`), trained by :func:`pyro_vae.fit`:
   one objective, J^α of Kingma et al. (2014) eq. 9, labelled and unlabelled rows mixed in
   each shuffled batch, y summed out by ``TraceEnum_ELBO`` (:mod:`models.m2`).
2. ``supervised only``: the network of M2's q(y | x) (784-500-10, Softplus), trained by
   cross-entropy on the 3,000 labelled images alone, for the same number of epochs (of its
   3,000 images), and again for as many steps as M2 takes (``same steps``), so that the
   comparison is not won by a classifier that has barely trained.
3. ``plain Pyro``: our own script in the style of Pyro's ``examples/vae/ss_vae_M2.py``: an
   ``SSVAE`` module with ``model``/``guide`` (y a ``OneHotCategorical``, observed on
   labelled batches, enumerated by ``config_enumerate`` on unlabelled ones) and
   ``model_classify``/``guide_classify`` (the α term under ``poutine.scale``), two ``SVI``
   objects with ``TraceEnum_ELBO``, labelled and unlabelled batches interleaved
   periodically as the example does, the loss summed over each batch (no N/|B| scaling).
   Departures from the example: the decoder gives Bernoulli logits (the example's
   sigmoid probabilities are clamped by torch), and the encoders' layers are those of
   contender 1, so its weights can be scored by the same evaluator.

Shared settings: Fashion-MNIST statically binarized at 0.5, the official 60,000 training
images (no validation split: every contender keeps its last epoch, and no label outside
the 3,000 is used), 3,000 of them labelled by :meth:`pyro_vae.data.DataSplits.
with_labelled_subset` (``count=3000``, ``seed``); latent dimension 50 and one hidden
layer of 500 Softplus units in every network (Kingma et al. 2014); batch 100; Adam, lr
1e-3; ``--epochs`` (default 10). α: the weight of each labelled image's log q(y | x) is
``--alpha-per-label`` (default 46, Pyro's example's ``aux_loss_multiplier``), i.e.
α = 46 · 3000 in M2's parameterization (α times the mean over labelled rows); the
paper's α = 0.1 · N gives each label a weight of 2 here, and on the 8x8 digits with 100
labels it reached 43% test accuracy after 10 epochs where 46 per label reached 68%.

Measurements, by one evaluator for both M2 contenders (the plain script's weights are
copied into :class:`models.m2.M2`, and the copy is checked to score the plain model's
log p(x, y, z) at the same draws): test accuracy (argmax q(y | x), all 10,000 test
images); the test ELBO with the label unobserved and summed out exactly,
U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x)) (``--elbo-samples`` draws of z per class, all
test images); log p(x) with y enumerated and z importance-sampled (K = ``--ll-samples``
per class, the first ``--ll-points`` test images; :meth:`models.m2.M2.label_metrics`);
seconds per epoch (median, evaluation excluded).

Run from the repository root::

    .venv/bin/python benchmarks/m2_semisupervised.py

It should take 30-40 minutes on 2 idle cores (an estimate, not a measurement: an M2 epoch
does 10-14 times a VAE epoch's arithmetic, the C = 10 classes enumerated through encoder
and decoder at 500 units, and a VAE epoch takes ~7.5 s here; two M2 contenders of 10
epochs, ~3 minutes of evaluation, under a minute for the classifier alone).

The markdown table goes to ``benchmarks/m2_semisupervised.md`` (``--out``) and stdout;
``--quick`` runs tiny settings on the digits, for the smoke test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from report_common import load_average, machine_footer, output_file, quick_settings
from torch import nn

from pyro_vae import fit
from pyro_vae.experiment import build
from pyro_vae.nn import mlp
from pyro_vae.run_config import DataConfig, EstimatorConfig, ModelConfig, RunConfig
from pyro_vae.training_config import TrainingConfig

HERE = Path(__file__).parent


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b]`` on the last dim, leading dims broadcast (an enumerated one-hot y is
    ``[C, 1, C]`` against ``[B, D]``), as the example's ``broadcast_inputs`` does."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1)


# --- contender 3: a plain Pyro script in the style of examples/vae/ss_vae_M2.py ----------


class SSVAE(nn.Module):
    """Pyro's ``SSVAE`` shape: one module, ``model``/``guide`` for the ELBO and
    ``model_classify``/``guide_classify`` for the α term (per labelled image)."""

    def __init__(self, x_dim, num_classes, z_dim, hidden, aux_loss_multiplier) -> None:
        super().__init__()
        self.num_classes, self.z_dim, self.aux = num_classes, z_dim, aux_loss_multiplier
        self.encoder_y = mlp(x_dim, (hidden,), num_classes)
        self.encoder_z = mlp(x_dim + num_classes, (hidden,))
        self.loc, self.log_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.decoder = mlp(z_dim + num_classes, (hidden,), x_dim)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch = xs.shape[0]
        with pyro.plate("data", batch):
            zeros = xs.new_zeros(batch, self.z_dim)
            zs = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            prior = xs.new_ones(batch, self.num_classes) / self.num_classes
            ys = pyro.sample("y", dist.OneHotCategorical(prior), obs=ys)
            logits = self.decoder(_cat(zs, ys))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            h = self.encoder_z(_cat(xs, ys))
            pyro.sample("z", dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1))

    def model_classify(self, xs, ys):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]), poutine.scale(scale=self.aux):
            pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys):
        pass


def plain_pyro(splits, args) -> tuple[SSVAE, list[float]]:
    """Train contender 3; its seconds per epoch."""
    torch.manual_seed(args.seed)
    x, y, seen = splits.train_x, splits.train_y.long(), splits.train_observed
    net = SSVAE(x.shape[1], args.classes, args.latent_dim, args.hidden, args.alpha_per_label)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    adam = pyro.optim.Adam({"lr": args.lr})
    # A labelled batch, and the classifier's term, have nothing to enumerate: no warning.
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    guide = config_enumerate(net.guide, "parallel", expand=True)
    basic = SVI(net.model, guide, adam, elbo)
    aux = SVI(net.model_classify, net.guide_classify, adam, elbo)
    onehot = nn.functional.one_hot(y, args.classes).float()
    labelled, unlabelled = seen.nonzero().squeeze(-1), (~seen).nonzero().squeeze(-1)
    seconds = []
    for _ in range(args.epochs):
        started = time.perf_counter()
        for rows, supervised in _interleaved(labelled, unlabelled, args.batch_size):
            if supervised:
                basic.step(x[rows], onehot[rows])
                aux.step(x[rows], onehot[rows])
            else:
                basic.step(x[rows])
        seconds.append(time.perf_counter() - started)
    return net, seconds


def _interleaved(labelled, unlabelled, batch: int):
    """Shuffled batches of each kind, a labelled one every ``period`` batches, as the
    example's ``run_inference_for_epoch`` does: ``(rows, supervised)``."""
    sup = list(labelled[torch.randperm(len(labelled))].split(batch))
    unsup = list(unlabelled[torch.randperm(len(unlabelled))].split(batch))
    period = max(1, (len(sup) + len(unsup)) // max(1, len(sup)))
    for i in range(len(sup) + len(unsup)):
        if sup and (i % period == 1 or not unsup):
            yield sup.pop(), True
        else:
            yield unsup.pop(), False


def copy_into_m2(net: SSVAE, model, guide, x: torch.Tensor) -> None:
    """Contender 3's weights into contender 1's classes, checked at the same draws."""
    model.decoder.load_state_dict(net.decoder.state_dict())
    guide.classifier.load_state_dict(net.encoder_y.state_dict())
    guide.trunk.load_state_dict(net.encoder_z.state_dict())
    guide.loc_head.load_state_dict(net.loc.state_dict())
    guide.log_scale_head.load_state_dict(net.log_scale.state_dict())
    rows = x[:8]
    y = torch.arange(8) % net.num_classes
    z = torch.randn(8, net.z_dim)
    onehot = nn.functional.one_hot(y, net.num_classes).float()
    model.eval()
    with torch.no_grad():
        plain = poutine.trace(poutine.condition(net.model, {"z": z})).get_trace(rows, onehot)
        ours = poutine.trace(poutine.condition(model, {"y": y, "z": z})).get_trace(rows, y)
        same_q = torch.equal(guide.classifier(rows), net.encoder_y(rows))
    total = plain.log_prob_sum().item()
    gap = abs(total - ours.log_prob_sum().item())
    # float32 sums of ~6,000 terms in two orders differ by rounding, ~1e-7 of the total
    # (0.002 nats at ~16,000 after 10 epochs); a copying mistake costs whole nats
    if gap > 1e-5 * (1 + abs(total)) or not same_q:
        raise AssertionError(
            f"the copied M2 scores the plain model's draws {gap} nats apart (of {total:.1f})"
        )


# --- contender 2: the classifier alone ------------------------------------------------


def supervised(splits, args, epochs: int) -> tuple[nn.Module, list[float]]:
    """M2's q(y | x) network trained by cross-entropy on the labelled rows alone."""
    torch.manual_seed(args.seed)
    net = mlp(splits.train_x.shape[1], (args.hidden,), args.classes)
    seen = splits.train_observed
    x, y = splits.train_x[seen], splits.train_y[seen].long()
    adam = torch.optim.Adam(net.parameters(), lr=args.lr)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for rows in torch.randperm(len(x)).split(args.batch_size):
            adam.zero_grad()
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            adam.step()
        seconds.append(time.perf_counter() - started)
    return net, seconds


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net(x).argmax(-1) == y).double().mean().item()


# --- contender 1 and the table -------------------------------------------------------


def config(args) -> RunConfig:
    options = {"latent_dim": args.latent_dim, "hidden_dims": [args.hidden]}
    options["alpha"] = args.alpha_per_label * args.labelled
    training = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        patience=None,
        progress=False,
        device="cpu",
    )
    data = DataConfig(args.data, val_fraction=0.0, labelled=args.labelled, split_seed=args.seed)
    return RunConfig(
        ModelConfig("models.m2:M2", options),
        data,
        estimator=EstimatorConfig("enum"),
        training=training,
    )


def scores(model, guide, splits, args) -> dict[str, float]:
    pyro.set_rng_seed(args.seed)
    x, y = splits.test_x, splits.test_y.long()
    return model.label_metrics(guide, x, y, args.elbo_samples, args.ll_samples, args.ll_points)


def run(args, report=lambda results: None) -> dict[str, dict]:
    """Every contender's scores; ``report(results)`` after each, for a partial table."""
    exp = build(config(args))
    splits, results = exp.data, {}
    # the weight copy of contender 3 is checked now, untrained, so a mapping mistake
    # fails in seconds rather than after the training
    untrained = SSVAE(splits.train_x.shape[1], args.classes, args.latent_dim, args.hidden, 1.0)
    copy_into_m2(untrained, copy.deepcopy(exp.model), copy.deepcopy(exp.guide), splits.test_x)
    result = fit(exp.model, exp.guide, exp.data, exp.elbo, exp.config.training)
    seconds = [record["seconds"] for record in result.history]
    results["pyro_vae M2"] = {**scores(exp.model, exp.guide, splits, args), "seconds": seconds}
    print(f"pyro_vae M2: {results['pyro_vae M2']}", flush=True)
    report(results)
    steps = -(-splits.num_train // args.batch_size) * args.epochs
    per_epoch = -(-args.labelled // args.batch_size)
    for name, epochs in (("same epochs", args.epochs), ("same steps", -(-steps // per_epoch))):
        net, seconds = supervised(splits, args, epochs)
        acc = accuracy(net, splits.test_x, splits.test_y.long())
        results[f"supervised only, {name} ({epochs})"] = {"test_accuracy": acc, "seconds": seconds}
        report(results)
    net, seconds = plain_pyro(splits, args)
    copy_into_m2(net, exp.model, exp.guide, splits.test_x)
    results["plain Pyro (ss_vae_M2 style)"] = {
        **scores(exp.model, exp.guide, splits, args),
        "seconds": seconds,
    }
    return results


def table(results: dict, args, loads: tuple[str, str], seconds: float) -> str:
    lines = [
        f"# M2 on {args.data} with {args.labelled} labels",
        "",
        "Written by `python benchmarks/m2_semisupervised.py` "
        f"({' '.join(args.argv) or 'default settings'}); see its docstring for the protocol.",
        "",
        f"Latent {args.latent_dim}, hidden {args.hidden}, {args.epochs} epochs, batch "
        f"{args.batch_size}, Adam lr {args.lr}, {args.alpha_per_label} per labelled image "
        f"(α = {args.alpha_per_label * args.labelled:g}), seed {args.seed}. Test ELBO: "
        f"U(x), y summed out, {args.elbo_samples} z-draws per class; log p(x): y "
        f"enumerated, K = {args.ll_samples} per class, first {args.ll_points} test images "
        "(nats per image).",
        "",
        "| contender | test accuracy | test ELBO (y unobserved) | log p(x) | s/epoch |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        elbo = r.get("test_elbo_unlabelled")
        log_px = r.get("test_log_px_unlabelled")
        cells = ["—" if v is None else f"{v:.2f}" for v in (elbo, log_px)]
        lines.append(
            f"| {name} | {r['test_accuracy']:.4f} | {cells[0]} | {cells[1]} | "
            f"{statistics.median(r['seconds']):.3g} |"  # 3 significant digits: a tiny
            # classifier's epoch can take under 5 ms, which 2 decimals would show as 0.00
        )
    lines += [
        "",
        machine_footer(loads, seconds),
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings on digits (smoke test)")
    p.add_argument("--out", type=output_file, default=HERE / "m2_semisupervised.md")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--labelled", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha-per-label", type=float, default=46.0)
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elbo-samples", type=int, default=1)
    p.add_argument("--ll-samples", type=int, default=100)
    p.add_argument("--ll-points", type=int, default=1000)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv, args.classes = argv, 10
    if args.quick:
        quick = dict(data="digits", labelled=100, epochs=1, batch_size=128)
        quick.update(latent_dim=4, hidden=16, ll_samples=4, ll_points=50)
        quick_settings(p, argv, args, quick)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    loads = [load_average()]
    print(f"load average {loads[0]}", flush=True)
    started = time.perf_counter()

    def partial(results):
        text = table(results, args, (loads[0], "(running)"), time.perf_counter() - started)
        args.out.write_text(text.replace("# M2", "# (PARTIAL: still running) M2", 1))

    results = run(args, partial)
    loads.append(load_average())
    text = table(results, args, tuple(loads), time.perf_counter() - started)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
