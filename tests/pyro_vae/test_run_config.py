"""The typed run configuration: defaults, validation, JSON round trip, schema migrations,
and the run folders an earlier version wrote."""

import json
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.run_config import (
    MIGRATIONS,
    SCHEMA_VERSION,
    DataConfig,
    EstimatorConfig,
    EvaluationConfig,
    GuideConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    check_count,
    check_widths,
    migrate,
    migrate_v1_to_v2,
    migrate_v2_to_v3,
    migrate_v3_to_v4,
)
from pyro_vae.train import TrainConfig

FIXTURES = Path(__file__).parents[1] / "fixtures"


def small() -> RunConfig:
    return RunConfig(
        model=ModelConfig("models.vae:VAE", {"latent_dim": 2, "hidden_dims": [16]}),
        data=DataConfig(likelihood="categorical", levels=5),
        guide=GuideConfig("pyro_vae.guides:AmortizedNormal"),
        estimator=EstimatorConfig("iwae", {"num_particles": 4}),
        training=TrainingConfig(epochs=3, patience=None, compile=True),
        evaluation=EvaluationConfig(ll_samples=0, ll_points=None),
    )


def test_one_set_of_defaults_the_commands():
    assert TrainConfig is TrainingConfig and TrainingConfig().epochs == 200
    assert (EvaluationConfig().ll_samples, EvaluationConfig().ll_points) == (1000, 1000)
    assert DataConfig().name == "digits" and EstimatorConfig().name == "trace"
    assert GuideConfig().spec is None


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: DataConfig(levels=1), ["levels: 1", "≥ 2"]),
        (lambda: DataConfig(levels=300), ["levels: 300", "at most 256"]),
        (lambda: DataConfig(threshold=1.5), ["threshold: 1.5"]),
        (lambda: DataConfig(likelihood="poisson"), ["likelihood", "poisson"]),
        (lambda: DataConfig(split_seed=-2), ["split_seed: -2"]),
        (lambda: DataConfig(val_fraction="0.1"), ["val_fraction: '0.1'", "fraction"]),
        (lambda: DataConfig(name=""), ["name: ''"]),
        (lambda: ModelConfig(""), ["model: ''", "import spec"]),
        (lambda: ModelConfig("m:M", [1]), ["model_options: [1]"]),
        (lambda: GuideConfig(3), ["guide: 3", "import spec"]),
        (lambda: EstimatorConfig("elbo"), ["estimator: 'elbo' is not one of", "trace"]),
        (lambda: EstimatorConfig("trace", None), ["estimator options: None"]),
        (lambda: EvaluationConfig(ll_samples=-1), ["ll_samples: -1", "0 skips it"]),
        (lambda: EvaluationConfig(ll_points=0), ["ll_points: 0", "None: all"]),
    ],
)
def test_each_part_refuses_a_bad_value_naming_field_value_and_expectation(make, words):
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_model_options_are_the_model_s_to_check():
    assert ModelConfig("m:M", {"latent_dim": "abc"}).options == {"latent_dim": "abc"}


def test_check_widths_names_the_first_bad_width():
    check_widths("--hidden", [])
    with pytest.raises(ValueError, match="--hidden: 0 is not a positive layer width"):
        check_widths("--hidden", [400, 0])
    with pytest.raises(ValueError, match="hidden_dims: 8 is not a list"):
        check_widths("hidden_dims", 8)


def test_a_run_config_takes_only_its_parts():
    with pytest.raises(TypeError, match="training: dict; expected a TrainingConfig"):
        RunConfig(ModelConfig("m:M"), training={"epochs": 3})


def test_check_count_is_the_one_count_check():
    check_count("n", 3, 1)
    check_count("n", None, 1, allow_none=True)
    with pytest.raises(ValueError, match=r"--num: 0 is not a positive integer \(why\)"):
        check_count("--num", 0, 1, " (why)")
    with pytest.raises(ValueError, match="n: None"):
        check_count("n", None, 1)


def test_json_round_trip_is_exact():
    config = small()
    text = json.dumps(config.to_json())
    again = RunConfig.from_json(json.loads(text))
    assert again == config
    assert again.to_json() == config.to_json()
    assert config.to_json()["schema_version"] == SCHEMA_VERSION == 4
    assert config.to_json()["train"] == asdict(config.training)


def test_json_layout_is_config_json_s():
    keys = set(small().to_json())
    assert keys == {
        "schema_version",
        "model",
        "model_options",
        "guide",
        "data",
        "estimator",
        "train",
        "evaluation",
    }


