"""pyro-vae compare: the table holds each run's own numbers, the figure its curves."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pyro_vae.checkpoint import FORMAT, RunFolderError
from pyro_vae.cli import main
from pyro_vae.compare import compare_runs, format_table, write_comparison
from pyro_vae.run_config import DataConfig, EstimatorConfig, ModelConfig, RunConfig

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _run(
    path: Path, seconds, val, test=None, data_name="digits", estimator=None, data=None
) -> Path:
    config = RunConfig(
        ModelConfig("models.vae:VAE", {"latent_dim": 20}),
        DataConfig(name=data_name, **(data or {})),
        estimator=EstimatorConfig(**(estimator or {"name": "trace"})),
    ).to_json()
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"format": FORMAT, **config}))
    epochs = [
        {"epoch": i + 1, "train_elbo": v - 1, "seconds": s, "val_elbo": v}
        for i, (s, v) in enumerate(zip(seconds, val, strict=True))
    ]
    metrics = {"epochs": epochs, "best_epoch": int(np.argmax(val)) + 1}
    if test is not None:
        metrics["test"] = test
        metrics["validation"] = "held-out ELBO per datapoint (nats)"
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


TEST = {
    "elbo": -90.5,
    "log_likelihood": -86.25,
    "log_likelihood_samples": 1000,
    "log_likelihood_points": 500,
    "kl": 24.75,
    "active_units": 11,
    "latent_dim": 20,
}


def test_the_table_holds_each_run_s_own_numbers(tmp_path):
    a = _run(tmp_path / "a", [9.0, 2.0, 3.0], [-100.0, -95.0, -96.0], TEST)
    iwae = {"name": "iwae", "options": {"num_particles": 8}}
    b = _run(tmp_path / "b", [4.0, 5.0], [-99.0, -94.0], estimator=iwae)
    comparison = compare_runs([a, b])
    row_a, row_b = comparison.table.to_dict("records")
    assert row_a["test_elbo"] == -90.5 and row_a["log_px"] == -86.25 and row_a["K"] == 1000
    assert row_a["kl"] == 24.75 and row_a["active_units"] == 11 and row_a["latent_dim"] == 20
    assert row_a["s_per_epoch"] == 3.0  # the median: the first epoch's 9 s records the step
    assert row_a["epochs"] == 3 and row_a["best_epoch"] == 2 and row_a["estimator"] == "trace"
    assert row_a["precision"] == "32"
    assert row_b["estimator"] == "iwae(num_particles=8)" and row_b["s_per_epoch"] == 4.5
    assert math.isnan(row_b["test_elbo"]) and pd.isna(row_b["K"])
    assert comparison.curves == {
        "a": ([1, 2, 3], [-100.0, -95.0, -96.0]),
        "b": ([1, 2], [-99.0, -94.0]),
    }
    assert comparison.notes == ["b: not evaluated on the test set (a stopped or unfinished run)"]
    text = format_table(comparison)
    assert "11/20" in text and "-86.250" in text and "—" in text


def test_runs_on_different_data_are_flagged_as_not_comparable(tmp_path):
    a = _run(tmp_path / "a", [1.0], [-100.0], TEST)
    b = _run(tmp_path / "b", [1.0], [-200.0], TEST, data_name="fashion-mnist")
    notes = compare_runs([a, b]).notes
    assert len(notes) == 1 and "not comparable" in notes[0] and "fashion-mnist" in notes[0]


@pytest.mark.parametrize("binarize", ["static", "dynamic"])
def test_the_test_rows_depend_on_val_fraction_only_through_dynamic_binarization(binarize):
    # the loader itself, the rule compare's notes follow: the test split is drawn first,
    # but dynamic binarization draws the validation pixels before the test ones
    from pyro_vae.data import Preprocessing, load_data

    test = [
        load_data("digits", Preprocessing("bernoulli", binarize), val_fraction=f).test_x
        for f in (0.1, 0.3)
    ]
    assert torch.equal(test[0], test[1]) == (binarize == "static")


@pytest.mark.parametrize(
    ("name", "data", "comparable"),
    [
        ("digits", {}, True),
        ("digits", {"likelihood": "categorical"}, True),
        ("digits", {"binarize": "dynamic"}, False),  # the test pixels' draws move
        ("rows.csv", {"likelihood": "normal"}, False),  # standardized by the training rows
        ("rows.csv", {"likelihood": "bernoulli"}, True),
    ],
)
def test_runs_differing_only_in_val_fraction_are_flagged_by_what_it_changes(
    tmp_path, name, data, comparable
):
    # tester B: runs differing only in --val-fraction were flagged as on different
    # data, their test numbers "not comparable", though they were on the same test rows
    a = _run(tmp_path / "a", [1.0], [-100.0], TEST, data_name=name, data=data)
    b = _run(tmp_path / "b", [1.0], [-99.0], TEST, data_name=name,
             data={**data, "val_fraction": 0.3})  # fmt: skip
    comparison = compare_runs([a, b])
    (note,) = comparison.notes
    assert "val_fraction=0.3" in note
    if comparable:
        assert (
            note.startswith("the runs validate on different rows") and "not comparable" not in note
        )
    else:
        assert note.startswith("the runs use different data") and "not comparable" in note
    write_comparison(comparison, tmp_path / "out")  # the figure's title says which


def test_tables_standardized_by_other_training_rows_compare_in_the_file_s_units(tmp_path):
    """Tester DM: two ``normal`` tables differing only in --val-fraction were noted as on
    different data, every number "not comparable"; their test rows are the same, so the
    original-units columns are comparable (another split seed is other rows: not)."""
    test = {**TEST, "elbo_original_units": -7.3, "log_likelihood_original_units": -7.1}
    data = {"likelihood": "normal"}
    a = _run(tmp_path / "a", [1.0], [-100.0], test, data_name="rows.csv", data=data)
    b = _run(tmp_path / "b", [1.0], [-99.0], test, data_name="rows.csv",
             data={**data, "val_fraction": 0.3})  # fmt: skip
    c = _run(tmp_path / "c", [1.0], [-99.0], test, data_name="rows.csv",
             data={**data, "split_seed": 5})  # fmt: skip
    note = compare_runs([a, b]).notes[0]
    assert note.startswith("the runs use different data") and "val_fraction=0.3" in note
    assert "test_elbo and log_px, nats of the standardized columns, are not comparable" in note
    assert "log_px_original_units (comparison.csv) are: the same test rows" in note
    note = compare_runs([a, c]).notes[0]
    assert "not comparable across data" in note and "original_units" not in note


@pytest.mark.parametrize(
    "other",
    [{"threshold": 0.3}, {"image_size": [8, 8]}, {"columns": ["a"]}, {"label_column": "y"}],
)
def test_runs_with_other_data_settings_are_not_comparable_whatever_else_differs(tmp_path, other):
    # tester J's F5: a binarization threshold of 0.3 against 0.5, with another
    # --val-fraction too, was noted as "on the same test rows"; the threshold (and a
    # folder's image size, a table's columns) were no part of what compare read as the data
    name = "images:/x" if "image_size" in other else "digits"  # a size is a folder's
    a = _run(tmp_path / "a", [1.0], [-100.0], TEST, data_name=name)
    b = _run(tmp_path / "b", [1.0], [-99.0], TEST, name, data={**other, "val_fraction": 0.3})
    (note,) = compare_runs([a, b]).notes
    assert note.startswith("the runs use different data") and "not comparable" in note


@pytest.mark.parametrize("data", [{"binarize": "dynamic"}, {"likelihood": "gaussian"}])
def test_a_threshold_that_binarizes_nothing_leaves_the_data_the_same(tmp_path, data):
    # tester K: --threshold 0.3 beside 0.5 under dynamic binarization or a Gaussian
    # likelihood (where it is read by nothing: the test blocks were bit-identical) was
    # "different data, not comparable"
    a = _run(tmp_path / "a", [1.0], [-100.0], TEST, data=data)
    b = _run(tmp_path / "b", [1.0], [-99.0], TEST, data={**data, "threshold": 0.3})
    assert compare_runs([a, b]).notes == []


def test_a_tables_data_note_leaves_out_the_binarization_tables_refuse():
    """Tester CT: two runs of one table were noted as `binarize=static`, an option a table
    refuses."""
    from pyro_vae.compare import _data

    config = {"data": {"name": "/d/cells.csv", "likelihood": "normal", "binarize": "static",
                       "threshold": 0.5, "split_seed": 3}}  # fmt: skip
    assert _data(config) == "/d/cells.csv(likelihood=normal, split_seed=3)"


def test_a_comparison_that_cannot_be_written_leaves_no_folder_made_for_it(tmp_path, monkeypatch):
    """Tester BY: ``compare --out full/cmp`` on a full disk said so, and left an empty
    ``full/cmp`` behind. Simulated by the system calls failing as a full disk's do."""
    import errno
    import os

    from pyro_vae.checkpoint import DiskFullError

    comparison = compare_runs([_run(tmp_path / "a", [1.0], [-100.0], TEST)])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError):
        write_comparison(comparison, tmp_path / "out" / "cmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_run_that_diverged_is_said_to_have_diverged(tmp_path):
    """Tester CA: a run whose training diverged in its first epoch (no test block) was
    listed as "a stopped or unfinished run"."""
    diverged = _run(tmp_path / "d", [1.0], [-100.0])
    metrics = {"epochs": [], "best_epoch": None, "stop_reason": "diverged"}  # as fit writes it
    (diverged / "metrics.json").write_text(json.dumps(metrics))
    notes = compare_runs([diverged]).notes
    assert "d: not evaluated on the test set (its training diverged)" in notes


def test_of_three_runs_the_notes_name_the_one_on_other_data_and_folders_given_twice(
    tmp_path,
):
    """Tester CF: of three runs one on other data, all three were "not comparable", with no
    word on which were alike; one folder given twice was two identical rows, unsaid."""
    a = _run(tmp_path / "a", [1.0], [-100.0], TEST)
    b = _run(tmp_path / "b", [1.0], [-99.0], TEST)
    c = _run(tmp_path / "c", [1.0], [-200.0], TEST, data_name="fashion-mnist")
    notes = compare_runs([a, b, c]).notes
    assert "not comparable across data; those on the same test data are: a, b" in notes[0]
    notes = compare_runs([a, tmp_path / "." / "a", b]).notes
    assert f"{a} is listed twice: its row is shown twice" in notes  # labels: paths


def test_a_run_whose_metrics_json_is_gone_is_not_called_unfinished(tmp_path):
    """Tester CF: a finished run's lost metrics.json read as "a stopped or unfinished
    run" of 0 epochs; its checkpoint holds the history, which fit --resume rebuilds."""
    a = _run(tmp_path / "a", [1.0], [-100.0], TEST)
    (a / "metrics.json").unlink()
    (a / "checkpoint.pt").write_bytes(b"")  # a checkpoint is there (compare does not read it)
    notes = compare_runs([a]).notes
    assert notes == [
        f"a: no metrics.json, so no history or test numbers shown (its checkpoint holds "
        f"them: `pyro-vae fit --resume {a}` rebuilds it)"
    ]


def test_files_are_written_and_read_back(tmp_path):
    a = _run(tmp_path / "a", [1.0, 1.0], [-100.0, -95.0], TEST)
    b = _run(tmp_path / "b", [1.0, 1.0, 1.0], [-101.0, -97.0, -93.0], TEST)
    csv, png = write_comparison(compare_runs([a, b]), tmp_path / "out")
    back = pd.read_csv(csv)
    assert list(back["run"]) == ["a", "b"] and list(back["log_px"]) == [-86.25, -86.25]
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape[0] > 200 and pixels.std() > 10  # drawn, not blank


def test_two_runs_with_one_folder_name_are_told_apart_by_path(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = _run(tmp_path / "x" / "run", [1.0], [-1.0], TEST)
    b = _run(tmp_path / "y" / "run", [1.0], [-2.0], TEST)
    assert list(compare_runs([a, b]).table["run"]) == [str(a), str(b)]


def test_old_run_folders_are_read_through_the_schema_migrations():
    comparison = compare_runs([FIXTURES / "run_v1", FIXTURES / "run_v1_stopped"])
    finished, stopped = comparison.table.to_dict("records")
    metrics = json.loads((FIXTURES / "run_v1" / "metrics.json").read_text())
    assert finished["test_elbo"] == metrics["test"]["elbo"]
    assert finished["K"] == metrics["test"]["log_likelihood_samples"]
    assert math.isnan(stopped["test_elbo"])


def test_a_path_that_is_not_a_run_folder_is_refused_before_anything_is_written(tmp_path):
    a = _run(tmp_path / "a", [1.0], [-1.0], TEST)
    with pytest.raises(RunFolderError, match=r"run: .*missing is not a directory"):
        compare_runs([a, tmp_path / "missing"])
    with pytest.raises(ValueError, match="runs: none given"):
        compare_runs([])


def test_the_command_prints_the_table_and_refuses_in_one_line(tmp_path, capsys):
    a = _run(tmp_path / "a", [1.0], [-1.0], TEST)
    b = shutil.copytree(FIXTURES / "run_v1", tmp_path / "b")
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "-86.250" in printed and "comparison.png" in printed
    assert (out / "comparison.csv").is_file() and (out / "comparison.png").is_file()
    assert main(["compare", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and not (tmp_path / "o2").exists()


def test_a_folder_fit_from_python_is_compared_with_what_it_has(tmp_path):
    a = _run(tmp_path / "a", [1.0], [-1.0], TEST)
    python_fit = tmp_path / "py"
    python_fit.mkdir()
    metrics = {"epochs": [{"epoch": 1, "seconds": 2.0, "val_elbo": -3.0}], "test": TEST}
    (python_fit / "metrics.json").write_text(json.dumps(metrics))
    comparison = compare_runs([a, python_fit])
    row = comparison.table.to_dict("records")[1]
    assert row["test_elbo"] == -90.5 and row["estimator"] == "?" and row["data"] == "?"
    assert comparison.notes == [
        "py: no config.json (fit from Python): model, guide and estimator unknown"
    ]
    # tester CM: a finished fit from Python, without a test block, was called unfinished
    del metrics["test"]
    (python_fit / "metrics.json").write_text(json.dumps(metrics))
    assert compare_runs([a, python_fit]).notes[1:] == [
        "py: not evaluated on the test set (pyro_vae.fit from Python scores no test set)"
    ]


def test_bounds_on_other_quantities_or_other_test_rows_are_flagged(tmp_path):
    # tester B's F5: M2's bound on log p(x, y) beside a VAE's on log p(x), one column
    vae = _run(tmp_path / "vae", [1.0], [-90.0], TEST)
    m2 = _run(tmp_path / "m2", [1.0], [-91.0],
              {**TEST, "labels_in_bound": "joint", "test_log_px_unlabelled": -85.0})  # fmt: skip
    cvae = _run(tmp_path / "cvae", [1.0], [-89.0], {**TEST, "labels_in_bound": "conditioned"})
    notes = compare_runs([vae, m2, cvae]).notes
    assert any(
        "bounds are of different quantities (vae: log p(x); m2: log p(x, y); cvae: log p(x | y))"
        in n
        and "m2: its metrics.json's test_elbo_unlabelled" in n
        and "log_px and kl are not comparable across them" in n
        and "log C for C uniform classes" in n  # M2's kl holds KL(δ_y ‖ p(y)) (tester DW)
        and "comparable with each other" not in n  # no two of the same quantity
        for n in notes
    )
    # tester EF: two VAEs on the same data beside a CVAE were all called not comparable
    other = _run(tmp_path / "other", [1.0], [-90.5], TEST)
    notes = compare_runs([vae, other, cvae]).notes
    assert any(
        "not comparable across them; those comparable with each other (the same quantity "
        "on the same test data) are: vae, other" in n
        for n in notes
    )
    fewer = _run(tmp_path / "fewer", [1.0], [-90.0], {**TEST, "log_likelihood_points": 30})
    notes = compare_runs([vae, fewer]).notes
    assert notes == [
        "log_px is estimated on different test rows (vae: the first 500; fewer: the first 30), "
        "so it differs by which rows as well as by the model; re-evaluate with the same "
        "--ll-points to compare"
    ]
    assert compare_runs([vae, _run(tmp_path / "same", [1.0], [-80.0], TEST)]).notes == []


def test_label_runs_show_the_labels_they_observed_and_their_accuracy(tmp_path, capsys):
    """Tester BP: M2 on 100 labels and on half of each class had identical rows, with no
    accuracy; a run of no label model shows neither column."""
    joint = {**TEST, "labels_in_bound": "joint", "test_accuracy": 0.875}
    some = _run(tmp_path / "some", [1.0], [-91.0], joint, data={"labelled": 100})
    half = _run(tmp_path / "half", [1.0], [-90.0], {**joint, "test_accuracy": 0.9},
                data={"labels_fraction": 0.5})  # fmt: skip
    cvae = _run(tmp_path / "cvae", [1.0], [-89.0], {**TEST, "labels_in_bound": "conditioned"})
    vae = _run(tmp_path / "vae", [1.0], [-90.0], TEST)
    comparison = compare_runs([some, half, cvae, vae])
    labels = comparison.table["labels"].tolist()
    assert labels[:3] == ["100 labelled", "0.5 of each class", "all"] and pd.isna(labels[3])
    accuracy = comparison.table["test_accuracy"].tolist()
    assert accuracy[:2] == [0.875, 0.9] and math.isnan(accuracy[2]) and math.isnan(accuracy[3])
    header = format_table(comparison).splitlines()[0].split()
    assert "labels" in header and "test_accuracy" in header
    header = format_table(compare_runs([vae])).splitlines()[0].split()
    assert "labels" not in header and "test_accuracy" not in header
    assert main(["compare", str(some), str(vae), "--out", str(tmp_path / "c")]) == 0
    assert "labels: the training labels observed; test_accuracy: share correct" in (
        capsys.readouterr().out
    )


def test_a_beta_or_warm_up_objective_is_named_beside_the_estimator(tmp_path):
    """Tester L2: a β = 2 run and a KL warm-up run read as plain ``trace`` runs."""
    runs = []
    for name, train in (("plain", {}), ("beta", {"beta": 2.0}), ("warm", {"kl_warmup_epochs": 3})):
        path = _run(tmp_path / name, [1.0], [-90.0], TEST)
        config = json.loads((path / "config.json").read_text())
        config["train"].update(train)
        (path / "config.json").write_text(json.dumps(config))
        runs.append(path)
    table = compare_runs(runs).table
    assert list(table["estimator"]) == ["trace", "trace(beta=2.0)", "trace(kl_warmup_epochs=3)"]


def test_a_run_evaluated_on_its_training_set_is_marked_and_not_called_test_rows(tmp_path):
    """Tester U: an AutoNormal run, whose metrics are the training images' (``fit`` says
    so), sat in the test columns beside a test-set run, the note calling its rows "test
    rows". metrics.json as ``fit`` writes it for a local guide."""
    tested = _run(tmp_path / "tested", [1.0], [-90.0], {**TEST, "evaluated_on": "test set"})
    local = {**TEST, "evaluated_on": "training set", "log_likelihood_points": 1000}
    auto = _run(tmp_path / "auto", [1.0], [-80.0], local)
    comparison = compare_runs([auto, tested])
    assert list(comparison.table["evaluated_on"]) == ["training set", "test set"]
    (note,) = comparison.notes
    assert note.startswith("auto: evaluated on the training set") and "test rows" not in note
    assert "not comparable with the test-set runs' (tested)" in note
    assert "training set" in format_table(comparison)
    # two runs on the training set: their rows are training rows; an older block without
    # evaluated_on is read by the run's local_guide
    older = _run(tmp_path / "older", [1.0], [-80.0], {**TEST, "log_likelihood_points": 30})
    metrics = json.loads((older / "metrics.json").read_text())
    (older / "metrics.json").write_text(json.dumps({**metrics, "local_guide": True}))
    comparison = compare_runs([auto, older])
    assert list(comparison.table["evaluated_on"]) == ["training set", "training set"]
    assert any(n.startswith("auto, older: evaluated on the training set") for n in comparison.notes)
    assert any(
        n.startswith("log_px is estimated on different training rows (auto: the first 1000; "
                     "older: the first 30)")
        for n in comparison.notes
    )  # fmt: skip
    assert not any("test rows" in n for n in comparison.notes)
    assert pd.isna(compare_runs([_run(tmp_path / "b", [1.0], [-1.0])]).table["evaluated_on"][0])


def test_runs_on_a_table_s_normal_columns_show_the_file_s_units_too(tmp_path, capsys):
    # tester U: compare showed only the nats of the standardized columns, unlabelled
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"a": rng.normal(5.0, 20.0, 120), "b": rng.normal(-1.0, 0.1, 120)})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    runs = []
    for seed in ("0", "1"):
        runs.append(tmp_path / f"run{seed}")
        argv = ["fit", "--data", str(tmp_path / "rows.csv"), "--likelihood", "normal",
                "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--seed", seed,
                "--ll-samples", "10", "--no-progress", "--out", str(runs[-1])]  # fmt: skip
        assert main(argv) == 0
    comparison = compare_runs(runs)
    for row, run in zip(comparison.table.to_dict("records"), runs, strict=True):
        test = json.loads((run / "metrics.json").read_text())["test"]
        assert row["test_elbo"] == test["elbo"] and row["log_px"] == test["log_likelihood"]
        assert row["test_elbo_original_units"] == test["elbo_original_units"]
        assert row["log_px_original_units"] == test["log_likelihood_original_units"]
        # the standardization's Jacobian, sum_j log std_j of the training rows, apart
        std = json.loads((run / "metrics.json").read_text())["data"]["standardization"]["std"]
        shift = float(np.log(std).sum())
        assert math.isclose(row["test_elbo"] - row["test_elbo_original_units"], shift)
    assert any(n.startswith("run0, run1: normal columns of a table") for n in comparison.notes)
    assert "test_elbo_original_units" in format_table(comparison)
    images = _run(tmp_path / "images", [1.0], [-90.0], TEST)
    assert "original_units" not in format_table(compare_runs([images]))
    assert not any("normal columns" in n for n in compare_runs([images]).notes)


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_validation_curves_epoch_axis_has_integer_ticks(tmp_path, monkeypatch, epochs):
    # runs trained one epoch: ticks 0.945, 0.96, ... (one integer in view is too few for
    # MaxNLocator(integer=True)'s default)
    import pyro_vae.compare as compare
    from tests.pyro_vae.test_plots import assert_integer_epoch_ticks

    drawn = []
    monkeypatch.setattr(compare, "save_png", lambda fig, path: drawn.append(fig) or path)
    runs = [_run(tmp_path / name, [1.0] * epochs, [-100.0] * epochs, TEST) for name in "ab"]
    write_comparison(compare_runs(runs), tmp_path / "out")
    assert_integer_epoch_ticks(drawn[0].axes[0])


def test_the_values_read_tell_runs_apart_only_where_both_runs_recorded_them(tmp_path):
    # tester FD: a run from before content checksums and a new run on the same file were
    # "different data"; two runs whose recorded values differ are, whatever their names
    # and sizes
    provenance = {"path": "/d/t.npy", "shape": [60, 3], "dtype": "float64", "checksum": "sha256:ab"}
    old = _run(tmp_path / "old", [1.0], [-9.0], TEST, data_name="/d/t.npy",
               data={"provenance": provenance})  # fmt: skip
    runs = [
        _run(tmp_path / name, [1.0], [-9.0], TEST, data_name="/d/t.npy",
             data={"provenance": {**provenance, "content": f"sha256:{digest}"}})
        for name, digest in (("a", "cd"), ("b", "ef"))
    ]  # fmt: skip
    assert compare_runs([runs[0], old]).notes == []
    (note,) = compare_runs(runs).notes
    assert note.startswith("the runs use different data") and "content=ef" in note


def test_a_guide_s_own_options_are_named_beside_it(tmp_path):
    """``--guide-opt``: IAF runs of 2 and 4 flows must not read alike."""
    runs = []
    for name, guide in (("own", {}), ("iaf", {"guide": "pyro_vae.guides:AmortizedIAF"}),
                        ("iaf4", {"guide": "pyro_vae.guides:AmortizedIAF",
                                  "guide_options": {"num_flows": 4}})):  # fmt: skip
        path = _run(tmp_path / name, [1.0], [-90.0], TEST)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **guide}))
        runs.append(path)
    assert list(compare_runs(runs).table["guide"]) == [
        "model's own",
        "pyro_vae.guides:AmortizedIAF",
        "pyro_vae.guides:AmortizedIAF(num_flows=4)",
    ]
