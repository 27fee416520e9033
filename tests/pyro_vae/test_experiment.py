"""Building an experiment from a RunConfig, loading a run folder, test metrics, figures."""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_vae.experiment as experiment
from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.experiment import (
    build,
    evaluate_test_set,
    interpolation_pairs,
    load,
    write_figures,
)
from pyro_vae.run_config import EstimatorConfig, GuideConfig, ModelConfig, RunConfig
from tests.pyro_vae.test_provenance import HELPER_MODEL_FILE, NETS

FIXTURES = Path(__file__).parents[1] / "fixtures"
SMALL = {"latent_dim": 2, "hidden_dims": [8]}


def no_guide_model(x):
    pass


def test_build_constructs_what_the_config_names_and_builds_the_estimator_once():
    config = RunConfig(ModelConfig("models.vae:VAE", SMALL), estimator=EstimatorConfig("trace"))
    exp = build(config)
    assert exp.config is config and isinstance(exp.elbo, Trace_ELBO)
    assert exp.model_arguments["latent_dim"] == 2 and exp.model_arguments["x_dim"] == 64
    assert exp.not_accepted == [] and exp.generative
    assert exp.data.info["dataset"] == "digits"
    assert callable(exp.guide)


class _NoImages:
    """A model class whose constructor takes neither image_shape nor arch."""

    def __init__(self, x_dim, latent_dim=2):
        self.x_dim = x_dim

    def __call__(self, x):
        pass


def test_the_image_shape_goes_only_to_models_that_take_it_with_arch_and_channels():
    conv = {**SMALL, "arch": "conv", "channels": [2, 4]}
    exp = build(RunConfig(ModelConfig("models.vae:VAE", conv), guide=GuideConfig(None)))
    assert exp.model_arguments["image_shape"] == (8, 8) and exp.not_accepted == []
    assert exp.model.arch == "conv" and exp.guide.trunk.out_features == 8
    iaf = GuideConfig("pyro_vae.guides:AmortizedIAF")
    exp = build(RunConfig(ModelConfig("models.vae:VAE", conv), guide=iaf))
    convs = [m for m in exp.guide.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2, 4]
    assert exp.guide.trunk.out_features == 8
    spec = f"{__name__}:_NoImages"
    plain = build(
        RunConfig(ModelConfig(spec, conv), guide=GuideConfig(f"{__name__}:no_guide_model"))
    )
    assert plain.model_arguments == {"x_dim": 64, "latent_dim": 2}
    assert plain.not_accepted == ["hidden_dims", "arch", "channels"]


def test_build_reports_standard_options_a_model_does_not_take():
    config = RunConfig(ModelConfig("pyro.infer.autoguide:AutoNormal", {"latent_dim": 2}))
    with pytest.raises(ValueError, match="model: pyro.infer.autoguide:AutoNormal rejected"):
        build(config)


class _UnpacksTheImageShape:
    """A user's model whose constructor has a fault of its own: it takes greyscale images
    only (tester BB: on RGB images ``h, w = image_shape`` said only "too many values to
    unpack (expected 2)", with no file or line)."""

    def __init__(self, x_dim, image_shape, latent_dim=2):
        if latent_dim < 1:
            raise ValueError(f"latent_dim: {latent_dim} is not a positive integer")
        h, w = image_shape + (3,)

    def __call__(self, x):
        pass


def test_a_fault_in_a_model_s_constructor_names_its_file_and_line():
    import inspect

    spec, guide = f"{__name__}:_UnpacksTheImageShape", GuideConfig(f"{__name__}:no_guide_model")
    lines, first = inspect.getsourcelines(_UnpacksTheImageShape.__init__)
    line = first + next(i for i, text in enumerate(lines) if "h, w =" in text)
    with pytest.raises(ValueError) as failed:
        build(RunConfig(ModelConfig(spec, SMALL), guide=guide))
    said = str(failed.value)
    assert said.startswith(f"model: {spec} failed in its constructor, given the options {{")
    assert "with ValueError: too many values to unpack" in said
    assert f"{__file__}, line {line}: h, w = image_shape + (3,)" in said
    # its own refusal of a value (a raise statement) is said as it is
    with pytest.raises(ValueError, match=r"^latent_dim: 0 is not a positive integer$"):
        build(RunConfig(ModelConfig(spec, {**SMALL, "latent_dim": 0}), guide=guide))


