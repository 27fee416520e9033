"""The M2 model (Kingma et al. 2014) against its bound computed by hand, class by class.

The hand computations read the guide's own z draws (the guide traced under the seed the
estimator used, enumerated as ``TraceEnum_ELBO`` enumerates it) and score them with torch
distributions built from the networks directly, so they share no code with Pyro's
enumeration or with the model's sample statements.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.poutine.messenger import Messenger

from models.m2 import M2, M2Guide
from pyro_vae import TrainConfig, fit, load_data
from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.cli import main as cli_main
from pyro_vae.convnets import ConvDecoder, ConvEncoder
from pyro_vae.estimators import get as get_estimator
from pyro_vae.estimators.compiled import should_record
from pyro_vae.evaluate import elbo_per_datapoint
from pyro_vae.minibatch import Minibatched

C, D, Z = 3, 5, 2


def _pair(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = M2(D, num_classes=C, latent_dim=Z, hidden_dims=(4,), **options)
    return model, model.make_guide()


def _data(rows: int, seed: int = 1, dim: int = D):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((rows, dim), 0.5), generator=g)
    y = torch.randint(C, (rows,), generator=g)
    return x, y


def _enum_loss(model, guide, *args, seed: int = 3, **kwargs) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    elbo = get_estimator("enum", max_plate_nesting=1)
    return elbo.differentiable_loss(model, guide, *args, **kwargs)


def _enumerated_z(guide, *args, seed: int = 3) -> torch.Tensor:
    """The guide's z draws under the estimator's seed: ``[C, B, Z]`` (one per class)."""
    pyro.set_rng_seed(seed)
    enumerated = poutine.enum(guide, first_available_dim=-2)
    return poutine.trace(enumerated).get_trace(*args).nodes["z"]["value"]


@torch.no_grad()
def _term(model, guide, x, c: int, z: torch.Tensor) -> torch.Tensor:
    """log p(c) + log p(z) + log p(x | c, z) − log q(z | x, c) per row, by hand; ``z``
    ``[..., B, Z]`` (particles left of the rows). The guide's φ(x) is x itself for the MLP
    (``features`` is empty) and the convolutions' features for ``arch="conv"``."""
    code = torch.nn.functional.one_hot(torch.full((x.shape[0],), c), C).float()
    h = guide.trunk(torch.cat([guide.features(x), code], -1))
    q = torch.distributions.Normal(guide.loc_head(h), guide.log_scale_head(h).exp())
    logits = model.decoder(torch.cat([z, code.expand(*z.shape[:-1], C)], -1))
    log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return -math.log(C) + log_prior + log_lik - q.log_prob(z).sum(-1)


def test_unlabelled_rows_sum_the_classes_out_exactly():
    model, guide = _pair()
    model.eval()
    x, _ = _data(4)
    unseen = torch.zeros(4, dtype=torch.bool)
    args = (x, torch.zeros(4, dtype=torch.long), unseen)
    loss = _enum_loss(model, guide, *args)
    z = _enumerated_z(guide, *args)
    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(x), -1)
    by_hand = sum(
        (log_q[:, c].exp() * (_term(model, guide, x, c, z[c]) - log_q[:, c])).sum()
        for c in range(C)
    )
    assert -loss.item() == pytest.approx(by_hand.item(), abs=1e-4)


def test_labelled_rows_score_their_own_class_only():
    model, guide = _pair()
    model.eval()
    x, y = _data(4)
    args = (x, y, torch.ones(4, dtype=torch.bool))
    loss = _enum_loss(model, guide, *args)
    z = _enumerated_z(guide, *args)
    terms = torch.stack([_term(model, guide, x, c, z[c]) for c in range(C)])  # [C, B]
    by_hand = terms.gather(0, y.unsqueeze(0)).sum()
    assert -loss.item() == pytest.approx(by_hand.item(), abs=1e-4)


