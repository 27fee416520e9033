"""CSV and Parquet tables: columns and labels as asked, standardized with the training
split's statistics alone, each likelihood's support checked, bad tables refused."""

import csv
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import TrainConfig, fit
from pyro_vae.cli import main
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.experiment import load
from pyro_vae.latent_summaries import reconstruction_error
from pyro_vae.predictive import reconstruct
from pyro_vae.tables import TableError, original_units, read_table, squared_errors

FAST = ["--epochs", "1", "--no-progress", "--hidden", "8", "--latent-dim", "2"]


def frame(rows=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(5.0, 2.0, rows),
            "name": [f"s{i}" for i in range(rows)],
            "b": rng.integers(0, 4, rows),
            "kind": rng.choice(["dog", "cat"], rows),
            "c": rng.normal(-1.0, 0.5, rows),
        }
    )


def test_default_columns_are_the_numeric_ones_and_string_labels_become_indices(tmp_path):
    df = frame()
    df.to_csv(tmp_path / "t.csv", index=False)
    table = read_table(tmp_path / "t.csv", label_column="kind")
    assert table.columns == ("a", "b", "c")
    assert np.allclose(table.features, df[["a", "b", "c"]].to_numpy())
    assert table.classes == ("cat", "dog")
    assert table.labels.tolist() == [int(k == "dog") for k in df["kind"]]
    chosen = read_table(tmp_path / "t.csv", columns=["c", "a"], label_column="b")
    assert chosen.columns == ("c", "a") and chosen.classes is None
    assert chosen.labels.tolist() == df["b"].tolist()
    assert table.text_columns == ("name",) and chosen.text_columns == ()


def test_text_columns_left_out_of_the_features_are_noted(tmp_path, capsys):
    # tester EK: left out unsaid, where an image folder's stray files are named
    frame(rows=60).to_csv(tmp_path / "t.csv", index=False)
    argv = ["fit", "--data", str(tmp_path / "t.csv"), "--likelihood", "normal"]
    argv += ["--label-column", "kind", "--ll-samples", "0", "--out", str(tmp_path / "run")]
    assert main([*argv, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "features: a, b, c (labels: kind)" in printed
    assert "note: the column(s) name hold values that are not numbers (text, dates" in printed


def test_parquet_reads_as_the_csv_does(tmp_path):
    pytest.importorskip("pyarrow")
    df = frame()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    csv, parquet = (
        read_table(tmp_path / f"t.{s}", label_column="kind") for s in ("csv", "parquet")
    )
    assert np.array_equal(csv.features, parquet.features)  # CSV keeps float64 round trips
    assert np.array_equal(csv.labels, parquet.labels) and csv.columns == parquet.columns


def test_parquet_without_an_engine_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    for engine in ("pyarrow", "fastparquet"):
        monkeypatch.setitem(sys.modules, engine, None)  # import fails as if not installed
    with pytest.raises(TableError, match=r"pip install 'pyro_vae\[parquet\]'"):
        read_table(tmp_path / "t.parquet")


def test_normal_standardization_uses_the_training_split_alone(tmp_path):
    # The first 30 rows have mean 0, the last 10 mean 100: whatever rows land in test,
    # statistics from all rows would shift the training split's standardized mean.
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.normal(0, 1, 30), rng.normal(100, 1, 10)])
    pd.DataFrame({"a": a, "b": rng.normal(0, 3, 40)}).to_csv(tmp_path / "t.csv", index=False)
    data = load_data(str(tmp_path / "t.csv"), Preprocessing("normal"), test_fraction=0.25)
    assert data.image_shape is None and data.x_dim == 2
    train = data.train_x.double()
    assert torch.allclose(train.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(2, dtype=torch.float64))
    stats = data.info["standardization"]
    assert stats["columns"] == ["a", "b"] and stats["from"] == "train split"
    # the recorded statistics turn the test rows back into the file's values exactly
    raw = pd.read_csv(tmp_path / "t.csv").to_numpy()
    back = data.test_x.double().numpy() * np.array(stats["std"]) + np.array(stats["mean"])
    matched = [np.abs(raw - row).sum(1).min() for row in back]
    assert max(matched) < 1e-4  # float32 observations
    full_mean = raw.mean(0)
    assert abs(stats["mean"][0] - full_mean[0]) > 1.0  # the split means differ: a real test


