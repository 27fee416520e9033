"""One typed run configuration: what a run folder's config.json and checkpoint.pt hold.

A run is described by a :class:`RunConfig` made of six parts: the data
(:class:`DataConfig`), the model (:class:`ModelConfig`), the guide (:class:`GuideConfig`),
the estimator (:class:`EstimatorConfig`), the fit loop (:class:`TrainingConfig`, also
importable as ``pyro_vae.TrainConfig``) and the test-set evaluation
(:class:`EvaluationConfig`). Each part checks its values when it is constructed, with one
set of defaults (those of the ``pyro-vae`` command: 200 epochs, patience 20), so a
command-line run and a Python ``fit()`` mean the same by an unset field.

On disk (``RunConfig.to_json()``)::

    {"schema_version": 3, "model": "pkg.module:Class", "model_options": {...},
     "guide": null, "data": {...}, "estimator": {"name": "trace", "options": {}},
     "train": {...}, "evaluation": {"ll_samples": 1000, "ll_points": 1000}}

:meth:`RunConfig.from_json` reads every schema version written so far: an older one is
brought forward by one small function per version step (:data:`MIGRATIONS`), so a field
that a later version adds does not break the run folders written before it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pyro_vae import estimators
from pyro_vae.array_source import check_layout, is_array_path
from pyro_vae.checkpoint import RunFolderError
from pyro_vae.checks import (  # noqa: F401 (re-exported: the run configuration's checks)
    MAX_LEVELS,
    as_real,
    check_count,
    check_learning_rate,
    check_levels,
    check_widths,
    python_scalar,
)
from pyro_vae.data import Preprocessing
from pyro_vae.datasets import refuse_options_not_taken
from pyro_vae.image_folder import check_image_size
from pyro_vae.training_config import TrainingConfig

SCHEMA_VERSION = 4


def _check_spec(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: {value!r} is not an import spec ('module:attr')")


def _check_options(name: str, value: Any) -> dict[str, Any]:
    """``value`` with each NumPy or 0-d tensor scalar as its Python number (``.item()``),
    so config.json stays plain JSON (tester FA: ``decay=np.float32(0.9)`` failed
    ``json.dumps``); the values are otherwise the constructor's to check.

    Raises:
        ValueError: ``value`` is not a mapping of names to values."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name}: {value!r} is not a mapping of option names to values")
    return {k: python_scalar(v) for k, v in value.items()}


