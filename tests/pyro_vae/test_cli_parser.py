"""The ``pyro-vae`` command line: its flags, its one-line refusals, the flags typed, and the
checks of the flags' values before any work."""

import pytest

from pyro_vae.cli_parser import DESCRIPTION, build_parser, check_counts, given_flags


def test_the_flags_typed_after_the_command_are_what_a_resume_compares():
    argv = ["fit", "--epochs=3", "--out", "runs/x", "--hidden", "8", "8", "--no-progress"]
    assert given_flags(argv) == {"--epochs", "--out", "--hidden", "--no-progress"}
    assert given_flags(["--version"]) == set()  # the command itself is not a flag


def test_a_bad_command_line_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["fit", "--out", "runs/x", "--epochs", "three"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == (
        "pyro-vae fit: error: argument --epochs: invalid int value: 'three' "
        "(see pyro-vae fit --help)\n"
    )


def test_the_help_shows_the_usage_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for example in DESCRIPTION.splitlines()[2:]:
        assert example in out


def test_fit_flags_keep_their_defaults_where_left_out():
    args = build_parser().parse_args(["fit", "--out", "runs/x"])
    assert args.model == "models.vae:VAE" and args.epochs is None and args.latent_dim is None
    assert args.estimator_opt == [] and args.model_opt == [] and args.nproc == 1
    options = build_parser().parse_args(
        ["fit", "--out", "r", "--model-opt", "k=[1, 2]", "--estimator-opt", "cv=ema"]
    )
    assert options.model_opt == [("k", [1, 2])]  # a JSON value
    assert options.estimator_opt == [("cv", "ema")]  # else the text as it is


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--out", "r", "--batch-size", "0"], "--batch-size: 0 is not a positive integer"),
        (["fit", "--out", "r", "--nproc", "0"], "--nproc: 0 is not a positive integer"),
        (["fit", "--out", "r", "--levels", "1"], "--levels: 1"),
        (["fit", "--out", "r", "--lr", "0"], "--lr: 0.0"),
        (["evaluate", "run", "--ll-samples", "-1"], "--ll-samples: -1 is not a non-negative"),
        (["diagnose", "run", "--samples", "20"], "--samples: 20 is not an integer ≥ 21"),
        # tester DM: NumPy's "Seed must be between 0 and 2**32 - 1", no flag named, after
        # the run had loaded
        *(
            ([command, "run", "--seed", str(seed)], f"--seed: {seed} is ")
            for command in ("evaluate", "sample", "diagnose", "amortization-gap")
            for seed in (-1, 2**32)
        ),
        (["fit", "--out", "r", "--seed", str(2**32)], "--seed: 4294967296 is above 2\\*\\*32 - 1"),
    ],
)
def test_a_count_out_of_range_is_refused_by_its_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        check_counts(build_parser().parse_args(argv))


def test_counts_in_range_pass():
    check_counts(build_parser().parse_args(["diagnose", "run", "--samples", "21", "--points", "0"]))
    check_counts(build_parser().parse_args(["evaluate", "run", "--seed", str(2**32 - 1)]))