def test_bernoulli_and_categorical_need_their_support(tmp_path):
    rng = np.random.default_rng(2)
    binary = pd.DataFrame({"p": rng.integers(0, 2, 20), "q": rng.integers(0, 2, 20)})
    binary.to_csv(tmp_path / "bin.csv", index=False)
    data = load_data(str(tmp_path / "bin.csv"), Preprocessing("bernoulli"))
    assert set(torch.unique(data.train_x).tolist()) <= {0.0, 1.0}
    levels = load_data(str(tmp_path / "bin.csv"), Preprocessing("categorical"))
    assert levels.info["levels"] == 2 and levels.pixel_max == 1.0
    frame().to_csv(tmp_path / "real.csv", index=False)
    # each names the likelihood (tester FB: fit's default, Bernoulli, went unnamed)
    with pytest.raises(TableError, match=r"'bernoulli' \(fit's default\) needs binary 0/1 "
                       r"values in every feature column, but column 'a' holds"):  # fmt: skip
        load_data(str(tmp_path / "real.csv"), Preprocessing("bernoulli"))
    with pytest.raises(TableError, match=r"'categorical' needs non-negative integer.*column 'a'"):
        load_data(str(tmp_path / "real.csv"), Preprocessing("categorical"))
    with pytest.raises(TableError, match=r"'continuous-bernoulli' needs values in \[0, 1\]"):
        load_data(str(tmp_path / "real.csv"), Preprocessing("continuous-bernoulli"))
    proportions = pd.DataFrame({"p": rng.random(20), "q": rng.integers(0, 2, 20)})
    proportions.to_csv(tmp_path / "proportions.csv", index=False)
    cb = load_data(str(tmp_path / "proportions.csv"), Preprocessing("continuous-bernoulli"))
    assert cb.pixel_max == 1.0
    every = torch.cat([cb.train_x, cb.val_x, cb.test_x])
    assert sorted(every[:, 0].tolist()) == pytest.approx(sorted(proportions["p"]), abs=1e-7)
    counts = load_data(
        str(tmp_path / "real.csv"), Preprocessing("categorical"), columns=["b"], label_column="kind"
    )
    assert counts.info["levels"] == 4  # the table's levels 0..3
    with pytest.raises(TableError, match="levels: 3, but the table holds the level 3"):
        load_data(str(tmp_path / "real.csv"), Preprocessing("categorical", levels=3), columns=["b"])


@pytest.mark.parametrize(
    ("content", "kwargs", "words"),
    [
        ("", {}, ["is empty"]),
        ("a,b\n", {}, ["has no rows"]),
        ("a,b\n1,2\n3,4\n", {"label_column": "y"}, ["label_column: 'y'", "['a', 'b']"]),
        ("a,b\n1,2\n3,4\n", {"columns": ["a", "z"]}, ["columns: ['z']", "['a', 'b']"]),
        ("a,b\n1,x\n3,y\n", {"columns": ["a", "b"]}, ["columns: 'b'", "'x'", "numeric"]),
        # one bad cell: the default features refuse the column, named with that cell, not
        # drop it; named, the cell quoted is the bad one, not the first (tester B's F4)
        ('a,b\n1,2.5\n3,"1,5"\n4,7\n', {}, ["columns: 'b'", "1 cells such as '1,5'", "row 1"]),
        ('a,b\n1,2.5\n3,"1,5"\n', {"columns": ["b"]}, ["'1,5' (data row 1", "numeric"]),
        ("n;w\n3;1,52\n5;0,98\n2;1,10\n", {}, ["columns: 'w'", "with a comma, such as '1,52'"]),
        ("a,b\n1,2\n,4\n3,5\n", {}, ["column 'a'", "1 missing (NaN)", "data row 1"]),
        # integers beyond 64 bits, which pandas reads as text: named so, not as commas
        # (tester FB), by default or named in columns
        ("a,b\n1,123456789012345678901234567\n2,4\n", {}, ["columns: 'b'", "beyond 64 bits",
         "such as 123456789012345678901234567 (data row 0", "name the features with"]),
        ("a,b\n1,2\n2,-99999999999999999999\n", {"columns": ["a", "b"]},
         ["beyond 64 bits", "(data row 1", "leave it out of --columns"]),
        ("a,b\n1,inf\n3,4\n", {}, ["column 'b'", "infinite"]),
        ("a,y\n1,0.5\n3,1\n", {"label_column": "y"}, ["label_column: 'y'", "non-integer"]),
        ("a,y\n1,\n3,1\n", {"label_column": "y"}, ["missing label in data row 0"]),
        ("s,y\nx,1\n", {"label_column": "y"}, ["no numeric column besides the label"]),
        ("a,y\n1,1\n", {"columns": ["a", "y"], "label_column": "y"}, ["label column 'y'"]),
    ],
    ids=[
        "empty", "no-rows", "no-label", "no-column", "not-numeric", "one-bad-cell",
        "one-bad-cell-named", "decimal-commas", "nan", "huge-integers", "huge-integers-named",
        "inf",
        "float-labels", "missing-label", "no-features", "label-as-feature",
    ],
)  # fmt: skip
def test_a_bad_table_is_refused_naming_the_column(tmp_path, content, kwargs, words):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(TableError) as raised:
        read_table(tmp_path / "t.csv", **kwargs)
    for word in words:
        assert word in str(raised.value)