def _first_channel(image_shape):
    return image_shape[2]


class _IndexesTheImageShape:
    """A user's model whose constructor calls a helper with a fault: it reads a third
    dimension greyscale shapes lack (tester BF: the IndexError ended in a raw traceback)."""

    def __init__(self, x_dim, image_shape, latent_dim=2):
        self.channels = _first_channel(image_shape)

    def __call__(self, x):
        pass


def test_any_fault_in_a_model_s_constructor_is_said_in_one_line_with_its_place():
    import inspect

    spec, guide = f"{__name__}:_IndexesTheImageShape", GuideConfig(f"{__name__}:no_guide_model")
    lines, first = inspect.getsourcelines(_first_channel)
    with pytest.raises(ValueError) as failed:
        build(RunConfig(ModelConfig(spec, SMALL), guide=guide))
    said = str(failed.value)
    assert said.startswith(f"model: {spec} failed in its constructor, given the options {{")
    assert "with IndexError: tuple index out of range" in said
    assert f"{__file__}, line {first + 1}: return image_shape[2]" in said


def test_build_takes_a_run_config_only():
    with pytest.raises(TypeError, match="config: dict; expected a pyro_vae.run_config.RunConfig"):
        build({"model": "models.vae:VAE"})


def test_a_missing_guide_names_the_python_argument_not_a_flag():
    spec = f"{__name__}:no_guide_model"
    with pytest.raises(ValueError) as info:
        build(RunConfig(ModelConfig(spec), guide=GuideConfig(None)))
    message = str(info.value)
    assert "guide: none given" in message and "GuideConfig(spec=...)" in message
    assert "--" not in message and "CLI" not in message


def test_the_library_names_no_model_zoo():
    assert not hasattr(experiment, "DEFAULT_MODEL")
    assert not hasattr(experiment, "check_config")


@pytest.fixture
def fixture_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v1", run)
    return RunFolder(run)


def test_a_run_folder_of_version_1_loads_with_its_kept_weights(fixture_run):
    exp = load(fixture_run)
    assert exp.config.training.epochs == 2 and exp.config.model.options["latent_dim"] == 2
    state = fixture_run.load_checkpoint()
    decoder = dict(exp.model.named_parameters())
    for name, value in state["best"]["model"].items():
        if name in decoder:
            assert torch.equal(decoder[name].detach(), value)
    assert not exp.local_guide


def test_evaluate_test_set_and_figures_from_a_loaded_run(fixture_run):
    exp = load(fixture_run)
    test = evaluate_test_set(exp, ll_samples=5, ll_points=7)
    assert test["evaluated_on"] == "test set" and test["num_test"] == 180
    assert test["log_likelihood_samples"] == 5 and test["log_likelihood_points"] == 7
    assert test["elbo"] < 0 and test["latent_dim"] == 2
    # the VAE's Gaussian encoder against its N(0, I) prior has a closed-form KL; the
    # evaluation's is Monte Carlo over 10 draws per image, 180 images
    q = exp.guide.encode(exp.data.test_x)
    exact = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    # (1,800 draws of log q − log p); for q near the prior a draw's sd is about
    # √(2 KL) ≈ 0.4 nats, so the mean's standard error is ≈ 0.01: 4 of them
    assert abs(test["kl"] - exact.sum(-1).mean().item()) < 0.04
    history = fixture_run.read_metrics()["epochs"]
    paths, skipped = write_figures(exp, fixture_run, history, test, num_samples=4)
    assert {p.name for p in paths} == {
        "reconstructions.png",
        "samples.png",
        "elbo.png",
        "latent.png",
        "traversal.png",
        "interpolation.png",
    }
    assert skipped == {}


