"""One typed run configuration: what a run folder's config.json and checkpoint.pt hold.

A run is described by a :class:`RunConfig` made of six parts: the data
(:class:`DataConfig`), the model (:class:`ModelConfig`), the guide (:class:`GuideConfig`),
the estimator (:class:`EstimatorConfig`), the fit loop (:class:`TrainingConfig`, also
importable as ``pyro_vae.TrainConfig``) and the test-set evaluation
(:class:`EvaluationConfig`). Each part checks its values when it is constructed, with one
set of defaults (those of the ``pyro-vae`` command: 200 epochs, patience 20), so a
command-line run and a Python ``fit()`` mean the same by an unset field.

On disk (``RunConfig.to_json()``)::

    {"schema_version": 2, "model": "pkg.module:Class", "model_options": {...},
     "guide": null, "data": {...}, "estimator": {"name": "trace", "options": {}},
     "train": {...}, "evaluation": {"ll_samples": 1000, "ll_points": 1000}}

:meth:`RunConfig.from_json` reads every schema version written so far: an older one is
brought forward by one small function per version step (:data:`MIGRATIONS`), so a field
that a later version adds does not break the run folders written before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pyro_vae import estimators
from pyro_vae.checkpoint import RunFolderError
from pyro_vae.data import Preprocessing

SCHEMA_VERSION = 2
MAX_LEVELS = 256  # an 8-bit image has 256 values; a categorical over more is all empty classes


def check_count(
    name: str, value: Any, minimum: int, meaning: str = "", allow_none: bool = False
) -> None:
    """Refuse ``value`` unless it is an integer ≥ ``minimum`` (or ``None`` when allowed).

    The one count check of the package: run configurations call it with field names, the
    command line with flag names. ``meaning`` says what a special value means, e.g.
    ``" (0 skips it)"``. ``bool`` is not a count.

    Raises:
        ValueError: ``"{name}: {value} is not an integer ≥ {minimum}{meaning}"``.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: {value!r} is not an integer ≥ {minimum}{meaning}")


def check_learning_rate(name: str, value: Any) -> None:
    """Refuse a learning rate that is not a finite number > 0.

    Raises:
        ValueError: naming ``name`` and the value.
    """
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: {value!r} is not a positive learning rate")


def check_levels(name: str, value: Any) -> None:
    """Refuse a number of categorical pixel levels outside 2..256 (``None``: the default).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    check_count(name, value, 2, allow_none=True)
    if value is not None and value > MAX_LEVELS:
        raise ValueError(
            f"{name}: {value} pixel levels; expected at most {MAX_LEVELS} (an 8-bit image has "
            "256 values, and the decoder's output grows with the levels)"
        )


def check_widths(name: str, value: Any) -> None:
    """Refuse hidden-layer widths that are not a list of positive integers.

    Raises:
        ValueError: naming ``name`` and the first bad width.
    """
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name}: {value!r} is not a list of layer widths")
    for width in value:
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"{name}: {width!r} is not a positive layer width")


def _check_spec(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: {value!r} is not an import spec ('module:attr')")


def _check_options(name: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name}: {value!r} is not a mapping of option names to values")


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
    """

    name: str = "digits"
    likelihood: str = "bernoulli"
    binarize: str = "static"
    threshold: float = 0.5
    levels: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: {self.name!r} is not a dataset name")
        check_levels("levels", self.levels)
        check_count("split_seed", self.split_seed, 0)
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{name}: {value!r} is not a fraction")
        self.preprocessing()

    def preprocessing(self) -> Preprocessing:
        """The :class:`~pyro_vae.data.Preprocessing` these fields describe.

        Raises:
            ValueError: an unknown likelihood or binarization, a threshold outside (0, 1).
        """
        return Preprocessing(self.likelihood, self.binarize, self.threshold, self.levels)


STANDARD_MODEL_OPTIONS = ("latent_dim", "hidden_dims", "activation")


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
        _check_options("model_options", self.options)


@dataclass
class GuideConfig:
    """The guide's import spec; ``None``: the model's ``make_guide()`` or ``guide`` method."""

    spec: str | None = None

    def __post_init__(self) -> None:
        _check_spec("guide", self.spec, optional=True)


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
        _check_options("estimator options", self.options)

    def build(self):
        """The estimator, a ``pyro.infer.ELBO``.

        Raises:
            ValueError: an option the estimator does not take, or a bad value.
        """
        return estimators.get(self.name, **self.options)