def test_mixed_batch_is_the_sum_of_its_labelled_and_unlabelled_bounds():
    model, guide = _pair()
    model.eval()
    x, y = _data(6)
    observed = torch.tensor([True, False, True, False, False, True])
    args = (x, y, observed)
    loss = _enum_loss(model, guide, *args)
    z = _enumerated_z(guide, *args)
    terms = torch.stack([_term(model, guide, x, c, z[c]) for c in range(C)])
    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(x), -1).T  # [C, B]
    unlabelled = (log_q.exp() * (terms - log_q)).sum(0)
    labelled = terms.gather(0, y.unsqueeze(0)).squeeze(0)
    by_hand = torch.where(observed, labelled, unlabelled).sum()
    assert -loss.item() == pytest.approx(by_hand.item(), abs=1e-4)


def test_gradients_are_finite_through_the_point_masses():
    model, guide = _pair()
    x, y = _data(6)
    observed = torch.tensor([True, False, True, False, False, True])
    _enum_loss(model, guide, x, y, observed).backward()
    grads = [p.grad for p in (*model.parameters(), *guide.parameters()) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # The classifier learns from both terms: U(x) of unlabelled rows and the α term.
    assert guide.classifier[0].weight.grad.abs().sum() > 0


def test_alpha_term_is_in_training_only_and_absent_from_every_reported_elbo():
    alpha = 7.0
    model, guide = _pair(alpha=alpha)
    x, y = _data(6)
    observed = torch.tensor([True, False, True, False, False, True])
    args = (x, y, observed)
    trained = _enum_loss(model, guide, *args)
    model.eval()
    reported = _enum_loss(model, guide, *args)
    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(x), -1).gather(-1, y.unsqueeze(-1))
    mean = log_q.squeeze(-1)[observed].mean()
    assert (reported - trained).item() == pytest.approx(alpha * mean.item(), rel=1e-5)
    # The evaluators score the bound: a model with a huge α reports what one without does.
    model.train()
    no_alpha = copy.deepcopy(model)
    no_alpha.alpha = 0.0
    huge = copy.deepcopy(model)
    huge.alpha = 1e6
    scores = []
    for m in (no_alpha, huge):
        torch.manual_seed(5)
        scores.append(elbo_per_datapoint(m, m.make_guide(), args, num_samples=3))
    assert torch.equal(scores[0], scores[1])


def _classifier_total(trace) -> float:
    """The classifier factor as the objective counts it: its rows, times the plate's scale."""
    site = trace.nodes["classifier"]
    return float((site["scale"] * site["fn"].log_factor).sum())


def test_alpha_defaults_to_a_tenth_of_the_training_rows():
    model, guide = _pair()
    x, y = _data(4)
    observed = torch.tensor([True, True, False, False])
    trace = poutine.trace(model).get_trace(x, y, observed, num_data=40)
    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(x), -1).gather(-1, y.unsqueeze(-1))
    expected = 0.1 * 40 * log_q.squeeze(-1)[:2].mean()
    assert _classifier_total(trace) == pytest.approx(expected.item())
    # as fit calls it: N from the minibatch wrapper (tester DW: it was never passed)
    wrapped = Minibatched(model, "data", 40)
    trace = poutine.trace(wrapped).get_trace(x, y, observed, subsample=torch.arange(4))
    assert _classifier_total(trace) == pytest.approx(expected.item())


class _PointZ(Messenger):
    """The guide's z at its mean (a Delta): every loss below is then deterministic."""

    def _pyro_sample(self, msg):
        if msg["name"] == "z":
            msg["fn"] = dist.Delta(msg["fn"].mean, event_dim=1)


