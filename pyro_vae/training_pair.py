"""A model/guide pair made ready for the fit loop, whatever Pyro code it is.

:meth:`TrainingPair.set_up` does, once and before any training step, what makes plain
Pyro code train correctly on minibatches:

1. checks that the data's dtype matches the networks' (a float64 array into float32
   weights fails inside a matmul otherwise, naming nothing), and has the data source
   check its training rows with the model's likelihood
   (:func:`pyro_vae.likelihoods.check_observations`);
2. finds the per-datapoint plate (:func:`pyro_vae.plates.find_data_plate`) on a run of the
   model, and refuses minibatches of a model that has none;
3. wraps model and guide (:class:`pyro_vae.minibatch.Minibatched`) so that plate gets the
   full size N and each batch's row indices, and lets Pyro autoguides follow them;
4. runs the pair once so every parameter exists, and collects them
   (:class:`pyro_vae.weights.PairWeights`);
5. tells whether the guide has free per-datapoint parameters (a "local" guide, such as
   ``AutoNormal`` over per-datapoint latents): those have nothing to say about held-out
   rows, so such a fit is validated on the training set's ELBO instead;
6. warns when a site's log-density scale is not the N/|B| (inside the plate) or 1
   (outside) that makes the minibatch loss the ELBO that validation reports;
7. refuses a model site that is neither observed nor drawn by the guide (nor marked for
   enumeration): a data argument left out would otherwise be drawn from its prior and
   trained on;
8. reads the β of :class:`~pyro_vae.annealing.ScaleLatents` handlers that act inside the
   pair however it was wrapped (:func:`beta_in_pair`), which training keeps and the
   numbers validation reports leave out (the evaluators run under
   :func:`~pyro_vae.annealing.unscaled`);
9. validates as the data source says (:meth:`~pyro_vae.data_source.DataSource.
   validation_set`): held-out ELBO per datapoint, the training set's for a local guide,
   or the whole-data ELBO on common random numbers for ``TensorData``.

Every one of these runs draws outside the global random stream, so setting up does not
change what training draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide

from pyro_vae.annealing import handlers_seen, unscaled
from pyro_vae.data_source import TrainingBatches, ValidationSet
from pyro_vae.devices import forked_streams
from pyro_vae.evaluate import eval_mode, refuse_uncovered_sites
from pyro_vae.interruptions import reraise_interruption
from pyro_vae.likelihoods import check_observations
from pyro_vae.minibatch import (
    Minibatched,
    align_autoguide,
    device_of_arguments,
    refuse_reading_the_batch_by_plate,
    requires_keyword,
)
from pyro_vae.plates import (
    DataPlateError,
    DeclaredSubsamples,
    batch_rows,
    describe_plates,
    find_data_plate,
    frames_in,
)
from pyro_vae.traces import VectorizationWarning, buffers_kept, run_pair, sample_sites
from pyro_vae.weights import PairWeights, check_dtypes, module_of


def _common_draws(seed: int, estimate: Callable[[], float]) -> float:
    """``estimate()`` on draws from a generator of its own, seeded the same at every
    validation: epochs are then compared on common random numbers, so the best epoch is
    the best weights rather than the luckiest draw, and training's stream is untouched."""
    with forked_streams():
        torch.manual_seed(seed)
        return estimate()


class MinibatchScaleWarning(UserWarning):
    """A site's log-density scale makes the minibatch loss something other than the ELBO."""