def test_a_parquet_file_has_no_header_to_count_in_its_refusals(tmp_path):
    """Parquet rows are counted from 0 with no header line (tester FB: "header not counted"
    of a Parquet file); the CSV of the same frame says its header is not counted."""
    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan], "y": [0, 1, 1]})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError) as parquet:
        read_table(tmp_path / "t.parquet")
    assert "the first in row 2, 0-based;" in str(parquet.value)
    assert "header" not in str(parquet.value)
    with pytest.raises(TableError, match="the first in data row 2, 0-based, header not counted"):
        read_table(tmp_path / "t.csv")


def test_a_text_column_of_numbers_without_commas_is_not_called_comma_numbers(tmp_path):
    """The decimal-comma refusal needs a comma in the cells: a column that reads as numbers
    only once commas are replaced names them; one of plain numbers pandas kept as text for
    another reason is not said to be written with commas (tester FB)."""
    (tmp_path / "t.csv").write_text('a,b\n1,"1,5"\n2,"2,5"\n')
    with pytest.raises(TableError, match="with a comma, such as '1,5'"):
        read_table(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("a,b\n1,18446744073709551616\n2,3\n")  # 2**64
    with pytest.raises(TableError) as raised:
        read_table(tmp_path / "t.csv")
    assert "beyond 64 bits" in str(raised.value) and "comma" not in str(raised.value)


def test_a_constant_column_is_refused_for_the_normal_standardization(tmp_path):
    pd.DataFrame({"a": np.arange(10.0), "k": np.ones(10)}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match=r"columns: \['k'\] are constant on the training split"):
        load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))
    data = load_data(str(tmp_path / "t.csv"), Preprocessing("normal"), columns=["a"])
    assert data.x_dim == 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_integers_float64_cannot_tell_apart_are_refused_naming_two(tmp_path, suffix):
    # tester FB: 60 distinct integers from 2**62 all read as 2**62, then "constant"
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"f": rng.normal(size=60), "big": np.arange(60, dtype=np.int64) + 2**62})
    path = tmp_path / f"t{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    assert float(2**62) == float(2**62 + 1)  # what the refusal is about
    with pytest.raises(TableError) as refused:
        read_table(path)
    message = str(refused.value)
    assert f"'big' of {path} holds the integers {2**62} and {2**62 + 1}" in message
    assert "float64 reads as one number" in message
    # large integers float64 keeps apart (spaced wider than its spacing) are read, rounded
    table["big"] = np.arange(60, dtype=np.int64) * 4096 + 2**62 + 1
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    assert np.unique(read_table(path).features[:, 1]).size == 60


def test_a_constant_column_whose_computed_std_is_not_zero_is_refused_too(tmp_path):
    """Tester CZ: numpy's std of 0.1 in 50 rows is 3e-17 (its mean's rounding), not 0: the
    column was kept, -1 in every row, and the ELBO in the file's units gained -log 3e-17 =
    38 nats a row. Every column holding one value is named, whatever its rounding."""
    rng = np.random.default_rng(0)
    values = {"a": rng.normal(size=50), "c": np.full(50, 0.1), "d": np.full(50, 1e-3)}
    pd.DataFrame(values).to_csv(tmp_path / "t.csv", index=False)
    assert np.asarray(values["c"]).std() > 0  # the rounding this is about
    with pytest.raises(TableError, match=r"columns: \['c', 'd'\] are constant on the training"):
        load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))


def test_a_column_varying_by_rounding_alone_is_constant_and_tiny_values_are_rescaled(tmp_path):
    """Tester DC: 0.3 in 59 rows and 0.30000000000000004 in one (the rounding 0.1 + 0.2
    gives) was standardized, the ELBO in the file's units 36 nats a row high; values near
    1e-170 that do differ were called constant (their variance underflows). Expected: the
    first refused as constant, the second as needing rescaling, and a column spread
    over a few parts in 1e12 taken."""
    rng = np.random.default_rng(0)
    ulp = np.full(60, 0.3)
    ulp[0] = 0.1 + 0.2
    values = {"a": rng.normal(size=60), "c": ulp}
    pd.DataFrame(values).to_csv(tmp_path / "t.csv", index=False, float_format="%.17g")
    with pytest.raises(TableError, match=r"columns: \['c'\] are constant on the training"):
        load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))
    values["c"] = (1 + rng.random(60)) * 1e-170
    pd.DataFrame(values).to_csv(tmp_path / "t.csv", index=False, float_format="%.17g")
    with pytest.raises(TableError, match=r"columns: \['c'\] have values so small"):
        load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))
    values["c"] = 1.0 + 1e-12 * rng.random(60)
    pd.DataFrame(values).to_csv(tmp_path / "t.csv", index=False, float_format="%.17g")
    assert load_data(str(tmp_path / "t.csv"), Preprocessing("normal")).x_dim == 2


def test_a_column_whose_variance_overflows_is_refused_not_made_zero(tmp_path):
    """Tester CT: values near 1e200 have a variance past float64's 1.8e308: std inf, so
    (x - mean) / std was 0 in every row, the test ELBO -inf, metrics.json's std Infinity.
    1e150 squares to 1e300, still finite, and is standardized as any column."""
    rng = np.random.default_rng(1)
    for scale, overflows in ((1e200, True), (1e150, False)):
        table = {"a": rng.normal(size=40) * scale, "b": rng.normal(size=40)}
        pd.DataFrame(table).to_csv(tmp_path / "t.csv", index=False)
        if overflows:
            with pytest.raises(TableError, match=r"^columns: \['a'\] have values so large"):
                load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))
            continue
        data = load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))
        assert data.train_x[:, 0].std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


