"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling 2014, §3.1.2).

Generative model, for each datapoint n of a training set of N rows, N_l of them labelled:

    y_n ~ Cat(1/C),   z_n ~ N(0, I),   x_n | y_n, z_n ~ p_θ(x | decoder([z_n, onehot(y_n)]))

Guide: a classifier q_φ(y | x) = Cat(softmax(classifier(x))) and an amortized Normal
q_φ(z | x, y) = N(μ_φ([φ(x), onehot(y)]), diag σ_φ([φ(x), onehot(y)])²).

Networks (``arch``, from :mod:`pyro_vae.convnets`): with ``"mlp"`` the decoder, the
classifier and the z encoder are MLPs and φ(x) = x; with ``"conv"`` the decoder is
:class:`~pyro_vae.convnets.ConvDecoder` on [z, onehot(y)] (the label joins z before its
first linear layer), the classifier a :class:`~pyro_vae.convnets.ConvEncoder` (its
convolutions and ``hidden_dims`` MLP) and a linear layer to the C logits, and φ(x) the
flattened features of another ConvEncoder's convolutions, joined by onehot(y) before the
``hidden_dims`` MLP and the heads. So under enumeration (y ``[C, 1]`` left of the batch)
the convolutions of q(z | x, y) run once per image, not once per class; the decoder's
transposed convolutions take the enumerated ``[C, B, ...]`` codes through
:class:`pyro_vae.nn.FoldLeadingDims`.

Objective (Kingma et al., eqs. 6-9): for a labelled row the bound on log p(x, y),

    L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) − log q(z | x, y)],

for an unlabelled row the bound on log p(x), with y summed out exactly,

    U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x)),

and, in training only, the classifier term α · E_{p̃_l(x, y)}[log q(y | x)] (eq. 9;
α = 0.1·N by default, as in the paper), which gives q(y | x) a signal from the labels
(without it the classifier appears in U alone and learns from the labels only through the
decoder).

How labelled and unlabelled rows share one batch. Pyro cannot observe a site on some rows
and enumerate it on others in one sample statement. Its ``obs_mask`` splits a site into
``y_observed`` and ``y_unobserved``, but drops ``infer`` (so nothing is enumerated) and, were
the guide's ``y_unobserved`` enumerated under a mask, the masked rows' factor q(y) becomes 1
for every value, counting a labelled row C times (``pyro.infer.util.compute_site_dice_factor``
reads the masked score). Two sub-plates (labelled rows, unlabelled rows) are exact, but
leave no single plate over the batch's rows, which pyro_vae's minibatch scaling, validation
and evaluators find and use (:mod:`pyro_vae.plates`). So here y is a latent site of the one
``"data"`` plate on every row, and the guide observes the labels instead: on a labelled row
q(y | x) is the point mass at y_n (logits 0 at y_n, −∞ elsewhere), on an unlabelled row the
classifier, and the site is enumerated in parallel on all rows. ``TraceEnum_ELBO`` drops
branches of probability 0 exactly (``Dice.compute_expectation`` keeps ``prob > 0``), so a
labelled row's term is L(x, y_n) with log q(y_n) = 0: the labelled bound, exactly, and an
unlabelled row's is U(x). The cost of this choice: a labelled row's networks run for all C
classes (the dropped branches), C times the work of a labelled row in a sub-plate; in the
usual regime (few labels) that is a small share of the epoch.

Why one objective with a factor rather than Pyro's two SVI objects (its ``ss_vae_M2``
example trains ``model_classify``/``guide_classify`` with a second SVI): one loss is one
Adam step on one objective, J^α of eq. 9, and checkpoints, resume, early stopping and the
NaN guard see one loss. The factor is a term of each row of the data plate: (α / N_l) ·
log q(y_n | x_n) on a labelled row n, 0 elsewhere, which the plate scales by N/|B| as it
does every row's bound, so a minibatch's term is unbiased for α · E_{p̃_l}[log q(y | x)] =
(α / N_l) Σ_labelled log q(y_n | x_n), batches without a labelled row included. N_l, the
training set's labelled rows, comes from ``fit`` (``num_labelled``); where it is not given,
it is estimated from the batch as k·N/|B| (k its labelled rows), which makes the term α
times the mean over the batch's labelled rows, exact when the batch is the whole data
set. (That mean, this model's term until tester DW, is 0 on a batch without a labelled
row, so it weighed the labels by α · P(k ≥ 1): 0.2 α on the digits with 10 labels in
batches of 32, and about 0.18 α on MNIST with 100 labels in batches of 100.) It is on in
training mode only (``model.train()``, as ``fit`` sets it, the way
dropout is): validation, test and every evaluator run in eval mode and report the bound
itself, without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.convnets import (
    check_architecture,
    default_activation,
    encoder_trunk,
    likelihood_decoder,
)
from pyro_vae.evaluate import elbo_per_datapoint, eval_mode, iwae_log_likelihood
from pyro_vae.labels import check_class_labels
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.model_protocol import ConvertsTiedGuide
from pyro_vae.nn import layer_widths, mlp
from pyro_vae.plate_declaration import data_plate