@dataclass
class DataConfig:
    """The dataset, its preprocessing and its splits (:func:`pyro_vae.data.load_data`).

    Attributes:
        name: ``"digits"``, ``"fashion-mnist"`` or ``"idx:PATH"``.
        likelihood, binarize, threshold, levels: :class:`pyro_vae.data.Preprocessing`'s,
            checked by it; ``levels`` at most 256.
        val_fraction, test_fraction: shares held out, in [0, 1) (checked by ``load_data``,
            which knows whether the dataset has an official test split).
        split_seed: seeds the split, independent of the training seed.
        provenance: where file-based data came from (:mod:`pyro_vae.provenance`: absolute
            path, shape, dtype and a checksum of the files' names and sizes), recorded by
            :func:`pyro_vae.experiment.build` for a new run and checked when the run is
            rebuilt; ``None`` for data without files, or a config.json written before it.
        image_size, crop: an image folder's ``(H, W)`` to resize to (``None``: keep) and
            whether to keep the aspect ratio by cutting the centre.
        columns, label_column: a table's feature columns (``None``: every numeric column
            but the label) and its label column (``None``: no labels).
        layout: what a 4-D array file holds (``"channels-first"``, ``"channels-last"``;
            ``None``: guessed from its shape, :func:`pyro_vae.array_source.from_array`).
        labels_fraction, labelled: which training labels a model that uses labels
            observes (:meth:`pyro_vae.data.DataSplits.with_labelled_subset`, drawn with
            ``split_seed``): a share f in (0, 1] of each class, or N_l labels, equally
            many per class; both ``None``: every label. At most one is given.

    These seven and ``provenance`` came after schema 3's first release; a config.json
    without them reads as their defaults (``_ADDED_KEYS``).
    """

    name: str = "digits"
    likelihood: str = "bernoulli"
    binarize: str = "static"
    threshold: float = 0.5
    levels: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    provenance: dict[str, Any] | None = None
    image_size: list[int] | None = None
    crop: bool = False
    columns: list[str] | None = None
    label_column: str | None = None
    labels_fraction: float | None = None
    labelled: int | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: {self.name!r} is not a dataset name")
        if self.provenance is not None and not isinstance(self.provenance, dict):
            raise ValueError(
                f"provenance: {self.provenance!r} is not a mapping (path, shape, dtype, "
                "checksum) or None"
            )
        self.layout = self._layout_as_read()
        size = self.image_size  # as typed, (H, W); before crop's own check, which would
        # ask a table for a size it then refuses (tester FH)
        size = tuple(size) if isinstance(size, list) else size
        refuse_options_not_taken(self.name, {"crop": self.crop, "image_size": size})
        size = check_image_size(self.image_size, self.crop)
        self.image_size = None if size is None else list(size)
        if not isinstance(self.crop, bool):
            raise ValueError(f"crop: {self.crop!r}; expected True or False")
        if self.columns is not None and (
            isinstance(self.columns, str)
            or not self.columns
            or not all(isinstance(c, str) for c in self.columns)
        ):
            raise ValueError(f"columns: {self.columns!r}; expected a list of column names")
        if self.columns is not None:
            self.columns = list(self.columns)
        if self.label_column is not None and not isinstance(self.label_column, str):
            raise ValueError(f"label_column: {self.label_column!r}; expected a column name")
        check_levels("levels", self.levels)
        check_count("split_seed", self.split_seed, 0)
        self._check_labelled_subset()
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            number = as_real(value)
            if number is None:
                raise ValueError(f"{name}: {value!r} is not a fraction")
            setattr(self, name, number)
        self.threshold = self.preprocessing().threshold  # a Python float (tester FA)

    def _layout_as_read(self) -> str | None:
        """``layout``, or where a run read a 4-D array file without one (its provenance
        records the shape), ``"channels-first"``: how its shape was read then. So a new
        run records it, and a run made before ``layout`` existed reloads as it was trained
        (tester FA: a [N, 4, 20, 3] run, now refused as either layout, could no longer be
        evaluated or resumed, and ``--layout channels-first`` was refused on resume)."""
        check_layout(self.layout)
        shape = (self.provenance or {}).get("shape")
        if self.layout is None and is_array_path(self.name) and shape and len(shape) == 4:
            return "channels-first"
        return self.layout

    def _check_labelled_subset(self) -> None:
        fraction, count = self.labels_fraction, self.labelled
        if fraction is not None and count is not None:
            raise ValueError(
                f"labels_fraction, labelled: {fraction!r} and {count!r} both given; expected "
                "one of them (a share of the training labels, or their number)"
            )
        if fraction is not None:
            number = as_real(fraction)
            if number is None or not 0.0 < number <= 1.0:
                raise ValueError(f"labels_fraction: {fraction!r} is not in (0, 1]")
            self.labels_fraction = number
        check_count("labelled", count, 1, " (the number of observed labels)", allow_none=True)

    def labelled_subset(self) -> dict[str, Any]:
        """The arguments of :meth:`pyro_vae.data.DataSplits.with_labelled_subset`;
        ``{}`` when every label is observed."""
        if self.labels_fraction is None and self.labelled is None:
            return {}
        return {"fraction": self.labels_fraction, "count": self.labelled, "seed": self.split_seed}

    def preprocessing(self) -> Preprocessing:
        """The :class:`~pyro_vae.data.Preprocessing` these fields describe.

        Raises:
            ValueError: an unknown likelihood or binarization, a threshold outside (0, 1).
        """
        return Preprocessing(self.likelihood, self.binarize, self.threshold, self.levels)

    def source_options(self) -> dict[str, Any]:
        """The options :func:`pyro_vae.data.load_data` passes to the source's reader."""
        return {
            "image_size": None if self.image_size is None else tuple(self.image_size),
            "crop": self.crop,
            "columns": self.columns,
            "label_column": self.label_column,
            **({"layout": self.layout} if self.layout is not None else {}),
        }


