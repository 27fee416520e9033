"""The commands that study a fitted run: where they may write their figures, and how
``diagnose`` prints k̂."""

from pathlib import Path

import pytest

from pyro_vae.cli_analysis import _check_png_out, _print_gaps, _print_khat


def test_a_figure_path_is_refused_where_it_would_replace_a_file_of_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "elbo.png").write_bytes(b"fit's figure")
    (run / "sample_seed0_4.png").write_bytes(b"an earlier sample")
    with pytest.raises(ValueError, match=r"--out: .*config.json is not a \.png file path"):
        _check_png_out(run / "config.json", "sample_seed*_*.png")
    with pytest.raises(ValueError, match="file of the run folder .* which this command does"):
        _check_png_out(run / "new" / ".." / "elbo.png", "sample_seed*_*.png")
    with pytest.raises(ValueError, match="is not a .png file path"):
        _check_png_out(run, "sample_seed*_*.png")  # a folder
    _check_png_out(run / "sample_seed0_4.png", "sample_seed*_*.png")  # its own: written again
    _check_png_out(run / "new.png", "sample_seed*_*.png")  # a new file
    (tmp_path / "elbo.png").write_bytes(b"not a run's")
    _check_png_out(tmp_path / "elbo.png", "sample_seed*_*.png")  # no config.json beside it


