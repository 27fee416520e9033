import json
import random

import numpy as np
import pytest
import torch

from pyro_vae.checkpoint import (
    FORMAT,
    RunFolder,
    RunFolderError,
    capture_rng_state,
    restore_rng_state,
)


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_checkpoint_round_trip_without_pickle(tmp_path):
    run = RunFolder(tmp_path / "run")
    state = {
        "epoch": 3,
        "model": {"w": torch.ones(2)},
        "rng": capture_rng_state(),
        "history": [{"epoch": 1, "train_elbo": -3.5}],
        "best": None,
    }
    run.save_checkpoint(state)
    loaded = run.load_checkpoint()
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    restore_rng_state(loaded["rng"])
    assert [p.name for p in run.path.iterdir()] == ["checkpoint.pt"]
    assert run.file("checkpoint.pt").stat().st_mode & 0o044  # readable like any other file


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.save_checkpoint({"epoch": 1})

    def dies_halfway(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"epoch": 2})
    monkeypatch.undo()
    assert run.load_checkpoint()["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


class Arbitrary:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": FORMAT, "payload": Arbitrary()}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunFolderError, match="pickle-free"):
        RunFolder(tmp_path).load_checkpoint()


def test_missing_corrupt_and_foreign_run_folders(tmp_path):
    with pytest.raises(RunFolderError, match="is not a directory"):
        RunFolder(tmp_path / "nope").read_config()
    with pytest.raises(RunFolderError, match="has no config.json"):
        RunFolder(tmp_path).read_config()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        RunFolder(tmp_path).read_config()
    (tmp_path / "config.json").write_text(json.dumps({"format": "pyro_vae.run/0"}))
    with pytest.raises(RunFolderError, match="format 'pyro_vae.run/0'.*reads 'pyro_vae.run/1'"):
        RunFolder(tmp_path).read_config()
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RunFolderError, match="could not be read"):
        RunFolder(tmp_path).load_checkpoint()
    torch.save({"format": "other"}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunFolderError, match="format 'other'"):
        RunFolder(tmp_path).load_checkpoint()


def test_metrics_are_merged(tmp_path):
    run = RunFolder(tmp_path)
    run.update_metrics(a=1)
    run.update_metrics(b={"c": 2})
    assert run.read_metrics() == {"a": 1, "b": {"c": 2}}
