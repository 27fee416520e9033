"""The run a ``fit`` command line describes: the options it records, the model constructor's
own defaults, the step recorded or not, and the notes on the defaults it chose."""

import pytest

from models.vae import VAE
from pyro_vae.cli_config import _note_none_defaults, run_config_from_args, should_compile
from pyro_vae.cli_parser import build_parser


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--estimator", "score", "--estimator-opt", "num_particles=4"], True),
        (["--estimator", "score", "--estimator-opt", "control_variate=ema"], False),
        (["--estimator", "tracegraph"], False),
        (["--kl-warmup", "2"], False),
        (["--compile", "off"], False),
        (["--model", "my_model.py:Model"], False),
        (["--model", "my_model.py:Model", "--compile", "on"], True),
        (["--compile", "inductor"], True),
    ],
)
def test_compile_is_automatic_for_shipped_models_and_stateless_estimators(argv, expected, capsys):
    class Model:  # a user's model: declares nothing
        def model(self, x):
            pass

    args = build_parser().parse_args(["fit", "--out", "runs/x", *argv])
    config = run_config_from_args(args)
    model = VAE if args.model == "models.vae:VAE" else Model().model
    assert should_compile(args, config.estimator.build(), model, None) is expected
    assert config.training.compile_backend == ("inductor" if "inductor" in argv else None)
    # tester EY: where auto does not record, a note says why; nothing where it was asked
    noted = capsys.readouterr().out
    if args.compile == "auto" and not expected:
        assert noted.startswith("note: --compile auto trains this run's steps unrecorded: ")
        assert ("recordable = True" in noted) == (args.model != "models.vae:VAE")
    else:
        assert noted == ""


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        (["--estimator", "iwae", "--gradient", "dreg"], {"gradient": "dreg"}),
        (["--gradient", "stl", "--compile", "on"], {"gradient": "stl"}),
        (["--estimator", "iwae"], {}),  # no --gradient: config.json as before, today's gradient
    ],
)
def test_fit_gradient_goes_into_the_estimator_options(tmp_path, flags, options):
    args = build_parser().parse_args(["fit", "--out", str(tmp_path / "r"), *flags])
    config = run_config_from_args(args)
    assert config.to_json()["estimator"]["options"] == options
    config.estimator.build()  # the estimator takes the option


def test_a_model_s_own_constructor_defaults_stand_where_the_flags_are_left_out(tmp_path):
    """Tester P: a user's class with latent_dim=3, hidden_dims=(7,), activation="relu"
    received the command's 20, [400] and softplus, silently. Flags left out now leave the
    class's own defaults; a flag given still wins, and config.json records what was passed."""
    source = tmp_path / "mine.py"
    source.write_text(
        "class Mine:\n"
        "    def __init__(self, x_dim, latent_dim=3, hidden_dims=(7,), activation='relu'):\n"
        "        pass\n"
        "class Bare:\n"
        "    def __init__(self, x_dim, latent_dim, hidden_dims, activation=None):\n"
        "        pass\n"
        "class Typed:\n"
        "    def __init__(self, x_dim, latent_dim=3, activation=type):\n"
        "        pass\n"
    )

    def options(*flags):
        args = build_parser().parse_args(["fit", "--out", str(tmp_path / "r"), *flags])
        return run_config_from_args(args).model.options

    mine = f"{source}:Mine"
    assert options("--model", mine) == {"latent_dim": 3, "hidden_dims": [7], "activation": "relu"}
    assert options("--model", mine, "--latent-dim", "5", "--hidden", "9", "9")["latent_dim"] == 5
    assert options("--model", mine, "--hidden", "9", "9")["hidden_dims"] == [9, 9]
    # no default of its own (or None): the command's
    bare = {"latent_dim": 20, "hidden_dims": [400], "activation": "softplus"}
    assert options("--model", f"{source}:Bare") == bare
    assert options() == bare  # models.vae:VAE, whose own defaults are the command's
    # a default config.json cannot hold (activation=nn.Tanh; tester Q's crash): not passed
    assert options("--model", f"{source}:Typed") == {"latent_dim": 3, "hidden_dims": [400]}