def test_image_and_table_options_are_refused_for_the_other_sources(tmp_path):
    with pytest.raises(ValueError, match="columns: \\['a'\\] applies to a table"):
        load_data("digits", columns=["a"])
    frame().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"image_size: \(2, 2\) applies to an image folder"):
        load_data(str(tmp_path / "t.csv"), image_size=(2, 2))
    # crop alone on a table: told it takes no crop, not that crop needs an image_size
    # (tester FB); on an image folder crop alone still needs a size
    with pytest.raises(ValueError, match=r"crop: True applies to an image folder"):
        load_data(str(tmp_path / "t.csv"), crop=True)


def test_a_table_trains_from_python_and_the_command_line(tmp_path, capsys):
    frame(rows=60).to_csv(tmp_path / "t.csv", index=False)
    data = load_data(f"table:{tmp_path / 't.csv'}", Preprocessing("normal"), label_column="kind")
    from models.vae import VAE

    model = VAE(data.x_dim, latent_dim=2, hidden_dims=(8,), likelihood="normal")
    config = TrainConfig(epochs=1, progress=False)
    assert np.isfinite(
        fit(model, model.make_guide(), data, Trace_ELBO(), config).history[-1]["train_elbo"]
    )
    out = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path / "t.csv"), "--likelihood", "normal"]
    argv += ["--columns", "a", "c", "--label-column", "kind", "--ll-samples", "3"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["data"]
    assert saved["columns"] == ["a", "c"] and saved["label_column"] == "kind"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["standardization"]["columns"] == ["a", "c"]
    assert not (out / "reconstructions.png").exists() and (out / "latent.png").exists()
    printed = capsys.readouterr().out  # a table's metrics are per row, not per image
    assert "test rows)" in printed and "nats per row" in printed and "per image" not in printed
    assert "features: a, c (labels: kind)" in printed  # which columns it trained on
    assert main(["evaluate", str(out), "--ll-samples", "3"]) == 0
    assert "per column" in capsys.readouterr().out
    assert main(["sample", str(out)]) == 2  # a table's rows are no images to draw
    # diagnose: diagnostics.nc says its x is standardized, and x * x_std + x_mean gives
    # rows of the file back (tester FC: standardized values, nothing said)
    import arviz as az

    argv = ["diagnose", str(out), "--points", "3", "--samples", "30", "--idata-samples", "2"]
    assert main(argv) == 0
    assert "attributes x_mean and x_std give those units back" in capsys.readouterr().out
    observed = az.from_netcdf(out / "diagnostics.nc").observed_data
    assert observed.attrs["x_columns"] == "a, c"
    assert "standardized" in observed.attrs["x_units"]
    back = observed["x"].values * observed.attrs["x_std"] + observed.attrs["x_mean"]
    table = pd.read_csv(tmp_path / "t.csv")[["a", "c"]].to_numpy()
    nearest = np.abs(back[:, None, :] - table[None]).max(-1).min(-1)  # each row's match
    assert nearest.max() < 1e-5 * (1 + np.abs(table).max())  # float32 rounding


def test_a_wide_tables_features_line_names_the_first_and_last_and_counts_them(tmp_path, capsys):
    """Tester CT: 2,000 columns printed a features line of 12,898 characters. 40 columns
    here: the first 12, the last, and their count; a table of rows is no "images"."""
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(30, 40)), columns=[f"g{i}" for i in range(40)]).to_csv(
        tmp_path / "wide.csv", index=False
    )
    argv = ["fit", "--data", str(tmp_path / "wide.csv"), "--likelihood", "normal",
            "--ll-samples", "0", *FAST, "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    shown = ", ".join(f"g{i}" for i in range(12))
    assert f"features: {shown}, ..., g39 (40 columns; config.json's data.provenance lists " \
        "them all)\n" in capsys.readouterr().out  # fmt: skip
    with pytest.raises(ValueError, match=r"without test rows \(it has no official test split"):
        load_data(str(tmp_path / "wide.csv"), Preprocessing("normal"), test_fraction=0.0)
    listed = r"its columns are \['g0', 'g1', .*'g11', \.\.\., 'g39'\] \(40 columns\)$"
    for kwargs in ({"columns": ["nope"]}, {"label_column": "nope"}):  # tester CR: 31,000
        with pytest.raises(ValueError, match=listed):  # characters at 2,000 columns
            load_data(str(tmp_path / "wide.csv"), Preprocessing("normal"), **kwargs)


def test_a_runs_changed_table_is_read_through_the_runs_own_standardization(tmp_path):
    """Tester CT: a changed table read with --allow-changed-data was standardized by its own
    training split, so a column shifted by 1,000 scored exactly as before. Expected: the
    run's recorded mean and std, as a fitted scaler is reused on new data: column a moved
    by 25 in the file moves by 25 / std_a standardized, the other column not at all; the
    unchanged table reads as it did at fit, bit for bit."""
    frame().to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path / "t.csv"), "--likelihood", "normal", "--columns",
            "a", "c", "--ll-samples", "0", *FAST, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    recorded = json.loads((out / "metrics.json").read_text())["data"]["standardization"]
    before = load(out).data
    assert before.info["standardization"] == recorded
    shifted = frame()
    shifted["a"] += 25.0
    shifted.to_csv(tmp_path / "t.csv", index=False)
    after = load(out, allow_changed_data=True).data
    moved = (after.test_x - before.test_x).double()
    expected = 25.0 / recorded["std"][0]
    assert torch.allclose(moved[:, 0], torch.full_like(moved[:, 0], expected), atol=1e-5)
    assert torch.equal(after.test_x[:, 1], before.test_x[:, 1])
    assert after.info["standardization"] == recorded
    shifted["a"] += 1e5  # 5·10⁴ sds out: the networks overflow (tester CR: the guide blamed)
    shifted.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"; the data changed since the run was trained, and "
                       r"its networks fail on them: values far outside"):  # fmt: skip
        load(out, allow_changed_data=True)
    shifted["c"] *= 1e200  # beyond float32 once standardized (tester CR: "NaN ... pixels")
    shifted.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match=r"^columns: \['c'\] hold values beyond float32's"):
        load(out, allow_changed_data=True)