def test_a_figure_path_another_command_writes_into_the_run_later_is_refused(tmp_path):
    """Tester EF: ``sample --out RUN/khat.png``, before any diagnose, wrote the samples
    under the name diagnose then writes its k̂ figure over."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for name in ("khat.png", "khat_worst.png", "gradient_variance_1.png", "posterior.png"):
        with pytest.raises(ValueError, match="a figure file of the run folder .* another command"):
            _check_png_out(run / name, "sample_seed*_*.png")
    _check_png_out(run / "gradient_variance_1.png", "gradient_variance*.png")  # its own
    _check_png_out(run / "my_samples.png", "sample_seed*_*.png")


def test_every_figure_name_the_package_writes_is_listed_as_a_run_folder_figure():
    """The kind of tester EF's fault: a figure name written under a fixed name and missing
    from RUN_FOLDER_FIGURES would be taken as an --out, to be replaced later."""
    import fnmatch
    import re

    import pyro_vae
    from pyro_vae.cli_analysis import RUN_FOLDER_FIGURES

    root = Path(pyro_vae.__file__).parent
    names = {
        name
        for path in root.rglob("*.py")
        for name in re.findall(r'"([a-z_]+\.png)"', path.read_text())
    }
    assert "khat.png" in names and "elbo.png" in names
    listed = {n for n in names if any(fnmatch.fnmatch(n, p) for p in RUN_FOLDER_FIGURES)}
    unlisted = names - listed - {"comparison.png"}  # compare's, in its own folder
    assert unlisted == set()


def test_khat_is_printed_as_shares_and_an_enumerated_guide_as_exact_divergences(capsys):
    _print_khat({"num_points": 8, "num_samples": 100, "share_above_0.5": 0.25,
                 "share_above_0.7": 0.125, "khat_median": 0.31, "khat_max": 0.92})  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PSIS k̂ on 8 test images, 100 draws each:"
    assert lines[1].split() == ["share", "above", "0.5", "25.0%"]
    assert lines[2].split() == ["share", "above", "0.7", "12.5%"]
    assert lines[3].split()[-2:] == ["0.31,", "0.92"]
    _print_khat({"num_states": 4, "num_points": 3, "kl_median": 0.5, "chi2_median": 1.25,
                 "chi2_max": 2.5})  # fmt: skip
    out = capsys.readouterr().out
    assert "4 states per test image, enumerated on 3 images: k̂ does not apply" in out
    assert "0.5000 nats" in out and "1.25, 2.5" in out and "share above" not in out


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        # tester CK: PyTorch's failure to allocate 8 TB, in a traceback
        (
            ["sample", "{run}", "--num", "1000000000000"],
            "--num: 1,000,000,000,000 images make a figure of",
        ),
        # tester CK: "none of them could run on this model and guide", of none
        (["grad-variance", "{run}", "--estimators", ","], "--estimators: ',' names no estimator"),
        # tester CO: two identical rows
        (["grad-variance", "{run}", "--estimators", "trace, trace"], "trace given twice"),
        (
            ["grad-variance", "{run}", "--estimators", "score:num_particles=2:num_particles=3"],
            "estimator: num_particles is given twice in",
        ),
    ],
)
def test_requests_that_cannot_be_met_are_refused_before_the_run_is_read(
    tmp_path, capsys, argv, refusal
):
    from pyro_vae.cli import main

    missing = tmp_path / "no-such-run"  # read first, it would be refused as missing
    assert main([a.replace("{run}", str(missing)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert refusal in err and "no-such-run" not in err
    assert not missing.exists()


def fit_on_npy(tmp_path):
    """(run, change): a one-epoch VAE run on 60 rows of 16 binary values saved as x.npy in
    ``tmp_path``, and ``change()``, which saves 80 other rows in its place."""
    import numpy as np

    from pyro_vae.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "x.npy"
    np.save(data, (rng.random((60, 16)) < 0.3).astype(np.float32))
    run = tmp_path / "run"
    fast = ["--epochs", "1", "--no-progress", "--hidden", "8", "--latent-dim", "2"]
    assert main(["fit", "--data", str(data), "--ll-samples", "0", *fast, "--out", str(run)]) == 0
    return run, lambda: np.save(data, (rng.random((80, 16)) < 0.3).astype(np.float32))


def test_diagnose_on_changed_data_keeps_the_runs_own_block(tmp_path, capsys):
    """Tester CT: ``diagnose --allow-changed-data`` replaced metrics.json's diagnostics
    block with one of other data, nothing marking it (evaluate writes its results on
    changed data to ``test_on_changed_data``). Expected: the same for diagnose."""
    import json

    from pyro_vae.cli import main

    run, change = fit_on_npy(tmp_path)
    argv = ["diagnose", str(run), "--samples", "30", "--idata-samples", "4", "--worst", "0"]
    assert main(argv) == 0
    own = json.loads((run / "metrics.json").read_text())["diagnostics"]
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    change()  # other rows
    capsys.readouterr()
    assert main([*argv, "--allow-changed-data"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diagnostics"] == own
    changed = metrics["diagnostics_on_changed_data"]
    assert changed["provenance"]["shape"] == [80, 16] and changed["num_points"] == 8
    out = capsys.readouterr().out
    assert "its diagnostics block and report files (the run's own) stayed unchanged" in out
    # and its report files (khat.csv, the figures), byte for byte: the new ones beside them
    assert {n: (run / n).read_bytes() for n in files if n != "metrics.json"} == {
        n: b for n, b in files.items() if n != "metrics.json"
    }
    folder = run / "diagnostics_on_changed_data"
    assert f"wrote {folder / 'khat.csv'}" in out
    assert len((folder / "khat.csv").read_text().splitlines()) == 1 + 8  # 8 test rows of 80


def test_grad_variance_and_amortization_gap_on_changed_data_keep_the_runs_own(tmp_path, capsys):
    """As diagnose above (found beside it): ``grad-variance --allow-changed-data`` replaced
    the run's gradient_variance block and figure with those of other data, and
    ``amortization-gap`` its amortization_gap block, nothing marking either. Expected:
    their own blocks (and figure) on changed data, the run's kept byte for byte."""
    import json

    from pyro_vae.cli import main

    run, change = fit_on_npy(tmp_path)
    variance = ["grad-variance", str(run), "--estimators", "trace", "--num-draws", "3"]
    gap = ["amortization-gap", str(run), "--points", "2", "--steps", "2", "--iwae-samples", "4"]
    assert main(variance) == 0 and main(gap) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    figure = (run / "gradient_variance.png").read_bytes()
    change()  # other rows
    capsys.readouterr()
    assert main([*variance, "--allow-changed-data"]) == 0
    assert main([*gap, "--allow-changed-data"]) == 0
    out = capsys.readouterr().out
    after = json.loads((run / "metrics.json").read_text())
    for block in ("gradient_variance", "amortization_gap"):
        assert after[block] == metrics[block]
        assert f"{block}_previous" not in after
        assert f"'s {block}_on_changed_data, and its {block} block" in out
    changed = after["gradient_variance_on_changed_data"]
    assert changed["provenance"]["shape"] == [80, 16] and changed["rows"][0]["estimator"] == "trace"
    assert after["amortization_gap_on_changed_data"]["provenance"]["shape"] == [80, 16]
    assert (run / "gradient_variance.png").read_bytes() == figure
    assert (run / "gradient_variance_on_changed_data.png").stat().st_size > 0