ALPHA_PER_ROW = 0.1  # Kingma et al. (2014), after eq. 9: "we use α = 0.1 · N"


def _with_onehot(h: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[h, onehot(label)]`` along the last dim, their leading dims broadcast (an
    enumerated ``label`` is ``[C, 1]`` against ``h``'s ``[B, ...]``)."""
    code = nn.functional.one_hot(label, num_classes).to(h.dtype)
    shape = torch.broadcast_shapes(h.shape[:-1], code.shape[:-1])
    return torch.cat([h.expand(*shape, h.shape[-1]), code.expand(*shape, num_classes)], -1)


def check_labels(
    x: torch.Tensor, y: torch.Tensor | None, observed: torch.Tensor | None, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, observed)`` as ``LongTensor [B]`` and ``BoolTensor [B]``: ``y=None`` means no
    label observed, ``observed=None`` with ``y`` given means every label observed. An
    unobserved row's label may be anything (−1, NaN): it is read as 0, a class the masked
    sites never score (tester EN: −1 failed in the guide's scatter, "index -1 is out of
    bounds").

    Raises:
        ValueError: ``y`` or ``observed`` is not one entry per row of ``x``, ``observed``
            is given without ``y``, or an observed label is outside 0..C−1.
    """
    rows = x.shape[0]
    if y is None:
        if observed is not None and bool(observed.any()):
            raise ValueError(
                f"observed: {int(observed.sum())} labels marked observed, but y is None; "
                "expected the labels y ([B]) with them"
            )
        y = torch.zeros(rows, dtype=torch.long, device=x.device)
        return y, torch.zeros(rows, dtype=torch.bool, device=x.device)
    if observed is None:
        observed = torch.ones(rows, dtype=torch.bool, device=x.device)
    for name, value in (("y", y), ("observed", observed)):
        if tuple(value.shape) != (rows,):
            raise ValueError(
                f"{name}: shape {tuple(value.shape)}; expected [{rows}], one per row of x"
            )
    observed = observed.bool()
    check_class_labels(y[observed], num_classes)  # before .long(), which reads 1.7 as 1
    return torch.where(observed, y, torch.zeros_like(y)).long(), observed


class M2Guide(PyroModule):
    """q_φ(y | x) q_φ(z | x, y): the classifier and the amortized Normal over z.

    Called as ``guide(x, y=None, observed=None, num_data=None)`` like :class:`M2`. The
    site ``"y"`` is marked for parallel enumeration; its distribution is the point mass at
    y_n where ``observed``, the classifier elsewhere (module docstring).

    Args:
        x_dim: D. num_classes: C. latent_dim: size of z.
        hidden_dims: widths of the classifier's and of the z encoder's MLPs.
        activation: their nonlinearity (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        arch, image_shape, channels: as :class:`M2`'s (module docstring).

    Raises:
        ValueError: :func:`pyro_vae.convnets.check_architecture`'s and the conv networks'.
    """

    def __init__(
        self,
        x_dim: int,
        num_classes: int,
        latent_dim: int,
        hidden_dims: Sequence[int],
        activation: str | None = None,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        super().__init__(name="guide")
        self.x_dim, self.num_classes, self.latent_dim = x_dim, num_classes, latent_dim
        hidden = layer_widths(hidden_dims)
        self.classifier = _classifier(
            x_dim, num_classes, hidden, activation, arch, image_shape, channels
        )
        # φ(x): no hidden widths, the convolutions alone (an empty Sequential for "mlp")
        self.features, features = encoder_trunk(x_dim, (), activation, arch, image_shape, channels)
        self.trunk = mlp(features + num_classes, hidden, None, activation)
        width = hidden[-1] if hidden else features + num_classes
        self.loc_head = nn.Linear(width, latent_dim)
        self.log_scale_head = nn.Linear(width, latent_dim)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y | x): ``[..., C]`` normalized log-probabilities for rows ``[..., D]``."""
        return torch.log_softmax(self.classifier(x), -1)

    def encode_given(self, x: torch.Tensor, label: torch.Tensor) -> dist.Normal:
        """q(z | x, y) for rows ``x`` ``[B, D]`` and labels broadcastable to ``[..., B]``:
        a Normal with batch shape ``[..., B, latent_dim]``."""
        h = self.trunk(_with_onehot(self.features(x), label, self.num_classes))
        return dist.Normal(self.loc_head(h), torch.exp(self.log_scale_head(h)))

    def forward(self, x, y=None, observed=None, num_data: int | None = None) -> None:
        y, observed = check_labels(x, y, observed, self.num_classes)
        point_mass = torch.full_like(x[..., :1].expand(-1, self.num_classes), -math.inf)
        point_mass.scatter_(-1, y.unsqueeze(-1), 0.0)
        logits = torch.where(observed.unsqueeze(-1), point_mass, self.classify(x))
        with data_plate(x, num_data):
            label = pyro.sample(
                "y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
            )
            pyro.sample("z", self.encode_given(x, label).to_event(1))


class M2(ConvertsTiedGuide, PyroModule):
    """p(y) p(z) p_θ(x | y, z), trained with :class:`M2Guide` (its :attr:`tied_guide`).

    Called as ``model(x, y=None, observed=None, num_data=None, num_labelled=None)``: ``x``
    ``[B, D]``, ``y`` ``LongTensor [B]`` (any value where unobserved), ``observed``
    ``BoolTensor [B]``; ``num_data`` the training set's N (the data plate's full size; and
    α's default), ``num_labelled`` its labelled rows N_l (the classifier term's
    denominator; module docstring). ``fit`` passes both.
    Train with the ``enum`` estimator (``TraceEnum_ELBO``) to sum y out exactly; other
    estimators sample it.

    Args:
        x_dim: number of pixels D.
        num_classes: C (``pyro-vae fit`` passes the data's).
        latent_dim: size of z (Kingma et al.: 50).
        hidden_dims: hidden widths of the decoder, the classifier and the z encoder
            (Kingma et al.: one layer of 500).
        likelihood: ``bernoulli``, ``gaussian``, ``categorical``, ``normal`` or
            ``continuous-bernoulli`` (:mod:`pyro_vae.likelihoods`). levels: pixel levels
            for ``categorical``.
        activation: hidden nonlinearity (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        arch: ``"mlp"``, or ``"conv"`` for convolutional networks (module docstring;
            ``hidden_dims`` is then the MLP after the convolutions).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``, with C·H·W = ``x_dim``; needed
            by ``arch="conv"`` (``pyro-vae fit`` passes the data's), not used by ``"mlp"``.
        channels: the convolutions' widths (default ``(32, 64, 128)``), ``arch="conv"`` only.
        alpha: α, the weight of E_{p̃_l}[log q(y | x)] in the training objective (nats per
            nat of the total ELBO); ``None``: 0.1·N, the paper's, with N = ``num_data``
            (the batch's rows when not given); 0: no classifier term.

    Raises:
        ValueError: ``num_classes`` below 2, ``latent_dim`` below 1, ``alpha`` negative or
            not finite; an unknown ``arch``; with ``"conv"``, no ``image_shape``, one of
            other than ``x_dim`` pixels, or more convolutions than its size takes
            (:mod:`pyro_vae.convnets`); ``channels`` with ``"mlp"``.
    """

    uses_labels = "partial"
    #: the classifier term, of the training objective only (pyro_vae.model_protocol): a
    #: term of each row of the data plate since tester DW, with N_l given by fit, so
    #: data-parallel training takes it (the ranks' gradient is one process's: tested)
    training_terms = ("classifier",)
    #: 2 since tester DW: the classifier term per labelled row, α = 0.1·N (1: the batch's
    #: mean, α = 0.1·|B|); a run of revision 1 is not resumed (pyro_vae.model_protocol)
    objective_revision = 2

    def __init__(
        self,
        x_dim: int,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (500,),
        likelihood: str = "bernoulli",
        levels: int | None = None,
        activation: str | None = None,
        alpha: float | None = None,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        super().__init__(name="model")
        _check_options(num_classes, latent_dim, alpha)
        check_architecture(arch, x_dim, image_shape, channels)
        self.x_dim, self.num_classes, self.latent_dim = x_dim, int(num_classes), latent_dim
        self.alpha = None if alpha is None else float(alpha)
        self.likelihood = make_likelihood(likelihood, x_dim, levels)
        hidden = layer_widths(hidden_dims)
        networks = {
            "arch": arch,
            "image_shape": None if arch == "mlp" else tuple(image_shape),
            "channels": None if channels is None else tuple(int(c) for c in channels),
        }
        self.decoder = likelihood_decoder(
            latent_dim + self.num_classes, hidden, self.likelihood, activation, **networks
        )
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        # A tuple: the guide's weights stay its own, not also the model's.
        guide = M2Guide(x_dim, self.num_classes, latent_dim, hidden, activation, **networks)
        self._tied = (guide,)

    @property
    def tied_guide(self) -> M2Guide:
        """The guide whose classifier the training objective's α term uses: the run's
        guide (another guide's classifier would not be the q(y | x) trained)."""
        return self._tied[0]

    def make_guide(self) -> M2Guide:
        """:attr:`tied_guide`."""
        return self._tied[0]

    def forward(
        self,
        x,
        y=None,
        observed=None,
        num_data: int | None = None,
        num_labelled: int | None = None,
    ) -> None:
        y, observed = check_labels(x, y, observed, self.num_classes)
        rows = x.shape[0]
        with data_plate(x, num_data):
            if self.training:
                self._classifier_term(x, y, observed, num_data or rows, num_labelled)
            uniform = x.new_zeros(rows, self.num_classes)
            label = pyro.sample("y", dist.Categorical(logits=uniform))
            z = pyro.sample("z", self._prior(rows))
            h = self.decoder(_with_onehot(z, label, self.num_classes))
            pyro.sample("x", self.likelihood.distribution(h), obs=x)

    def _prior(self, rows: int) -> dist.TorchDistribution:
        zeros = self.prior_loc.expand(rows, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def _classifier_term(self, x, y, observed, num_data: int, num_labelled: int | None) -> None:
        """(α / N_l) · log q(y_n | x_n) on each labelled row of the batch, 0 on the others:
        a factor ``[B]`` in the data plate, of the training objective only (module
        docstring). N_l = ``num_labelled``, or k·N/|B| where it is not given."""
        alpha = ALPHA_PER_ROW * num_data if self.alpha is None else self.alpha
        if alpha == 0:
            return
        log_q = self._tied[0].classify(x).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        weight = observed.to(log_q.dtype)
        if num_labelled is None:  # the batch's estimate, k · N / |B| (at least 1 row)
            num_labelled = weight.sum(-1).clamp(min=1.0) * num_data / x.shape[0]
        pyro.factor("classifier", alpha / num_labelled * weight * log_q)

    def decode_given(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """E[x | y, z]: mean images ``[..., D]`` (data units) for codes ``[..., latent_dim]``
        and labels broadcastable to their leading dims."""
        return self.likelihood.mean(self.decoder(_with_onehot(z, label, self.num_classes)))

    @torch.no_grad()
    def generate(self, num: int) -> torch.Tensor:
        """Mean images E[x | y, z] of ``num`` draws (y, z) from the prior, ``[num, D]``."""
        label = torch.randint(self.num_classes, (num,), device=self.prior_loc.device)
        return self.generate_given(label)

    @torch.no_grad()
    def generate_given(self, y: torch.Tensor) -> torch.Tensor:
        """Mean images E[x | y, z] for the classes ``y`` (``LongTensor [M]``), each with its
        own z from the prior: ``[M, D]`` (the conditional samples figure)."""
        y = y.to(self.prior_loc.device)
        return self.decode_given(self._prior(y.shape[0]).sample(), y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """argmax_y q(y | x) for each row of ``x`` ``[N, D]``: ``LongTensor [N]``, on
        ``x``'s device (computed in chunks of ``batch_size`` on the guide's)."""
        guide = self._tied[0]
        on = self.prior_loc.device
        with eval_mode(guide):
            return torch.cat(
                [
                    guide.classify(x[i : i + batch_size].to(on)).argmax(-1).to(x.device)
                    for i in range(0, x.shape[0], batch_size)
                ]
            )

    def label_metrics(
        self,
        guide,
        x: torch.Tensor,
        y: torch.Tensor,
        num_samples: int = 1,
        iwae_samples: int = 100,
        iwae_rows: int = 1000,
    ) -> dict[str, float]:
        """Test metrics of a semi-supervised model (the evaluation hook of
        :mod:`pyro_vae.labels`), for rows ``x`` ``[N, D]`` with labels ``y`` ``[N]``:

        - ``test_accuracy``: the share of rows whose argmax_y q(y | x) is y (Kingma et al.
          report its complement, the error);
        - ``test_elbo_unlabelled``: mean U(x) (nats per image), the bound on log p(x) with
          the label unobserved and summed out exactly: Σ_y q(y | x) L(x, y) + H(q(y | x)),
          each L(x, y) from ``num_samples`` draws of z; without the α term;
        - ``test_log_px_unlabelled``: mean log p(x) (nats per image) on the first
          ``iwae_rows`` rows, y enumerated exactly and z importance-sampled:
          log Σ_y p̂(x, y), p̂(x, y) the importance-weighted estimate (Burda et al. 2015)
          with ``iwae_samples`` draws of q(z | x, y); each p̂ is unbiased, so this is a
          stochastic lower bound, tighter than sampling y too. With
          ``test_log_px_unlabelled_K`` and ``_points`` saying how it was computed;
          ``iwae_samples=0`` leaves it out (the evaluation's ``--ll-samples 0``).

        Raises:
            ValueError: ``y`` is not ``[N]``, or a count is not positive.
        """
        return label_metrics(self, guide, x, y, num_samples, iwae_samples, iwae_rows)


def _classifier(
    x_dim: int, num_classes: int, hidden, activation: str, arch: str, image_shape, channels
) -> nn.Module:
    """q(y | x)'s logits: the MLP ``x_dim -> hidden -> C``, or (``arch="conv"``) a
    :class:`~pyro_vae.convnets.ConvEncoder` (convolutions, then the ``hidden`` MLP) and a
    linear layer to the C logits."""
    if arch == "mlp":
        return mlp(x_dim, hidden, num_classes, activation)
    trunk, width = encoder_trunk(x_dim, hidden, activation, arch, image_shape, channels)
    return nn.Sequential(trunk, nn.Linear(width, num_classes))


def _check_options(num_classes, latent_dim, alpha) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: {num_classes!r}; expected an integer >= 2")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim: {latent_dim!r} is not a positive integer")
    if alpha is not None and (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(
            f"alpha: {alpha!r}; expected a finite number >= 0 (the weight of the classifier "
            "term), or None for 0.1·N"
        )


def _per_class(evaluate, model, guide, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``evaluate(model, guide, (x, c, all observed))`` for every class c: ``[C, N]``."""
    seen = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.stack(
        [
            evaluate(model, guide, (x, torch.full_like(seen, c, dtype=torch.long), seen))
            for c in range(num_classes)
        ]
    )


def label_metrics(
    model: M2, guide, x, y, num_samples: int = 1, iwae_samples: int = 100, iwae_rows: int = 1000
) -> dict[str, float]:
    """:meth:`M2.label_metrics`."""
    for name, value, least in (
        ("num_samples", num_samples, 1),
        ("iwae_samples", iwae_samples, 0),
        ("iwae_rows", iwae_rows, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            what = "a positive integer" if least else "a non-negative integer"
            raise ValueError(f"{name}: {value!r} is not {what}")
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"y: shape {tuple(y.shape)}; expected [{x.shape[0]}], one per row of x")
    on = model.prior_loc.device
    accuracy = (model.predict(x) == y.to(x.device)).double().mean().item()
    with eval_mode(guide):
        log_q = torch.cat([guide.classify(x[i : i + 1000].to(on)) for i in range(0, len(x), 1000)])
    q = log_q.exp().T  # [C, N]

    def elbo(m, g, args):
        return elbo_per_datapoint(m, g, args, num_samples, device=on)

    labelled = _per_class(elbo, model, guide, x, model.num_classes)  # L(x, c), [C, N]
    unlabelled = (q * (labelled - log_q.T)).nansum(0)  # q log q = 0 where q = 0

    metrics = {"test_accuracy": accuracy, "test_elbo_unlabelled": unlabelled.mean().item()}
    if iwae_samples == 0:  # the evaluation's log p(x) is off (--ll-samples 0): so is this
        return metrics

    def log_joint(m, g, args):
        return iwae_log_likelihood(m, g, args, iwae_samples, device=on)

    rows = x[:iwae_rows]
    log_px = torch.logsumexp(_per_class(log_joint, model, guide, rows, model.num_classes), 0)
    return {
        **metrics,
        "test_log_px_unlabelled": log_px.mean().item(),
        "test_log_px_unlabelled_K": iwae_samples,
        "test_log_px_unlabelled_points": int(rows.shape[0]),
    }