def test_interpolation_pairs_join_the_first_images_of_successive_labels():
    assert interpolation_pairs(torch.tensor([3, 3, 1, 1, 2])) == [(0, 2), (2, 4), (4, 0)]
    assert interpolation_pairs(torch.zeros(5), num=6) == [(0, 1), (2, 3)]
    assert interpolation_pairs(torch.arange(10), num=2) == [(0, 1), (1, 2)]


def test_load_refuses_weights_of_another_shape(fixture_run):
    import json

    path = fixture_run.file("config.json")
    config = json.loads(path.read_text())
    config["model_options"]["latent_dim"] = 5
    path.write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="does not fit"):
        load(fixture_run)


def test_load_takes_a_path_as_well_as_a_run_folder(tmp_path):
    from pyro_vae.experiment import load

    with pytest.raises(RunFolderError, match="is not a directory"):
        load(str(tmp_path / "absent"))


# --- learned priors: the VAE's prior="mog" / "vamp" through build, fit, load and the CLI ---

PRIOR_OPTIONS = {"mog": {"prior": "mog", "prior_components": 3}, "vamp": {"prior": "vamp"}}


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_a_learned_prior_survives_a_checkpoint_round_trip(prior, tmp_path):
    import pyro

    from pyro_vae.train import fit
    from pyro_vae.training_config import TrainingConfig

    training = TrainingConfig(epochs=1, progress=False, batch_size=256)
    model = ModelConfig("models.vae:VAE", {**SMALL, **PRIOR_OPTIONS[prior]})
    config = RunConfig(model, training=training)
    exp = build(config)
    run = RunFolder(tmp_path / "run")
    fit(exp.model, exp.guide, exp.data, exp.elbo, training, run,
        on_ready=lambda: run.write_config(config.to_json()))  # fmt: skip
    pyro.set_rng_seed(7)
    before = evaluate_test_set(exp, ll_samples=10, ll_points=20, elbo_samples=2)
    loaded = load(run)
    pyro.set_rng_seed(7)
    after = evaluate_test_set(loaded, ll_samples=10, ll_points=20, elbo_samples=2)
    for key in ("elbo", "log_likelihood", "kl", "active_units"):
        assert after[key] == before[key], key
    prior_weights = exp.model.learned_prior.state_dict()
    assert prior_weights  # the pseudo-inputs, or the mixture's locations, scales and logits
    for name, value in loaded.model.learned_prior.state_dict().items():
        assert torch.equal(value, prior_weights[name]), name
    if prior == "vamp":
        assert loaded.guide is loaded.model.tied_guide


def test_a_vamp_model_refuses_another_guide_and_takes_its_own_class():
    options = {**SMALL, "prior": "vamp", "prior_components": 3}
    other = GuideConfig("pyro_vae.guides:AmortizedIAF")
    with pytest.raises(ValueError) as info:
        build(RunConfig(ModelConfig("models.vae:VAE", options), guide=other))
    message = str(info.value)
    assert message.startswith("guide: pyro_vae.guides:AmortizedIAF, but model models.vae:VAE")
    assert "AmortizedNormal" in message and "change the prior" in message
    same = GuideConfig("pyro_vae.guides:AmortizedNormal")
    exp = build(RunConfig(ModelConfig("models.vae:VAE", options), guide=same))
    assert exp.guide is exp.model.tied_guide


@pytest.mark.parametrize("prior, components", [("mog", 4), ("vamp", 6)])
def test_the_command_line_fits_each_prior(prior, components, tmp_path):
    import json

    from pyro_vae.cli import main

    # ~3 s each, most of it the six figures; the recorded step is tested in test_vae.py
    run = tmp_path / prior
    argv = ["fit", "--epochs", "1", "--latent-dim", "3", "--hidden", "16", "--no-progress"]
    argv += ["--ll-samples", "10", "--compile", "off", "--out", str(run)]
    argv += ["--model-opt", f"prior={prior}", "--model-opt", f"prior_components={components}"]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_arguments"]["prior"] == prior
    assert metrics["model_arguments"]["prior_components"] == components
    test = metrics["test"]
    assert test["kl"] > -0.5 and test["log_likelihood"] > test["elbo"] - 1.0
    assert "skipped" not in test
    figures = {"reconstructions.png", "samples.png", "elbo.png", "latent.png", "traversal.png"}
    assert figures | {"interpolation.png"} <= {p.name for p in run.iterdir()}