@pytest.mark.parametrize("num_labelled", [3, None])
def test_minibatches_are_unbiased_for_the_full_data_objective(num_labelled):
    """All 15 batches of 2 from 6 rows (3 labelled), each scaled as the fit loop scales it
    (``Minibatched``: the data plate's full size N = 6): their mean bound is the full-data
    bound exactly, and so is the α term, α times the mean of log q(y | x) over the labelled
    rows (by hand), given N_l = 3 as ``fit`` gives it. The term was α times the mean over
    the batch's labelled rows, 0 without one: its mean over all batches was α · P(k ≥ 1)
    times the whole (tester DW), as it still is where N_l is not given."""
    model, guide = _pair(alpha=2.0)
    x, y = _data(6)
    observed = torch.tensor([True, False, True, False, False, True])
    keywords = {"num_labelled": num_labelled} if num_labelled else None
    wrapped = (
        Minibatched(model, "data", 6, keywords),
        Minibatched(_PointZ()(guide), "data", 6, keywords),
    )

    def losses(rows):
        args = (x[rows], y[rows], observed[rows])
        out = []
        for training in (False, True):
            model.train(training)
            out.append(_enum_loss(*wrapped, *args, subsample=rows).item())
        return out  # [the bound's loss, with the α term]

    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(x), -1).gather(-1, y.unsqueeze(-1))
    by_hand = 2.0 * log_q.squeeze(-1)[observed].mean().item()
    full_bound, full_alpha = losses(torch.arange(6))
    assert full_bound - full_alpha == pytest.approx(by_hand, rel=1e-5)
    batches = [torch.tensor(b) for b in itertools.combinations(range(6), 2)]
    results = [losses(b) for b in batches]
    mean_bound = sum(r[0] for r in results) / len(results)
    assert mean_bound == pytest.approx(full_bound, rel=1e-5)
    terms = [r[0] - r[1] for r in results]
    if num_labelled:  # every batch counts, those without a labelled row as 0
        assert sum(terms) / len(terms) == pytest.approx(by_hand, rel=1e-5)
    else:  # the batches' ratio estimate: unbiased only given a labelled row
        labelled = [t for t, b in zip(terms, batches, strict=True) if observed[b].any()]
        assert sum(labelled) / len(labelled) == pytest.approx(by_hand, rel=1e-5)
        assert sum(terms) / len(terms) == pytest.approx(by_hand * 12 / 15, rel=1e-5)