def test_original_units_are_the_change_of_variables_of_a_normal_density():
    # A Normal density of standardized columns, N(x_std; m, s), is the density
    # N(x; mean + std·m, std·s) of the file's values: computed here directly, per row.
    rng = np.random.default_rng(3)
    mean, std = np.array([5.0, -1.0, 300.0]), np.array([2.0, 0.5, 40.0])
    x = rng.normal(mean, std, (6, 3))
    m, s = rng.normal(0, 1, (6, 3)), rng.uniform(0.5, 2, (6, 3))
    x_std = (x - mean) / std
    standardized = torch.distributions.Normal(torch.tensor(m), torch.tensor(s))
    original = torch.distributions.Normal(torch.tensor(mean + std * m), torch.tensor(std * s))
    log_p_std = standardized.log_prob(torch.tensor(x_std)).sum(-1).mean().item()
    log_p_orig = original.log_prob(torch.tensor(x)).sum(-1).mean().item()
    metrics = {"elbo": log_p_std, "log_likelihood": log_p_std, "kl": 1.5}
    out = original_units(metrics, {"std": std.tolist()})
    assert out["elbo_original_units"] == pytest.approx(log_p_orig, abs=1e-9)
    assert out["log_likelihood_original_units"] == pytest.approx(log_p_orig, abs=1e-9)
    assert "kl_original_units" not in out and "standardized columns" in out["units"]
    # M2's bounds with the label summed out are log-densities of x too
    m2 = {"test_elbo_unlabelled": log_p_std, "test_log_px_unlabelled": log_p_std}
    out = original_units({**metrics, **m2, "test_accuracy": 0.5}, {"std": std.tolist()})
    assert out["test_log_px_unlabelled_original_units"] == pytest.approx(log_p_orig, abs=1e-9)
    assert out["test_elbo_unlabelled_original_units"] == pytest.approx(log_p_orig, abs=1e-9)
    assert "test_accuracy_original_units" not in out and "test_log_px_unlabelled" in out["units"]


def _normal_table_run(tmp_path, ll_samples: str):
    """(the CSV's table, the run folder, its test metrics) of a fit on two columns of
    very different scales, standardized for a normal likelihood."""
    rng = np.random.default_rng(4)
    table = pd.DataFrame({"a": rng.normal(0, 100, 40), "b": rng.normal(7, 3.0, 40)})
    table.to_csv(tmp_path / "t.csv", index=False)
    run = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path / "t.csv"), "--likelihood", "normal", *FAST]
    assert main([*argv, "--ll-samples", ll_samples, "--out", str(run)]) == 0
    return table, run, json.loads((run / "metrics.json").read_text())["test"]


def test_a_normal_table_run_reports_its_nats_in_the_files_units_too(tmp_path, capsys):
    table, run, test = _normal_table_run(tmp_path, "10")
    # σ_j of the training rows, found independently: the rows of the file that the
    # training split's standardized values came from
    data = load_data(str(tmp_path / "t.csv"), Preprocessing("normal"))
    raw = table.to_numpy()
    stats = data.info["standardization"]
    back = data.train_x.double().numpy() * np.array(stats["std"]) + np.array(stats["mean"])
    rows = [int(np.abs(raw - row).sum(1).argmin()) for row in back]
    shift = np.log(raw[rows].std(0)).sum()
    assert abs(shift - np.log(300.0)) < 0.5  # σ ≈ 100 and 3: nats apart, not a no-op
    for key in ("elbo", "log_likelihood"):
        assert test[f"{key}_original_units"] == pytest.approx(test[key] - shift, abs=1e-4)
    out = capsys.readouterr().out
    assert "nats per row of the standardized columns" in out
    assert "nats per row in the file's units" in out


