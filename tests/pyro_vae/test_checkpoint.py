import json
import math
import os
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

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
from pyro_vae.train import TrainConfig
from tests.pyro_vae.killed_writer import killed_in_staging
from tests.pyro_vae.unprivileged import unprivileged


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


def test_a_folder_a_live_fit_is_training_into_is_named_as_such(tmp_path):
    """Tester ED: a folder whose fit had not finished its first epoch was asked whether
    its training had been interrupted."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pyro_vae.checkpoint import RunFolder; "
         "held = RunFolder(sys.argv[1]).claim(); print('held', flush=True); time.sleep(60)",
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        live = rf"a fit \(pid {holder.pid}\) is training into it now and has not finished"
        with pytest.raises(RunFolderError, match=live):
            RunFolder(tmp_path).read_config()
    finally:
        holder.kill()
        holder.wait()


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": FORMAT, "payload": Arbitrary()}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunFolderError, match="pickle-free"):
        RunFolder(tmp_path).load_checkpoint()


def test_missing_corrupt_and_foreign_run_folders(tmp_path):
    with pytest.raises(RunFolderError, match="is not a directory"):
        RunFolder(tmp_path / "nope").read_config()
    never = r"has no config.json; it holds none of a run's files .* so it is not a run folder"
    with pytest.raises(RunFolderError, match=never):  # tester EC: asked if it was interrupted
        RunFolder(tmp_path).read_config()
    (tmp_path / ".lock").touch()  # a lock no live process holds (tester ED)
    with pytest.raises(RunFolderError, match=never):
        RunFolder(tmp_path).read_config()
    with RunFolder(tmp_path).claim() as held:  # this process's own (a resume's): the same
        with pytest.raises(RunFolderError, match=never):
            held.run.read_config()
    (tmp_path / ".lock").unlink()
    (tmp_path / "metrics.json").write_text("{}")  # a fit from Python writes no config.json
    with pytest.raises(RunFolderError, match="written by pyro_vae.fit from Python"):
        RunFolder(tmp_path).read_config()
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        RunFolder(tmp_path).read_config()
    # another file's bytes (a PNG written over it): named too, not a bare codec error
    (tmp_path / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(RunFolderError, match="config.json is not valid JSON"):
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


def test_a_claimed_folder_is_refused_to_a_second_claimant_and_freed_by_death(tmp_path):
    import subprocess
    import sys

    from pyro_vae.checkpoint import RunInUseError

    run = RunFolder(tmp_path / "run")
    with run.claim():
        with pytest.raises(
            RunInUseError, match=f"in use by another pyro-vae process \\(pid {os.getpid()}\\)"
        ):
            run.claim()
    run.claim().release()  # released: free again
    # a holder killed with SIGKILL frees the folder: the kernel drops its flock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pyro_vae.checkpoint import RunFolder; "
            f"RunFolder({str(run.path)!r}).claim(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            run.claim()
    finally:
        holder.kill()
        holder.wait()
    run.claim().release()


def test_a_refused_claim_on_a_new_path_leaves_nothing_behind(tmp_path):
    run = RunFolder(tmp_path / "new")
    run.claim().release()
    assert not run.path.exists()
    # nor the parents it made for it (tester BX: a refused `fit --out runs/a` left runs/),
    # while a parent another file went into meanwhile stays
    deep = RunFolder(tmp_path / "runs" / "group" / "a")
    deep.claim().release()
    assert list(tmp_path.iterdir()) == []
    claim = RunFolder(tmp_path / "runs" / "group" / "a").claim()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    claim.release()
    assert [p.name for p in tmp_path.rglob("*")] == ["runs", "notes.txt"]
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunFolderError, match="is a file; expected a run folder"):
        RunFolder(file).claim()


def test_a_full_disk_is_refused_in_one_line_before_any_work_and_the_claim_let_go(
    tmp_path, monkeypatch
):
    """Tester BW: on a full disk (a tmpfs filled up), ``fit`` failed in a traceback at the
    claim's write of its pid, and left a new folder holding its lock files: a full disk
    still makes empty files, so the writability check passed. Simulated here by the
    system calls failing as a full disk fails them (ENOSPC)."""
    import errno
    import os

    from pyro_vae.checkpoint import DiskFullError, check_writable

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", full)
        with pytest.raises(DiskFullError, match=r"the disk is full .*nothing was written"):
            check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # its probe file removed
    monkeypatch.setattr(os, "pwrite", full)  # room for the check's byte, none for the pid
    with pytest.raises(DiskFullError, match=r"\.lock: the disk is full"):
        RunFolder(tmp_path / "runs" / "a").claim()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"epochs": 5}, r"epochs = 5 \(of type int\); expected a list"),
        ({"epochs": {}}, r"epochs = \{\} \(of type dict\); expected a list"),
        ({"epochs": [1]}, r"epochs\[0\] = 1 \(of type int\); expected an object"),
        ({"epochs": [{"epoch": 1, "val_elbo": "-20"}]}, r"epochs\[0\]\.val_elbo = '-20'"),
        ({"test": "x"}, r"test = 'x' \(of type str\); expected an object of test metrics"),
        ({"test": {"elbo": "NaN"}}, r"test\.elbo = 'NaN' \(of type str\); expected a number"),
        ({"test_previous": [{"kl": True}]}, r"test_previous\[0\]\.kl = True"),
        ({"best_epoch": "3"}, r"best_epoch = '3'"),
        # tester BY: beyond float's range, and stretches that are not objects
        ({"test": {"elbo": 10**400}}, r"test\.elbo = 1000000000.*\.\.\. \(401 characters\)"),
        ({"best_epoch": 10**30}, r"best_epoch = 10{30} \(of type int\)"),
        ({"processes_by_epoch": [5]}, r"processes_by_epoch\[0\] = 5 \(of type int\)"),
        ({"processes_by_epoch": "x"}, r"processes_by_epoch = 'x' \(of type str\)"),
        (
            {"processes_by_epoch": [{"from_epoch": "1", "processes": 1}]},
            r"processes_by_epoch\[0\]\.from_epoch = '1'",
        ),
    ],
)
def test_metrics_json_of_other_types_is_refused_naming_the_field(tmp_path, edit, message):
    """Tester BW: valid JSON of other types than its readers take (``"epochs": 5``,
    ``"test": "x"``) crashed ``compare`` in a traceback, and a test ELBO of ``"NaN"``
    failed ``evaluate`` after its whole evaluation, naming neither file nor field. A
    record as fit writes it, nulls and JSON's NaN included, is read as it is."""
    import json

    epoch = {"epoch": 1, "train_elbo": -21.5, "val_elbo": None, "seconds": 0.1}
    good = {"epochs": [epoch], "best_epoch": 1,
            "test": {"elbo": float("nan"), "evaluated_on": "test set"}}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(good))
    assert RunFolder(tmp_path).read_metrics()["best_epoch"] == 1
    (tmp_path / "metrics.json").write_text(json.dumps({**good, **edit}))
    with pytest.raises(RunFolderError, match=message):
        RunFolder(tmp_path).read_metrics()