def test_classifier_beats_chance_on_separable_classes_within_a_few_steps():
    """Two classes that light up different halves of 8 pixels, 10 of 60 rows labelled;
    15 steps (~0.1 s each: enumeration's contraction, not the networks, dominates)."""
    torch.manual_seed(0)
    y = torch.arange(80) % 2
    probs = torch.where((torch.arange(8) < 4) == (y.unsqueeze(-1) == 0), 0.9, 0.1)
    x = torch.bernoulli(probs)
    observed = torch.zeros(60, dtype=torch.bool)
    observed[:10] = True
    model = M2(8, num_classes=2, latent_dim=2, hidden_dims=(16,))
    guide = model.make_guide()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = get_estimator("enum", max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    assert (model.predict(x[60:]) == y[60:]).float().mean().item() == 0.5  # before
    for _ in range(15):
        svi.step(x[:60], y[:60], observed)
    # Chance is 0.5: 18 or more of the 20 held-out rows by chance has probability 2e-4.
    assert (model.predict(x[60:]) == y[60:]).float().mean().item() >= 0.9


def _exact_log_joint(model, x, c: int, grid: torch.Tensor) -> torch.Tensor:
    """log p(x, c) per row by quadrature over a 1-d z: ``[N]``."""
    code = torch.nn.functional.one_hot(torch.full((grid.shape[0],), c), 2).float()
    with torch.no_grad():
        logits = model.decoder(torch.cat([grid.unsqueeze(-1), code], -1))  # [G, D]
    log_lik = torch.distributions.Bernoulli(logits=logits.unsqueeze(1)).log_prob(x).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(grid).unsqueeze(-1)
    step = grid[1] - grid[0]
    return torch.logsumexp(log_lik + log_prior, 0) + step.log() - math.log(2)


def test_label_metrics_against_quadrature():
    """latent_dim 1, so log p(x) = log Σ_c ∫ p(c) p(z) p(x | c, z) dz by quadrature."""
    torch.manual_seed(0)
    model = M2(4, num_classes=2, latent_dim=1, hidden_dims=(6,))
    guide = model.make_guide()
    # q(z | x, c) as wide as the prior (σ = 1): an untrained guide's σ ≈ 0.4 makes the
    # weights heavy-tailed, and the estimate 0.2 nats low even at K = 20000.
    with torch.no_grad():
        guide.log_scale_head.weight.zero_()
        guide.log_scale_head.bias.zero_()
    x = torch.bernoulli(torch.full((5, 4), 0.5))
    y = torch.tensor([0, 1, 1, 0, 1])
    grid = torch.linspace(-9.0, 9.0, 6001, dtype=torch.float64)
    model.double(), guide.double()
    xd = x.double()
    exact = torch.logsumexp(torch.stack([_exact_log_joint(model, xd, c, grid) for c in (0, 1)]), 0)
    model.float(), guide.float()
    torch.manual_seed(1)
    metrics = model.label_metrics(guide, x, y, num_samples=200, iwae_samples=2000, iwae_rows=5)
    # With σ = 1 the weights w = p(x, z, c) / q(z | x, c) have a relative variance v of
    # order 1; the mean over 5 rows of K = 2000 draws then errs by ~√(v / (5 K)) ≈ 0.01
    # nats, plus a bias of ~v / (2K): 0.03 is 3 such errors.
    assert metrics["test_log_px_unlabelled"] == pytest.approx(exact.mean().item(), abs=0.03)
    assert metrics["test_elbo_unlabelled"] < exact.mean().item()
    predicted = model.predict(x)
    assert metrics["test_accuracy"] == pytest.approx((predicted == y).float().mean().item())
    assert metrics["test_log_px_unlabelled_K"] == 2000
    assert metrics["test_log_px_unlabelled_points"] == 5


def test_is_not_recorded_without_being_asked():
    """Its label checks read tensor values (``--compile auto`` leaves it eager)."""
    model, guide = _pair()
    reason = should_record(get_estimator("trace"), model, guide)
    assert reason.startswith("model: M2 does not declare recordable = True")


def test_declares_partial_labels_and_ties_its_guide():
    model, guide = _pair()
    assert M2.uses_labels == "partial"
    assert model.tied_guide is guide and isinstance(guide, M2Guide)
    assert not any(p is q for p in model.parameters() for q in guide.parameters())
    assert model.generate(3).shape == (3, D)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -1.0}, "alpha: -1.0"),
        ({"alpha": float("nan")}, "alpha: nan"),
        ({"alpha": True}, "alpha: True"),
        ({"num_classes": 1}, "num_classes: 1"),
        ({"latent_dim": 0}, "latent_dim: 0"),
    ],
)
def test_refuses_bad_options(options, message):
    kwargs = {"num_classes": C, "latent_dim": Z, **options}
    with pytest.raises(ValueError, match=message):
        M2(D, **kwargs)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ((torch.zeros(3, dtype=torch.long), None), r"y: shape \(3,\); expected \[4\]"),
        ((torch.zeros(4, dtype=torch.long), torch.ones(3, dtype=torch.bool)), "observed: shape"),
        (
            (None, torch.ones(4, dtype=torch.bool)),
            "observed: 4 labels marked observed, but y is None",
        ),
        ((torch.full((4,), 3), None), r"y: labels span 3..3; expected classes 0..2"),
        # tester EM: .long() read 2.9 as class 2 and −0.5 as class 0
        ((torch.full((4,), 2.9), None), r"y: a label 2.9 is not a whole number; expected"),
        ((torch.full((4,), -0.5), None), r"y: a label -0.5 is not a whole number"),
        # an unobserved row's label is not read
        ((torch.tensor([0, 1, 7, 2]), torch.tensor([True, True, True, False])), r"span 0..7"),
    ],
)
def test_refuses_bad_labels(labels, message):
    model, guide = _pair()
    x, _ = _data(4)
    for fn in (model, guide):
        with pytest.raises(ValueError, match=message):
            fn(x, *labels)