@pytest.mark.parametrize("flag, value", [("--binarize", "dynamic"), ("--threshold", "0.5")])
def test_binarization_flags_with_a_table_are_refused(flag, value, tmp_path, capsys):
    pd.DataFrame({"p": [0, 1] * 10, "q": [1, 1, 0, 0] * 5}).to_csv(tmp_path / "t.csv", index=False)
    run = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path / "t.csv"), "--out", str(run), *FAST, flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag}: " in err and "the data is a table" in err and not run.exists()


@pytest.mark.parametrize("options", [{"binarize": "dynamic"}, {"threshold": 0.3}])
def test_binarization_options_with_a_table_are_refused_from_python(options, tmp_path):
    pd.DataFrame({"p": [0, 1] * 10, "q": [1, 1, 0, 0] * 5}).to_csv(tmp_path / "t.csv", index=False)
    (name,) = options
    with pytest.raises(TableError, match=rf"{name}: .* the data is a table"):
        load_data(str(tmp_path / "t.csv"), Preprocessing("bernoulli", **options))


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_csv_with_another_separator_reads_as_the_comma_one(sep, tmp_path):
    df = frame(rows=12)
    df.to_csv(tmp_path / "comma.csv", index=False)
    df.to_csv(tmp_path / "other.csv", index=False, sep=sep)
    df.to_csv(tmp_path / "other.csv.gz", index=False, sep=sep)
    comma = read_table(tmp_path / "comma.csv", label_column="kind")
    for name in ("other.csv", "other.csv.gz"):
        other = read_table(tmp_path / name, label_column="kind")
        assert other.columns == comma.columns == ("a", "b", "c")
        assert np.array_equal(other.features, comma.features)
        assert np.array_equal(other.labels, comma.labels)


def test_one_column_and_quoted_commas_still_read(tmp_path):
    (tmp_path / "one.csv").write_text("a\n0.5\n1.5\n2.5\n")
    assert read_table(tmp_path / "one.csv").features[:, 0].tolist() == [0.5, 1.5, 2.5]
    (tmp_path / "quoted.csv").write_text('a,name,b\n1,"x, y",2\n3,"z",4\n')
    table = read_table(tmp_path / "quoted.csv")
    assert table.columns == ("a", "b") and table.features.tolist() == [[1, 2], [3, 4]]


def test_squared_errors_in_original_units_are_those_of_the_de_standardized_values():
    rng = np.random.default_rng(5)
    mean, std = np.array([5.0, -1.0, 300.0]), np.array([2.0, 0.5, 40.0])
    x, x_hat = rng.normal(mean, std, (7, 3)), rng.normal(mean, std, (7, 3))
    standardization = {"mean": mean.tolist(), "std": std.tolist()}
    errors = squared_errors(
        torch.tensor((x_hat - mean) / std), torch.tensor((x - mean) / std), standardization
    )
    assert errors.shape == (7, 2)
    direct = ((x_hat - x) ** 2).mean(1)  # in the file's units, computed on its values
    assert errors[:, 1].numpy() == pytest.approx(direct, rel=1e-12)
    standardized = (((x_hat - x) / std) ** 2).mean(1)
    assert errors[:, 0].numpy() == pytest.approx(standardized, rel=1e-12)
    with pytest.raises(ValueError, match=r"x_hat, x: shapes \(7, 2\) and \(7, 2\); expected"):
        squared_errors(torch.zeros(7, 2), torch.zeros(7, 2), standardization)


def test_a_normal_table_run_reports_its_reconstruction_mse_in_the_files_units(tmp_path, capsys):
    table, run, test = _normal_table_run(tmp_path, "0")
    printed = capsys.readouterr().out
    assert "file's units squared" in printed and "mean over columns and rows" in printed
    assert "reconstruction_mse_original_units" in test["units"]
    # the run's reconstructions of its test rows, de-standardized, against the file's rows
    exp = load(run)
    stats = exp.data.info["standardization"]
    with torch.no_grad():
        x_hat = reconstruct(exp.model, exp.guide, exp.data.test_x).double().numpy()
    back = x_hat * np.array(stats["std"]) + np.array(stats["mean"])
    raw = table.to_numpy()
    test_std = exp.data.test_x.double().numpy()
    rows = [
        int(np.abs((raw - stats["mean"]) / stats["std"] - row).sum(1).argmin()) for row in test_std
    ]
    direct = ((back - raw[rows]) ** 2).mean()
    assert test["reconstruction_mse_original_units"] == pytest.approx(direct, rel=1e-5)
    standardized = reconstruction_error(exp.model, exp.guide, exp.data.test_x).mean().item()
    assert test["reconstruction_mse"] == pytest.approx(standardized, rel=1e-5)
    # σ ≈ 100 and 3: the two differ by orders of magnitude, so neither is the other
    assert test["reconstruction_mse_original_units"] > 100 * test["reconstruction_mse"]


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    """Tester U: pandas read the second g1 as g1.1 without a word."""
    path = tmp_path / "twice.csv"
    path.write_text("g0,g1,g1\n1,2,3\n4,5,6\n")
    with pytest.raises(TableError, match=r"names the column\(s\) \['g1'\] more than once"):
        read_table(path)