def test_a_claim_released_unwritten_leaves_a_folder_of_other_files_as_it_found_it(tmp_path):
    # tester BB's cases: a refused `fit --out DATA` left .lock and .metrics.lock in DATA
    data = tmp_path / "data"
    data.mkdir()
    (data / "images.npy").write_bytes(b"x")
    RunFolder(data).claim().release()
    assert sorted(p.name for p in data.iterdir()) == ["images.npy"]
    # a claim that wrote the run keeps its lock file, emptied: it names no holder now
    with RunFolder(data).claim():
        (data / "config.json").write_text("{}")
    written = {".lock", ".metrics.lock", "config.json", "images.npy"}
    assert {p.name for p in data.iterdir()} == written
    assert (data / ".lock").read_bytes() == b""


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    from pyro_vae.checkpoint import atomic_path

    run = RunFolder(tmp_path)
    stale = tmp_path / ".metrics.json.abc123.tmp"
    stale.write_text("{half")
    with atomic_path(tmp_path / "figure.png") as live:
        live.write_bytes(b"being written")
        removed = run.remove_stale_temporaries()
        assert removed == [stale] and live.exists()
    assert (tmp_path / "figure.png").read_bytes() == b"being written"
    assert not stale.exists()


def test_a_staging_folder_is_removed_after_use_and_after_its_writer_was_killed(tmp_path):
    from pyro_vae.checkpoint import remove_stale_staging_folders, staging_folder

    with staging_folder(tmp_path, "diagnose") as staging:
        (staging / "khat.csv").write_text("k\n")
        assert staging.name.startswith(".diagnose-") and staging.name.endswith(".tmp")
    assert list(tmp_path.iterdir()) == []  # removed, with what was left in it

    killed_in_staging(tmp_path)
    (stale,) = tmp_path.iterdir()
    assert (stale / "diagnostics.nc").read_bytes() == b"half"  # what a SIGKILL leaves
    not_ours = tmp_path / ".diagnose-mine.tmp"  # no .held: not a staging folder's
    not_ours.mkdir()
    with staging_folder(tmp_path, "diagnose") as live:  # a live writer's folder stays
        assert remove_stale_staging_folders(tmp_path, "diagnose") == [stale]
        assert live.is_dir() and not_ours.is_dir()
    assert not stale.exists()