def test_from_json_accepts_the_format_key_and_a_train_section_with_keys_left_out():
    config = small().to_json()
    config["format"] = "pyro_vae.run/1"
    config["train"] = {"epochs": 7}
    read = RunConfig.from_json(config)
    assert read.training == TrainingConfig(epochs=7)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: c.pop("evaluation"), ["missing keys ['evaluation']"]),
        (lambda c: c.update(extra=1), ["unknown keys ['extra']"]),
        (lambda c: c.update(train=[1, 2]), ["'train' is a list", "expected an object"]),
        (lambda c: c["train"].update(epocs=3), ["'train' has unknown keys ['epocs']"]),
        (lambda c: c["data"].pop("threshold"), ["'data'", "lacks ['threshold']"]),
        (lambda c: c.update(model_options=[]), ["'model_options' an object"]),
        (lambda c: c.update(schema_version=99), ["schema_version 99 is newer", "up to 4"]),
        (lambda c: c.update(schema_version="2"), ["schema_version '2' is not a positive"]),
        (lambda c: c.update(schema_version=0), ["schema_version 0"]),
    ],
)
def test_from_json_refuses_a_bad_config_naming_the_key(edit, words):
    config = small().to_json()
    edit(config)
    with pytest.raises(RunFolderError) as info:
        RunConfig.from_json(config)
    for word in words:
        assert word in str(info.value)


def test_from_json_refuses_what_is_not_an_object():
    with pytest.raises(RunFolderError, match="a list; expected an object"):
        RunConfig.from_json([1, 2])


def test_a_bad_value_in_a_config_is_named():
    config = small().to_json()
    config["train"]["epochs"] = 0
    with pytest.raises(ValueError, match="epochs: 0"):
        RunConfig.from_json(config)


def v1(**train) -> dict:
    """A config.json as version 1 wrote it: no schema_version."""
    config = small().to_json()
    del config["schema_version"]
    config["format"] = "pyro_vae.run/1"
    config["train"] = train
    return config


def test_migrate_v1_to_v2_keeps_version_1_s_meaning_of_a_left_out_default():
    old = v1(lr=0.01)
    new = migrate_v1_to_v2(old)
    assert new["schema_version"] == 2
    assert new["train"] == {"epochs": 100, "patience": 10, "lr": 0.01}
    assert "schema_version" not in old and old["train"] == {"lr": 0.01}  # not changed
    assert migrate_v1_to_v2(v1(epochs=5, patience=None))["train"] == {"epochs": 5, "patience": None}
    assert RunConfig.from_json(old).training == TrainingConfig(
        epochs=100, patience=10, lr=0.01, device="cpu"
    )


def test_migrate_v2_to_v3_records_that_old_runs_trained_on_the_cpu():
    old = {**small().to_json(), "schema_version": 2}
    del old["train"]["device"]
    new = migrate_v2_to_v3(old)
    assert new["schema_version"] == 3 and new["train"]["device"] == "cpu"
    assert "device" not in old["train"]  # not changed
    assert RunConfig.from_json(old).training.device == "cpu"
    assert migrate_v2_to_v3({**old, "train": {"device": "cuda:1"}})["train"] == {"device": "cuda:1"}


def test_migrate_v3_to_v4_keeps_nvil_s_normalization_for_runs_that_trained_with_it():
    # normalize_variance became False by default (tester AW: the gradient was not the
    # ELBO's); a schema-3 run with the neural control variate trained with it on
    neural = {"name": "score", "options": {"control_variate": "neural"}}
    old = {**small().to_json(), "schema_version": 3, "estimator": neural}
    new = migrate_v3_to_v4(old)
    assert new["schema_version"] == 4
    assert new["estimator"]["options"] == {"control_variate": "neural", "normalize_variance": True}
    assert old["estimator"] == neural  # not changed
    assert RunConfig.from_json(old).estimator.build().normalize_variance is True
    given = {"name": "score", "options": {"control_variate": "neural", "normalize_variance": False}}
    assert migrate_v3_to_v4({**old, "estimator": given})["estimator"] == given
    for other in ({"name": "score", "options": {"control_variate": "ema"}}, {"name": "trace"}):
        assert migrate_v3_to_v4({**old, "estimator": other})["estimator"] == other
    fresh = RunConfig.from_json({**small().to_json(), "estimator": neural})
    assert fresh.estimator.build().normalize_variance is False


def test_device_is_checked_when_the_config_is_made():
    assert TrainingConfig().device == "auto"
    for name in ("cpu", "cuda", "cuda:3", "mps", "auto"):
        assert TrainingConfig(device=name).device == name
    with pytest.raises(ValueError, match=r"device: 'gpu' is not a device; expected one of 'auto'"):
        TrainingConfig(device="gpu")


