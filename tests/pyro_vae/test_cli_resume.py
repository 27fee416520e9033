"""What ``fit --resume`` may change, and the processes each stretch of epochs trained on."""

from dataclasses import replace

import pytest

from pyro_vae.cli_parser import build_parser
from pyro_vae.cli_resume import (
    _effective,
    _refuse_unknown_resume_flags,
    _settings_of,
    processes_by_epoch_record,
)
from pyro_vae.guides import AmortizedIAF
from pyro_vae.run_config import GuideConfig, ModelConfig, RunConfig


def test_metrics_record_the_processes_of_each_stretch_of_epochs():
    # tester AA: metrics.json's processes said 1 for a run trained on 2 and resumed on 1
    fresh = processes_by_epoch_record({}, 2)
    assert fresh == [{"from_epoch": 1, "processes": 2}]
    two_epochs = {"epochs": [{}, {}], "processes": 2, "processes_by_epoch": fresh}
    assert processes_by_epoch_record(two_epochs, 2) == fresh  # resumed on as many: one stretch
    resumed = processes_by_epoch_record(two_epochs, 1)
    assert resumed == [*fresh, {"from_epoch": 3, "processes": 1}]
    older = {"epochs": [{}, {}, {}], "processes": 2}  # written before the record: its processes
    assert processes_by_epoch_record(older, 1) == [
        {"from_epoch": 1, "processes": 2},
        {"from_epoch": 4, "processes": 1},
    ]


def test_a_flag_a_resume_can_neither_change_nor_compare_is_refused_by_name():
    with pytest.raises(ValueError, match="resume: --restart cannot change a run being resumed"):
        _refuse_unknown_resume_flags({"--resume", "--epochs", "--restart"})
    _refuse_unknown_resume_flags({"--resume", "--epochs", "--lr", "--model-opt"})  # compared
    _refuse_unknown_resume_flags({"--resume", "--guide-opt"})  # compared too


def test_an_option_flag_decides_the_settings_of_the_keys_it_gives():
    args = build_parser().parse_args(
        ["fit", "--resume", "r", "--model-opt", "latent_dim=4", "--estimator-opt", "cv=ema",
         "--guide-opt", "num_flows=3"]
    )  # fmt: skip
    assert _settings_of("--model-opt", args) == ["model_options.latent_dim"]
    assert _settings_of("--guide-opt", args) == ["guide_options.num_flows"]
    assert _settings_of("--estimator-opt", args) == ["estimator.options.cv"]
    assert _settings_of("--compile", args) == ["train.compile", "train.compile_backend"]


def test_settings_are_compared_as_the_run_uses_them(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text(
        "class Own:\n    def __init__(self, x_dim, latent_dim=3):\n        pass\n"
        "class Bare:\n    def __init__(self, x_dim, latent_dim):\n        pass\n"
    )
    own = RunConfig(ModelConfig(f"{source}:Own"))
    bare = RunConfig(ModelConfig(f"{source}:Bare"))
    # left unset: the constructor's own default, else the command's
    assert _effective("model_options.latent_dim", None, own, None) == 3
    assert _effective("model_options.latent_dim", None, bare, None) == 20
    assert _effective("model_options.hidden_dims", None, bare, None) == [400]
    # one width is a list of one; a tuple, a list
    assert _effective("model_options.hidden_dims", 16, own, None) == [16]
    assert _effective("model_options.channels", (8, 4), own, None) == [8, 4]
    assert _effective("train.data_plate", None, own, "data") == "data"  # the plate found
    assert _effective("train.lr", 0.5, own, "data") == 0.5
    # a guide option left unset is its class's default (tester FL: --guide-opt num_flows=2
    # on a run of the IAF's default 2 flows was refused as a change from None)
    iaf = RunConfig(ModelConfig(f"{source}:Own"), guide=GuideConfig("pyro_vae.guides:AmortizedIAF"))
    assert _effective("guide_options.num_flows", None, iaf, None) == 2
    assert _effective("guide_options.flow_hidden_dims", 12, iaf, None) == [12]
    # one made from the run's latent size (tester FL: flow_hidden_dims=[200] on a run of
    # latent_dim 20, whose flows have 10·20 = 200, was refused as a change from None)
    sized = replace(iaf, model=ModelConfig(f"{source}:Own", {"latent_dim": 7}))
    assert _effective("guide_options.flow_hidden_dims", None, sized, None) == [70]
    assert AmortizedIAF(5, 7).flow_hidden_dims == (70,)  # what the guide builds


def test_a_standard_flag_the_model_does_not_take_is_noted_on_resume_as_on_a_new_run(
    tmp_path, capsys
):
    """Tester CZ: ``--latent-dim`` on a resume of a model whose constructor takes ``z_dim``
    (no ``latent_dim``) was refused as changing "the run's None (its default, 20)", a size
    the run never had; a new run given it says it was not passed. Expected: the same note,
    and the resume goes on (the flag changes nothing)."""
    from pathlib import Path

    import numpy as np

    from pyro_vae.cli import main

    data = tmp_path / "x.npy"
    np.save(data, (np.random.default_rng(0).random((40, 16)) < 0.3).astype(np.float32))
    example = f"{Path(__file__).parents[1] / 'examples' / 'pyro_style_vae.py'}:PyroStyleVAE"
    run = tmp_path / "run"
    fit = ["fit", "--data", str(data), "--model", example, "--model-opt", "z_dim=2"]
    quick = ["--no-progress", "--ll-samples", "0"]
    assert main([*fit, *quick, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["fit", "--resume", str(run), "--latent-dim", "5", "--epochs", "2", *quick]) == 0
    out = capsys.readouterr().out
    assert f"note: --latent-dim was not passed to {example}" in out
    assert "'latent_dim' argument, and goes unused by the resumed run" in out


def test_a_function_model_s_resume_notes_a_standard_flag_it_never_takes(tmp_path, capsys):
    """Tester DC: a function model with a ``latent_dim`` parameter is given no options, so
    ``--latent-dim 5`` never reached it; its resume, given the same flag, was refused as
    changing "the run's None (its default, 4)". Expected: noted, and the resume goes on."""
    from pathlib import Path

    import numpy as np

    from pyro_vae.cli import main

    examples = Path(__file__).parents[1] / "examples"
    code = tmp_path / "fm.py"
    code.write_text(
        f"import sys\nsys.path.insert(0, {str(examples)!r})\nimport pyro_style_vae as p\n"
        "def model(x, latent_dim=4):\n    return p.model(x)\nguide = p.guide\n"
    )
    data = tmp_path / "x.npy"
    np.save(data, (np.random.default_rng(0).random((40, 64)) < 0.3).astype(np.float32))
    run, quick = tmp_path / "run", ["--no-progress", "--ll-samples", "0"]
    fit = ["fit", "--data", str(data), "--model", f"{code}:model", "--guide", f"{code}:guide"]
    assert main([*fit, "--latent-dim", "5", "--epochs", "1", *quick, "--out", str(run)]) == 0
    said = f"--latent-dim was not passed to {code}:model, a function, given no options"
    assert said in capsys.readouterr().out  # a new run's note says so too
    assert main(["fit", "--resume", str(run), "--latent-dim", "5", "--epochs", "2", *quick]) == 0
    assert f"--latent-dim was not passed to {code}:model, a function, given no options" in (
        capsys.readouterr().out
    )