def test_a_fit_removes_a_killed_writer_s_staging_folder_and_leaves_a_live_one(tmp_path):
    from pyro_vae.checkpoint import staging_folder

    run = RunFolder(tmp_path)
    killed_in_staging(tmp_path)
    (stale,) = tmp_path.iterdir()
    with staging_folder(tmp_path, "diagnose") as live:
        assert run.remove_stale_temporaries() == [stale]
        assert live.is_dir()


def test_a_full_disk_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    from pyro_vae.checkpoint import DiskFullError

    run = RunFolder(tmp_path)
    run.save_checkpoint({"epoch": 1})

    def no_space(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError, match="the disk is full .* the previous checkpoint.pt"):
        run.save_checkpoint({"epoch": 2})
    monkeypatch.undo()
    assert run.load_checkpoint()["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_concurrent_metrics_updates_lose_nothing(tmp_path):
    # Two processes merging 40 keys each into one metrics.json: with a read-modify-write
    # and no lock, one process's key is lost whenever the other wrote in between.
    import subprocess
    import sys

    code = (
        "import sys; from pyro_vae.checkpoint import RunFolder\n"
        "run = RunFolder(sys.argv[1])\n"
        "for i in range(40): run.update_metrics(**{f'{sys.argv[2]}{i}': i})\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), prefix])
        for prefix in ("a", "b")
    ]
    assert [p.wait() for p in procs] == [0, 0]
    assert len(RunFolder(tmp_path).read_metrics()) == 80


def test_an_unreadable_checkpoint_is_refused_in_one_line_without_torch_s_advice(tmp_path):
    import pickle
    import warnings

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(object))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note about the pickle protocol
        with pytest.raises(RunFolderError) as info:
            RunFolder(tmp_path).load_checkpoint()
    message = str(info.value)
    assert "could not be read as a pickle-free checkpoint (" in message
    assert "\n" not in message and "weights_only" not in message and "trust" not in message


@pytest.mark.parametrize("kept", [100, 5000])
def test_a_checkpoint_cut_short_is_said_to_be_so(tmp_path, kept):
    """Tester P: a checkpoint cut at 5,000 bytes was refused with "[Errno 22] Invalid
    argument" alone, which read like a pickle problem."""
    whole = tmp_path / "whole"
    torch.save({"w": torch.randn(2000)}, whole)
    (tmp_path / "checkpoint.pt").write_bytes(whole.read_bytes()[:kept])
    with pytest.raises(RunFolderError, match="the file is cut short or damaged") as info:
        RunFolder(tmp_path).load_checkpoint()
    assert "internal miniz error" not in str(info.value)