def test_pandas_written_index_is_refused_unless_columns_are_chosen(tmp_path):
    """Tester U: a table saved with to_csv's default index trained on the row number as a
    feature ('Unnamed: 0'), its only trace the features line."""
    frame = pd.DataFrame({"g0": [0.5, 1.5, 2.5], "g1": [1.0, 0.0, 2.0]})
    path = tmp_path / "indexed.csv"
    frame.to_csv(path)
    with pytest.raises(TableError, match=r"holds 0\.\.2, the row index pandas' to_csv writes"):
        read_table(path)
    assert read_table(path, columns=["g0", "g1"]).columns == ("g0", "g1")
    frame.to_csv(path, index=False)
    np.testing.assert_array_equal(read_table(path).features, frame.to_numpy())


def test_a_tab_separated_file_is_a_table(tmp_path):
    """Tester U: '.tsv' was an unknown dataset (only 'table:' took it)."""
    from pyro_vae.tables import is_table_path

    path = tmp_path / "cells.tsv"
    path.write_text("a\tb\n1\t2\n3\t4\n")
    assert is_table_path(str(path))
    np.testing.assert_array_equal(read_table(path).features, [[1.0, 2.0], [3.0, 4.0]])


def test_a_csv_without_a_header_is_refused_not_read_one_row_short(tmp_path):
    """Tester: np.savetxt's file lost its first row to the column names without a word."""
    values = np.random.default_rng(0).normal(size=(200, 3))
    path = tmp_path / "t.csv"
    np.savetxt(path, values, delimiter=",")
    with pytest.raises(TableError, match=r"^data: the first line of .*t\.csv is all numbers"):
        read_table(path)
    semicolons = tmp_path / "s.csv.gz"
    np.savetxt(semicolons, values, delimiter=";")
    with pytest.raises(TableError, match="is all numbers"):
        read_table(semicolons)
    np.savetxt(path, values, delimiter=",", header="a,b,c", comments="")  # the advice works
    assert read_table(path).features.shape == (200, 3)
    # one name among numbers cannot tell a header from data: refused, the fix named
    pd.DataFrame(values, columns=["1", "x", "2"]).to_csv(path, index=False)
    with pytest.raises(TableError, match=r"cannot be told whether it is a header.*quotes"):
        read_table(path)
    # quoted, the numbers are names: the csv module's writers quote them so
    pd.DataFrame(values, columns=["1", "x", "2"]).to_csv(
        path, index=False, quoting=csv.QUOTE_NONNUMERIC
    )
    assert read_table(path).columns == ("1", "x", "2")
    assert read_table(path).features.shape == (200, 3)


@pytest.mark.parametrize(
    ("text", "header", "words"),
    [
        ("cat,0.1,0.2\ndog,0.3,0.4\ncat,0.5,0.7\n", "y,a,b", ["reads as data", "'0.1', '0.2'"]),
        ("0.1,,0.3\n0.2,0.5,0.6\n0.4,0.7,0.9\n", "a,b,c", ["reads as data", "'0.1', '0.3'"]),
        ('"0.1","0.2"\n"0.3","0.4"\n', "a,b", ["is all numbers"]),  # quoted everywhere
        ("a,0.2\n0.1,0.3\n", "a,b", ["names ['a']", "numbers ['0.2']", "cannot be told"]),
    ],
    ids=["text-label-column", "blank-cell", "all-quoted", "half-named"],
)
def test_a_first_line_of_data_is_refused_whatever_its_other_cells(text, header, words, tmp_path):
    """Tester (F1): a headerless file whose first line was not all numbers (a text label,
    a blank cell) lost that line to the column names without a word."""
    path = tmp_path / "headerless.csv"
    path.write_text(text)
    with pytest.raises(TableError) as raised:
        read_table(path)
    message = str(raised.value)
    assert message.startswith(f"data: the first line of {path}")
    for word in [*words, "Add a header line"]:
        assert word in message
    path.write_text(f"{header}\n{text}")  # the advice works: every line a row
    assert len(pd.read_csv(path)) == len(text.splitlines())
    if "cannot be told" not in words:
        assert read_table(path, columns=["a"]).features.shape[0] == len(text.splitlines())