# Offered to a model (and a guide class) only when its constructor takes them; ``arch``
# (``"mlp"`` or ``"conv"``) and ``channels`` (the convolutions' widths) are kept in
# config.json only when set, so an MLP run's config is as before.
STANDARD_MODEL_OPTIONS = ("latent_dim", "hidden_dims", "activation", "arch", "channels")


@dataclass
class ModelConfig:
    """The model: an import spec (``"package.module:attr"`` or ``"file.py:attr"``) and the
    constructor options it is offered (:func:`pyro_vae.experiment.build`).

    The options' values are the model's to check: its constructor receives them as they
    are (a user's model may take any kind of value under a standard name).
    """

    spec: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_spec("model", self.spec)
        self.options = _check_options("model_options", self.options)


@dataclass
class GuideConfig:
    """The guide's import spec (``None``: the model's ``make_guide()`` or ``guide``
    method) and ``options``, arguments of the named guide class's own (``num_flows``,
    ``rank``), over the run's standard ones (``--guide-opt`` on the command line).

    Options with no ``spec`` are refused when the run is built
    (:func:`pyro_vae.experiment.build`): nothing would take them.

    Raises:
        ValueError: a bad spec; ``options`` not a mapping of names."""

    spec: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_spec("guide", self.spec, optional=True)
        self.options = _check_options("guide options", self.options)


@dataclass
class EstimatorConfig:
    """The estimator's registry name and options (:func:`pyro_vae.estimators.get`)."""

    name: str = "trace"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in estimators.names():
            raise ValueError(
                f"estimator: {self.name!r} is not one of {', '.join(estimators.names())}"
            )
        self.options = _check_options("estimator options", self.options)

    def build(self):
        """The estimator, a ``pyro.infer.ELBO``.

        Raises:
            ValueError: an option the estimator does not take, or a bad value.
        """
        return estimators.get(self.name, **self.options)


@dataclass
class EvaluationConfig:
    """The test-set evaluation after fitting (:func:`pyro_vae.experiment.evaluate_test_set`).

    Attributes:
        ll_samples: K of the importance-weighted log-likelihood (0: skip it).
        ll_points: the first test images it is estimated on (``None``: all).
    """

    ll_samples: int = 1000
    ll_points: int | None = 1000

    def __post_init__(self) -> None:
        check_count("ll_samples", self.ll_samples, 0, " (0 skips it)")
        check_count("ll_points", self.ll_points, 1, " (None: all)", allow_none=True)


# config.json's top-level keys and the part each holds (model and guide are flat there).
_SECTIONS = {
    "data": DataConfig,
    "estimator": EstimatorConfig,
    "train": TrainingConfig,
    "evaluation": EvaluationConfig,
}
_TOP = {"format", "schema_version", "model", "model_options", "guide", *_SECTIONS}
# Top-level keys added after schema 3's first release: a config.json may leave them out
# (guide_options is written only where a run has some).
_ADDED_TOP = {"code", "guide_options"}
# Keys added to a section after its schema version, with defaults: a config.json written
# before them leaves them out (no schema step needed), and they take the default.
_ADDED_KEYS = {
    "data": {
        "provenance",
        "image_size",
        "crop",
        "columns",
        "label_column",
        "labels_fraction",
        "labelled",
        "layout",
    }
}