def saved_as_if_on(device: str, monkeypatch):
    """Make ``torch.save`` record every tensor as living on ``device`` (a GPU's checkpoint,
    written on this CPU machine): the location tag is what ``torch.load`` restores to."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: device)


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run")
    with monkeypatch.context() as m:
        saved_as_if_on("cuda:0", m)
        run.save_checkpoint({"epoch": 1, "model": {"w": torch.ones(2)}, "rng": capture_rng_state()})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # what map_location is there for
            torch.load(run.file("checkpoint.pt"), weights_only=True)
    loaded = run.load_checkpoint()
    assert loaded["model"]["w"].device.type == "cpu" and torch.equal(
        loaded["model"]["w"], torch.ones(2)
    )
    restore_rng_state(loaded["rng"])
    on_meta = run.load_checkpoint(map_location="meta")  # any device asked for
    assert on_meta["model"]["w"].is_meta


class FakeCuda:
    """``torch.cuda``'s RNG calls on a machine with ``count`` GPUs, recorded."""

    def __init__(self, count):
        self.count, self.states, self.set = (
            count,
            [torch.full((4,), i, dtype=torch.uint8) for i in range(count)],
            None,
        )

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(self.states))
        monkeypatch.setattr(
            torch.cuda, "set_rng_state_all", lambda states: setattr(self, "set", states)
        )


def test_every_cuda_device_s_rng_state_is_saved_and_restored(monkeypatch):
    assert ("cuda" in capture_rng_state()) == torch.cuda.is_available()
    with monkeypatch.context() as m:
        FakeCuda(2).install(m)
        state = capture_rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[0] * 4, [1] * 4]
    with monkeypatch.context() as m:  # restored on a machine with one GPU: the first state
        one = FakeCuda(1)
        one.install(m)
        restore_rng_state(state)
    assert [s.tolist() for s in one.set] == [[0] * 4]
    with monkeypatch.context() as m:  # and on a machine without one: the CPU's alone
        m.setattr(torch.cuda, "is_available", lambda: False)
        m.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("no CUDA here"))
        restore_rng_state(state)


def test_an_edited_config_is_refused_by_its_first_differing_setting(tmp_path):
    from pyro_vae.checkpoint import flat_settings, listed

    assert listed(list("abcdef")) == "a, b, c, d, …" and listed(["a"]) == "a"
    assert flat_settings({"a": {"b": 1, "c": {"d": None}}, "e": [1]}) == {
        "a.b": 1, "a.c.d": None, "e": [1]}  # fmt: skip
    # a file name's dots are not keys' (tester U: data.provenance.files.dig.labels.npy)
    files = {"data": {"files": {"dig.labels.npy": "ab12"}}}
    assert flat_settings(files) == {"data.files['dig.labels.npy']": "ab12"}
    run = RunFolder(tmp_path)
    trained = {"schema_version": 3, "train": {"lr": 0.001, "epochs": 4}, "data": {"x": 1}}
    state = {"config": trained}
    resumed = {"format": "pyro_vae.run/1", **trained, "train": {"lr": 0.001, "epochs": 9}}
    run.refuse_edited_config(resumed, state)  # what a resume may change
    edited = {**resumed, "train": {"lr": 0.01, "epochs": 4}}
    with pytest.raises(RunFolderError, match=r"has train.lr = 0.01, but the weights .* 0.001"):
        run.refuse_edited_config(edited, state)
    # either file may be the one that changed (tester BW: another run's checkpoint copied
    # in was blamed on config.json alone)
    with pytest.raises(RunFolderError, match=r"or checkpoint\.pt was replaced by another run's"):
        run.refuse_edited_config(edited, state)
    run.refuse_edited_config(edited, {})  # a checkpoint without a config: nothing to compare
    run.refuse_edited_config(edited, {"config": {**trained, "schema_version": 2}})