def test_a_header_is_read_over_text_labels_blank_names_and_quoted_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("kind,a,b\ncat,0.1,0.2\ndog,0.3,0.4\n")
    table = read_table(path, label_column="kind")
    assert table.features.tolist() == [[0.1, 0.2], [0.3, 0.4]] and table.classes == ("cat", "dog")
    path.write_text('"1","2"\n0.1,0.2\n0.3,0.4\n')  # quoting marks numbers as names
    table = read_table(path)
    assert table.columns == ("1", "2") and table.features.tolist() == [[0.1, 0.2], [0.3, 0.4]]
    path.write_text("a,b,\n1,2,\n3,4,\n")  # a trailing separator: an empty column
    assert read_table(path, columns=["a", "b"]).features.tolist() == [[1, 2], [3, 4]]


def test_labels_written_alike_as_numbers_stay_apart_and_keep_their_names(tmp_path):
    """Tester (F2): '007' and '7' were read as the number 7, one class, its names gone."""
    path = tmp_path / "t.csv"
    path.write_text("y,a\n007,0.1\n7,0.2\n007,0.3\n7.0,0.4\nb,0.5\n")
    table = read_table(path, label_column="y")
    assert table.classes == ("007", "7", "7.0", "b")  # sorted text, as documented
    assert table.labels.tolist() == [0, 1, 0, 2, 3]
    path.write_text("y,a\n007,0.1\n008,0.2\n007,0.3\n")  # a code throughout
    assert read_table(path, label_column="y").classes == ("007", "008")
    # integers written plainly stay integers (negative too), as before
    path.write_text("y,a\n-1,0.1\n1,0.2\n10,0.3\n")
    table = read_table(path, label_column="y")
    assert table.classes is None and table.labels.tolist() == [-1, 1, 10]
    path.write_text("y,a\n1.000000000000000000e+00,0.1\n0.000000000000000000e+00,0.2\n")
    table = read_table(path, label_column="y")  # np.savetxt's labels: whole numbers
    assert table.classes is None and table.labels.tolist() == [1, 0]
    path.write_text("y,a\n1,0.1\n1.000000000000000000e+00,0.2\n")  # one number, two ways
    assert read_table(path, label_column="y").classes == ("1", "1.000000000000000000e+00")


def test_pandas_missing_value_words_are_class_names_in_a_label_column(tmp_path):
    """Tester EZ: a severity column of None, Mild, Severe was refused as "a missing label"
    (pandas reads None, NA, null, nan as NaN by default); an empty cell is still missing,
    and the feature columns keep pandas' missing values (NA there is refused as NaN)."""
    path = tmp_path / "t.csv"
    path.write_text("y,a\nNone,0.1\nMild,0.2\nSevere,0.3\nNA,0.4\nnull,0.5\nNone,0.6\n")
    table = read_table(path, label_column="y")
    assert table.classes == ("Mild", "NA", "None", "Severe", "null")  # sorted text
    assert table.labels.tolist() == [2, 0, 3, 1, 4, 2]
    path.write_text("y,a\nNone,0.1\n,0.2\n")
    with pytest.raises(TableError, match="missing label in data row 1, 0-based, header not"):
        read_table(path, label_column="y")
    path.write_text("y,a\nNone,0.1\nMild,NA\n")
    with pytest.raises(TableError, match="1 missing .NaN."):
        read_table(path, label_column="y")


@pytest.mark.parametrize(
    "content",
    [
        '"a","b","sev"\n"1",1,2,"x"\n"2",3,4,"y"\n"3",5,6,"x"\n',
        "a,b,sev\n0,1,2,x\n1,3,4,y\n2,5,6,x\n",
    ],
    ids=["r-row-names", "integer-row-names"],
)
def test_a_csv_with_row_names_keeps_its_labels(tmp_path, content):
    """Tester FA: R's write.table writes one field more than the header (row names, which
    pandas takes as the index); the label column re-read as text aligned by that index and
    every label was lost. Expected: the file's labels and features."""
    path = tmp_path / "r.csv"
    path.write_text(content)
    table = read_table(path, label_column="sev")
    assert table.classes == ("x", "y") and table.labels.tolist() == [0, 1, 0]
    assert table.features.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_integer_labels_are_kept_exactly_above_two_to_the_53(tmp_path):
    """Tester AH: labels went through float64, so 2**53 + 1 and 2**53 were one class and
    2**63 − 1 became −2**63. Expected values: the integers written in the file."""
    import pandas as pd

    big = [2**53 + 1, 2**53, 2, 2**63 - 1]
    frame = pd.DataFrame({"a": np.arange(8.0), "y": big * 2})
    frame.to_csv(tmp_path / "big.csv", index=False)
    frame.to_parquet(tmp_path / "big.parquet")
    for name in ("big.csv", "big.parquet"):
        table = read_table(tmp_path / name, label_column="y")
        assert table.labels.tolist() == big * 2, name
    frame["y"] = ["1"] * 7 + [str(2**63)]
    frame.to_csv(tmp_path / "over.csv", index=False)
    with pytest.raises(TableError, match=r"label_column: 'y' .*9223372036854775808.*64-bit"):
        read_table(tmp_path / "over.csv", label_column="y")