@dataclass
class RunConfig:
    """A whole run: data, model, guide, estimator, training and evaluation.

    Only ``model`` has no default. ``to_json()`` is what config.json and the checkpoint
    hold; ``from_json`` reads it back, migrating older schema versions.
    """

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    #: the model's and guide's own files and their checksums (:func:`pyro_vae.provenance.
    #: code_provenance`), recorded by a new run; None in a config.json written before them
    code: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.code is not None and not isinstance(self.code, dict):
            raise TypeError(f"code: {self.code!r}; expected a mapping of role to file")
        for name, kind in (
            ("model", ModelConfig),
            ("data", DataConfig),
            ("guide", GuideConfig),
            ("estimator", EstimatorConfig),
            ("training", TrainingConfig),
            ("evaluation", EvaluationConfig),
        ):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"{name}: {type(getattr(self, name)).__name__}; expected a {kind.__name__}"
                )

    def to_json(self) -> dict[str, Any]:
        """The plain-JSON dict of config.json (schema :data:`SCHEMA_VERSION`); ``code`` only
        where a run recorded its files."""
        out = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model.spec,
            "model_options": dict(self.model.options),
            "guide": self.guide.spec,
            "data": asdict(self.data),
            "estimator": asdict(self.estimator),
            "train": asdict(self.training),
            "evaluation": asdict(self.evaluation),
        }
        if self.guide.options:
            out["guide_options"] = dict(self.guide.options)
        if self.code is not None:
            out["code"] = self.code
        return out

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> RunConfig:
        """Read a config.json dict of any schema version written so far (none: version 1).

        Raises:
            RunFolderError: a schema version this version of pyro_vae does not know, or a
                section or key missing, misspelled or of the wrong kind (named).
            ValueError: a value its part refuses (named).
        """
        config = migrate(config)
        _check_keys(config)
        if not isinstance(config["model_options"], dict) or not isinstance(config["model"], str):
            raise RunFolderError(
                "config: 'model' must be an import spec and 'model_options' an object"
            )
        if not isinstance(config.get("guide_options", {}), dict):
            raise RunFolderError("config: 'guide_options' must be an object")
        data, estimator, training, evaluation = (
            _section(name, kind, config[name]) for name, kind in _SECTIONS.items()
        )
        options = config["model_options"]
        if options.get("arch") == "conv" and "activation" not in options:
            warnings.warn(
                "config: conv model_options without an 'activation'; the model's default "
                "is used, ELU for the shipped conv networks (softplus before pyro_vae "
                "made ELU their default; fit has always recorded the one it used). Add "
                '"activation" to config.json if this run was trained with another',
                stacklevel=2,
            )
        return cls(
            model=ModelConfig(config["model"], dict(config["model_options"])),
            data=data,
            guide=GuideConfig(config["guide"], dict(config.get("guide_options", {}))),
            estimator=estimator,
            training=training,
            evaluation=evaluation,
            code=config.get("code"),
        )


def _section(name: str, kind: type, values: dict[str, Any]):
    """``kind(**values)``, config.json's section ``name``, its refusal of a value said to be
    config.json's (tester BW: ``"lr": "fast"`` edited into it was refused as "lr: 'fast' is
    not a positive learning rate", which read as a flag the user never passed).

    Raises:
        ValueError: naming config.json, the section and the value."""
    try:
        return kind(**values)
    except ValueError as err:
        raise ValueError(
            f"config.json: in its {name!r} section, {err} (was the file edited? put back "
            "the value the run was written with)"
        ) from err


def _check_keys(config: dict[str, Any]) -> None:
    """Refuse a config with a section or key missing, misspelled, or of the wrong kind, so
    a hand-edited config.json fails with its key named rather than being half ignored.
    The train section may leave keys out (they take :class:`TrainingConfig`'s defaults),
    and any section the keys of ``_ADDED_KEYS``."""
    unknown = sorted(set(config) - _TOP - _ADDED_TOP)
    missing = sorted(_TOP - {"format"} - set(config))
    if unknown or missing:
        raise RunFolderError(
            f"config: unknown keys {unknown} and missing keys {missing}; expected the keys "
            f"{sorted(_TOP)}"
        )
    for name, kind in _SECTIONS.items():
        section, keys = config[name], {f.name for f in fields(kind)}
        if not isinstance(section, dict):
            raise RunFolderError(
                f"config: {name!r} is a {type(section).__name__}; expected an object"
            )
        unknown = sorted(set(section) - keys)
        missing = sorted(keys - set(section) - _ADDED_KEYS.get(name, set()))
        missing = missing if name != "train" else []
        if unknown or missing:
            raise RunFolderError(
                f"config: {name!r} has unknown keys {unknown} and lacks {missing}; expected "
                f"{sorted(keys)}"
            )


