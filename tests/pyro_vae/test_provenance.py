import json

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.provenance import DataChangedError, check_unchanged, checksum, file_provenance


def test_the_checksum_covers_names_and_sizes_not_contents(tmp_path):
    a = tmp_path / "x.npy"
    np.save(a, np.zeros((4, 3), np.uint8))
    before = checksum(tmp_path, [a])
    np.save(a, np.ones((4, 3), np.uint8))  # same size: not noticed (documented)
    assert checksum(tmp_path, [a]) == before
    np.save(a, np.ones((5, 3), np.uint8))
    assert checksum(tmp_path, [a]) != before
    record = file_provenance(a, [a], (5, 3), np.dtype(np.uint8))
    assert record["path"] == str(a.resolve()) and record["shape"] == [5, 3]
    assert record["dtype"] == "uint8" and record["checksum"].startswith("sha256:")


def test_a_changed_checksum_is_refused_unless_allowed():
    old, new = {"path": "/d", "checksum": "sha256:a"}, {"checksum": "sha256:b"}
    with pytest.raises(DataChangedError, match="--allow-changed-data.*allow_changed_data=True"):
        check_unchanged(old, new, allow=False)
    check_unchanged(old, new, allow=True)
    check_unchanged(None, new, allow=False)  # a config.json from before provenance
    check_unchanged(old, dict(old), allow=False)


def test_the_refusal_names_the_files_that_went_came_or_changed_size(tmp_path):
    # tester B's F8: x.labels.npy deleted, and the refusal named only two checksums
    x, labels = tmp_path / "x.npy", tmp_path / "x.labels.npy"
    np.save(x, np.zeros((4, 3), np.uint8))
    np.save(labels, np.zeros(4, np.int64))
    recorded = file_provenance(x, [x, labels], (4, 3), np.dtype(np.uint8))
    assert recorded["files"] == {"x.npy": x.stat().st_size, "x.labels.npy": labels.stat().st_size}
    labels.unlink()
    np.save(x, np.zeros((5, 3), np.uint8))
    current = file_provenance(x, [x], (5, 3), np.dtype(np.uint8))
    sizes = f"{x.stat().st_size} bytes, not {recorded['files']['x.npy']}"
    with pytest.raises(DataChangedError, match=rf"changed since the run was trained \(x\.labels"
                       rf"\.npy is gone; x\.npy has {sizes}\)"):  # fmt: skip
        check_unchanged(recorded, current, allow=False)
    del recorded["files"]  # recorded before the list was: the checksums alone, as before
    with pytest.raises(DataChangedError, match=r"changed since the run was trained: its files'"):
        check_unchanged(recorded, current, allow=False)


FAST = ["--latent-dim", "2", "--hidden", "8", "--no-progress", "--ll-samples", "2"]


def test_evaluate_refuses_a_run_whose_array_changed_and_the_flag_lets_it_through(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    run = tmp_path / "run"
    fit = ["fit", "--data", str(data), "--epochs", "1", "--batch-size", "8", "--out", str(run)]
    assert main([*fit, *FAST]) == 0
    recorded = json.loads((run / "config.json").read_text())["data"]["provenance"]
    assert recorded["path"] == str(data.resolve()) and recorded["shape"] == [30, 4, 4]
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 0
    capsys.readouterr()
    np.save(data, np.random.default_rng(0).integers(0, 256, (31, 4, 4), dtype=np.uint8))
    for command in (["evaluate", str(run)], ["sample", str(run)], ["diagnose", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "changed since the run was trained" in err and "--allow-changed-data" in err
    before = json.loads((run / "metrics.json").read_text())["test"]
    assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-data"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == before  # the run's own results are kept
    assert metrics["test_on_changed_data"]["provenance"]["shape"] == [31, 4, 4]
    assert "test_on_changed_data" in capsys.readouterr().out


MODEL_FILE = """
import pyro, torch, pyro.distributions as dist
from torch import nn


class Mine(nn.Module):
    def __init__(self, x_dim=16):
        super().__init__()
        self.dec, self.enc = nn.Linear(2, x_dim), nn.Linear(x_dim, 4)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Laplace(self.dec(z).sigmoid(), 0.3).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))
"""


def test_a_model_file_edited_after_the_run_is_refused_and_the_flag_keeps_the_run_s_results(
    tmp_path, capsys
):
    # tester F's F1: the Laplace likelihood edited to a Normal of the same parameters was
    # evaluated, and a resumed run went on training it, with no word
    data, code = tmp_path / "x.npy", tmp_path / "mine.py"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    code.write_text(MODEL_FILE)
    run = tmp_path / "run"
    fit = ["fit", "--model", f"{code}:Mine", "--data", str(data), "--likelihood", "gaussian"]
    assert (
        main([*fit, "--epochs", "1", "--out", str(run), "--no-progress", "--ll-samples", "2"]) == 0
    )
    recorded = json.loads((run / "config.json").read_text())["code"]
    assert recorded["model"]["file"] == str(code.resolve()) and "guide" not in recorded
    before = json.loads((run / "metrics.json").read_text())["test"]
    code.write_text(MODEL_FILE.replace("dist.Laplace(", "dist.Normal("))
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["fit", "--resume", str(run), "--epochs", "2"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"model: {code.resolve()} changed since the run was trained" in err
        assert "--allow-changed-code" in err
    assert main(["evaluate", str(run), "--ll-samples", "2", "--allow-changed-code"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == before  # the run's own results are kept
    assert metrics["test_on_changed_code"]["elbo"] != before["elbo"]  # another likelihood