def test_grad_variance_runs_a_model_without_num_data_at_fit_s_minibatch_scale(tmp_path, capsys):
    """Tester CZ: ``grad-variance`` passed ``num_data=`` to every model and guide, and one
    taking ``x`` alone (the README's own-model shape, ``tests/examples/pyro_style_vae.py``)
    failed with a TypeError traceback. Expected: the pair run as fit runs it, its
    per-datapoint plate given N and the batch's rows, so the likelihood of a batch of B of N
    training rows is scaled by N/B (a hand count)."""
    import json

    import pyro.poutine as poutine

    from pyro_vae.cli import main
    from pyro_vae.cli_analysis import _training_batch
    from pyro_vae.experiment import load

    run, _ = fit_on_npy(tmp_path)
    own = tmp_path / "own"
    example = f"{Path(__file__).parents[1] / 'examples' / 'pyro_style_vae.py'}:PyroStyleVAE"
    fit = ["fit", "--data", str(tmp_path / "x.npy"), "--model", example, "--epochs", "1"]
    assert main([*fit, "--no-progress", "--ll-samples", "0", "--out", str(own)]) == 0
    argv = ["grad-variance", str(own), "--estimators", "trace", "--num-draws", "3"]
    assert main([*argv, "--batch-size", "20"]) == 0
    assert json.loads((own / "metrics.json").read_text())["gradient_variance"]
    exp = load(own, "cpu")
    model, guide, x, kwargs = _training_batch(exp, 20, 0)
    num_data = exp.data.train_x.shape[0]
    trace = poutine.trace(model).get_trace(x, **kwargs)
    assert x.shape[0] == 20 and len(kwargs["subsample"]) == 20
    assert trace.nodes["obs"]["scale"] == num_data / 20


@pytest.mark.parametrize("standardized", [True, False])
def test_the_gaps_of_a_normal_table_say_their_units(standardized, capsys):
    # tester FC: a table's log p(x) printed as "nats per row", 4 nats from fit's figure in
    # the file's units, with no word on which
    result = {
        "num_points": 3, "log_likelihood": -19.154, "elbo_local": -19.2,
        "elbo_amortized": -19.5, "approximation_gap": 0.046, "amortization_gap": 0.3,
        "amortization_gap_se": 0.01, "approximation_gap_se": 0.02,
        "log_likelihood_rise": 0.001, "log_likelihood_rise_se": 0.0005,
    }  # fmt: skip
    _print_gaps(result, 1001, "rows", standardized)
    out = capsys.readouterr().out
    said = "(nats per row of the standardized columns)" in out and "the gaps" in out
    assert said == standardized
    assert "from K=500 to K=1000" in out  # the first 2h of an odd K's draws
    widths = {line.index("-19") for line in out.splitlines() if "-19." in line}
    assert len(widths) == 1  # log p(x)'s row in the ELBOs' column


def test_grad_variance_aligns_its_table_to_the_longest_estimator(tmp_path, capsys):
    """Tester FE: a spec longer than 48 characters pushed its row's columns right of the
    header's. Every row's group starts where the header's does."""
    from pyro_vae.cli import main

    run, _ = fit_on_npy(tmp_path)
    long = "score:control_variate=leave-one-out:num_particles=4"
    capsys.readouterr()
    argv = ["grad-variance", str(run), "--estimators", f"trace,{long}", "--num-draws", "3"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("estimator "))
    rows = [line for line in lines if line.startswith(("trace ", long + " "))]
    assert len(rows) >= 2 and any(row.startswith(long) for row in rows)
    column = header.index("group")
    assert column == len(long) + 1
    assert all(row[column - 1] == " " and row[column] != " " for row in rows)


def test_diagnose_notes_only_the_row_counts_the_user_asked_for(capsys):
    """Tester FH: the default --points 1000 was noted on every test set under 1,000 rows,
    though nobody asked for it; a typed count above the test set still is."""
    import argparse

    from pyro_vae.cli_analysis import _note_fewer_rows

    defaults = argparse.Namespace(points=1000, idata_points=100, given_flags=set())
    _note_fewer_rows(defaults, 50, "rows")
    assert capsys.readouterr().out == ""
    typed = argparse.Namespace(points=1000, idata_points=100, given_flags={"--idata-points"})
    _note_fewer_rows(typed, 50, "rows")
    assert capsys.readouterr().out == (
        "note: --idata-points 100 is more than the 50 test rows; diagnostics.nc covers all 50\n"
    )