# The train defaults of schema 1 that schema 2 changed (TrainConfig's; the CLI always
# wrote every key, but a hand-written config.json could leave them out).
_V1_TRAIN_DEFAULTS = {"epochs": 100, "patience": 10}


def migrate_v1_to_v2(config: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 (no ``schema_version``) to 2: the fit loop's defaults became the command
    line's (200 epochs, patience 20), so a train section that left ``epochs`` or
    ``patience`` out, meaning schema 1's 100 and 10, gets those written in."""
    out = {**config, "schema_version": 2}
    if isinstance(config.get("train"), dict):
        out["train"] = {**_V1_TRAIN_DEFAULTS, **config["train"]}
    return out


def migrate_v2_to_v3(config: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 to 3: the train section gained ``device`` (default ``"auto"``). Every run
    folder written before it trained on the CPU, so it gets ``"cpu"`` written in, unless it
    already names one."""
    out = {**config, "schema_version": 3}
    if isinstance(config.get("train"), dict):
        out["train"] = {"device": "cpu", **config["train"]}
    return out


def migrate_v3_to_v4(config: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 to 4: ``score``'s ``normalize_variance`` became ``False`` by default (NVIL's
    division of the ``neural`` control variate's signal by max(1, √v) rescales each site's
    score term, so the gradient was not the ELBO's: tester AW). A ``score`` estimator with
    the ``neural`` control variate that left the option out trained with it on, so it gets
    ``True`` written in, and resumes as it trained."""
    out = {**config, "schema_version": 4}
    section = config.get("estimator")
    if not isinstance(section, dict) or section.get("name") != "score":
        return out
    options = section.get("options")
    if isinstance(options, dict) and options.get("control_variate") == "neural":
        out["estimator"] = {**section, "options": {"normalize_variance": True, **options}}
    return out


# MIGRATIONS[v] takes a schema-v dict to schema v + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: migrate_v1_to_v2,
    2: migrate_v2_to_v3,
    3: migrate_v3_to_v4,
}


def settings_as_read(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as this version reads it: migrated to :data:`SCHEMA_VERSION`, with every
    key an older version's file leaves out filled with its default
    (``RunConfig.from_json(config).to_json()``, its warnings kept quiet), so that two
    configs of one run compare equal whichever version wrote each (tester ER: a schema-3
    checkpoint's config, written before ``data.crop`` and ``train.beta`` existed, read as
    "trained with None" beside the schema-4 config.json a resume had written).

    Raises:
        RunFolderError, ValueError: as :meth:`RunConfig.from_json`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RunConfig.from_json(config).to_json()


def migrate(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` brought to :data:`SCHEMA_VERSION`, one version step at a time (a new
    dict; the argument is not changed).

    Raises:
        RunFolderError: ``config`` is not a dict, or its ``schema_version`` is not an
            integer between 1 and :data:`SCHEMA_VERSION`.
    """
    if not isinstance(config, dict):
        raise RunFolderError(f"config: a {type(config).__name__}; expected an object")
    version = config.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunFolderError(
            f"config: schema_version {version!r} is not a positive integer; expected 1 to "
            f"{SCHEMA_VERSION}"
        )
    if version > SCHEMA_VERSION:
        raise RunFolderError(
            f"config: schema_version {version} is newer than this version of pyro_vae reads "
            f"(up to {SCHEMA_VERSION}); upgrade pyro_vae to use this run folder"
        )
    while version < SCHEMA_VERSION:
        config = MIGRATIONS[version](config)
        version += 1
    return config