def test_a_label_model_is_evaluated_on_its_test_labels_with_its_own_metrics():
    from models.cvae import CVAE
    from pyro_vae.data import load_data

    class Scored(CVAE):
        def label_metrics(self, guide, x, y):
            return {"test_label_mean": y.float().mean()}

    data = load_data("digits")
    config = RunConfig(ModelConfig("models.cvae:CVAE"))
    model = Scored(data.x_dim, num_classes=10, latent_dim=2, hidden_dims=(8,))
    exp = experiment.Experiment(config, data, model, model.make_guide(), Trace_ELBO())
    test = evaluate_test_set(exp, ll_samples=4, ll_points=10)
    assert test["test_label_mean"] == pytest.approx(data.test_y.float().mean().item())
    assert test["label_metrics"] == ["test_label_mean"] and test["conditioned_on_labels"]
    assert test["log_likelihood_points"] == 10 and test["num_test"] == 180
    assert test["log_likelihood"] > test["elbo"] - 1.0 and test["kl"] > 0  # K = 4 vs 10 draws
    assert set(test["skipped"]) == {"reconstruction_mse", "active_units"}
    assert experiment.num_classes(data) == 10

    class Clashing(CVAE):
        def label_metrics(self, guide, x, y):
            return {"elbo": 0.0}

    clash = Clashing(data.x_dim, num_classes=10, latent_dim=2, hidden_dims=(8,))
    exp = experiment.Experiment(config, data, clash, clash.make_guide(), Trace_ELBO())
    with pytest.raises(ValueError, match=r"label_metrics: the model's metrics \['elbo'\] would"):
        evaluate_test_set(exp, ll_samples=0, ll_points=None)