def test_an_unobserved_row_s_label_may_be_anything():
    """Tester EN: −1 (a common mark of an unlabelled row), 99 or NaN on an unobserved row
    failed in the guide's scatter ("index -1 is out of bounds"); the row's label is never
    scored, so the loss is that of any class there."""
    model, guide = _pair()
    x, y = _data(6)
    observed = torch.tensor([True, True, True, False, False, False])
    losses = []
    for unseen in (torch.tensor([0, 1, 2]), torch.tensor([-1, 99, -1]),
                   torch.tensor([float("nan")] * 3)):  # fmt: skip
        labels = torch.cat([y[:3].to(unseen.dtype), unseen])
        losses.append(_enum_loss(model, guide, x, labels, observed))
    assert losses[0] == losses[1] == losses[2]


def _two_halves(rows: int = 120, side: int = 4, seed: int = 0):
    """Binary ``side x side`` images whose class lights up the top or the bottom half."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 2
    top = (np.arange(side * side) < side * side // 2)[None, :] == (y[:, None] == 0)
    x = rng.random((rows, side * side)) < np.where(top, 0.9, 0.1)
    return x.astype(np.float32).reshape(rows, side, side), y


def test_fit_trains_it_on_a_labelled_subset_from_python():
    x, y = _two_halves()
    data = load_data(x, labels=y).with_labelled_subset(count=10, seed=0)
    assert int(data.train_observed.sum()) == 10
    model = M2(16, num_classes=2, latent_dim=2, hidden_dims=(16,), alpha=50.0)
    guide = model.make_guide()
    config = TrainConfig(epochs=5, batch_size=128, lr=0.05, progress=False, seed=0)
    result = fit(model, guide, data, get_estimator("enum"), config)
    assert len(result.history) == 5 and math.isfinite(result.history[-1]["val_elbo"])
    metrics = model.label_metrics(guide, data.test_x, data.test_y, iwae_samples=5)
    # 24 test images; chance is 0.5, and 20 or more right by chance has probability 1e-3.
    assert metrics["test_accuracy"] >= 20 / 24
    assert metrics["test_elbo_unlabelled"] < 0


class _Recorded(M2):
    """M2 that keeps the N and N_l its classifier term is given in training steps (the
    real term runs; fit's set-up also runs the model once, without gradients, to find
    its plates)."""

    def _classifier_term(self, x, y, observed, num_data, num_labelled):
        if torch.is_grad_enabled():
            self.given.add((num_data, num_labelled))
        super()._classifier_term(x, y, observed, num_data, num_labelled)


def test_fit_gives_the_classifier_term_the_training_rows_and_labels():
    # neither reached a PyroModule model before (tester DW): α's 0.1·N was 0.1·|B|, and
    # N_l was the batch's own estimate
    x, y = _two_halves()
    data = load_data(x, labels=y).with_labelled_subset(count=10, seed=0)
    model = _Recorded(16, num_classes=2, latent_dim=2, hidden_dims=(4,))
    model.given = set()
    config = TrainConfig(epochs=1, batch_size=16, progress=False, seed=0)
    fit(model, model.make_guide(), data, get_estimator("enum"), config)
    assert model.given == {(data.num_train, 10)}


class _FirstRevision(M2):
    """M2 as a run written before its objective's revision 2 recorded it."""

    objective_revision = 1


def test_a_run_of_the_old_objective_is_not_resumed_on_the_new(tmp_path):
    # a run trained with the batch-mean α term resumed on the per-row one, no word, the
    # objective switched part way (tester DY); same weights and options, other revision
    x, y = _two_halves()
    data = load_data(x, labels=y).with_labelled_subset(count=10, seed=0)
    config = TrainConfig(epochs=1, batch_size=32, progress=False, seed=0)
    run = RunFolder(tmp_path / "run")
    torch.manual_seed(0)
    old = _FirstRevision(16, num_classes=2, latent_dim=2, hidden_dims=(4,))
    fit(old, old.make_guide(), data, get_estimator("enum"), config, run)
    files = {f.name: f.read_bytes() for f in run.path.iterdir() if f.is_file()}
    torch.manual_seed(0)
    new = M2(16, num_classes=2, latent_dim=2, hidden_dims=(4,))
    later = TrainConfig(epochs=2, batch_size=32, progress=False, seed=0)
    with pytest.raises(RunFolderError, match=r"revision 1 of the model's training objective"):
        fit(new, new.make_guide(), data, get_estimator("enum"), later, run, resume=True)
    assert {f.name: f.read_bytes() for f in run.path.iterdir() if f.is_file()} == files
    # the new revision's own run records it and resumes
    run = RunFolder(tmp_path / "new")
    fit(new, new.make_guide(), data, get_estimator("enum"), config, run)
    fit(new, new.make_guide(), data, get_estimator("enum"), later, run, resume=True)
    objective = json.loads(run.file("metrics.json").read_text())["objective"]
    assert objective["model_objective_revision"] == 2


