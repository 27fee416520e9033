"""``pyro-vae evaluate``: what it says when its numbers replace those the run had saved."""

from pyro_vae.cli_evaluate import _redrawn, _replaced_estimate


def test_a_log_likelihood_of_other_draws_or_rows_is_named_with_the_one_it_replaced():
    saved = {"elbo": -90.0, "log_likelihood": -85.0, "log_likelihood_samples": 50,
             "log_likelihood_points": 180}  # fmt: skip
    fewer = {**saved, "log_likelihood_samples": 7, "log_likelihood_points": 20}
    assert _replaced_estimate(saved, fewer) == "K=7 over 20 rows, where it was K=50 over 180 rows"
    assert _replaced_estimate(saved, dict(saved)) == ""  # the same K and rows
    assert _replaced_estimate({"elbo": -90.0}, fewer) == ""  # nothing saved to replace


def test_other_draws_at_the_same_settings_are_named_by_the_elbo_first():
    # the others that moved are named too (the note named the first alone)
    saved = {"elbo": -24.946, "kl": 3.0, "mse": 0.5, "seconds": 1.5, "active_units": 4}
    again = {"elbo": -24.938, "kl": 3.1, "mse": 0.5, "seconds": 2.5, "active_units": 4}
    assert _redrawn(saved, again) == "test elbo -24.938, where it was -24.946; kl moved too"
    assert _redrawn(saved, {**again, "mse": 0.25}) == (
        "test elbo -24.938, where it was -24.946; kl, mse moved too"
    )
    # only the wall time differs: the same numbers
    assert _redrawn(saved, {**saved, "seconds": 9.0}) == ""
    # no ELBO among the numbers that differ: the first such key, sorted
    assert _redrawn({"kl": 3.0, "mse": 0.5}, {"kl": 2.0, "mse": 0.25}) == (
        "test kl 2, where it was 3; mse moved too"
    )


def test_the_figures_that_moved_beside_a_replaced_log_likelihood_are_named_too():
    # tester EW: with another K the note named log p(x) alone; the KL had moved 23%
    saved = {"elbo": -90.0, "kl": 0.0802, "log_likelihood": -85.0,
             "log_likelihood_samples": 10, "log_likelihood_points": 180}  # fmt: skip
    more = {**saved, "kl": 0.0986, "log_likelihood": -84.9, "log_likelihood_samples": 20}
    assert _redrawn(saved, more, skip=("log_likelihood", "log_likelihood_samples")) == (
        "test kl 0.0986, where it was 0.0802"
    )


def test_nan_results_on_changed_data_are_explained(tmp_path, monkeypatch, capsys):
    """Tester CR: a table shifted 500 of its sds scored a test ELBO of nan, unexplained.
    The networks' overflow is stood in for by an evaluation whose ELBO is NaN."""
    import pyro_vae.cli_evaluate as cli_evaluate
    from pyro_vae.cli import main
    from tests.pyro_vae.test_cli_analysis import fit_on_npy

    run, change = fit_on_npy(tmp_path)
    change()  # other rows
    real = cli_evaluate.evaluate_test_set

    def nan_elbo(*args, **kwargs):
        return {**real(*args, **kwargs), "elbo": float("nan")}

    monkeypatch.setattr(cli_evaluate, "evaluate_test_set", nan_elbo)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--allow-changed-data", "--ll-samples", "0"]) == 0
    assert "note: elbo came out NaN: the run's networks overflow on these data" in (
        capsys.readouterr().out
    )


def test_a_seed_gives_other_draws_and_is_recorded_and_no_seed_the_same_numbers(tmp_path, capsys):
    """Tester DM: every ``evaluate`` printed one ELBO, so its Monte Carlo spread could not
    be seen from the command line. ``--seed`` draws again, recorded in the test block; a
    seed repeats its numbers, and no seed keeps the numbers evaluate always gave."""
    import json

    from pyro_vae.cli import main
    from tests.pyro_vae.test_cli_analysis import fit_on_npy

    run, _ = fit_on_npy(tmp_path)

    def elbo(*flags):
        assert main(["evaluate", str(run), "--ll-samples", "0", *flags]) == 0
        test = json.loads((run / "metrics.json").read_text())["test"]
        return test["elbo"], test.get("seed")

    plain, seeded = elbo(), elbo("--seed", "7")
    assert plain[1] is None and seeded[1] == 7
    assert seeded[0] != plain[0]
    assert elbo("--seed", "7") == seeded and elbo() == plain


def test_a_kept_log_likelihood_keeps_the_seed_it_was_drawn_with(tmp_path):
    """Tester DO: ``evaluate --seed 9 --ll-samples 0`` kept the saved log p(x), drawn
    under --seed 7, and the block said seed 9 for all of it."""
    import json

    from pyro_vae.cli import main
    from tests.pyro_vae.test_cli_analysis import fit_on_npy

    run, _ = fit_on_npy(tmp_path)

    def block(*flags):
        assert main(["evaluate", str(run), *flags]) == 0
        return json.loads((run / "metrics.json").read_text())["test"]

    drawn = block("--ll-samples", "3", "--seed", "7")
    kept = block("--ll-samples", "0", "--seed", "9")
    assert kept["seed"] == 9 and kept["log_likelihood_seed"] == 7
    assert kept["log_likelihood"] == drawn["log_likelihood"]
    assert block("--ll-samples", "0", "--seed", "7").get("log_likelihood_seed") in (None, 7)
    assert block("--ll-samples", "0")["log_likelihood_seed"] == 7  # kept through again
    assert "log_likelihood_seed" not in block("--ll-samples", "3")  # drawn now
