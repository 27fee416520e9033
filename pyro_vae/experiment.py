"""An experiment: data, model, guide and estimator built from a :class:`RunConfig`.

``pyro-vae evaluate RUN`` and ``pyro-vae sample RUN`` rebuild exactly what ``pyro-vae fit``
trained from the folder alone: :func:`load` reads its config.json
(:meth:`RunConfig.from_json`), :func:`build` constructs what it describes, and the kept
weights are loaded from its checkpoint.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide import initialization as autoguide_initialization

from pyro_vae.checkpoint import EVALUATED_ON_TRAINING_SET, RunFolder, RunFolderError
from pyro_vae.data import DataSplits, load_data
from pyro_vae.data_source import shard_of
from pyro_vae.datasets import DatasetNotFoundError, row_unit
from pyro_vae.devices import resolve_device, to_device
from pyro_vae.distributed import Group
from pyro_vae.evaluate import (
    elbo_per_datapoint,
    elbo_terms_per_datapoint,
    eval_mode,
    iwae_log_likelihood,
)
from pyro_vae.interruptions import reraise_interruption
from pyro_vae.labels import refuse_unused_subset
from pyro_vae.latent_summaries import (
    active_units,
    label_metrics,
    latent_means,
    reconstruction_error,
)
from pyro_vae.mapped_rows import MappedRows, in_memory
from pyro_vae.model_protocol import offered, tied_guide, uses_labels
from pyro_vae.plots import (
    plot_elbo_curves,
    plot_image_rows,
    plot_latent,
    plot_reconstructions,
    plot_samples,
)
from pyro_vae.predictive import (
    latent_interpolation,
    latent_traversal,
    prior_mean_images,
    reconstruct,
)
from pyro_vae.provenance import (
    IMPORT_ROLE,
    check_code_unchanged,
    check_unchanged,
    code_provenance,
    column_changes,
    data_changed,
)
from pyro_vae.run_config import STANDARD_MODEL_OPTIONS, RunConfig, settings_as_read
from pyro_vae.spec import (
    call_with_supported,
    executed_module,
    load_object,
    spec_file,
    supported_options,
)
from pyro_vae.spec_imports import imported_files
from pyro_vae.tables import TableError, column_list, original_units, squared_errors


@dataclass
class Experiment:
    """Everything a config describes, built and ready to train or evaluate.

    ``model`` and ``guide`` are Pyro callables: modules, functions, or the ``model`` and
    ``guide`` methods of one object (the shape of Pyro's examples). ``model_arguments``
    holds the constructor arguments the model actually received; ``not_accepted`` the
    standard options it does not take (so they were not passed). ``device``: where the
    model and guide compute (:func:`pyro_vae.devices.resolve_device` of the training
    config's, or what :func:`load` was asked for); the data stay on the CPU and are put
    there chunk by chunk. ``code``: the checksums of the run's own code as :func:`build`
    found it (:func:`code_of`, once the files had run), beside ``config.code``, what the
    run recorded; None for an experiment made otherwise. ``weights_epoch``: the epoch whose
    weights :func:`load` put in (the best one kept); None for one being trained.
    """

    config: RunConfig
    data: DataSplits
    model: Any
    guide: Any
    elbo: ELBO
    model_arguments: dict[str, Any] = field(default_factory=dict)
    not_accepted: list[str] = field(default_factory=list)
    local_guide: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    code: dict | None = None
    weights_epoch: int | None = None

    @property
    def generative(self) -> bool:
        """Whether the model defines p(x) (a VAE does; the deterministic autoencoder does not)."""
        owner = getattr(self.model, "__self__", self.model)
        return bool(getattr(owner, "generative", True))


def build(
    config: RunConfig,
    allow_changed_data: bool = False,
    allow_changed_code: bool = False,
    data: Any = None,
    standardization: dict[str, Any] | None = None,
) -> Experiment:
    """Load the data and construct model, guide and estimator as ``config`` says.

    ``config.model.spec`` names a class (constructed with the standard options it accepts,
    ``x_dim``, ``latent_dim``, ``hidden_dims``, ``likelihood``, ``levels``, ``activation``,
    ``arch``, ``channels`` and the data's ``image_shape``, plus the other
    ``config.model.options``; a class that declares ``uses_labels`` also ``num_classes``,
    :func:`num_classes`), or a model function used as it is. The labelled subset
    ``config.data`` asks for is drawn here (:mod:`pyro_vae.labels`). A constructed
    object that has ``model`` and ``guide`` methods and no ``forward`` of its own (Pyro's
    examples) gives both. ``config.guide.spec`` likewise names a class (offered the same
    options and, if it takes one, the ``model``, as Pyro's autoguides do) or a guide
    function; without one the guide is the model's ``make_guide()`` or its object's
    ``guide`` method. A model whose prior is made of its own guide's encoder (a
    ``tied_guide``, :func:`pyro_vae.model_protocol.tied_guide`: the VAE's VampPrior) is
    paired with that guide, also when ``config.guide.spec`` names its class; another guide
    is refused. The estimator is built here, once. Seeds Pyro with
    ``config.training.seed`` first, so initial weights are reproducible.

    The data's provenance (:mod:`pyro_vae.provenance`) goes into the experiment's config
    when ``config`` has none (a new run); when it has one (a run rebuilt), the data as they
    are now must have the same checksum, unless ``allow_changed_data``; likewise the
    model's and guide's own files (``path.py:attr`` specs) and the modules of the user's own
    they import (:func:`code_of`), unless ``allow_changed_code``; a new run records them
    after its files have run. ``data``: what stands in for the data, not loaded then (a
    run's image facts, ``RecordedImages``); ``standardization``: a table run's own.

    Raises:
        TypeError: ``config`` is not a :class:`~pyro_vae.run_config.RunConfig`.
        ValueError: naming the spec and what was expected of it; a guide other than the
            model's tied guide; a device this machine does not have, or a labelled
            subset (``labelled``, ``labels_fraction``) for a model that declares no
            ``uses_labels`` (both before any data is loaded).
        pyro_vae.provenance.DataChangedError: the data changed since the run recorded them.
        pyro_vae.provenance.CodeChangedError: a model or guide file, or a module of the
            user's own it imports, changed since.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"config: {type(config).__name__}; expected a pyro_vae.run_config.RunConfig"
        )
    device = resolve_device(config.training.device, "device")
    pyro.set_rng_seed(config.training.seed)
    _refuse_before_loading(config, allow_changed_code)
    if data is None:
        config, data = _loaded(config, allow_changed_data, standardization)
    d = config.data
    options = config.model.options
    standard = {k: options[k] for k in STANDARD_MODEL_OPTIONS if k in options}
    standard.update(x_dim=data.x_dim, likelihood=d.likelihood, levels=data.info.get("levels"))
    shape = getattr(data, "image_shape", None)
    standard.update(image_shape=None if shape is None else tuple(shape))
    if uses_labels(load_object(config.model.spec, "model")) is not None:
        standard.update(num_classes=num_classes(data))
        given = options.get("num_classes", standard["num_classes"])  # more: classes of its own
        if isinstance(given, int) and given >= standard["num_classes"]:
            _note_untrained_classes(data, given)
    extra = {k: v for k, v in options.items() if k not in STANDARD_MODEL_OPTIONS}
    _refuse_options_of_the_data(extra, standard, config.model.spec)
    extra = {k: v for k, v in extra.items() if k not in DATA_MODEL_OPTIONS or k not in standard}
    made, received = _construct_model(config, standard, extra, data)
    not_accepted = [k for k in STANDARD_MODEL_OPTIONS if k in options and k not in received]
    model, paired_guide = _model_and_guide(made)
    guide = _guide(config, model, paired_guide, standard)
    elbo = config.estimator.build()
    # once the files have run, each import as it resolved (a folder a model file puts on
    # sys.path may hold another helper than the run's: tester K), and a new run's record
    code = code_of(config)
    check_code_unchanged(config.code, code, allow_changed_code)
    if config.code is None and code:
        config = replace(config, code=code)
    return Experiment(
        config, data, model, guide, elbo, received, not_accepted, device=device, code=code
    )


def _loaded(
    config: RunConfig, allow_changed_data: bool, standardization: dict[str, Any] | None = None
) -> tuple[RunConfig, DataSplits]:
    """The data ``config`` names (a table standardized as ``standardization`` says, where
    given), with its labelled subset, checked against the provenance it recorded; a new
    run's config gets the data's provenance."""
    d = config.data
    options = {**d.source_options(), "standardization": standardization}
    recorded = (d.provenance or {}).get("columns")
    try:
        data = None
        if recorded and d.columns is None:
            # a run's table: its features by name, in the order its networks take them
            # (tester CT: columns reordered were fed by position under --allow-changed-data,
            # 2.25 nats off; tester CR: a column added beside them was refused)
            with contextlib.suppress(TableError):  # some are gone: said below
                data = _load_splits(d, {**options, "columns": list(recorded)})
        if data is None:
            data = _load_splits(d, options)
    except FileNotFoundError as err:
        if d.provenance is None:  # a new run's --data, named as the user gave it
            raise
        # a run's data, gone from where it read them (tester BM: evaluate's message read
        # as if --data had been mistyped, and named neither the run nor config.json)
        raise DatasetNotFoundError(
            f"{err}; this run read its data there (config.json's data.name, checksum "
            f"{d.provenance.get('checksum', 'recorded')}): put them back there, or a link to "
            "them, and run again (the commands that read a run, evaluate, sample, diagnose "
            "and the others but fit, take --allow-changed-data to read other data at that "
            "path; a fit is not resumed on other data)"
        ) from err
    check_unchanged(d.provenance, data.info.get("provenance"), allow_changed_data)
    _refuse_columns_gone(recorded, data, d.name)
    data = _labels_as_recorded(data, (d.provenance or {}).get("classes"), d.name)
    data = _with_labelled_subset(data, d)
    if d.provenance is None and "provenance" in data.info:
        config = replace(config, data=replace(d, provenance=data.info["provenance"]))
    return config, data


def _refuse_columns_gone(recorded: list[str] | None, data: DataSplits, name: str) -> None:
    """Refuse a run's table (its feature columns ``recorded``) that no longer has them all
    by name, as read with ``allow_changed_data``: its networks take its columns by name,
    and others, renamed or new, were read in their place by position, and standardized
    by their own statistics, silently (tester CR: a renamed column shifted by 20 scored
    as before).

    Raises:
        ValueError: naming the columns gone and those there now."""
    now = (data.info.get("provenance") or {}).get("columns")
    gone = [c for c in recorded or () if now is not None and c not in now]
    if gone:
        raise ValueError(
            f"data: {name} no longer has the run's feature columns {gone} (its columns now: "
            f"{column_list(now, plain=True)}); a run reads its table's columns by name, and "
            "no other column stands in for one: rename them back, or train a run on these "
            "columns"
        )


def _labels_as_recorded(data: DataSplits, recorded: list[str] | None, name: str) -> DataSplits:
    """``data`` with its labels as indices into the run's ``recorded`` class names, read
    with ``allow_changed_data``: labels are indices into the class names sorted, and a
    class renamed, or gone, moved the others' (tester EM: a CVAE's test ELBO | y scored
    under the wrong condition, 0.64 nats lower, with no note). ``recorded`` None (a run
    from before the classes were recorded, or integer labels): as read.

    Raises:
        ValueError: a class the run did not train, or labels no longer class names."""
    now = data.info.get("classes")
    if recorded is None or now == recorded:
        return data
    unknown = [c for c in now or () if c not in recorded]
    if now is None or unknown:
        found = "integer labels, not class names" if now is None else f"the classes {unknown}"
        raise ValueError(
            f"data: {name} now holds {found}, where the run was trained on the classes "
            f"{recorded}; a run's model one-hot encodes its own classes, by name, and no "
            "other stands in for one: name them back, or train a run on these labels"
        )
    index = torch.tensor([recorded.index(c) for c in now], dtype=torch.long)
    labels = {k: index[getattr(data, k)] for k in ("train_y", "val_y", "test_y")}
    return replace(data, **labels, info={**data.info, "classes": list(recorded)})


def _load_splits(d, options: dict[str, Any]) -> DataSplits:
    """:func:`~pyro_vae.data.load_data` of the data ``d`` (a DataConfig) describes, with
    the source ``options``."""
    return load_data(
        d.name,
        d.preprocessing(),
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        split_seed=d.split_seed,
        **options,
    )


def _refuse_before_loading(config: RunConfig, allow_changed_code: bool) -> None:
    """What :func:`build` refuses before the data are loaded and the files run: a model or
    guide file, or an imported file recorded, that changed; a labelled subset for a model
    that uses no labels."""
    check_code_unchanged(config.code, code_provenance(_spec_files(config)), allow_changed_code)
    d = config.data
    given = {"labelled": d.labelled, "labels_fraction": d.labels_fraction}
    if any(value is not None for value in given.values()):
        mode = uses_labels(load_object(config.model.spec, "model"))
        refuse_unused_subset(mode, config.model.spec, given)


def _with_labelled_subset(data: DataSplits, d) -> DataSplits:
    """``data`` with the observed training labels ``d`` (a DataConfig) asks for, its
    errors in the configuration's names (``labels_fraction``, ``labelled``)."""
    subset = d.labelled_subset()
    if not subset:
        return data
    y = data.train_y
    if y.numel() and bool((y < 0).any()):  # no class: said before the draw's class counts
        raise ValueError(  # (tester BP: "class -1 has only 4 training rows" came first)
            f"labels: the train split's labels span {int(y.min())}..{int(y.max())}, "
            f"{int((y < 0).sum())} of them below 0, which is no class (a label outside "
            "0..C-1 would be read as no class). Give labels 0..C-1"
        )
    try:
        return data.with_labelled_subset(**subset)
    except ValueError as err:
        text = str(err)
        for arg, name in (("fraction", "labels_fraction"), ("count", "labelled")):
            if text.startswith(f"{arg}:"):
                text = name + text[len(arg) :]
        raise ValueError(text) from err


def num_classes(data: DataSplits) -> int:
    """C, the number of classes a model that uses labels one-hot encodes: the dataset's
    class names where it has them, else the largest label of any split plus one.

    Raises:
        ValueError: no label of any split is 0 or more (every one is no class: labels of
            −1 only were refused as "num_classes: 0 is not a positive integer", which
            named neither the labels nor the way out); or the largest label makes more
            than :data:`MOST_SPARSE_CLASSES` classes and over :data:`SPARSE_FACTOR` times
            as many as the labels' distinct values (tester FM: one label of 10¹⁰, an ID
            or a typo, failed allocating 80 GB in a traceback; one of 10⁶ built a one-hot
            input a million wide without a word)."""
    if "classes" in data.info:
        return len(data.info["classes"])
    splits = {"training": data.train_y, "validation": data.val_y, "test": data.test_y}
    labels = {name: y.reshape(-1) for name, y in splits.items() if y.numel()}
    largest = max((int(y.max()) for y in labels.values()), default=-1)
    if largest < 0:
        count = sum(int(y.numel()) for y in labels.values())
        raise ValueError(
            f"labels: all {count} labels of the data are below 0, which is no class; a "
            "model that uses labels needs labels 0..C-1 (an .npz 'y', PATH.labels.npy, a "
            "table's label column, an image folder's class folders)"
        )
    _refuse_sparse_labels(labels, largest)
    return largest + 1


#: Classes (the largest label plus one) a label model may take without question; beyond,
#: at most :data:`SPARSE_FACTOR` times the labels' distinct values.
MOST_SPARSE_CLASSES = 1000
SPARSE_FACTOR = 10


def _refuse_sparse_labels(labels: dict[str, torch.Tensor], largest: int) -> None:
    """:func:`num_classes`' refusal of a largest label far beyond the labels' values."""
    distinct = torch.unique(torch.cat([y[y >= 0] for y in labels.values()])).numel()
    if largest + 1 <= MOST_SPARSE_CLASSES or largest + 1 <= SPARSE_FACTOR * distinct:
        return
    split = next(name for name, y in labels.items() if int(y.max()) == largest)
    raise ValueError(
        f"labels: a label of {largest} (in the {split} split) makes {largest + 1} classes, "
        f"but the labels hold {distinct} distinct values; a model that uses labels one-hot "
        "encodes classes 0..C-1, so expected labels numbered 0..C-1 (relabel them, e.g. "
        "numpy.unique(y, return_inverse=True)[1]; a table's label column of names is "
        "numbered so), or a stray value (an ID, a typo) removed"
    )


#: The model options the data set, and where they come from.
DATA_MODEL_OPTIONS = {
    "x_dim": "the data's row width",
    "likelihood": "--likelihood, which also sets how the data are preprocessed",
    "levels": "--levels, which also sets how the data are quantized",
    "image_shape": "the data's image shape",
}


def _refuse_options_of_the_data(extra: dict, standard: dict, spec: str) -> None:
    """Refuse a model option (``--model-opt``) that contradicts what the data set it to
    (tester CJ: ``likelihood="gaussian"`` on data binarized for ``bernoulli`` trained a
    Gaussian density on {0, 1}, scored 23 nats above the Bernoulli runs in ``compare``;
    ``image_shape=[4, 16]`` read 8x8 digits as 4x16 images; neither said a word).

    Raises:
        ValueError: naming the option, both values and where the data's comes from."""
    for key, source in DATA_MODEL_OPTIONS.items():
        if key not in extra or key not in standard:
            continue
        given, data = extra[key], standard[key]
        as_tuple = (list, tuple)
        if isinstance(given, as_tuple) and isinstance(data, as_tuple):
            given, data = tuple(given), tuple(data)
        if given != data:
            raise ValueError(
                f"model_options: {key}={extra[key]!r} for {spec}, but the data give "
                f"{key}={standard[key]!r} ({source}); expected no {key} in --model-opt "
                "(the data set it)"
            )


def model_classes(exp: Experiment) -> int:
    """C of a model that uses labels: the ``num_classes`` it was built with (a
    ``--model-opt`` may give more than the data hold, tester CK: ``sample`` cycled through
    the data's 10 of a model's 12), else the data's (:func:`num_classes`)."""
    given = exp.model_arguments.get("num_classes")
    return given if isinstance(given, int) and given > 0 else num_classes(exp.data)


def _class_names(data, classes: int) -> list[str]:
    """The names of a label model's ``classes`` classes: the dataset's (``data.info``),
    then the numbers of the classes beyond them."""
    names = [str(name) for name in data.info.get("classes") or ()]
    return names[:classes] + [str(c) for c in range(len(names), classes)]


def _note_untrained_classes(data: DataSplits, classes: int) -> None:
    """Record in ``data.info["untrained_classes"]`` the classes of the C a label model has
    that no training row holds (no label of them can be drawn, and the model never sees
    one), named as the dataset names them, for ``fit``'s note (tester BP: a class whose one
    row fell into the validation split, and labels 0..2 and 7, whose 8 classes held 4 with
    no rows, trained unsaid)."""
    y = getattr(data, "train_y", None)
    if y is None:  # a run's recorded images (sample): no training rows to count
        return
    y = y.reshape(-1).long().cpu()
    # a label below 0 is no class: the label range check refuses it (tester BQ: bincount
    # failed on it here first, with a traceback)
    counts = torch.bincount(y[y >= 0], minlength=classes)
    names = _class_names(data, classes)
    empty = [names[c] for c in range(classes) if int(counts[c]) == 0]
    if empty:
        data.info["untrained_classes"] = {"classes": empty, "of": classes}


def _construct_model(config: RunConfig, standard: dict, extra: dict, data) -> tuple[Any, dict]:
    """:func:`_construct` of the model; its refusal of the ``num_classes`` it was offered
    from the data's labels says where that number came from (tester EM: M2 on a label
    column of one class said "num_classes: 1; expected an integer >= 2", a number the user
    never gave)."""
    try:
        return _construct(config.model.spec, "model", standard, extra)
    except ValueError as err:
        offered = "num_classes" in standard and "num_classes" not in config.model.options
        if not (offered and str(err).startswith("num_classes:")):
            raise
        count = standard["num_classes"]
        names = data.info.get("classes")
        held = f" ({', '.join(map(str, names))})" if names else ""
        raise ValueError(
            f"{err}: the labels of {config.data.name} hold {count} "
            f"class{'es' if count != 1 else ''}{held}, which {config.model.spec} was offered "
            "as num_classes; give it data with more classes"
        ) from err


def _construct(spec: str, arg: str, standard: dict, extra: dict) -> tuple[Any, dict]:
    """The object ``spec`` names: a class constructed with its options, or as it is."""
    obj = load_object(spec, arg)
    if not inspect.isclass(obj):
        if extra:
            raise ValueError(
                f"{arg}_options: {sorted(extra)} were given, but {spec} is not a class, so "
                "nothing takes them; a function is used as the model or guide as it is"
            )
        return obj, {}
    received = {**supported_options(obj, standard), **extra}
    try:
        return obj(**received), received
    except Exception as err:  # noqa: BLE001 - each kind is said below, or raised as it is
        if isinstance(err, TypeError) and not _binds(obj, received):
            raise ValueError(f"{arg}: {spec} rejected its options {received}: {err}") from err
        if isinstance(err, ValueError) and _deliberate(err):
            raise  # its own refusal of a value, whose message says what was wrong
        # a fault in the constructor's own code (tester BB: `h, w = image_shape` on RGB
        # images said only "error: too many values to unpack (expected 2)"; tester BF: an
        # IndexError in a helper it calls ended in a raw traceback)
        raise ValueError(
            f"{arg}: {spec} failed in its constructor, given the options {received}, "
            f"with {type(err).__name__}: {err} ({_raised_at(err)})"
        ) from err


def _binds(cls, options: dict) -> bool:
    """Whether ``cls``'s signature takes ``options`` (else a TypeError is their refusal)."""
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        return False
    except ValueError:  # no signature to read: the error says what it says
        return True
    return True


def _deliberate(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` statement (a constructor's or a library's
    refusal of a value, whose message says what was wrong), not by an operation that
    failed (unpacking, indexing, arithmetic)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and (frames[-1].line or "").lstrip().startswith("raise")


def _raised_at(err: BaseException) -> str:
    """Where ``err`` was raised: its innermost frame's file, line and source."""
    last = traceback.extract_tb(err.__traceback__)[-1]
    return f"{last.filename}, line {last.lineno}: {(last.line or '').strip()}"


def _model_and_guide(made: Any) -> tuple[Any, Any]:
    """The model callable of a constructed object, and the guide it pairs with, if any."""
    own_forward = isinstance(made, torch.nn.Module) and (
        type(made).forward is not torch.nn.Module.forward
    )
    methods = callable(getattr(made, "model", None)) and callable(getattr(made, "guide", None))
    if methods and not own_forward:
        return made.model, made.guide
    if not callable(made):
        raise ValueError(
            f"model: {type(made).__name__} is neither callable as a Pyro model nor has "
            "model and guide methods"
        )
    return made, None


def _guide(config: RunConfig, model, paired_guide, standard: dict) -> Any:
    if config.guide.options and not config.guide.spec:
        raise ValueError(
            f"guide options: {config.guide.options} were given, but no guide is named, so "
            "nothing takes them; name the guide class (--guide, GuideConfig(spec=...)), e.g. "
            "pyro_vae.guides:AmortizedIAF"
        )
    tied = tied_guide(model)
    if tied is not None:
        return _tied(config, tied)
    if config.guide.spec:
        spec, own = config.guide.spec, dict(config.guide.options)
        obj = load_object(spec, "guide")
        if not inspect.isclass(obj):
            if own:
                raise ValueError(
                    f"guide options: {own} were given, but {spec} is not a class, so nothing "
                    "takes them; a function is used as the guide as it is"
                )
            return obj
        options = {**standard, "hidden_dims": tuple(standard.get("hidden_dims", ()))[::-1]}
        options["model"] = model
        if issubclass(obj, AutoGuide):  # its **kwargs are its transforms' (AutoIAFNormal's),
            # not options (tester DH: "multiple values for keyword argument 'hidden_dims'")
            named = inspect.signature(obj).parameters
            options = {k: v for k, v in options.items() if k in named}
        _refuse_options_not_taken(obj, spec, own)
        own = _with_init_strategy(obj, own)
        options = {k: v for k, v in options.items() if k not in own}  # the guide's own win
        try:
            return call_with_supported(obj, options, own)
        except TypeError as err:  # what it takes and what is passed (tester FI: LocalNormal's
            # "missing 'loc' and 'scale'" gave no way out)
            passed = ", ".join(sorted(options))
            raise ValueError(
                f"guide: {spec} could not be constructed: {err}; a guide class is given those "
                f"of {passed} its constructor takes, so give its other arguments with "
                "--guide-opt KEY=VALUE (JSON values; GuideConfig(spec, options) from Python) "
                "or subclass it in a file with them set, or name a guide of the table in the "
                "README's Choosing a guide"
            ) from err
    if paired_guide is not None:
        return paired_guide
    make_guide = offered(model, "make_guide")
    if make_guide is not None:
        return make_guide()
    raise ValueError(
        f"guide: none given and model {config.model.spec} has no make_guide() or guide method; "
        "name one in the run configuration (GuideConfig(spec=...)), e.g. "
        "pyro_vae.guides:AmortizedNormal"
    )


#: Guide arguments the run sets from its model and data, which ``--guide-opt`` may not
#: (tester FL: ``model=null`` failed in Pyro, ``x_dim=10`` in an image-shape check).
_SET_BY_THE_RUN = ("model", "x_dim", "image_shape", "likelihood", "levels")


#: Pyro's initialization strategies an autoguide's ``init_loc_fn`` may name in a run's
#: JSON options (``pyro.infer.autoguide.initialization``): those that take no arguments.
INIT_STRATEGIES = ("init_to_feasible", "init_to_mean", "init_to_median", "init_to_sample",
                   "init_to_uniform")  # fmt: skip


def _with_init_strategy(cls, options: dict) -> dict:
    """``options`` with a Pyro autoguide's ``init_loc_fn`` given by name (JSON holds no
    function) made the strategy it names: one of :data:`INIT_STRATEGIES`, or an import spec
    ``module:attr`` of a function (tester FL: ``--guide-opt init_loc_fn='"init_to_mean"'``
    failed at the first step in Pyro, "'str' object is not callable").

    Raises:
        ValueError: a name that is neither, or a value that is no function."""
    value = options.get("init_loc_fn")
    if not (inspect.isclass(cls) and issubclass(cls, AutoGuide)) or value is None:
        return options
    if isinstance(value, str) and value in INIT_STRATEGIES:
        return {**options, "init_loc_fn": getattr(autoguide_initialization, value)}
    if isinstance(value, str) and ":" in value:
        return {**options, "init_loc_fn": load_object(value, "guide options: init_loc_fn")}
    raise ValueError(
        f"guide options: init_loc_fn {value!r}; expected the name of one of Pyro's "
        f"initialization strategies ({', '.join(INIT_STRATEGIES)}) or an import spec "
        "'package.module:function'"
    )


def _refuse_options_not_taken(cls, spec: str, options: dict) -> None:
    """Refuse guide options ``cls``'s constructor does not name (and takes no
    ``**kwargs``), listing those it does, and those the run sets from its model and data,
    before anything is built.

    Raises:
        ValueError: naming the options and the guide's parameters."""
    fixed = sorted(set(options) & set(_SET_BY_THE_RUN))
    if fixed:
        raise ValueError(
            f"guide options: {fixed} are set by the run from its model and data; expected "
            "the guide's own arguments (num_flows, rank, its encoder's hidden_dims, ...)"
        )
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read: the constructor says
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"guide options: {unknown} are not arguments of {spec}; expected some of "
            f"{', '.join(parameters)}"
        )


def _tied(config: RunConfig, tied) -> Any:
    """The guide a model's prior is made of (a VampPrior's encoder): the run's guide, also
    when ``--guide`` names its class; another guide would leave the prior a mixture of an
    encoder that is not q's."""
    spec = config.guide.spec
    if spec and load_object(spec, "guide") is not type(tied):
        cls = type(tied)
        raise ValueError(
            f"guide: {spec}, but model {config.model.spec} makes its prior from its own "
            f"guide's encoder ({cls.__module__}:{cls.__name__}; e.g. prior='vamp'), so a "
            "different guide would change the prior; leave the guide out or name that class"
        )
    if config.guide.options:  # the prior's encoder was built with the model
        raise ValueError(
            f"guide options: {config.guide.options} were given, but model "
            f"{config.model.spec} builds its guide with its prior (e.g. prior='vamp'), so they "
            "would not reach it; give the encoder's settings as model options (--model-opt)"
        )
    return tied


def code_of(config: RunConfig) -> dict:
    """The checksums of the run's own code as it is now
    (:func:`pyro_vae.provenance.code_provenance`; ``{}`` for installed code): its model and
    guide files (``path.py:attr`` specs) and, as ``import:NAME``, the modules of the user's
    own they import, directly or transitively (:func:`pyro_vae.spec_imports.
    imported_files`: not the standard library, site-packages, pyro_vae or its zoo). A file
    executed already (:func:`pyro_vae.spec.load_object`) adds the modules its namespace
    reaches; nothing is executed here."""
    files = _spec_files(config)
    imports: dict[str, Path] = {}
    for path in dict.fromkeys(p for p in files.values() if p is not None and p.is_file()):
        for name, file in imported_files(path, executed_module(path)).items():
            if file not in files.values():
                imports.setdefault(IMPORT_ROLE + name, file)
    return code_provenance({**files, **imports})


def _spec_files(config: RunConfig) -> dict[str, Path | None]:
    return {"model": spec_file(config.model.spec), "guide": spec_file(config.guide.spec)}


def load(
    run: RunFolder | str | Path,
    device: str = "auto",
    allow_changed_data: bool = False,
    allow_changed_code: bool = False,
) -> Experiment:
    """Rebuild a run's experiment and load its kept (best-validation) weights, on
    ``device`` (:func:`pyro_vae.devices.resolve_device`; whichever device trained it).

    The pair is set up as :func:`pyro_vae.fit` sets it up (so parameters that only Pyro's
    param store holds, and autoguides' per-datapoint ones, exist at their trained shapes)
    before the weights are copied in.

    Raises:
        RunFolderError: the folder is incomplete, or its weights do not fit the model.
        ValueError: ``device`` is not a device this machine has.
        pyro_vae.provenance.DataChangedError: the data's checksum differs from the one in
            config.json, and not ``allow_changed_data`` (:func:`build`).
        pyro_vae.provenance.CodeChangedError: likewise a model or guide file's, or a module's
            of the user's own they import, and not ``allow_changed_code``.
    """
    from pyro_vae.train import prepare_pair
    from pyro_vae.weights import WeightsMismatchError

    run = run if isinstance(run, RunFolder) else RunFolder(run)
    resolved = resolve_device(device, "device")
    written = run.read_config()
    config = RunConfig.from_json(written)
    state = run.load_checkpoint(map_location=resolved)
    run.refuse_edited_config(written, state, settings_as_read)  # before the data are loaded
    config = replace(config, training=replace(config.training, device=str(resolved)))
    recorded = _recorded_standardization(run)
    experiment = build(config, allow_changed_data, allow_changed_code, None, recorded)
    pyro.clear_param_store()
    train = replace(experiment.config.training, progress=False)
    try:
        pair = prepare_pair(experiment.model, experiment.guide, experiment.data, train)
    except ValueError as err:
        recorded, now = config.data.provenance, experiment.data.info.get("provenance")
        if not (allow_changed_data and now and data_changed(recorded, now)):
            raise
        raise ValueError(  # (tester CR: blamed on the guide's spec alone)
            f"{err}; the data changed since the run was trained, and its networks fail on "
            "them: values far outside those it was trained on overflow them"
        ) from err
    try:
        pair.weights.restore(state["best"] or state)
    except WeightsMismatchError as err:
        raise RunFolderError(
            f"run: {run.path}: {_width_change(run, data=experiment.data) or err}"
        ) from err
    if not pair.weights.finite():
        raise RunFolderError(
            f"run: {run.path} holds weights with NaN or infinite entries; there is nothing "
            "sensible to evaluate or sample (was the checkpoint written by a diverged run?)"
        )
    experiment.local_guide = pair.local
    experiment.weights_epoch = (state["best"] or state).get("epoch")
    return experiment


def _recorded_standardization(run: RunFolder) -> dict[str, Any] | None:
    """A table run's standardization as metrics.json records it (``data.standardization``:
    its columns and training mean and std), to read its data through; None where it
    records none (not a table, a likelihood other than normal, or unreadable)."""
    try:
        recorded = run.read_metrics().get("data", {}).get("standardization")
    except (RunFolderError, AttributeError):
        return None
    keys = ("columns", "mean", "std")
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), list) for k in keys):
        return None
    return recorded


def _width_change(run: RunFolder, data: DataSplits) -> str | None:
    """Why the run's weights cannot fit ``data``, where they are of another width than the
    run was trained on (metrics.json's ``images.x_dim``, and a table's ``data.columns``);
    None where they are not, or metrics.json cannot tell. Changed data read with
    ``allow_changed_data`` were refused in the words of a ``state_dict`` size mismatch
    (tester CC: a table with a column dropped)."""
    try:
        metrics = run.read_metrics()
        was = int(metrics["images"]["x_dim"])
    except (RunFolderError, KeyError, TypeError, ValueError):
        return None
    if was == data.x_dim:
        return None
    columns, recorded = "", metrics.get("data")
    trained = recorded.get("columns") if isinstance(recorded, dict) else None
    now = data.info.get("columns")
    if isinstance(trained, list) and isinstance(now, list):
        columns = column_changes(trained, now)
    return (
        f"the data now give {data.x_dim} values per row, where the run was trained on {was} "
        f"(metrics.json's images.x_dim){columns}; weights of one width cannot score data of "
        f"another (--allow-changed-data reads changed data of the run's width)"
    )


def evaluate_test_set(
    exp: Experiment,
    ll_samples: int,
    ll_points: int | None,
    elbo_samples: int = 10,
    progress: bool = False,
    group: Group | None = None,
) -> dict[str, Any]:
    """Test-set ELBO, importance-weighted log-likelihood, reconstruction, active units and
    the mean KL(q(z | x) ‖ p(z)) (``kl``, nats per datapoint, Monte Carlo over
    ``elbo_samples`` draws: :func:`pyro_vae.evaluate.elbo_terms_per_datapoint`).

    The log-likelihood estimate uses K = ``ll_samples`` on the first ``ll_points`` test
    images (all when ``None``); both are recorded beside the number. A guide with free
    per-datapoint parameters has no posterior for test images: its metrics are those of
    the training images, and ``evaluated_on`` says so. Metrics that need what the model
    does not offer (a mean image, a latent code) are left out, with the reason under
    ``skipped``.

    ``group``: the ``torch.distributed`` group of a data-parallel fit
    (:func:`pyro_vae.distributed.current`), every rank of which must call this. Each rank
    then scores its contiguous part of the rows (:func:`pyro_vae.data_source.shard_of`)
    with its own random stream, and the ELBO, log-likelihood and reconstruction error are
    means over all the rows (sums and counts all-reduced), the single-process numbers up
    to Monte Carlo error; active units (a variance over all the rows) are counted by rank
    0 alone, and a guide with free per-datapoint parameters is evaluated by rank 0 alone
    (the other ranks return ``{}``). ``None``: one process.

    Memory-mapped test rows (:class:`~pyro_vae.mapped_rows.MappedRows`) are streamed from
    the map a chunk at a time; active units are then counted on the first
    :data:`FIGURE_ROWS` of them.

    Raises:
        pyro_vae.distributed.RankLost: another rank of ``group`` stopped.
    """
    local, device = exp.local_guide, exp.device
    together = group is not None and group.world > 1
    if together and local and not group.is_writer:
        return {}
    split = group if together and not local else None
    x = exp.data.train_x if local else exp.data.test_x
    if local and exp.data.dynamic:
        fixed = torch.Generator().manual_seed(1)
        x = torch.cat([torch.bernoulli(rows, generator=fixed) for rows in _pieces(x)])
    metrics: dict[str, Any] = {"evaluated_on": EVALUATED_ON_TRAINING_SET if local else "test set"}
    metrics["num_train" if local else "num_test"] = int(x.shape[0])
    started = time.perf_counter()
    model, guide, streamed = exp.model, exp.guide, _streamed(device)
    args = _data_arguments(exp, x, local)
    key = "elbo" if exp.generative else "reconstruction_log_likelihood"
    metrics[key] = _row_mean(
        lambda rows: elbo_per_datapoint(model, guide, rows, elbo_samples, device=streamed),
        args,
        split,
    )
    if exp.generative and ll_samples > 0:
        x_ll = args if ll_points is None else _first_rows(args, ll_points)
        metrics["log_likelihood"] = _row_mean(
            lambda rows: iwae_log_likelihood(
                model, guide, rows, ll_samples, progress=progress, device=streamed
            ),
            x_ll,
            split,
        )
        metrics["log_likelihood_samples"] = ll_samples
        metrics["log_likelihood_points"] = _num_rows(x_ll)
    skipped: dict[str, str] = {}
    if isinstance(args, tuple):
        _label_model_metrics(exp, args, split, elbo_samples, streamed, metrics, skipped)
    else:
        x = to_device(x, device)
        _reconstruction_metric(exp, x, split, metrics, skipped)
        _latent_metrics(exp, x, split, elbo_samples, streamed, metrics, skipped)
    if skipped:
        metrics["skipped"] = skipped
    standardization = getattr(exp.data, "info", {}).get("standardization")
    if standardization is not None:  # a table's normal columns: the file's units too
        metrics.update(original_units(metrics, standardization))
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def _data_arguments(exp: Experiment, x, local: bool):
    """What the model is evaluated on: ``x``, or for a model that uses labels
    (:mod:`pyro_vae.labels`) ``(x, y, observed)``: the test rows with all their labels, or
    the training rows with the labels training observed (a guide without test posteriors).
    """
    if uses_labels(exp.model) is None:
        return x
    if local:
        seen = exp.data.train_observed
        return x, torch.where(seen, exp.data.train_y.long(), 0), seen
    y = exp.data.test_y.long()
    return x, y, torch.ones_like(y, dtype=torch.bool)


_TAKES_LABELS = (
    "the model conditions on labels (uses_labels), and reconstructions and latent codes "
    "need the label as well as the observation"
)


def _label_model_metrics(
    exp: Experiment, args: tuple, split, elbo_samples, streamed, metrics, skipped
):
    """For a model that uses labels: the mean KL(q(z | x, y) ‖ p(z | y)) and the model's
    own label metrics (:func:`pyro_vae.latent_summaries.label_metrics`, by rank 0 alone in a
    group, with the evaluation's log p(x) draws, ``metrics["log_likelihood_samples"]``,
    where it takes ``iwae_samples``) into ``metrics``; reconstruction and active units
    into ``skipped``."""
    model, guide = exp.model, exp.guide
    skipped["reconstruction_mse"] = skipped["active_units"] = _TAKES_LABELS
    try:
        metrics["kl"] = _row_mean(
            lambda rows: (
                elbo_terms_per_datapoint(model, guide, rows, elbo_samples, device=streamed).kl
            ),
            args,
            split,
        )
    except ValueError as err:
        skipped["kl"] = str(err)
    if split is None or split.is_writer:
        x, y = (to_device(in_memory(a, _num_rows(args)), exp.device) for a in args[:2])
        # the evaluation's log p(x) settings (0 draws where it was off: --ll-samples 0)
        draws = metrics.get("log_likelihood_samples", 0)
        points = metrics.get("log_likelihood_points")
        own = label_metrics(model, guide, x, y, iwae_samples=draws, iwae_rows=points)
        clash = sorted(set(own) & set(metrics))
        if clash:
            raise ValueError(
                f"label_metrics: the model's metrics {clash} would overwrite the evaluation's; "
                "expected other names (e.g. test_accuracy)"
            )
        metrics.update(own)
        if own:
            metrics["label_metrics"] = sorted(own)
    # with every test label observed, the ELBO and the IWAE bound are of log p(x | y) when
    # the model conditions on y (uses_labels "all": the CVAE), and of the joint log p(x, y)
    # when y is one of its latents with a prior p(y) (uses_labels "partial": M2)
    metrics["conditioned_on_labels"] = uses_labels(model) != "partial"
    metrics["labels_in_bound"] = "conditioned" if metrics["conditioned_on_labels"] else "joint"


def _num_rows(args) -> int:
    return int((args[0] if isinstance(args, tuple) else args).shape[0])


def _first_rows(args, count: int):
    """The first ``count`` rows of ``x`` or of each of a tuple of data arguments."""
    if isinstance(args, tuple):
        return tuple(a[:count] for a in args)
    return args[:count]


def _reconstruction_metric(exp: Experiment, x, split, metrics, skipped) -> None:
    """The mean squared reconstruction error into ``metrics``, or why not into ``skipped``;
    memory-mapped rows a chunk at a time. A table of standardized columns also gets
    ``reconstruction_mse_original_units`` (:func:`pyro_vae.tables.squared_errors`, from
    the same reconstructions)."""
    model, guide, device = exp.model, exp.guide, exp.device
    standardization = getattr(exp.data, "info", {}).get("standardization")
    try:
        if standardization is not None:
            means = _row_means(
                lambda rows: squared_errors(reconstruct(model, guide, rows), rows, standardization),
                x,
                split,
            )
            metrics["reconstruction_mse"], metrics["reconstruction_mse_original_units"] = means
            return
        metrics["reconstruction_mse"] = _row_mean(
            lambda rows: torch.cat(
                [
                    reconstruction_error(model, guide, to_device(part, device), exp.data.pixel_max)
                    for part in _pieces(rows)
                ]
            ),
            x,
            split,
        )
    except ValueError as err:
        skipped["reconstruction_mse"] = str(err)


def _latent_metrics(exp: Experiment, x, split, elbo_samples, streamed, metrics, skipped) -> None:
    """Active units (by rank 0 alone in a group) and the mean KL(q(z | x) ‖ p(z)) into
    ``metrics``, or why not into ``skipped``. The KL is drawn last, so the metrics before
    it draw what they drew before it was added."""
    model, guide = exp.model, exp.guide
    if split is None or split.is_writer:
        try:
            on = to_device(in_memory(x, FIGURE_ROWS), exp.device)
            units, variances = active_units(model, guide, on)
            metrics["active_units"] = units
            metrics["latent_dim"] = int(variances.shape[0])
        except ValueError as err:
            skipped["active_units"] = str(err)
    if exp.generative:
        try:
            metrics["kl"] = _row_mean(
                lambda rows: (
                    elbo_terms_per_datapoint(model, guide, rows, elbo_samples, device=streamed).kl
                ),
                x,
                split,
            )
        except ValueError as err:
            skipped["kl"] = str(err)


FIGURE_ROWS = 10_000
"""Test rows held in memory, when the data are memory-mapped, for what needs them all at
once: active units and the figures (every other metric streams all the rows)."""


def _pieces(x: torch.Tensor | MappedRows) -> list[torch.Tensor]:
    """``x`` whole (a tensor), or its rows in chunks (a :class:`MappedRows`)."""
    return list(x.chunks()) if isinstance(x, MappedRows) else [x]


def _row_mean(per_row, x, group: Group | None) -> float:
    """The mean over the rows of ``x`` (a tensor, :class:`MappedRows`, or a tuple of them
    sharing their rows) of ``per_row(x)`` (``[N]`` values); in ``group``,
    each rank scores its part of the rows and the sums and counts are all-reduced. A rank
    without rows scores the first row for nothing, so that what one rank refuses (a
    ``ValueError``) every rank refuses, before any rank waits for the others."""
    if group is None:
        return per_row(x).mean().item()
    part = shard_of(_num_rows(x), group.rank, group.world)
    count = part.stop - part.start
    values = per_row(_part_of(x, part if count else slice(0, 1)))
    total = torch.tensor(
        [values.double().sum().item() if count else 0.0, count], dtype=torch.float64
    )
    group.all_reduce(total)
    return (total[0] / total[1]).item()


def _row_means(per_row, x: torch.Tensor, group: Group | None) -> list[float]:
    """:func:`_row_mean` of ``per_row(x)`` giving ``[N, k]`` values: the k means, in
    float64 (an in-memory ``x``: a table's rows)."""
    if group is None:
        return per_row(x).double().mean(0).tolist()
    part = shard_of(_num_rows(x), group.rank, group.world)
    count = part.stop - part.start
    values = per_row(x[part if count else slice(0, 1)]).double().cpu()  # as _row_mean's
    total = torch.cat(
        [values.sum(0) if count else torch.zeros_like(values[0]), values.new_tensor([count])]
    )
    group.all_reduce(total)
    return (total[:-1] / total[-1]).tolist()


def _part_of(x, part: slice):
    """Rows ``part`` of ``x`` (a tensor or :class:`MappedRows`) or of each of a tuple."""
    if isinstance(x, tuple):
        return tuple(_part_of(a, part) for a in x)
    return x.subset(part) if isinstance(x, MappedRows) else x[part]


def _streamed(device: torch.device) -> torch.device | None:
    """The ``device`` argument of the streaming evaluators: ``None`` on the CPU, so that
    path is the one it has always been."""
    return None if device.type == "cpu" else device


@torch.no_grad()
def write_figures(
    exp: Experiment,
    run: RunFolder,
    history: list[dict[str, Any]],
    test: dict[str, Any],
    num_samples: int = 64,
    train_estimate: str = "ELBO",
) -> tuple[list[Path], dict[str, str]]:
    """reconstructions.png, samples.png (generative models), elbo.png, latent.png, and
    traversal.png and interpolation.png (generative models with ``decode(z)``); for a
    model that uses labels, elbo.png and conditional_samples.png (one row per class).
    ``train_estimate``: "ELBO", "IWAE bound" or "objective" (:mod:`pyro_vae.train`).

    Returns the paths written and, for each figure left out, why: a figure that needs
    what the model cannot give (a mean image, one latent code per image), or whose making
    raises any error (a decoder's output outside its distribution's support), is skipped,
    never the run; the other figures are still made (``KeyboardInterrupt`` stops them).
    """
    data, model, guide = exp.data, exp.model, exp.guide
    x = data.train_x[:24] if exp.local_guide else data.test_x[:24]
    x_on, test_x = (
        to_device(x, exp.device),
        to_device(in_memory(data.test_x, FIGURE_ROWS), exp.device),
    )
    paths, skipped = [], {}
    ylabel = None if exp.generative else "log Pr(x | z') per datapoint"  # None: the ELBO's
    split = "training set" if exp.local_guide else "test"  # a local guide's (tester CW)
    lines = {
        f"{split} {k.replace('_', ' ')}": test[k] for k in ("elbo", "log_likelihood") if k in test
    }
    figures = {
        "reconstructions.png": lambda path: plot_reconstructions(
            x, reconstruct(model, guide, x_on).cpu(), data.image_shape, data.pixel_max, path
        ),
        "samples.png": lambda path: plot_samples(
            prior_mean_images(model, test_x, num_samples).cpu(),
            data.image_shape,
            data.pixel_max,
            path,
        ),
        "elbo.png": lambda path: plot_elbo_curves(
            history,
            path,
            lines,
            ylabel,
            "train" if train_estimate == "ELBO" else f"train {train_estimate}",
            "validation (training set)" if exp.local_guide else "validation",
        ),  # fmt: skip
        "latent.png": lambda path: plot_latent(
            latent_means(model, guide, test_x).cpu(),
            data.test_y[: test_x.shape[0]],
            path,
            classes=data.info.get("classes") or num_classes(data),
            points="test images" if data.image_shape is not None else "test rows",
        ),
        "traversal.png": lambda path: _traversal_figure(exp, test_x, path),
        "interpolation.png": lambda path: _interpolation_figure(exp, test_x, path),
    }
    if not exp.generative:
        for name in ("samples.png", "traversal.png", "interpolation.png"):
            figures.pop(name)
    if exp.local_guide:
        for name in ("latent.png", "traversal.png", "interpolation.png"):
            figures.pop(name)
            skipped[name] = "the guide has no posterior for test images"
    if row_unit(data.image_shape) == "rows":
        _skip_image_figures(data, figures, skipped)
    if uses_labels(model) is not None:
        _label_model_figures(exp, figures, skipped)
    with eval_mode(model, guide):
        for name, draw in figures.items():
            try:
                paths.append(draw(run.file(name)))
            except Exception as err:  # one figure's failure is not the run's:
                reraise_interruption(err)  # but a SIGTERM's is (pyro_vae.interruptions)
                # a decoder whose output leaves its distribution's support (a Bernoulli's
                # raw logits as probs) raised RuntimeError here, after training and the
                # test block, and lost every later figure (tester)
                skipped[name] = _why(err)
    return paths, skipped


def _why(err: Exception) -> str:
    """Why a figure was skipped: a ValueError's own message (ours name the reason), any
    other error's type and first line."""
    if isinstance(err, ValueError):
        return str(err)
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    first = lines[0].split("  (Could this error message be improved?")[0]  # torch's plea
    return f"{type(err).__name__}: {first}"


def _label_model_figures(exp: Experiment, figures: dict, skipped: dict[str, str]) -> None:
    """For a model that uses labels: conditional_samples.png in place of samples.png (when
    it offers ``generate_given``); the figures that encode an image without its label are
    skipped."""
    figures.pop("samples.png", None)
    for name in ("reconstructions.png", "latent.png", "traversal.png", "interpolation.png"):
        if figures.pop(name, None) is not None:
            skipped[name] = _TAKES_LABELS
    if offered(_owner(exp.model), "generate_given") is None:
        skipped["conditional_samples.png"] = "the model offers no generate_given(y)"
    elif exp.data.image_shape is not None:
        figures["conditional_samples.png"] = lambda path: conditional_samples_figure(exp, path)


def _skip_image_figures(data: DataSplits, figures: dict, skipped: dict[str, str]) -> None:
    """Leave out the figures that draw rows as images, where the rows are a table's or an
    ``[N, D]`` array's (tester CC: four lines that named their shape (16,))."""
    why = (
        "the data is a table, whose rows are not images"
        if "columns" in data.info
        else f"the data are rows of {data.x_dim} values, not images"
    )
    for name in ("reconstructions.png", "samples.png", "traversal.png", "interpolation.png"):
        if figures.pop(name, None):
            skipped[name] = why


def _owner(model):
    """The object behind a bound method (Pyro's ``model``/``guide`` pair), or ``model``."""
    return getattr(model, "__self__", model)


def label_samples(exp: Experiment, num: int, per_class: int = 1) -> torch.Tensor:
    """``num`` conditional samples E[x | z, y], z from the prior, of a model that uses
    labels (its ``generate_given``): ``per_class`` of class 0, then of class 1, ...,
    cycling through the classes; ``[num, D]``.

    Raises:
        ValueError: the model offers no ``generate_given(y)``.
    """
    generate = offered(_owner(exp.model), "generate_given")
    if generate is None:
        raise ValueError(
            f"model: {exp.config.model.spec} uses labels but offers no generate_given(y), so "
            "there are no conditional samples to draw"
        )
    y = torch.arange(num, device=exp.device) // per_class % model_classes(exp)
    with eval_mode(exp.model):
        return generate(y).reshape(num, -1)


def conditional_samples_figure(exp: Experiment, path: Path, per_class: int = 8) -> Path:
    """One row per class c, labelled by its name, of ``per_class`` conditional samples
    E[x | z, y = c], z from the prior (the model's ``generate_given``)."""
    classes = model_classes(exp)
    images = label_samples(exp, classes * per_class, per_class).reshape(classes, per_class, -1)
    names = _class_names(exp.data, classes)
    title = "conditional samples E[x | z, y], z ~ p(z), one row per class y"
    return plot_image_rows(
        images.cpu(), exp.data.image_shape, exp.data.pixel_max, path, list(map(str, names)), title
    )


def _traversal_figure(exp: Experiment, test_x: torch.Tensor, path: Path) -> Path:
    """The 8 most active latent coordinates of the first test image's code, each swept
    over its 5th-95th percentile across the test set
    (:func:`pyro_vae.predictive.latent_traversal`)."""
    images, dims, values = latent_traversal(exp.model, exp.guide, test_x)
    labels = [
        f"z[{int(d)}]\n{float(v[0]):.1f}..{float(v[-1]):.1f}"
        for d, v in zip(dims, values, strict=True)
    ]
    title = "latent traversal: one coordinate of the first test image's E_q[z | x] at a time"
    return plot_image_rows(
        images.cpu(), exp.data.image_shape, exp.data.pixel_max, path, labels, title
    )


def interpolation_pairs(labels: torch.Tensor, num: int = 6) -> list[tuple[int, int]]:
    """Up to ``num`` pairs of test rows to interpolate between: the first image of each
    label with the first of the next label (rows 0-1, 2-3, ... when all labels agree)."""
    labels = labels.reshape(-1).tolist()
    first: dict[Any, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    starts = list(first.values())
    if len(starts) >= 2:
        return list(zip(starts, starts[1:] + starts[:1], strict=True))[:num]
    return [(i, i + 1) for i in range(0, min(2 * num, len(labels)) - 1, 2)]


def _interpolation_figure(exp: Experiment, test_x: torch.Tensor, path: Path) -> Path:
    """Straight lines in latent space between pairs of test images of different labels
    (:func:`pyro_vae.predictive.latent_interpolation`), the originals at either end."""
    pairs = interpolation_pairs(exp.data.test_y)
    if not pairs:
        raise ValueError("x: fewer than two test images; nothing to interpolate between")
    start, end = (torch.tensor(ix, device=test_x.device) for ix in zip(*pairs, strict=True))
    path_images = latent_interpolation(exp.model, exp.guide, test_x[start], test_x[end])
    flat = test_x.reshape(test_x.shape[0], -1)
    rows = torch.cat([flat[start, None], path_images, flat[end, None]], 1)
    y = exp.data.test_y.reshape(-1).tolist()
    labels = [f"#{i} ({y[i]}) → #{j} ({y[j]})" for i, j in pairs]
    title = "interpolation E[x | z], z from E_q[z | x_a] to E_q[z | x_b] (originals at the ends)"
    return plot_image_rows(
        rows.cpu(), exp.data.image_shape, exp.data.pixel_max, path, labels, title
    )