def test_labels_that_are_all_below_0_are_refused_as_labels_not_as_a_class_count(tmp_path):
    """Labels of −1 only (no class) were refused as "num_classes: 0 is not a positive
    integer", naming neither the labels nor the way out; nothing is written."""
    import numpy as np

    from pyro_vae.run_config import DataConfig

    rng = np.random.default_rng(0)
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=rng.random((60, 4)).astype("float32"), y=-np.ones(60, dtype="int64"))
    config = RunConfig(ModelConfig("models.cvae:CVAE", SMALL), data=DataConfig(str(path)))
    with pytest.raises(ValueError, match=r"labels: all 60 labels of the data are below 0"):
        build(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlabelled.npz"]


@pytest.mark.parametrize(
    "stray, refused", [(10**10, True), (1_000_000, True), (1000, True), (999, False)]
)
def test_a_label_far_beyond_the_labels_values_is_refused_before_any_model(tmp_path, stray, refused):
    """Tester FM: one label of 10¹⁰ in labels 0..9 (an ID, a typo) failed allocating 80 GB
    in a traceback; one of 10⁶ built a one-hot input a million wide without a word. The
    classes are the largest label plus one: 1,000 classes (labels up to 999) are taken
    whatever the labels hold, more only up to 10 times their distinct values (here 10)."""
    import numpy as np

    from pyro_vae.run_config import DataConfig

    rng = np.random.default_rng(0)
    y = np.arange(60, dtype="int64") % 10
    y[7] = stray
    path = tmp_path / "stray.npz"
    np.savez(path, x=rng.random((60, 4)).astype("float32"), y=y)
    config = RunConfig(ModelConfig("models.cvae:CVAE", SMALL), data=DataConfig(str(path)))
    if not refused:
        assert build(config).model_arguments["num_classes"] == 1000
        return
    expected = f"labels: a label of {stray} .* makes {stray + 1} classes, but the labels hold 11"
    with pytest.raises(ValueError, match=expected):
        build(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stray.npz"]


def test_build_draws_the_labelled_subset_and_names_its_config_fields():
    from pyro_vae.run_config import DataConfig

    config = RunConfig(ModelConfig("models.m2:M2", SMALL), data=DataConfig(labelled=20))
    exp = build(config)
    assert int(exp.data.train_observed.sum()) == 20 == exp.data.info["num_labelled"]
    cvae = build(RunConfig(ModelConfig("models.cvae:CVAE", SMALL)))
    assert cvae.model_arguments["num_classes"] == 10
    with pytest.raises(ValueError, match="labelled: 5; expected an integer between the 10"):
        build(RunConfig(ModelConfig("models.m2:M2", SMALL), data=DataConfig(labelled=5)))


def test_build_refuses_a_labelled_subset_for_a_model_without_labels_before_loading(monkeypatch):
    """The Python API refuses it as the CLI does (it would be recorded and never read),
    by its config field's name, before the data load."""
    from pyro_vae.run_config import DataConfig

    def no_load(*args, **kwargs):
        raise AssertionError("the data were loaded before the refusal")

    monkeypatch.setattr(experiment, "load_data", no_load)
    for field, value in (("labelled", 20), ("labels_fraction", 0.5)):
        config = RunConfig(ModelConfig("models.vae:VAE", SMALL), data=DataConfig(**{field: value}))
        with pytest.raises(ValueError, match=rf"^{field}: {value}, but models.vae:VAE uses no"):
            build(config)


# --- a model file's own helper modules: checksummed beside it, an edit refused ---


@pytest.fixture
def helper_run(tmp_path, request):
    """(run folder, helper file, its module name): a one-epoch run of a model file that
    imports a helper module beside it; the helper is taken out of sys.modules afterwards
    (modules are cached by name)."""
    import numpy as np

    from pyro_vae.cli import main

    name = f"helper_{request.node.name.removeprefix('test_')[:40]}"
    helper, code, data = tmp_path / f"{name}.py", tmp_path / "mine.py", tmp_path / "x.npy"
    helper.write_text(NETS)
    code.write_text(HELPER_MODEL_FILE.replace("prov_nets", name))
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    run = tmp_path / "run"
    fit = ["fit", "--model", f"{code}:Mine", "--data", str(data), "--likelihood", "gaussian"]
    try:
        fast = ["--epochs", "1", "--no-progress", "--ll-samples", "2"]
        assert main([*fit, *fast, "--out", str(run)]) == 0
        yield run, helper.resolve(), name
    finally:
        sys.modules.pop(name, None)


def test_a_helper_module_the_model_file_imports_is_checked_when_the_run_is_loaded(helper_run):
    from pyro_vae.provenance import CodeChangedError, file_sha256

    run, helper, name = helper_run
    recorded = RunFolder(run).read_config()["code"]
    assert set(recorded) == {"model", f"import:{name}"}
    assert recorded[f"import:{name}"] == {"file": str(helper), "sha256": file_sha256(helper)}
    assert load(run).config.code == recorded  # unchanged: loads
    helper.write_text(NETS.replace("dist.Laplace(", "dist.Normal("))  # the model file is not
    with pytest.raises(CodeChangedError) as info:
        load(run)
    message = str(info.value)
    assert message.startswith(
        f"module {name} (imported by the model's or guide's file): {helper} changed since the "
        f"run was trained (its bytes give {file_sha256(helper)}, config.json recorded "
        f"{recorded[f'import:{name}']['sha256']})"
    )
    assert "--allow-changed-code" in message and "allow_changed_code=True" in message
    assert load(run, allow_changed_code=True).config.code == recorded  # goes on


def test_a_run_recorded_before_imported_modules_compares_its_model_file_alone(helper_run):
    run, helper, name = helper_run
    folder = RunFolder(run)
    config = folder.read_config()
    del config["code"][f"import:{name}"]  # as a run written before this change recorded it
    folder.write_config(config)
    folder.save_checkpoint(folder.load_checkpoint())  # its checkpoint recorded the same
    helper.write_text(NETS.replace("dist.Laplace(", "dist.Normal("))
    assert load(run).config.code == {"model": config["code"]["model"]}
    del config["code"]  # a run from before checksums: nothing compared
    folder.write_config(config)
    folder.save_checkpoint(folder.load_checkpoint())
    load(run)


class _RawProbabilities(torch.nn.Module):
    """p(z) p(x | z) whose Bernoulli takes a linear layer's raw output as probabilities
    (not checked: validate_args=False), so drawing x, as samples.png does, raises."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 64)

    def forward(self, x):
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            probs = self.net(z) + 5.0
            pyro.sample("x", dist.Bernoulli(probs=probs, validate_args=False).to_event(1), obs=x)


def test_a_figure_that_raises_is_skipped_with_its_reason_and_the_others_are_made(fixture_run):
    # tester: RuntimeError "Expected p_in >= 0 && p_in <= 1" from samples.png ended the
    # fit after training and the test block, and no later figure was made
    pyro.set_rng_seed(0)
    exp = load(fixture_run)
    bad = replace(exp, model=_RawProbabilities())
    history = fixture_run.read_metrics()["epochs"]
    paths, skipped = write_figures(bad, fixture_run, history, {}, num_samples=4)
    assert {p.name for p in paths} == {"reconstructions.png", "elbo.png", "latent.png"}
    expected = "RuntimeError: Expected p_in >= 0 && p_in <= 1 to be true, but got false."
    assert skipped["samples.png"] == expected  # one line: torch's plea for reports left off
    assert "decode(z)" in skipped["traversal.png"]  # what the model cannot give, as before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # never swallowed
        write_figures(replace(exp, model=interrupted), fixture_run, history, {}, num_samples=4)


def test_changed_data_of_another_width_are_refused_naming_the_widths_and_columns(tmp_path):
    """Tester CC: a table with a column dropped (or an .npz of wider rows), read with
    --allow-changed-data, was refused as a state_dict size mismatch; the message now names
    the widths and the columns gone and new (expected: the table written here)."""
    import numpy as np
    import pandas as pd

    from pyro_vae.cli import main

    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(60, 4)), columns=["a", "b", "c", "d"])
    table.to_csv(tmp_path / "t.csv", index=False)
    run = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path / "t.csv"), "--likelihood", "normal", "--epochs",
            "1", "--out", str(run), "--latent-dim", "2", "--hidden", "8", "--no-progress",
            "--ll-samples", "5"]  # fmt: skip
    assert main(argv) == 0
    wider = table.drop(columns=["b"]).assign(e=1.0 + table.a, f=table.c)
    wider.to_csv(tmp_path / "t.csv", index=False)
    # a column gone is said first, by name (tester CR: renamed ones were read in its place)
    message = r"no longer has the run's feature columns \['b'\] \(its columns now: a, c, d, e, f\)"
    with pytest.raises(ValueError, match=message):
        load(run, allow_changed_data=True)
    table.to_csv(tmp_path / "t.csv", index=False)  # the width it was trained on: scored
    assert load(run, allow_changed_data=True).data.x_dim == 4


@pytest.mark.parametrize(
    ("option", "refusal"),
    [
        # tester CJ: a Gaussian density on data binarized for Bernoulli, 23 nats "better"
        ({"likelihood": "gaussian"}, "likelihood='gaussian' for models.vae:VAE, but the data "
         r"give likelihood='bernoulli' \(--likelihood"),
        # tester CJ: 8x8 digits read as 4x16 images by a conv network
        ({"arch": "conv", "channels": [4], "image_shape": [4, 16]}, r"image_shape=\[4, 16\] .* "
         r"the data give image_shape=\(8, 8\)"),
        ({"x_dim": 63}, "x_dim=63 .* the data give x_dim=64"),
    ],
)  # fmt: skip
def test_a_model_option_that_contradicts_the_data_is_refused(option, refusal):
    with pytest.raises(ValueError, match=rf"model_options: {refusal}"):
        build(RunConfig(ModelConfig("models.vae:VAE", {**SMALL, **option})))
    # the data's own values, given again, stand
    same = {"likelihood": "bernoulli", "image_shape": [8, 8], "x_dim": 64}
    exp = build(RunConfig(ModelConfig("models.vae:VAE", {**SMALL, **same})))
    assert exp.model_arguments["image_shape"] == (8, 8)


def test_a_label_model_of_more_classes_than_the_data_samples_and_notes_them_all():
    """Tester CK: num_classes=12 on digits' 10 classes trained unsaid, and ``sample``
    cycled through 10 of the model's 12 classes."""
    exp = build(RunConfig(ModelConfig("models.cvae:CVAE", {**SMALL, "num_classes": 12})))
    assert exp.model_arguments["num_classes"] == 12 == experiment.model_classes(exp)
    assert exp.data.info["untrained_classes"] == {"classes": ["10", "11"], "of": 12}
    drawn = []
    exp.model.generate_given = lambda y: drawn.append(y.tolist()) or torch.zeros(len(y), 64)
    experiment.label_samples(exp, 14)
    assert drawn == [[*range(12), 0, 1]]
    assert "untrained_classes" not in build(RunConfig(ModelConfig("models.cvae:CVAE"))).data.info


def test_a_pyro_autoguide_named_by_spec_is_given_only_the_options_it_names():
    """AutoIAFNormal's ``**kwargs`` are its transforms': given every standard option there,
    it failed in functools' words ("multiple values for keyword argument 'hidden_dims'",
    tester DH); it is built on the model, as AutoNormal is."""
    from pyro.infer.autoguide import AutoIAFNormal

    config = RunConfig(
        ModelConfig("models.vae:VAE", SMALL),
        guide=GuideConfig("pyro.infer.autoguide:AutoIAFNormal"),
    )
    exp = build(config)
    assert isinstance(exp.guide, AutoIAFNormal) and exp.guide.model is not None


@pytest.mark.parametrize(
    "given, expected",
    [("init_to_mean", "init_to_mean"),
     ("pyro.infer.autoguide.initialization:init_to_median", "init_to_median")],
)  # fmt: skip
def test_an_autoguide_s_init_strategy_is_given_by_name(given, expected):
    """Tester FL: JSON holds no function, and ``--guide-opt init_loc_fn='"init_to_mean"'``
    failed at the first step in Pyro ("'str' object is not callable"); the name is Pyro's
    strategy now, and one that is no strategy is refused before anything is built."""
    from pyro.infer.autoguide import AutoNormal, initialization

    config = RunConfig(
        ModelConfig("models.vae:VAE", SMALL),
        guide=GuideConfig("pyro.infer.autoguide:AutoNormal", {"init_loc_fn": given}),
    )
    guide = build(config).guide
    assert isinstance(guide, AutoNormal)
    assert guide.init_loc_fn is getattr(initialization, expected)


@pytest.mark.parametrize("given", ["init_to_bogus", 3])
def test_an_init_strategy_that_is_none_is_refused_by_name(given):
    config = RunConfig(
        ModelConfig("models.vae:VAE", SMALL),
        guide=GuideConfig("pyro.infer.autoguide:AutoNormal", {"init_loc_fn": given}),
    )
    with pytest.raises(ValueError, match=f"^guide options: init_loc_fn {given!r}; expected"):
        build(config)


def test_changed_data_read_their_labels_by_the_run_s_class_names(tmp_path):
    """Tester EM: labels are indices into a table's class names sorted, and read with
    --allow-changed-data a class gone (or renamed) moved the others', so a CVAE was scored
    under another class's condition with no note. The classes are read by name now; a
    class the run never trained is refused by name."""
    import numpy as np
    import pandas as pd

    from pyro_vae.cli import main

    rng = np.random.default_rng(0)
    kinds = np.repeat(["alpha", "beta", "gamma"], 30)
    offset = {"alpha": -10.0, "beta": 0.0, "gamma": 10.0}
    table = pd.DataFrame(rng.normal(size=(90, 3)), columns=["f", "g", "h"]).assign(type=kinds)
    table["f"] += [offset[k] for k in kinds]  # f tells each row's class
    table.to_csv(tmp_path / "t.csv", index=False)
    run = tmp_path / "run"
    argv = ["fit", "--model", "models.cvae:CVAE", "--data", str(tmp_path / "t.csv"),
            "--label-column", "type", "--likelihood", "normal", "--epochs", "1", "--out",
            str(run), "--latent-dim", "2", "--hidden", "8", "--no-progress", "--ll-samples",
            "0"]  # fmt: skip
    assert main(argv) == 0
    table[table.type != "alpha"].to_csv(tmp_path / "t.csv", index=False)
    data = load(run, allow_changed_data=True).data
    assert data.info["classes"] == ["alpha", "beta", "gamma"]
    splits = ((data.train_x, data.train_y), (data.val_x, data.val_y), (data.test_x, data.test_y))
    for x, y in splits:
        # beta's f is standardized below gamma's: beta is still class 1, gamma class 2
        assert set(y.tolist()) == {1, 2}
        middle = (x[y == 1, 0].max() + x[y == 2, 0].min()) / 2
        assert torch.equal(y, torch.where(x[:, 0] > middle, 2, 1))
    table.assign(type=table.type.replace("alpha", "zeta")).to_csv(tmp_path / "t.csv", index=False)
    message = r"now holds the classes \['zeta'\], where the run was trained on the classes"
    with pytest.raises(ValueError, match=message):
        load(run, allow_changed_data=True)


def test_a_label_model_offered_too_few_classes_by_the_data_is_told_where_they_came_from(
    tmp_path,
):
    """Tester EM: M2 on a label column of one class said "num_classes: 1; expected an
    integer >= 2", a number the user never gave."""
    import numpy as np
    import pandas as pd

    from pyro_vae.run_config import DataConfig

    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(40, 3)), columns=["f", "g", "h"]).assign(type="one")
    table.to_csv(tmp_path / "t.csv", index=False)
    data = DataConfig(str(tmp_path / "t.csv"), likelihood="normal", label_column="type")
    config = RunConfig(ModelConfig("models.m2:M2", SMALL), data=data)
    words = r"num_classes: 1; expected an integer >= 2: the labels of .*t.csv hold 1 class \(one\)"
    with pytest.raises(ValueError, match=words):
        build(config)