def test_an_edited_config_beside_a_checkpoint_of_an_older_schema_is_refused(tmp_path):
    """Tester EQ: a checkpoint written under schema 3 beside a schema-4 config.json (a
    resume stopped before its first checkpoint rewrites config.json) was let through
    unchecked, and evaluate scored threshold-0.5 weights at an edited 0.3 (4.65 nats
    lower, blamed on Monte Carlo draws). Both are compared as this version reads them:
    schema 3's `score` with the neural control variate is schema 4's with
    normalize_variance on, and keys an older file leaves out (`data.crop`, `train.beta`,
    `train.precision`, added later) are at their defaults (tester ER: read as None, a valid
    old run was refused for good)."""
    from pyro_vae.run_config import (
        DataConfig,
        EstimatorConfig,
        ModelConfig,
        RunConfig,
        settings_as_read,
    )

    run = RunFolder(tmp_path)
    estimator = EstimatorConfig("score", {"control_variate": "neural"})
    current = RunConfig(ModelConfig("models.vae:VAE"), DataConfig(), estimator=estimator)
    trained = {**current.to_json(), "schema_version": 3}  # as an older version wrote it
    trained["estimator"] = {"name": "score", "options": {"control_variate": "neural"}}
    trained["data"] = {k: v for k, v in trained["data"].items() if k != "crop"}
    trained["train"] = {k: v for k, v in trained["train"].items() if k not in ("beta", "precision")}
    written = {"format": "pyro_vae.run/1", **settings_as_read(trained)}  # a resume's rewrite
    assert written["estimator"]["options"]["normalize_variance"] is True  # as it trained
    assert written["data"]["crop"] is False and written["train"]["beta"] == 1.0
    run.refuse_edited_config(written, {"config": trained}, settings_as_read)
    edited = {**written, "data": {**written["data"], "threshold": 0.3}}
    with pytest.raises(RunFolderError, match=r"has data.threshold = 0.3, but the weights .* 0.5"):
        run.refuse_edited_config(edited, {"config": trained}, settings_as_read)
    unreadable = {"config": {"schema_version": "x"}}  # refused where config.json is read
    run.refuse_edited_config(edited, unreadable, settings_as_read)