def test_the_command_line_fits_it_and_prints_the_accuracy(tmp_path, capsys):
    x, y = _two_halves()
    np.savez(tmp_path / "halves.npz", x=x, y=y)
    out = tmp_path / "run"
    argv = ["fit", "--model", "models.m2:M2", "--model-opt", "latent_dim=2", "--hidden", "8"]
    argv += ["--estimator", "enum", "--labelled", "10", "--data", str(tmp_path / "halves.npz")]
    argv += ["--epochs", "1", "--batch-size", "64", "--ll-samples", "2", "--no-progress"]
    assert cli_main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert 0.0 <= test["test_accuracy"] <= 1.0
    assert re.search(rf"test accuracy +{test['test_accuracy']:.4f}", printed)
    assert test["test_elbo_unlabelled"] < 0
    # with every test label observed, M2's generic bounds are of the joint log p(x, y), and
    # its KL includes KL(point mass at y ‖ uniform p(y)) = log 2 for these two classes
    assert test["labels_in_bound"] == "joint" and test["conditioned_on_labels"] is False
    assert re.search(r"^test ELBO, y +-?\d", printed, re.M)
    assert re.search(r"^test log p\(x, y\) \(IWAE\)", printed, re.M)
    assert re.search(r"^test KL\(q\(y, z \| x\) ‖ p\(y, z\)\)", printed, re.M)
    assert test["kl"] >= math.log(2) - 1e-6
    # a count, not 2.0000; --ll-samples' (tester U: M2 kept its own 100 whatever it said)
    assert re.search(r"test log px unlabelled K +2$", printed, re.M)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["labelled"] == 10
    assert (out / "conditional_samples.png").is_file()
    # tester BP: its log p(x) kept its own 1,000 rows whatever --ll-points said, and was
    # computed under --ll-samples 0, which turns the evaluation's log p(x) off
    assert cli_main(["evaluate", str(out), "--ll-samples", "3", "--ll-points", "5"]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["test_log_px_unlabelled_points"] == 5 == test["log_likelihood_points"]
    assert test["test_log_px_unlabelled_K"] == 3
    saved = test["test_log_px_unlabelled"]
    capsys.readouterr()
    assert cli_main(["evaluate", str(out), "--ll-samples", "0"]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]  # not computed: kept, said
    assert test["test_log_px_unlabelled"] == saved and test["test_log_px_unlabelled_K"] == 3
    printed = capsys.readouterr().out
    assert "note: log p(x) (IWAE), test log px unlabelled above are the saved estimates" in printed


# --- arch="conv" --------------------------------------------------------------------------


def _conv_pair(seed: int = 0, shape=(2, 4, 4), **options):
    torch.manual_seed(seed)
    pixels = math.prod(shape)
    options = {"num_classes": C, "latent_dim": Z, "hidden_dims": (4,), **options}
    model = M2(pixels, arch="conv", image_shape=shape, channels=(2, 3), **options)
    return model, model.make_guide()


def test_conv_networks_are_convnets_with_the_label_after_the_convolutions():
    model, guide = _conv_pair()
    assert isinstance(model.decoder, ConvDecoder) and model.decoder.net.input_shape == (Z + C,)
    assert isinstance(guide.features, ConvEncoder)
    assert isinstance(guide.classifier[0], ConvEncoder) and guide.classifier[1].out_features == C
    assert guide.trunk[0].in_features == guide.features.out_features + C
    assert not list(_pair()[1].features.parameters())  # the MLP guide is as it was


def test_conv_enumerated_bound_with_vectorized_particles_equals_the_hand_computation():
    # y is enumerated at dim -3, left of the particles (-2) and the rows (-1): the conv
    # decoder meets codes [C, S, B, Z] and must fold all three leading dims
    model, guide = _conv_pair()
    model.eval()
    x, y = _data(6, dim=32)
    observed = torch.tensor([True, False, True, False, False, True])
    particles = 4
    pyro.set_rng_seed(3)
    elbo = get_estimator(
        "enum", max_plate_nesting=1, num_particles=particles, vectorize_particles=True
    )
    loss = elbo.differentiable_loss(model, guide, x, y, observed)
    pyro.set_rng_seed(3)
    vectorized = pyro.plate("num_particles_vectorized", particles, dim=-2)(guide)
    enumerated = poutine.enum(vectorized, first_available_dim=-3)
    z = poutine.trace(enumerated).get_trace(x, y, observed).nodes["z"]["value"]
    assert z.shape == (C, particles, 6, Z)
    terms = torch.stack([_term(model, guide, x, c, z[c]) for c in range(C)])  # [C, S, B]
    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(x), -1).T[:, None]  # [C, 1, B]
    unlabelled = (log_q.exp() * (terms - log_q)).sum(0)
    labelled = terms.gather(0, y.expand(1, particles, 6)).squeeze(0)
    by_hand = torch.where(observed, labelled, unlabelled).sum(-1).mean()
    assert -loss.item() == pytest.approx(by_hand.item(), abs=1e-4)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_conv_takes_the_usual_image_shapes(shape):
    model, guide = _conv_pair(shape=shape, likelihood="categorical", levels=3)
    pixels = math.prod(shape)
    x = torch.randint(3, (2, pixels)).float()
    assert guide.classify(x).shape == (2, C)
    label = torch.arange(C)[:, None]  # enumerated: [C, 1] against two rows
    assert guide.encode_given(x, label).batch_shape == (C, 2, Z)
    assert model.decode_given(torch.zeros(C, 2, Z), label).shape == (C, 2, pixels)
    assert model.predict(x).shape == (2,) and model.generate(3).shape == (3, pixels)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"image_shape": None}, "image_shape: None; arch='conv' needs the images'"),
        ({"image_shape": (1, 4, 4)}, "image_shape: (1, 4, 4) has 16 pixels, but x_dim is 32"),
        ({"image_shape": (2, 4, 4), "channels": (2, 2, 2)}, "these images take at most 2"),
    ],
)
def test_conv_refuses_images_its_convolutions_cannot_take(options, words):
    with pytest.raises(ValueError) as raised:
        M2(32, num_classes=C, arch="conv", **options)
    assert words in str(raised.value)


def test_the_command_line_fits_a_conv_m2_on_28x28_images(tmp_path, capsys):
    # ~5 s on two cores: 28x28 conv networks, run for each of the two enumerated classes
    # and in label_metrics' 100-draw IWAE; the one end-to-end run of a conv M2
    x, y = _two_halves(rows=24, side=28)
    np.savez(tmp_path / "halves.npz", x=x, y=y)
    out = tmp_path / "run"
    argv = ["fit", "--model", "models.m2:M2", "--model-opt", "latent_dim=2", "--hidden", "8"]
    argv += ["--arch", "conv", "--channels", "2", "4", "--estimator", "enum"]
    argv += ["--labelled", "10", "--data", str(tmp_path / "halves.npz"), "--epochs", "1"]
    argv += ["--ll-samples", "2", "--no-progress", "--out", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "note: --arch" not in printed  # M2 takes it now
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert 0.0 <= test["test_accuracy"] <= 1.0 and math.isfinite(test["test_elbo_unlabelled"])
    arguments = json.loads((out / "metrics.json").read_text())["model_arguments"]
    assert arguments["arch"] == "conv" and tuple(arguments["image_shape"]) == (28, 28)
    assert json.loads((out / "config.json").read_text())["model_options"]["arch"] == "conv"
