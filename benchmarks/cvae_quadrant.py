"""The conditional VAE on partial images: given one quadrant, predict the other three
(Sohn, Lee & Yan 2015, §5; the task of Pyro's CVAE tutorial), on Fashion-MNIST.

``python benchmarks/cvae_quadrant.py`` writes ``benchmarks/cvae_quadrant.md`` and
``benchmarks/cvae_quadrant.png`` (``--quick``: the 8x8 digits, tiny sizes, for the smoke
test). The images are binarized at 0.5 (static), so a Bernoulli likelihood is exact. The
input y is the top-left quadrant (a float vector of H/2 · W/2 pixels, not a class), the
output x the other three quadrants. Two contenders, trained on the same minibatches for
the same epochs with Adam (lr 1e-3, batch 128), no early stopping:

- a deterministic baseline network ŷ(y), an MLP from the quadrant to the logits of the
  other pixels, trained by their Bernoulli log-likelihood; its test score is that
  log-likelihood, log p(x | y) = Σ_d log Bernoulli(x_d; ŷ_d(y)), a factorized prediction;
- :class:`models.cvae.CVAE` with a float condition (``condition_dim`` = the quadrant's
  pixels): z ~ N(0, I), x | z, y ~ Bernoulli(decoder([z, y])), q(z | x, y) amortized
  Normal (:class:`models.cvae.CVAEGuide`), trained by the ELBO (``Trace_ELBO``); its
  test score is the importance-weighted log p(x | y) with K samples
  (:func:`pyro_vae.evaluate.iwae_log_likelihood`, Burda et al. 2015), a lower bound
  that tightens with K, and its ELBO.

Why a loop of its own rather than :func:`pyro_vae.fit`: the condition here is a tensor
of pixels cut from each image, not a class label a :class:`~pyro_vae.data.DataSplits`
carries (:mod:`pyro_vae.labels`), so the model is called on ``(x, y)`` minibatches by
``pyro.infer.SVI`` directly; scoring goes through the package's evaluators. Both
networks have the same hidden widths. The figure shows, for several test images, the
image, its quadrant, the baseline's mean prediction and several CVAE samples E[x | z, y]
(z ~ p(z)), the quadrant pasted in.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from report_common import load_average, machine_footer, output_file, quick_settings

from models.cvae import CVAE
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.evaluate import elbo_per_datapoint, eval_mode, iwae_log_likelihood
from pyro_vae.nn import mlp
from pyro_vae.plots import plot_image_rows

HERE = Path(__file__).parent


def quadrant_mask(image_shape: tuple[int, int]) -> torch.Tensor:
    """The top-left quadrant's pixels of a flattened ``(H, W)`` image: ``BoolTensor [H·W]``."""
    h, w = image_shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[: h // 2, : w // 2] = True
    return mask.reshape(-1)


def split(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rest, quadrant)``: the pixels to predict ``[N, D − Q]`` and the input ``[N, Q]``."""
    return x[:, ~mask], x[:, mask]


def join(rest: torch.Tensor, quadrant: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The flattened images with ``quadrant`` and ``rest`` in their places."""
    out = rest.new_empty(*rest.shape[:-1], mask.numel())
    out[..., mask], out[..., ~mask] = quadrant, rest
    return out


def minibatches(n: int, batch: int, epoch: int, seed: int):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return order.split(batch)


def train_baseline(rest, quadrant, args) -> torch.nn.Module:
    """The deterministic network, trained by the Bernoulli log-likelihood of ``rest``."""
    torch.manual_seed(args.seed)
    net = mlp(quadrant.shape[1], args.hidden, rest.shape[1])
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    for epoch in range(args.epochs):
        for rows in minibatches(rest.shape[0], 128, epoch, args.seed):
            optim.zero_grad()
            loss_fn(net(quadrant[rows]), rest[rows]).backward()
            optim.step()
    return net


def train_cvae(rest, quadrant, args):
    """The CVAE with the quadrant as a float condition, trained by the ELBO."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model = CVAE(
        rest.shape[1],
        condition_dim=quadrant.shape[1],
        latent_dim=args.latent_dim,
        hidden_dims=args.hidden,
    )
    guide = model.make_guide()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    n = rest.shape[0]
    for epoch in range(args.epochs):
        batches = minibatches(n, 128, epoch, args.seed)
        # each step's loss is scaled by N / |B| to the whole training set's
        total = sum(svi.step(rest[rows], quadrant[rows], num_data=n) for rows in batches)
        elbo = -total / (len(batches) * n)
        print(f"  CVAE epoch {epoch + 1}: train ELBO {elbo:.2f} nats per image", flush=True)
    return model, guide


@torch.no_grad()
def scores(baseline, model, guide, rest, quadrant, args) -> dict[str, float]:
    """Test log p(rest | quadrant) of both (nats per image), on the first ``ll_points``."""
    rest, quadrant = rest[: args.ll_points], quadrant[: args.ll_points]
    logits = baseline(quadrant)
    base = torch.distributions.Bernoulli(logits=logits).log_prob(rest).sum(-1)
    pyro.set_rng_seed(args.seed)
    with eval_mode(model, guide):
        iwae = iwae_log_likelihood(model, guide, (rest, quadrant), args.ll_samples)
        elbo = elbo_per_datapoint(model, guide, (rest, quadrant), 10)
    return {
        "baseline": base.mean().item(),
        "cvae_iwae": iwae.mean().item(),
        "cvae_elbo": elbo.mean().item(),
        "points": int(rest.shape[0]),
        "paired_se": ((iwae - base).std() / rest.shape[0] ** 0.5).item(),
    }


@torch.no_grad()
def figure(baseline, model, x, mask, image_shape, path: Path, rows: int = 6, samples: int = 5):
    """Per test image: the image, its quadrant (the rest grey), the baseline's mean, and
    ``samples`` CVAE means E[x | z, y] for z ~ p(z), each with the quadrant pasted in."""
    rest, quadrant = split(x[:rows], mask)
    shown = [x[:rows], join(torch.full_like(rest, 0.5), quadrant, mask)]
    shown.append(join(torch.sigmoid(baseline(quadrant)), quadrant, mask))
    pyro.set_rng_seed(0)
    with eval_mode(model):
        for _ in range(samples):
            z = model.prior(quadrant, (rows,)).sample()
            mean = model.likelihood.mean(model.logits(z, model.condition(quadrant, quadrant)))
            shown.append(join(mean, quadrant, mask))
    images = torch.stack(shown, 1)  # [rows, 3 + samples, D]
    labels = [f"test #{i}" for i in range(rows)]
    title = (
        "given the top-left quadrant: image, input, baseline mean, "
        f"{samples} CVAE samples E[x | z, y], z ~ p(z)"
    )
    return plot_image_rows(images, image_shape, 1.0, path, labels, title)


def table(result: dict, args, seconds: dict, loads: tuple[str, str], total: float) -> str:
    gain = result["cvae_iwae"] - result["baseline"]
    lines = [
        f"# The conditional VAE on partial images: {args.data}, one quadrant given",
        "",
        "Written by `python benchmarks/cvae_quadrant.py` "
        f"({' '.join(args.argv) or 'default settings'}); see its docstring for the protocol.",
        "",
        f"Input y: the top-left quadrant; output x: the other three ({result['rest_dim']} "
        f"pixels), binarized at 0.5. Both networks: hidden {args.hidden}; CVAE latent "
        f"{args.latent_dim}; {args.epochs} epochs of Adam (lr 1e-3, batch 128) on "
        f"{result['train_rows']} training images, seed {args.seed}. Test: the first "
        f"{result['points']} test images, nats per image (higher is better).",
        "",
        "| model | test log p(x \\| y) | how | train (s) |",
        "|---|---|---|---|",
        f"| deterministic baseline | {result['baseline']:.2f} | Bernoulli log-likelihood of "
        f"the predicted pixels | {seconds['baseline']:.0f} |",
        f"| CVAE | {result['cvae_iwae']:.2f} | IWAE, K = {args.ll_samples} | "
        f"{seconds['cvae']:.0f} |",
        f"| CVAE (ELBO) | {result['cvae_elbo']:.2f} | ELBO, 10 draws | — |",
        "",
        f"CVAE − baseline: {gain:.2f} ± {result['paired_se']:.2f} nats per image (paired "
        "by image; ± one standard error over the test images). The IWAE value is a lower "
        "bound on the CVAE's log p(x | y).",
        "",
        f"![samples]({args.out.with_suffix('.png').name})",  # its own (tester ES)
        "",
        machine_footer(loads, total),
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the digits, tiny sizes (smoke test)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=output_file, default=HERE / "cvae_quadrant.md")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--train-rows", type=int, default=None, help="default: all")
    p.add_argument("--ll-samples", type=int, default=1000)
    p.add_argument("--ll-points", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        quick = dict(data="digits", epochs=1, hidden=[32], latent_dim=2)
        quick.update(train_rows=512, ll_samples=8, ll_points=32)
        quick_settings(p, argv, args, quick)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    # On a busy 2-core machine a second thread costs more than it gives (a baseline step:
    # 25 ms on one thread, 280 ms on two, measured under a load average of 5)
    torch.set_num_threads(1)
    loads = [load_average()]
    started = time.perf_counter()
    data = load_data(args.data, Preprocessing("bernoulli", "static"), val_fraction=0.0)
    mask = quadrant_mask(data.image_shape)
    train_x = data.train_x[: args.train_rows]
    rest, quadrant = split(train_x, mask)
    test_rest, test_quadrant = split(data.test_x, mask)
    seconds = {}
    t = time.perf_counter()
    baseline = train_baseline(rest, quadrant, args)
    seconds["baseline"] = time.perf_counter() - t
    t = time.perf_counter()
    model, guide = train_cvae(rest, quadrant, args)
    seconds["cvae"] = time.perf_counter() - t
    result = scores(baseline, model, guide, test_rest, test_quadrant, args)
    result.update(rest_dim=int(rest.shape[1]), train_rows=int(rest.shape[0]))
    figure(baseline, model, data.test_x, mask, data.image_shape, args.out.with_suffix(".png"))
    loads.append(load_average())
    text = table(result, args, seconds, tuple(loads), time.perf_counter() - started)
    args.out.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