@pytest.mark.parametrize("code", ["EACCES", "EPERM", "EROFS", "EDQUOT"])
def test_a_folder_that_cannot_be_written_says_so_and_keeps_the_previous_file(
    tmp_path, monkeypatch, code
):
    # tester U: a fit whose folder became unwritable ended in a 40-line traceback from the
    # checkpoint's temporary file; the system's refusal is now one line, as a full disk's
    import errno

    from pyro_vae.checkpoint import FolderNotWritableError

    run = RunFolder(tmp_path)
    run.save_checkpoint({"epoch": 1})

    def refused(src, dst):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(dst))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(FolderNotWritableError) as err:
        run.save_checkpoint({"epoch": 2})
    monkeypatch.undo()
    assert f"{tmp_path} cannot be written ({os.strerror(getattr(errno, code))})" in str(err.value)
    assert "the previous checkpoint.pt, if there was one, is intact" in str(err.value)
    assert run.load_checkpoint()["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_write_into_a_path_through_a_file_fails_for_real_in_one_line(tmp_path):
    from pyro_vae.checkpoint import FolderNotWritableError, check_writable

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FolderNotWritableError, match="cannot be written \\(Not a directory\\)"):
        RunFolder(tmp_path / "file" / "run").save_checkpoint({"epoch": 1})
    with pytest.raises(FolderNotWritableError, match="cannot create or write to .*run \\(Not a"):
        RunFolder(tmp_path / "file" / "run").update_metrics(epochs=[])
    with pytest.raises(FolderNotWritableError, match="cannot create or write to .*file \\(Not"):
        check_writable(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_read_only_folder_is_refused_for_real_by_the_check_and_the_claim(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    RunFolder(run).save_checkpoint({"epoch": 1})
    (run / ".lock").write_text("")  # a lock file it may open is not a folder it may write
    run.chmod(0o555)
    code = (
        "import sys; from pyro_vae.checkpoint import RunFolder, RunFolderError, check_writable\n"
        "for act in (lambda: check_writable(sys.argv[1]), RunFolder(sys.argv[1]).claim):\n"
        "    try: act()\n"
        "    except RunFolderError as err: print(err)\n"
    )
    try:
        done = subprocess.run(
            unprivileged(sys.executable, "-c", code, str(run)), capture_output=True, text=True
        )
    finally:
        run.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()
        == [f"run: cannot create or write to {run} (Permission denied)"] * 2
    )
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.pt"]


class _LimitedFile:
    """A binary file whose writes past ``limit`` bytes fail as the system's do under a
    file-size limit (``ulimit -f``): ``OSError(EFBIG)``."""

    def __init__(self, path, mode, limit):
        self._file, self._limit = open(path, mode), limit  # noqa: SIM115

    def write(self, data):
        import errno

        if self._file.tell() + len(data) > self._limit:
            raise OSError(errno.EFBIG, "File too large")
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_a_failed_checkpoint_write_names_the_file_and_reason_and_keeps_the_old_one(
    tmp_path, monkeypatch
):
    # tester: torch.save turns the stream's OSError [Errno 27] into "RuntimeError: [enforce
    # fail at inline_container.cc] unexpected pos", which left a raw traceback
    from pyro_vae.checkpoint import FolderNotWritableError, WriteFailedError

    run = RunFolder(tmp_path)
    run.save_checkpoint({"epoch": 1})
    # mid-stream, as a file-size limit meets a large checkpoint (its first write failing
    # reaches torch.save's caller as the OSError itself)
    limited = lambda p, m: _LimitedFile(p, m, 20 if "metrics" in str(p) else 5000)  # noqa: E731
    monkeypatch.setattr("pyro_vae.checkpoint.open", limited, raising=False)
    weights = torch.zeros(10_000)
    with pytest.raises(WriteFailedError) as err:
        run.save_checkpoint({"epoch": 2, "w": weights})
    assert isinstance(err.value.__cause__, RuntimeError)  # torch.save's, mapped
    assert isinstance(err.value, FolderNotWritableError)  # the CLI reports it as one
    message = str(err.value)
    assert f"writing {tmp_path / 'checkpoint.pt'}" in message and "File too large" in message
    assert "EFBIG" in message and "ulimit -f" in message and "previous checkpoint.pt" in message
    with pytest.raises(WriteFailedError, match="metrics.json: the system refused"):
        run.update_metrics(epochs=[1, 2])
    monkeypatch.undo()
    assert run.load_checkpoint()["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".metrics.lock", "checkpoint.pt"]


def test_a_damaged_metrics_file_is_rebuilt_from_the_checkpoint_by_the_fit_holding_it(
    tmp_path, capsys
):
    # tester: a cut-short metrics.json blocked fit --resume, evaluate, sample and compare
    # ("is not valid JSON") with no next step, though checkpoint.pt holds the history
    run = RunFolder(tmp_path)
    history = [{"epoch": 1, "train_elbo": -3.0}, {"epoch": 2, "train_elbo": -2.5}]
    run.save_checkpoint({"epoch": 2, "history": history, "best": {"epoch": 2}})
    damaged = '{"epochs": [{"epoch": 1, "train_el'
    run.file("metrics.json").write_text(damaged)
    with pytest.raises(RunFolderError, match=r"not valid JSON .*`pyro-vae fit --resume .*` rebu"):
        RunFolder(tmp_path).read_metrics()  # a reader (evaluate, compare) changes nothing
    assert run.file("metrics.json").read_text() == damaged
    with run.claim():
        assert run.read_metrics() == {"epochs": history, "best_epoch": 2}
    assert "rebuilt its 2 epochs from" in capsys.readouterr().out
    assert RunFolder(tmp_path).read_metrics()["epochs"] == history
    assert run.file("metrics.json.damaged").read_text() == damaged  # nothing saved is lost
    other = RunFolder(tmp_path / "new")
    other.path.mkdir()
    other.file("metrics.json").write_text("[")
    with other.claim(), pytest.raises(RunFolderError, match="no checkpoint.pt to rebuild it"):
        other.read_metrics()


def _two_epoch_checkpoint(run: RunFolder, **extra) -> dict:
    """A checkpoint of 2 epochs, trained on 2 processes then 1 (as a resume with
    --nproc 1 records it), its plate found as "data"; ``extra``: more of its keys."""
    state = {
        **extra,
        "epoch": 2,
        "history": [{"epoch": 1, "train_elbo": -9.0}, {"epoch": 2, "train_elbo": -8.0}],
        "best": {"epoch": 2, "val_elbo": -8.5},
        "processes_by_epoch": [
            {"from_epoch": 1, "processes": 2},
            {"from_epoch": 2, "processes": 1},
        ],
        "fit_info": {"data_plate": "data", "validation": "elbo"},
    }
    run.save_checkpoint(state)
    return run.load_checkpoint()


def test_a_deleted_config_json_is_said_so_and_written_again_from_the_checkpoint(tmp_path):
    """Tester BW: a command-line run whose config.json was deleted was said to be a fit
    from Python, and the user sent to evaluate it in Python; its checkpoint holds a copy
    of the config, which ``restore_config`` writes back, byte for byte what it was."""
    run = RunFolder(tmp_path / "run")
    config = {"model": {"spec": "models.vae:VAE"}, "train": {"lr": 0.001}}
    with run.claim():
        run.write_config(config)
        _two_epoch_checkpoint(run)
    written = run.file("config.json").read_bytes()
    with pytest.raises(RunFolderError, match="nothing to restore"):
        run.restore_config()
    run.file("config.json").unlink()
    with pytest.raises(RunFolderError, match=r"has no config\.json; its checkpoint\.pt holds "
                       r"the settings .* deleted or moved: .*\.restore_config\(\)"):  # fmt: skip
        run.read_config()
    assert run.restore_config() == run.file("config.json")
    assert run.file("config.json").read_bytes() == written
    # a fit from Python keeps no copy: said so, as before, and nothing to restore
    # tester CJ: its checkpoint's "config" is the fit's TrainConfig, which was written
    # as config.json, and evaluate then refused the folder's "unknown keys"
    python = RunFolder(tmp_path / "python")
    with python.claim():
        _two_epoch_checkpoint(python, config=asdict(TrainConfig(epochs=2)))
    with pytest.raises(RunFolderError, match="written by pyro_vae.fit from Python"):
        python.read_config()
    with pytest.raises(RunFolderError, match="holding a copy of config.json"):
        python.restore_config()
    assert not python.file("config.json").exists()


def test_processes_by_epoch_appends_a_stretch_where_the_count_changes():
    from pyro_vae.checkpoint import processes_by_epoch

    assert processes_by_epoch([], 1, 2) == [{"from_epoch": 1, "processes": 2}]
    two = [{"from_epoch": 1, "processes": 2}]
    assert processes_by_epoch(two, 4, 2) == two  # resumed on as many: one stretch
    assert processes_by_epoch(two, 4, 1) == [*two, {"from_epoch": 4, "processes": 1}]
    # a stretch from an epoch the resume trains again (not kept) is replaced
    three = [*two, {"from_epoch": 4, "processes": 3}]
    assert processes_by_epoch(three, 4, 1) == [*two, {"from_epoch": 4, "processes": 1}]


def test_a_rebuilt_metrics_json_keeps_the_processes_by_epoch_and_the_fit_record(tmp_path):
    """Tester F4: metrics.json rebuilt from the checkpoint lost ``processes_by_epoch``
    (which processes trained which epochs): the checkpoint records it, and the rebuild
    writes it back, with ``processes`` (the last stretch's) and the fit's plate."""
    run = RunFolder(tmp_path / "run")
    with run.claim():
        state = _two_epoch_checkpoint(run)
        run.file("metrics.json").write_text("{")
        metrics = run.read_metrics()
    assert metrics["processes_by_epoch"] == state["processes_by_epoch"]
    assert metrics["processes"] == 1 and metrics["data_plate"] == "data"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and metrics["best_epoch"] == 2
    assert json.loads(run.file("metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    "text",
    ["{}", '{"processes": 1}', '{"epochs": [{"epoch": 1}]}'],  # {"epochs": {}}: below
)
def test_metrics_json_without_the_checkpoint_s_epochs_is_damaged(tmp_path, text):
    """Tester F5: a metrics.json of ``{}`` parsed, and a resumed run recorded 0 epochs.
    Read beside its checkpoint, one with no ``epochs`` list, or another count of epochs
    than the checkpoint's 2, is damaged: rebuilt by the fit that holds the folder,
    refused to any other reader (nothing changed), read as it is without the checkpoint."""
    run = RunFolder(tmp_path / "run")
    with run.claim():
        state = _two_epoch_checkpoint(run)
    run.file("metrics.json").write_text(text)
    assert run.read_metrics() == json.loads(text)  # without the checkpoint: as it is
    with pytest.raises(RunFolderError, match=r"records 2; .*fit --resume"):
        run.read_metrics(state)
    assert run.file("metrics.json").read_text() == text
    with run.claim():
        metrics = run.read_metrics(state)
    assert len(metrics["epochs"]) == 2 and metrics["best_epoch"] == 2
    assert run.file("metrics.json.damaged").read_text() == text
    with run.claim():  # the rebuilt file is whole: read as it is
        assert run.read_metrics(state) == metrics


def test_metrics_json_an_epoch_behind_the_checkpoint_catches_up_keeping_its_blocks(
    tmp_path, capsys
):
    """The checkpoint is written before metrics.json, so a stop between the two writes
    (tester DT: a Ctrl-C at the end of epoch 85) leaves a whole metrics.json of one epoch
    fewer. Rebuilt as damaged, it lost the test, diagnostics and earlier test blocks only
    it held; it now takes the checkpoint's history and keeps every other field. A reader
    without the folder reads the same, and changes nothing."""
    run = RunFolder(tmp_path / "run")
    with run.claim():
        state = _two_epoch_checkpoint(run)
    blocks = {
        "test": {"elbo": -8.7, "weights": "best"},
        "test_previous": [{"elbo": -9.1}],
        "diagnostics": {"khat": 0.4},
    }
    lagging = {"epochs": state["history"][:1], "best_epoch": 1, "processes": 2, **blocks}
    run.file("metrics.json").write_text(json.dumps(lagging))
    expected = {**lagging, "epochs": state["history"], "best_epoch": 2, "processes": 1,
                "processes_by_epoch": state["processes_by_epoch"], **state["fit_info"]}  # fmt: skip
    assert run.read_metrics(state) == expected
    assert json.loads(run.file("metrics.json").read_text()) == lagging  # unchanged
    with run.claim():
        assert run.read_metrics(state) == expected
    assert "held 1 of the 2 epochs" in capsys.readouterr().out
    assert json.loads(run.file("metrics.json").read_text()) == expected
    assert not run.file("metrics.json.damaged").exists()
    nan = {**state, "history": [{"epoch": 1, "val_elbo": math.nan}, *state["history"][1:]]}
    run.file("metrics.json").write_text(json.dumps({**lagging, "epochs": nan["history"][:1]}))
    assert run.read_metrics(nan)["test"] == blocks["test"]  # a NaN equals itself as written
    other = {**lagging, "epochs": [{"epoch": 1, "train_elbo": -7.0}]}  # not its first epoch
    run.file("metrics.json").write_text(json.dumps(other))
    with run.claim():
        assert "test" not in run.read_metrics(state)  # damaged: rebuilt, the file kept
    assert json.loads(run.file("metrics.json.damaged").read_text()) == other


def test_a_folder_in_use_is_refused_without_taking_or_touching_it(tmp_path):
    """fit --nproc asks before its ranks start (tester AI): a held folder is refused naming
    the holder's pid; a free one is left exactly as it was (no lock taken, nothing written)."""
    import os

    from pyro_vae.checkpoint import RunInUseError

    run = RunFolder(tmp_path / "run")
    run.refuse_if_in_use()  # no folder yet: nothing to ask, nothing made
    assert not run.path.exists()
    run.path.mkdir()  # a run's folder (a refused claim leaves a folder as it found it)
    (run.path / "config.json").write_text("{}")
    (run.path / ".lock").write_text("")  # left by the fit that wrote it
    held = run.claim()
    try:
        with pytest.raises(
            RunInUseError, match=rf"in use by another pyro-vae process \(pid {os.getpid()}\)"
        ):
            run.refuse_if_in_use()
    finally:
        held.release()
    lock = run.path / ".lock"
    before = (lock.stat().st_mtime_ns, lock.read_bytes())
    run.refuse_if_in_use()
    assert (lock.stat().st_mtime_ns, lock.read_bytes()) == before
    RunFolder(run.path).claim().release()  # and it is free to take
    # a released claim empties the lock file: a command refused after claiming (a refused
    # --resume) leaves the file as it found it (tester BE saw its pid left there)
    assert lock.read_bytes() == b""