def test_every_version_step_has_its_migration():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
    current = small().to_json()
    assert migrate(current) == current
    assert migrate(v1(epochs=3))["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("name", ["run_v1", "run_v1_stopped"])
def test_a_run_folder_of_version_1_loads(name):
    raw = RunFolder(FIXTURES / name).read_config()
    assert "schema_version" not in raw
    config = RunConfig.from_json(raw)
    assert config.model == ModelConfig(
        "models.vae:VAE", {"latent_dim": 2, "hidden_dims": [16], "activation": "softplus"}
    )
    assert config.training.epochs == (2 if name == "run_v1" else 50)
    assert config.training.compile is True and config.training.patience == 20
    assert config.evaluation == EvaluationConfig(ll_samples=10, ll_points=20)
    added = {"device", "precision", "tensorboard", "beta"}  # fields newer than version 1
    assert {f.name for f in fields(TrainingConfig)} == set(raw["train"]) | added
    assert config.training.device == "cpu"  # version 1 and 2 folders trained on the CPU
    assert config.training.precision == "32"  # written before the field: float32
    assert config.training.tensorboard is False  # written before the field: no event files
    assert config.training.beta == 1.0  # written before the field: the ELBO


def test_a_config_json_without_tensorboard_loads_without_it():
    config = small().to_json()
    assert config["train"]["tensorboard"] is False
    del config["train"]["tensorboard"]
    assert RunConfig.from_json(json.loads(json.dumps(config))).training.tensorboard is False


def test_provenance_round_trips_and_a_config_without_it_still_loads():
    record = {"path": "/d/x.npy", "shape": [3, 4], "dtype": "uint8", "checksum": "sha256:ab"}
    config = RunConfig(ModelConfig("models.vae:VAE"), data=DataConfig(provenance=record))
    assert RunConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    old = config.to_json()
    del old["data"]["provenance"]  # config.json written before provenance
    assert RunConfig.from_json(old).data.provenance is None
    with pytest.raises(ValueError, match="provenance: 'x.npy' is not a mapping"):
        DataConfig(provenance="x.npy")


def test_a_data_section_without_the_source_options_loads_with_their_defaults():
    config = small().to_json()
    for key in ("image_size", "crop", "columns", "label_column"):
        del config["data"][key]  # as every config.json before image folders and tables
    assert RunConfig.from_json(config).data == small().data
    options = DataConfig(name="images:/x", image_size=(4, 5), crop=True)
    assert options.image_size == [4, 5]  # the list config.json round-trips
    back = RunConfig.from_json(RunConfig(ModelConfig("m:M"), data=options).to_json()).data
    assert back == options and back.source_options()["image_size"] == (4, 5)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "images:/x", "image_size": [0, 3]}, "image_size: [0, 3]"),
        ({"image_size": [2, 3]}, "image_size: (2, 3) applies to an image folder"),
        ({"crop": True}, "crop: True applies to an image folder (images:DIR) only"),
        ({"name": "images:/x", "crop": True}, "crop: True needs image_size"),
        ({"columns": "a"}, "columns: 'a'"),
        ({"columns": []}, "columns: []"),
        ({"label_column": 3}, "label_column: 3"),
    ],
)
def test_the_source_options_are_checked_when_the_config_is_made(kwargs, words):
    with pytest.raises(ValueError) as raised:
        DataConfig(**kwargs)
    assert words in str(raised.value)


def test_the_labelled_subset_round_trips_and_an_old_config_observes_every_label():
    config = RunConfig(ModelConfig("models.cvae:CVAE"), data=DataConfig(labelled=30))
    assert RunConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert config.data.labelled_subset() == {"fraction": None, "count": 30, "seed": 0}
    old = small().to_json()
    for key in ("labels_fraction", "labelled"):
        del old["data"][key]  # a config.json written before labels
    data = RunConfig.from_json(old).data
    assert data.labels_fraction is None and data.labelled is None
    assert data.labelled_subset() == {}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"labels_fraction": 0.5, "labelled": 10}, "labels_fraction, labelled: 0.5 and 10 both"),
        ({"labels_fraction": 0.0}, "labels_fraction: 0.0 is not in (0, 1]"),
        ({"labels_fraction": 1.2}, "labels_fraction: 1.2 is not in (0, 1]"),
        ({"labels_fraction": True}, "labels_fraction: True is not in (0, 1]"),
        ({"labelled": 0}, "labelled: 0 is not a positive integer"),
        ({"labelled": 2.5}, "labelled: 2.5 is not a positive integer"),
    ],
)
def test_the_labelled_subset_is_checked_when_the_config_is_made(kwargs, words):
    with pytest.raises(ValueError) as raised:
        DataConfig(**kwargs)
    assert words in str(raised.value)