@dataclass
class TrainingConfig:
    """Settings of the fit loop (:func:`pyro_vae.fit`).

    Attributes:
        epochs: passes over the training set (an upper bound under early stopping).
        batch_size: minibatch size.
        lr: Adam learning rate.
        seed: seeds Pyro/torch/numpy/random at the start, and the per-epoch shuffling.
        patience: stop after this many epochs without a better validation ELBO
            (``None``: never stop early).
        kl_warmup_epochs: epochs over which β rises linearly to 1 (0: no warm-up).
        val_samples: particles per validation datapoint for the validation ELBO; for
            ``TensorData``, draws for the whole-data ELBO. ``None``: 1 per datapoint (the
            mean over many datapoints is already steady), 100 for a whole-data ELBO (one
            draw of a global latent moves it by nats, and the best epoch is chosen on it).
        validate_every: validate (and checkpoint) every this many epochs, and after the last.
        progress: show a progress bar per epoch.
        compile: record the step once per batch shape and replay it
            (:class:`pyro_vae.compiled.CompiledELBO`): the same losses and weights, less
            Python per step; needs an estimator without state between steps and no KL
            warm-up.
        compile_backend: with ``compile``, also ``torch.compile`` the recording with this
            backend (``"inductor"``: fused kernels after a compile of tens of seconds per
            batch shape; results close to, not bit for bit, the uncompiled ones).
        data_plate: the name of the model's per-datapoint plate, when the rule of
            :func:`pyro_vae.plates.find_data_plate` cannot tell.
        vectorize_particles: how validation draws its particles: ``True`` under one
            particle plate, ``False`` in a loop (models that cannot broadcast), ``None``
            vectorized unless that fails (the estimator has its own option).
        drop_last: leave out each epoch's last partial batch (for state that has one
            value per batch row, such as ``TraceGraph_ELBO``'s decaying-average baseline).
    """

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    patience: int | None = 20
    kl_warmup_epochs: float = 0.0
    val_samples: int | None = None
    validate_every: int = 1
    progress: bool = True
    compile: bool = False
    compile_backend: str | None = None
    data_plate: str | None = None
    vectorize_particles: bool | None = None
    drop_last: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "validate_every"):
            check_count(name, getattr(self, name), 1)
        check_count("val_samples", self.val_samples, 1, allow_none=True)
        check_count("seed", self.seed, 0)
        check_count("patience", self.patience, 1, " (None: never stop early)", allow_none=True)
        check_learning_rate("lr", self.lr)
        if not self.kl_warmup_epochs >= 0:
            raise ValueError(f"kl_warmup_epochs: {self.kl_warmup_epochs!r} is negative")
        if self.compile_backend is not None and not self.compile:
            raise ValueError(
                f"compile_backend: {self.compile_backend!r} needs compile=True (the backend "
                "compiles the recorded step)"
            )
        if self.data_plate is not None and not isinstance(self.data_plate, str):
            raise ValueError(f"data_plate: {self.data_plate!r} is not a plate name")
        if self.vectorize_particles not in (True, False, None):
            raise ValueError(
                f"vectorize_particles: {self.vectorize_particles!r} is not True, False or None"
            )
        if self.compile and self.kl_warmup_epochs > 0:
            raise ValueError(
                f"compile: True with kl_warmup_epochs={self.kl_warmup_epochs!r}; warm-up "
                "changes β on every step and a recorded step would keep its first β. Turn "
                "one of them off."
            )


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

    def __post_init__(self) -> None:
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
        """The plain-JSON dict of config.json (schema :data:`SCHEMA_VERSION`)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model.spec,
            "model_options": dict(self.model.options),
            "guide": self.guide.spec,
            "data": asdict(self.data),
            "estimator": asdict(self.estimator),
            "train": asdict(self.training),
            "evaluation": asdict(self.evaluation),
        }

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
        data, estimator, training, evaluation = (
            kind(**config[name]) for name, kind in _SECTIONS.items()
        )
        return cls(
            model=ModelConfig(config["model"], dict(config["model_options"])),
            data=data,
            guide=GuideConfig(config["guide"]),
            estimator=estimator,
            training=training,
            evaluation=evaluation,
        )


def _check_keys(config: dict[str, Any]) -> None:
    """Refuse a config with a section or key missing, misspelled, or of the wrong kind, so
    a hand-edited config.json fails with its key named rather than being half ignored.
    The train section may leave keys out (they take :class:`TrainingConfig`'s defaults)."""
    unknown = sorted(set(config) - _TOP)
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
        missing = sorted(keys - set(section)) if name != "train" else []
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


# MIGRATIONS[v] takes a schema-v dict to schema v + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: migrate_v1_to_v2}


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