@dataclass
class TrainingPair:
    """The wrapped pair, its per-datapoint plate, its weights and how to validate it."""

    model: Minibatched
    guide: Minibatched
    plate: str | None
    weights: PairWeights
    local: bool
    validate: Callable[[], float] | None = None
    validation_kind: str | None = None
    #: whether validation scores each row (the evaluators, which refuse a guide-only latent)
    validates_per_datapoint: bool = False
    vectorize: bool | None = None
    #: each found module's training flag at set-up, parents before children (see train_mode)
    modes: list = field(default_factory=list)
    #: β of the ScaleLatents handlers inside model and guide (:func:`beta_in_pair`)
    handler_beta: float = 1.0

    @classmethod
    def set_up(
        cls, model, guide, source: TrainingBatches, config, first: tuple | None = None
    ) -> TrainingPair:
        """Steps 1-9 of the module docstring on ``source``'s first batch, or on ``first``,
        ``(args, rows)``: under data-parallel training the whole first batch, of which
        ``source`` holds one rank's part, so that parameters made from the batch they
        first see start as one process's do.

        Raises:
            ValueError: mismatched dtypes, data the model's likelihood cannot observe, or
                β handlers inside the pair that are not one β on both, or that fit's own
                ``config.beta`` would multiply (:func:`beta_in_pair`).
            pyro_vae.plates.DataPlateError: minibatches of a model without a
                per-datapoint plate, or an ambiguous one.
        """
        # set-up runs model and guide several times, their modules in training mode: not
        # training steps, so a BatchNorm's running statistics are put back after them
        roots = [m for m in (module_of(model), module_of(guide)) if m is not None]
        with buffers_kept(roots):
            return cls._set_up(model, guide, source, config, first)

    @classmethod
    def _set_up(cls, model, guide, source: TrainingBatches, config, first) -> TrainingPair:
        args, rows = first if first is not None else (source.first_batch, source.first_rows)
        n = source.num_data
        check_dtypes(args, model, guide)
        observable = partial(check_observations, module_of(model) or model)
        source.data.check_training_data(observable)
        minibatch_of = n if source.batch_size < n else None
        plate, dim, plates = per_datapoint_plate(
            model, args, config.data_plate, guide, n, minibatch_of
        )
        if plate is None and source.batch_size < n:
            refuse_uncovered_sites(Minibatched(model, None, n), Minibatched(guide, None, n), args)
            raise DataPlateError(
                f"batch_size: {source.batch_size} of {n} rows needs the model's per-datapoint "
                f"plate to scale the minibatch by N/|B|, and the model has none: no vectorized "
                f"plate of {batch_rows(args)} elements encloses an observed site (plates around "
                f"its observations: {plates}); use batch_size >= {n}, or put the per-datapoint "
                "sites in pyro.plate(..., len(x))"
            )
        align_autoguide(guide, plate, dim, n)
        # a labelled source's num_labelled, the whole set's on every rank
        wrapped_model = Minibatched(model, plate, n, source.keywords)
        wrapped_guide = Minibatched(guide, plate, n, source.keywords)
        kwargs = {"subsample": rows} if plate is not None else {}
        weights = PairWeights(wrapped_model, wrapped_guide, args, kwargs, seed=config.seed)
        local = plate is not None and has_per_datapoint_parameters(
            wrapped_guide, weights, args, rows, n
        )
        refuse_uncovered_sites(wrapped_model, wrapped_guide, args, kwargs, tolerant=False)
        if plate is not None:
            warn_on_scales(wrapped_model, wrapped_guide, args, rows, plate, n)
        pair = cls(wrapped_model, wrapped_guide, plate, weights, local)
        pair.modes = recorded_modes(weights.modules())
        warn_trained_in_eval_mode(weights.modules(), pair.modes)
        pair.handler_beta = beta_in_pair(wrapped_model, wrapped_guide, args, kwargs, config.beta)
        pair.vectorize = config.vectorize_particles
        pair._set_validation(model, guide, source.data.validation_set(local, observable), config)
        return pair

    def train_mode(self, mode: bool) -> None:
        """Put the torch modules behind model and guide in training mode, each as it was at
        set-up (:func:`recorded_modes`: a submodule the user put in eval mode, a frozen
        feature extractor, stays so), or all in eval mode: those
        :class:`~pyro_vae.weights.PairWeights` found, however the pair was wrapped."""
        if not mode:
            for module in self.weights.modules():
                module.train(False)
            return
        for module, flag in self.modes:  # parents first: a child's own flag is set after
            module.train(flag)

    def _set_validation(self, model, guide, plan: ValidationSet | None, config) -> None:
        """Validate by the data's ``plan``: the mean per-datapoint ELBO of its rows (on
        ``model`` and ``guide`` as given), or the whole-data ELBO on common random numbers
        (on the wrapped pair, all rows at once)."""
        if plan is None:
            return
        self.validation_kind = plan.kind
        self.validates_per_datapoint = not plan.whole_data
        draws = config.val_samples or plan.draws

        def estimate() -> float:
            if plan.whole_data:
                return _common_draws(config.seed, lambda: self._whole_data_elbo(plan.args, draws))
            # one tensor as before; (x, y, observed) for a model that uses labels
            x = plan.args[0] if len(plan.args) == 1 else plan.args
            return self._per_datapoint_elbo(model, guide, x, draws)

        self.validate = lambda: self._tracking_fallback(estimate)

    def _whole_data_elbo(self, args: tuple, draws: int) -> float:
        from pyro_vae.evaluate import elbo_estimate

        on = next((a.device for a in args if torch.is_tensor(a)), None)  # the data's device
        every_row = torch.arange(self.model.num_data, device=on)
        kwargs = {"subsample": every_row} if self.plate is not None else {}
        return elbo_estimate(
            self.model,
            self.guide,
            *args,
            num_samples=draws,
            num_chunks=1,  # one vectorized batch of draws: no error bar needed
            vectorize_particles=self.vectorize,
            **kwargs,
        )[0]

    def _per_datapoint_elbo(self, model, guide, x, num_samples: int) -> float:
        from pyro_vae.evaluate import elbo_per_datapoint

        return (
            elbo_per_datapoint(
                model,
                guide,
                x,
                num_samples,
                data_plate=self.plate,
                vectorize_particles=self.vectorize,
            )
            .mean()
            .item()
        )

    def _tracking_fallback(self, validate: Callable[[], float]) -> float:
        """Run ``validate``; when it had to draw its particles in a loop, keep doing so
        (and record it) rather than failing over again at every validation."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", VectorizationWarning)
            value = validate()
        for w in caught:
            if issubclass(w.category, VectorizationWarning):
                self.vectorize = False
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return value


def per_datapoint_plate(
    model,
    args: tuple,
    name: str | None,
    guide=None,
    num_data: int | None = None,
    minibatch_of: int | None = None,
) -> tuple[str | None, int | None, str]:
    """(the per-datapoint plate, its dim, a description of the plates where there is none)
    of the model's run on ``args``, given ``num_data=N`` where it takes it, as every step
    gives it (tester AI: a guide sized by ``num_data`` failed here, before training, with
    "missing 1 required positional argument: 'num_data'").

    ``minibatch_of``: N where ``args`` is a minibatch of N rows; a plate over the batch's
    rows that subsamples them itself (:func:`_refuse_self_subsampling`), or a model that
    reads the batch by the plate's indices
    (:func:`~pyro_vae.minibatch.refuse_reading_the_batch_by_plate`), is then refused.

    Raises:
        pyro_vae.plates.DataPlateError: that plate, naming it and the way out."""
    declared, rows = DeclaredSubsamples(), batch_rows(args)
    try:
        with forked_streams(), torch.no_grad(), poutine.block(), declared:
            trace = poutine.trace(model).get_trace(*args, **_num_data_for(model, num_data))
    except Exception as error:  # Pyro's own, of a subsample larger than the batch, or
        # the model's x[i] with the rows a plate of N drew (tester EJ's F2)
        _refuse_self_subsampling(declared, None, rows, minibatch_of, None, error)
        for plate in declared.drawing(rows) if minibatch_of else ():
            refuse_reading_the_batch_by_plate(
                model, args, plate, minibatch_of, _last_rows(rows, minibatch_of, args), "fit"
            )
        raise
    if guide is not None:
        refuse_a_guide_that_does_not_fit(trace, guide, args, num_data)
    plate = find_data_plate(trace, rows, name, nameable=True)
    _refuse_self_subsampling(declared, trace, rows, minibatch_of, plate)
    if plate is not None and minibatch_of:
        indices = _last_rows(rows, minibatch_of, args)
        refuse_reading_the_batch_by_plate(model, args, plate, minibatch_of, indices, "fit")
    if plate is None:
        return None, None, describe_plates(trace)
    dims = [f.dim for s in sample_sites(trace).values() for f in frames_in(s, plate)]
    return plate, dims[0] if dims else None, ""


def _last_rows(rows: int, n: int, args: tuple) -> torch.Tensor:
    """The last ``rows`` of ``n`` rows' indices, which the last full batch's plate gets:
    those furthest past a batch of ``rows``; on the device of the batch ``args``, where
    fit gives the plate its rows (not torch's default device)."""
    return torch.arange(n - rows, n, device=device_of_arguments(args, {}) or "cpu")


def _refuse_self_subsampling(
    declared: DeclaredSubsamples,
    trace,
    rows: int | None,
    n: int | None,
    data_plate: str | None,
    error=None,
) -> None:
    """Refuse a model whose plate over a minibatch's ``rows`` (of ``n``), or over the
    ``n``, draws a number of rows of its own (a ``subsample_size`` other than ``rows``:
    Pyro's SVI tutorial's ``pyro.plate("data", len(x), subsample_size=10) as i``), around
    an observed site of ``trace`` (any, for a run that failed: ``trace`` None). fit hands
    it minibatches already and gives the plate the batch's rows among the N (tester EG: an
    IndexError inside the model at batch_size 10, Pyro's "did you use different
    subsample_size in the model and guide?" at 8, of a guide with no plate, and at 50 a
    refusal saying that the model had no plate of the batch's size). A plate that draws
    as many rows as the batch has, ``pyro.plate("data", num_data or len(x),
    subsample_size=len(x))``, is left to
    :func:`~pyro_vae.minibatch.refuse_reading_the_batch_by_plate`, which runs the model
    with the rows fit gives it; so is a plate beside the run's ``data_plate`` (of
    :func:`find_data_plate`, which refuses an ambiguous one first)."""
    if n is None or rows is None or rows >= n:
        return
    observed = None
    if trace is not None:
        observed = {f.name for site in sample_sites(trace).values() if site["is_observed"]
                    for f in site["cond_indep_stack"]}  # fmt: skip
    for plate, (size, subsample_size) in declared.declared.items():
        if (
            size not in (rows, n)
            or subsample_size in (None, rows)
            or (observed is not None and plate not in observed)
            # another plate holds the batch's rows: this one is over features of as many
            # (tester EH: a subsampled plate of 10 features at batch_size 10 was refused)
            or data_plate not in (None, plate)
        ):
            continue
        raise DataPlateError(
            f"model: plate {plate!r} subsamples the batch's {rows} rows itself "
            f"(pyro.plate(..., subsample_size={subsample_size})), and fit hands the model "
            f"minibatches already, {rows} of the {n} rows (batch_size), scaled by N/|B|, "
            f"giving the plate the batch's rows among the {n}, which the model's x[i] reads "
            "past; expected the plate without subsample_size (fit's batch_size choosing the "
            f"minibatch), or batch_size >= {n}, each step handing the model the whole data "
            "to subsample"
        ) from error


def recorded_modes(roots: list[torch.nn.Module]) -> list[tuple[torch.nn.Module, bool]]:
    """``(module, training flag)`` for every module under ``roots`` as they are now, each
    parent before its children (``Module.modules()``'s order), for
    :meth:`TrainingPair.train_mode` to put back: a network the user put in eval mode (a
    pretrained feature extractor, frozen) trains in eval mode, as PyTorch Lightning keeps a
    submodule's mode. Set blanket to training mode, such a network's BatchNorm normalized
    by batch statistics and moved its running ones at every step, and fit left it in
    training mode (review of cb181f9..c795b70: a plain function's guide calling one).

    A root with trainable parameters that is wholly in eval mode (left so by an
    evaluation) is recorded as training, as fit always trained it. A part with trainable
    weights that is in eval mode under a training parent keeps eval mode, with an
    :class:`EvalModeWarning` (:func:`warn_trained_in_eval_mode`). After fit each module
    is in its recorded mode (a root that was wholly in eval mode, in training mode)."""
    out = []
    for root in roots:
        subtree = list(root.modules())
        trainable = any(p.requires_grad for p in root.parameters())
        if trainable and not any(m.training for m in subtree):
            out.append((root, True))
            continue
        out.extend((m, m.training) for m in subtree)
    return out


class EvalModeWarning(UserWarning):
    """A network with trainable weights trains in eval mode, as the user left it."""


def warn_trained_in_eval_mode(roots: list, modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """An :class:`EvalModeWarning` naming (as ``Root.attribute``) each network, the
    outermost of a subtree, among those of ``roots`` that
    :func:`recorded_modes` keeps in eval mode though some of its weights train: its Dropout
    stays off and its BatchNorm normalizes by its running statistics through the run. It
    may be meant (BatchNorm layers held in eval mode while fine-tuning their affine
    weights), or left over from an evaluation (tester AL: a decoder left in eval mode
    trained with its Dropout off, without a word), so it is said, not changed."""
    kept = [m for m, flag in modes if not flag and any(p.requires_grad for p in m.parameters())]
    inside = {id(sub) for m in kept for sub in m.modules() if sub is not m}
    paths = {id(m): f"{type(root).__name__}.{path}" if path else type(root).__name__
             for root in roots for path, m in root.named_modules()}  # fmt: skip
    named = [paths.get(id(m), type(m).__name__) for m in kept if id(m) not in inside]
    if named:
        warnings.warn(
            f"fit trains {named} in eval mode, as they were left (Dropout off, BatchNorm on "
            "its running statistics, throughout the run), though they have weights that "
            "train; call .train() on them before fit to train them in training mode",
            EvalModeWarning,
            stacklevel=4,
        )


def _num_data_for(fn, num_data: int | None) -> dict:
    """``{"num_data": num_data}`` where ``fn`` requires that keyword (no default), else
    ``{}``: for the set-up's runs of one batch outside the minibatch handler. Given to a
    ``pyro.plate("data", num_data or len(x))`` there, N against the batch's rows failed in
    Pyro's words (tester DY: a PyroModule that trained before modules were given it)."""
    return (
        {"num_data": num_data} if num_data is not None and requires_keyword(fn, "num_data") else {}
    )


def refuse_a_guide_that_does_not_fit(
    model_trace, guide, args: tuple, num_data: int | None = None
) -> None:
    """Run the guide alone on the first batch (outside the random stream) and compare each
    latent it draws with the model's prior draw of it (``model_trace``), before the pair
    runs together: a guide that fails, or draws a latent of another shape, otherwise failed
    inside the model's own code (tester F's F2: a model class given as --guide, "missing
    the required forward function"; an encoder of the default --latent-dim 20 for a model
    of 2, a shape error in the user's decoder).

    Raises:
        ValueError: naming the guide, the site, both shapes, and the option to set."""
    owner = getattr(guide, "__self__", guide)
    if isinstance(owner, AutoGuide):
        return  # made from the model, and sized when it first runs in its aligned plate
    if hasattr(owner, "num_datapoints"):  # a local guide (HeldRows): it reads its batch's
        _check_local_guide_size(owner, model_trace)  # rows from the data plate it runs
        return  # under with the model, not alone (tester CW: every minibatch was refused)
    name = getattr(guide, "__name__", type(guide).__name__)
    store = pyro.get_param_store()
    saved = store.get_state()  # what the probe creates is taken back: weights start as before
    try:
        with forked_streams(), torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **_num_data_for(guide, num_data))
    except Exception as err:  # any failure of the guide on its own, named as the guide's
        latent = [n for n, s in sample_sites(model_trace).items() if not s["is_observed"]]
        first = str(err).splitlines()[0][:300] if str(err) else ""
        raise ValueError(
            f"guide: {name} failed on the first batch ({type(err).__name__}: {first}); "
            f"expected a guide(x, ...) that draws the model's latent sites {latent} (a "
            "model class with its own guide method needs no --guide)"
        ) from err
    finally:  # set_state writes the saved entries back but keeps new ones: drop those
        for key in set(store.keys()) - set(saved["params"]):
            del store[key]
        store.set_state(saved)
    for site_name, site in sample_sites(guide_trace).items():
        prior = model_trace.nodes.get(site_name)
        if prior is None or prior.get("type") != "sample" or prior["is_observed"]:
            continue
        drawn, expected = tuple(site["value"].shape), tuple(prior["value"].shape)
        try:  # shapes that broadcast are Pyro's to accept (a guide's (1,) for a prior's ())
            torch.broadcast_shapes(drawn, expected)
        except RuntimeError as err:
            raise ValueError(
                f"guide: {name} draws {site_name!r} of shape {drawn}, but the model's prior "
                f"draws it of shape {expected} on the same batch; the guide's sizes must be "
                "the model's (the command line's --latent-dim goes to both: set it to the "
                "model's latent size, or give the guide that size)"
            ) from err


def _check_local_guide_size(guide, model_trace) -> None:
    """Refuse a local guide (``loc`` ``[N, latent_dim]`` for its ``site``) whose latent size
    is not the model's prior draw's, as the probe of a guide run alone does.

    Raises:
        ValueError: naming the guide, the site and both sizes."""
    prior = model_trace.nodes.get(guide.site)
    if prior is None or prior.get("type") != "sample" or prior["is_observed"]:
        return  # the pair's own checks name a site the model does not have
    size, expected = int(guide.loc.shape[-1]), tuple(prior["value"].shape)
    if len(expected) < 2 or expected[-1] != size:  # [batch, latent_dim] (tester CX: a
        # scalar latent of a batch as long as the latent size slipped past expected[-1])
        raise ValueError(
            f"guide: {type(guide).__name__} holds {size} latent dimensions of {guide.site!r} "
            f"per datapoint, but the model's prior draws it of shape {expected} on the first "
            "batch; the guide's sizes must be the model's (the command line's --latent-dim "
            "goes to both: set it to the model's latent size, or give the guide that size)"
        )


def has_per_datapoint_parameters(guide, weights: PairWeights, args, rows, num_data) -> bool:
    """Whether one datapoint's draw from the guide reads parameters kept per datapoint.

    Runs the guide on the batch's first row and differentiates its log-density and
    reparameterized values with respect to every parameter: a parameter with a dim of
    size N whose gradient is zero everywhere but at that row's index belongs to single
    datapoints (``AutoNormal``'s locations over local latents), which an amortized guide's
    weights never do. A guide that cannot run on one row is judged by its parameters'
    shapes instead: one with a dim of size N counts as per-datapoint.
    """
    if num_data < 2:
        return False
    params = [p for p in weights.parameters() if p.requires_grad]
    if not params:
        return False
    try:
        grads = _one_row_gradients(guide, params, args, rows)
    except Exception as err:
        reraise_interruption(err)
        return any(num_data in p.shape for p in params)
    row = int(rows[0])
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        for d, size in enumerate(p.shape):
            if size != num_data:
                continue
            touched = g.abs().movedim(d, 0).reshape(size, -1).sum(1) != 0
            if touched[row] and touched.sum() == 1:
                return True
    return False


def _one_row_gradients(guide, params, args, rows) -> list:
    with forked_streams(), poutine.block(), eval_mode(guide):
        trace = poutine.trace(guide).get_trace(*(a[:1] for a in args), subsample=rows[:1])
        trace.compute_log_prob()
        terms = []
        for site in sample_sites(trace).values():
            terms.append(site["log_prob"].sum())
            if torch.is_tensor(site["value"]) and site["value"].requires_grad:
                terms.append(site["value"].sum())
        terms = [t for t in terms if t.requires_grad]
        if not terms:
            return [None] * len(params)
        return list(torch.autograd.grad(sum(terms), params, allow_unused=True))


def beta_in_pair(model, guide, args: tuple, kwargs: dict, fit_beta: float = 1.0) -> float:
    """β of the :class:`~pyro_vae.annealing.ScaleLatents` handlers that act on a run of the
    pair (outside the random stream), however they are wrapped or entered: 1 where none
    does, or all have β = 1. A handler's β is read as it is now (KL warm-up's changes).

    Such handlers train on their β-objective (KL warm-up multiplies it, rising to their β);
    ``fit_beta``, the β fit applies itself, would multiply it too, and a pair trained on β
    twice reported the one β it was given: refused.

    Raises:
        ValueError: the handlers acting in the model and those in the guide are not one
            and the same β (β on log p(z) but not on log q(z) trains no β-objective); or
            both that β and ``fit_beta`` are ≠ 1, naming both and their product.
    """
    with forked_streams(), torch.no_grad(), poutine.block(), unscaled():
        with handlers_seen() as in_guide:
            guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        with handlers_seen() as in_model:
            poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    betas = [sorted({h.beta for h in seen if h.beta != 1.0}) for seen in (in_model, in_guide)]
    if not betas[0] and not betas[1]:
        return 1.0
    if betas[0] != betas[1] or len(betas[0]) != 1:
        raise ValueError(
            f"model, guide: ScaleLatents handlers act inside them with β {betas[0] or [1.0]} "
            f"(model) and {betas[1] or [1.0]} (guide); expected one β on both, or better, "
            "the pair without handlers and TrainConfig(beta=b)"
        )
    if fit_beta != 1.0:
        raise ValueError(
            f"beta: {fit_beta!r} from the config (or a ScaleLatents around model and guide) "
            f"and {betas[0][0]!r} from ScaleLatents handlers acting inside model and guide, "
            f"which would train with β {fit_beta * betas[0][0]!r}; give β once: "
            "TrainConfig(beta=...) with the pair unwrapped, or the handlers alone"
        )
    return betas[0][0]


def warn_on_scales(model, guide, args, rows, plate: str, num_data: int) -> None:
    """Warn about sites whose log-density scale is not N/|B| inside ``plate``, 1 outside.
    β handlers are left out (:func:`~pyro_vae.annealing.unscaled`): their scale is the
    training objective's by intent, and validation's numbers leave it out likewise."""
    with forked_streams(), torch.no_grad(), unscaled():
        model_tr, guide_tr = run_pair(model, guide, args, {"subsample": rows})
    factor = num_data / len(rows)
    odd = []
    for kind, trace in (("model", model_tr), ("guide", guide_tr)):
        for name, site in sample_sites(trace).items():
            expected = factor if frames_in(site, plate) else 1.0
            scale = site["scale"]  # no tensor made of a float: the default device may be
            # another (tester CN: "meta" failed here, blamed on the guide)
            scale = float(scale.float().mean()) if torch.is_tensor(scale) else float(scale)
            if abs(scale - expected) > 1e-6 * expected:
                odd.append(f"{kind} site {name!r} has scale {scale:g}, expected {expected:g}")
    if odd:
        warnings.warn(
            "the minibatch loss is not an unbiased estimate of the ELBO that validation "
            f"reports ({num_data} rows, batches of {len(rows)}, per-datapoint plate {plate!r}): "
            + "; ".join(odd)
            + ". The model or guide scales these sites itself (poutine.scale, or a plate "
            "declared with another size).",
            MinibatchScaleWarning,
            stacklevel=3,
        )