def test_a_guide_class_with_arguments_of_its_own_says_how_to_give_them():
    """Tester FI: LocalNormal named by spec failed with Python's "missing 2 required
    positional arguments: 'loc' and 'scale'" alone; the refusal now lists what a guide
    class is given and the way out (a subclass setting the rest)."""
    config = RunConfig(
        ModelConfig("models.vae:VAE", SMALL), guide=GuideConfig("pyro_vae.guides:LocalNormal")
    )
    with pytest.raises(ValueError) as info:
        build(config)
    message = str(info.value)
    assert "missing 2 required positional arguments: 'loc' and 'scale'" in message
    assert "latent_dim" in message and "x_dim" in message and "--guide-opt KEY=VALUE" in message


def test_guide_options_reach_the_guide_over_the_standard_ones_and_others_are_refused():
    """``GuideConfig(spec, options)`` (``--guide-opt``): the guide's own arguments, which win
    over the standard ones (an encoder of its own widths); an argument the class does not
    name is refused listing those it does, and options with no guide class to take them
    are refused, each before anything is built."""
    iaf = "pyro_vae.guides:AmortizedIAF"
    own = {"num_flows": 3, "flow_hidden_dims": [24], "hidden_dims": [12]}
    exp = build(RunConfig(ModelConfig("models.vae:VAE", SMALL), guide=GuideConfig(iaf, own)))
    assert exp.guide.num_flows == 3 and exp.guide.flow_hidden_dims == (24,)
    assert exp.guide.trunk[0].out_features == 12  # not the model's widths reversed
    refusals = [
        (GuideConfig(iaf, {"nflows": 3}), r"guide options: \['nflows'\] are not arguments of "
         r"pyro_vae.guides:AmortizedIAF; expected some of x_dim, latent_dim, .*num_flows"),
        (GuideConfig(None, {"num_flows": 3}), "no guide is named, so nothing takes them"),
        (GuideConfig(iaf, {"x_dim": 10}), r"\['x_dim'\] are set by the run from its model"),
        (GuideConfig(f"{__name__}:no_guide_model", {"num_flows": 3}), "is not a class"),
    ]  # fmt: skip
    for guide, refusal in refusals:
        with pytest.raises(ValueError, match=refusal):
            build(RunConfig(ModelConfig("models.vae:VAE", SMALL), guide=guide))