def test_a_user_s_none_default_replaced_by_the_command_s_is_noted(tmp_path, capsys, monkeypatch):
    """Tester Q: a constructor default of None ("my own choice") received the command's
    default with no word; now a note names it, and the flag that chooses."""
    source = tmp_path / "mine.py"
    source.write_text(
        "class Mine:\n    def __init__(self, x_dim, latent_dim=3, activation=None):\n        pass\n"
    )

    def noted(spec, *flags, options=None):
        args = build_parser().parse_args(["fit", "--out", str(tmp_path / "r"), *flags])
        _note_none_defaults(args, spec, options or {"latent_dim": 3, "activation": "softplus"})
        return capsys.readouterr().out

    out = noted(f"{source}:Mine")
    assert "defaults activation to None, and received the command's activation='softplus'" in out
    assert "give --activation to choose" in out and "latent_dim" not in out
    assert noted(f"{source}:Mine", "--activation", "relu") == ""
    assert noted(f"{source}:Mine", "--model-opt", "activation=relu") == ""
    assert noted("models.vae:VAE") == ""  # the shipped models' None is the command's default
    monkeypatch.setenv("RANK", "1")  # one rank says it (tester BK: each rank of --nproc 2)
    assert noted(f"{source}:Mine") == ""
    monkeypatch.setenv("RANK", "0")
    assert "defaults activation to None" in noted(f"{source}:Mine")


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        # tester CJ: trained with 5 latent dimensions, unsaid
        (["--latent-dim", "4", "--model-opt", "latent_dim=5"], "latent_dim=5 disagrees with "
         "--latent-dim 4"),
        (["--hidden", "16", "--model-opt", "hidden_dims=[32]"], "disagrees with --hidden [16]"),
        # tester CK: the last of two values won, unsaid
        (["--model-opt", "width=3", "--model-opt", "width=4"], "--model-opt: width is given "
         "twice, as 3 and 4"),
        (["--estimator-opt", "num_particles=2", "--estimator-opt", "num_particles=3"],
         "--estimator-opt: num_particles is given twice, as 2 and 3"),
        # tester CO: both recorded, contradicting each other
        (["--vectorize-particles", "off", "--estimator-opt", "vectorize_particles=true"],
         "vectorize_particles=True disagrees with --vectorize-particles off"),
    ],
)  # fmt: skip
def test_an_option_given_two_values_is_refused(tmp_path, flags, refusal):
    args = build_parser().parse_args(["fit", "--out", str(tmp_path / "r"), *flags])
    with pytest.raises(ValueError, match=refusal.replace("[", r"\[").replace("]", r"\]")):
        run_config_from_args(args)


def test_an_option_given_twice_with_one_value_stands(tmp_path):
    flags = ["--latent-dim", "4", "--model-opt", "latent_dim=4", "--hidden", "16", "8",
             "--model-opt", "hidden_dims=[16, 8]", "--estimator-opt", "num_particles=2",
             "--estimator-opt", "num_particles=2"]  # fmt: skip
    args = build_parser().parse_args(["fit", "--out", str(tmp_path / "r"), *flags])
    config = run_config_from_args(args)
    assert config.model.options["latent_dim"] == 4
    assert config.model.options["hidden_dims"] == [16, 8]
    assert config.estimator.options == {"num_particles": 2}


def test_what_a_model_file_draws_at_import_follows_the_seed(tmp_path, monkeypatch):
    """Tester CJ: a file's module-level networks (``enc = nn.Linear(64, 4)``) ran before
    the seed was set, and two runs of seed 0 differed in every such weight."""
    import sys

    import torch

    from pyro_vae.spec import _module_name, executed_module

    path = tmp_path / "module_level.py"
    path.write_text("import torch\nW = torch.randn(3)\n\nclass M:\n    def __init__(self, x_dim):\n"
                    "        pass\n")  # fmt: skip
    for seed in (0, 3, 0):
        monkeypatch.delitem(sys.modules, _module_name(path.resolve()), raising=False)
        torch.manual_seed(1000 + seed)  # whatever ran before
        argv = ["fit", "--model", f"{path}:M", "--seed", str(seed), "--out", str(tmp_path / "r")]
        run_config_from_args(build_parser().parse_args(argv))
        torch.manual_seed(seed)
        assert torch.equal(executed_module(path.resolve()).W, torch.randn(3))


def test_guide_opt_is_recorded_and_given_twice_is_refused():
    """``--guide-opt KEY=VALUE`` (JSON values) goes to the run's guide options; a key given
    twice with two values is refused, as for ``--model-opt``."""
    parse = build_parser().parse_args
    guide = ["--guide", "pyro_vae.guides:AmortizedIAF"]
    args = parse(["fit", "--out", "r", *guide, "--guide-opt", "num_flows=3",
                  "--guide-opt", "flow_hidden_dims=[40]"])  # fmt: skip
    assert run_config_from_args(args).guide.options == {"num_flows": 3, "flow_hidden_dims": [40]}
    args = parse(["fit", "--out", "r", *guide, "--guide-opt", "num_flows=2",
                  "--guide-opt", "num_flows=3"])  # fmt: skip
    with pytest.raises(ValueError, match="--guide-opt: num_flows is given twice, as 2 and 3"):
        run_config_from_args(args)