def test_a_conv_config_without_an_activation_is_read_with_a_warning():
    # fit always records the activation; a hand-made config that leaves it out of a conv
    # model's options would otherwise silently get the current default (ELU)
    config = small().to_json()
    config["model_options"] = {**config["model_options"], "arch": "conv"}
    with pytest.warns(UserWarning, match="conv model_options without an 'activation'"):
        read = RunConfig.from_json(config)
    assert "activation" not in read.model.options
    config["model_options"]["activation"] = "softplus"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunConfig.from_json(config)


def test_a_bad_value_edited_into_config_json_is_said_to_be_config_json_s():
    """Tester BW: ``"lr": "fast"`` edited into a run's config.json was refused as "lr:
    'fast' is not a positive learning rate", which read as a flag never passed."""
    written = RunConfig(ModelConfig("models.vae:VAE")).to_json()
    written["train"]["lr"] = "fast"
    with pytest.raises(
        ValueError, match=r"^config\.json: in its 'train' section, lr: 'fast' is not a positive"
    ):
        RunConfig.from_json(written)
    # tester BY: a string threshold failed a comparison in a traceback
    written = RunConfig(ModelConfig("models.vae:VAE")).to_json()
    written["data"]["threshold"] = "x"
    with pytest.raises(ValueError, match=r"^config\.json: in its 'data' section, threshold: 'x' "
                       r"is not a number in the open interval \(0, 1\)"):  # fmt: skip
        RunConfig.from_json(written)


def test_numpy_fractions_and_threshold_are_stored_as_python_floats():
    # tester EW's kind: a NumPy scalar was refused as "not a fraction"; tester FA: the
    # threshold and an estimator's options kept theirs, and json.dumps failed
    data = DataConfig(
        val_fraction=np.float32(0.25), threshold=np.float32(0.5), labels_fraction=np.float32(0.5)
    )
    stored = (data.val_fraction, data.threshold, data.labels_fraction)
    assert stored == (0.25, 0.5, 0.5) and all(type(v) is float for v in stored)
    estimator = EstimatorConfig("score", {"decay": np.float32(0.5), "num_particles": np.int64(2)})
    assert estimator.options == {"decay": 0.5, "num_particles": 2}
    assert [type(v) for v in estimator.options.values()] == [float, int]
    config = RunConfig(model=ModelConfig("models.vae:VAE", {"latent_dim": torch.tensor(3)}))
    config = replace(config, data=data, estimator=estimator)
    assert json.loads(json.dumps(config.to_json()))["model_options"] == {"latent_dim": 3}


@pytest.mark.parametrize(
    "name, shape, layout, expected",
    [
        ("/d/x.npy", [10, 4, 20, 3], None, "channels-first"),  # read so before --layout
        ("/d/x.npz", [10, 3, 8, 8], None, "channels-first"),
        ("/d/x.npy", [10, 4, 20, 3], "channels-last", "channels-last"),
        ("/d/x.npy", [10, 8, 8], None, None),  # no channels
        ("images:/d", [10, 3, 8, 8], None, None),  # not an array file
        ("/d/x.npy", None, None, None),  # a new run, before its data are read
    ],
)
def test_a_run_s_4d_array_without_a_layout_reads_as_it_was_trained(name, shape, layout, expected):
    # tester FA: a run on [N, 4, 20, 3], made before --layout and read channels first then,
    # was refused as either layout on evaluate and resume, with no flag to say which
    provenance = None if shape is None else {"shape": shape, "checksum": "c"}
    assert DataConfig(name=name, provenance=provenance, layout=layout).layout == expected


def test_guide_options_round_trip_and_a_config_without_them_still_loads():
    """``--guide-opt`` (tester FI: a guide's own options could not be given from the command
    line): recorded as ``guide_options`` only where a run has some, so config.json files
    written before them, and runs without them, read and write as they did."""
    config = replace(small(), guide=GuideConfig("pyro_vae.guides:AmortizedIAF", {"num_flows": 3}))
    written = config.to_json()
    assert written["guide_options"] == {"num_flows": 3}
    assert RunConfig.from_json(json.loads(json.dumps(written))) == config
    assert "guide_options" not in small().to_json()
    assert RunConfig.from_json(small().to_json()).guide.options == {}
    with pytest.raises(ValueError, match="guide options: .* is not a mapping of option names"):
        GuideConfig("pyro_vae.guides:AmortizedIAF", [("num_flows", 3)])
    with pytest.raises(RunFolderError, match="'guide_options' must be an object"):
        RunConfig.from_json({**written, "guide_options": [3]})
