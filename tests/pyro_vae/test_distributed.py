"""Data-parallel training on gloo over loopback: two ranks update as one process on the
global batch; a killed rank stops the other with a message naming it; what is refused."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae import estimators
from pyro_vae.checkpoint import RunFolder
from pyro_vae.checks import MAX_SEED
from pyro_vae.cli import main
from pyro_vae.distributed import (
    Group,
    RankLost,
    SynchronizedELBO,
    _alive,
    _timeout,
    current,
    epoch_seed,
    evaluation_seed,
    session,
)
from tests.pyro_vae.distributed_worker import (
    CASES,
    TinyVAE,
    autoguide_start,
    gradients,
    m2_train,
    train,
)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(command: list[str], world: int = 2, **popen) -> list[subprocess.Popen]:
    """``command`` in ``world`` processes with torchrun's variables, on loopback."""
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
            },
            **popen,
        )
        for rank in range(world)
    ]


def test_two_ranks_take_the_single_process_steps_and_resume_exactly(tmp_path, one_thread):
    ranks = _ranks(["-m", "tests.pyro_vae.distributed_worker", str(tmp_path)])
    expected = {name: train(name, rank=0, world=1) for name in CASES}  # meanwhile, here
    expected["gradients"] = gradients(rank=0, world=1)
    expected["m2"] = m2_train(rank=0, world=1)  # M2's classifier term on two ranks (tester AA)
    # parameters made from the first batch (an AutoDelta's init_to_median, a pyro.param of
    # the data's mean) were made from rank 0's part of it, then broadcast: the same start
    # on every rank, but not one process's
    start = autoguide_start()
    assert [p.wait(timeout=120) for p in ranks] == [0, 0]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["start"].keys() == start.keys() >= {"shift", "AutoDelta.z"}
        for key, value in start.items():
            assert torch.equal(got["start"][key], value), key
        for name in [*CASES, "gradients", "m2"]:
            assert got[name].keys() == expected[name].keys()
            for key, value in expected[name].items():
                torch.testing.assert_close(got[name][key], value, rtol=1e-5, atol=1e-6)
        for key, value in got["straight"].items():  # every rank resumes exactly
            assert torch.equal(got["resumed"][key], value), key
    # a BatchNorm's running statistics are rank 0's on every rank (as DDP broadcasts them)
    # and did move, each rank on its own rows
    for case in ("batchnorm", "batchnorm_by_rank"):  # by rank: networks called differ
        first, second = (torch.load(tmp_path / f"rank{r}.pt")[case] for r in range(2))
        for key, value in first.items():
            assert torch.equal(second[key], value), (case, key)
    moved = torch.load(tmp_path / "rank1.pt")["batchnorm"]
    assert moved["encoder.1.num_batches_tracked"] == 4
    assert moved["encoder.1.running_var"].sub(1).abs().min() > 1e-3
    torch.manual_seed(0)
    initial = TinyVAE().decoder.weight.detach()  # the weights did move: the test can fail
    assert (initial - got["trace"]["decoder$$$weight"]).abs().min() > 1e-3


LEAVES_TOGETHER = """
import sys, time
from pathlib import Path
from pyro_vae.distributed import session
out = Path(sys.argv[1])
with session() as group:
    if group.rank == 0:  # rank 0's last files (a test block, figures) come after the others'
        time.sleep(1.0)
        (out / "written").write_text(str(time.time()))
(out / f"left{group.rank}").write_text(str(time.time()))
"""


def test_every_rank_leaves_the_group_once_rank_0_is_done(tmp_path):
    # tester AA: a rank that finished first exited meanwhile and, aborting at exit in about
    # 1 run of 20, had torchrun's agent stop rank 0 before its test block was written
    ranks = _ranks(["-c", LEAVES_TOGETHER, str(tmp_path)])
    assert [p.wait(timeout=60) for p in ranks] == [0, 0]
    written = float((tmp_path / "written").read_text())
    assert float((tmp_path / "left1").read_text()) >= written


FIT_WITH_PROGRESS = """
import torch
from models.vae import VAE
from pyro_vae import TensorData, TrainConfig, fit
from pyro_vae.distributed import session
from pyro_vae.estimators import get
x = torch.bernoulli(torch.full((64, 16), 0.3), generator=torch.Generator().manual_seed(0))
with session():
    model = VAE(16, latent_dim=2, hidden_dims=(8,))
    fit(model, model.make_guide(), TensorData(x), get("trace"),
        TrainConfig(epochs=3, batch_size=16, progress=True))
"""


def test_a_python_fit_on_two_ranks_shows_rank_0_s_progress_alone():
    """Tester CS: from Python under torchrun every rank printed each epoch's line, and two
    ranks' lines ran together on one line. Expected: rank 0's three lines, rank 1 silent."""
    ranks = _ranks(["-c", FIT_WITH_PROGRESS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    lines = [[ln for ln in "".join(out).splitlines() if "epoch" in ln] for out in outputs]
    assert [len(found) for found in lines] == [3, 0], lines
    assert all(ln.startswith("epoch") and ln.count("epoch") == 1 for ln in lines[0])


def test_a_killed_rank_stops_the_other_and_the_folder_evaluates_and_resumes(tmp_path):
    run = tmp_path / "run"
    fit = ["-m", "pyro_vae", "fit", "--data", "digits", "--out", str(run), "--epochs", "60"]
    fit += ["--batch-size", "64", "--latent-dim", "2", "--hidden", "8", "--no-progress"]
    fit += ["--ll-samples", "2", "--ll-points", "10"]
    ranks = _ranks(fit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    ranks[1].send_signal(signal.SIGKILL)
    _, err = ranks[0].communicate(timeout=60)
    ranks[1].wait(timeout=10)
    assert ranks[0].returncode == 1, err
    assert "rank 1 stopped (its process is gone)" in err and "--resume" in err, err
    done = RunFolder(run).load_checkpoint()["epoch"]
    assert 1 <= done < 60
    assert main(["evaluate", str(run), "--ll-samples", "2", "--ll-points", "10"]) == 0
    assert main(["fit", "--resume", str(run), "--epochs", str(done + 1), "--no-progress"]) == 0
    assert len(RunFolder(run).read_metrics()["epochs"]) == done + 1


@pytest.mark.parametrize(
    "name, options",
    [
        ("score", {"control_variate": "ema"}),
        ("score", {"control_variate": "neural"}),
        ("tracegraph", {}),
    ],
)
def test_estimators_that_keep_state_are_refused_on_several_ranks(name, options):
    elbo = estimators.get(name, **options)
    with pytest.raises(ValueError, match="keeps state between steps.*or one process"):
        Group(0, 2).refuse_unsupported(elbo, "data", 8, 32)
    Group().refuse_unsupported(elbo, "data", 8, 32)  # one process: anything goes


@pytest.mark.parametrize("name", ["analytic-kl", "enum"])
def test_free_bits_is_refused_on_several_ranks(name):
    # tester AA: each rank held sites at λ by its own half-batch's mean KL, and the
    # averaged objective was free bits at batch size B/2, not the single-process step
    elbo = estimators.get(name, free_bits=0.5)
    with pytest.raises(ValueError, match="free_bits: 0.5 decides per batch.*or one process"):
        Group(0, 2).refuse_unsupported(elbo, "data", 8, 32)
    Group().refuse_unsupported(elbo, "data", 8, 32)  # one process: as before
    Group(0, 2).refuse_unsupported(estimators.get(name), "data", 8, 32)  # off: as before


def test_a_model_without_data_plate_or_a_batch_smaller_than_the_group_is_refused():
    elbo, group = estimators.get("trace"), Group(1, 4)
    with pytest.raises(ValueError, match="model: no per-datapoint plate"):
        group.refuse_unsupported(elbo, None, 8, 32)
    with pytest.raises(
        ValueError,
        match=r"the last batch of an epoch, 2 rows .*--drop-last.*resume it on fewer processes",
    ):
        group.refuse_unsupported(elbo, "data", 8, 34)
    with pytest.raises(ValueError, match="batch_size: a batch of 3 rows"):
        group.refuse_unsupported(elbo, "data", 3, 30)
    loo = estimators.get("score", control_variate="leave-one-out", num_particles=2)
    group.refuse_unsupported(loo, "data", 8, 36)
    # tester AI: the short last batch of 34 rows in 8s is dropped with drop_last, and was
    # refused anyway, with advice to pass the --drop-last it had
    group.refuse_unsupported(elbo, "data", 8, 34, drop_last=True)
    # every batch is short: --drop-last, already given, cannot help, and is not advised
    # (review of cb181f9..c795b70); the size that would do is named
    with pytest.raises(ValueError, match="batch_size: a batch of 3 rows") as refused:
        group.refuse_unsupported(elbo, "data", 3, 30, drop_last=True)
    assert "expected batch_size >= 4" in str(refused.value)
    assert "drop-last" not in str(refused.value)


def test_one_process_is_a_group_of_one_that_changes_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with session() as group:
        assert group is current() and (group.rank, group.world, group.is_writer) == (0, 1, True)
    assert group.mean(-3.5, 10) == -3.5
    values = torch.tensor([1.0, 2.0])
    assert group.all_reduce(values) is values and values.tolist() == [1.0, 2.0]


def test_each_rank_and_epoch_seeds_every_stream_for_any_seed_the_config_takes():
    # (seed · 1,000,003 + epoch) · 4099 + rank passed 2³² at seed 2, which NumPy's generator
    # (seeded by pyro.set_rng_seed) refused: --nproc 2 failed at every --seed from 2
    group = Group(rank=1, world=2)
    seeds = set()
    for seed in (0, 1, 2, 3, 12345, MAX_SEED):
        for epoch in (0, 1, 499):
            for rank in (0, 1):
                value = epoch_seed(seed, epoch, rank)
                assert 0 <= value < 2**32
                seeds.add(value)
        group.seed_epoch(seed, 7)  # seeds Python's, NumPy's and torch's streams
        assert torch.initial_seed() == epoch_seed(seed, 7, 1)
    assert len(seeds) == 6 * 3 * 2  # distinct for every triple tried
    assert epoch_seed(2, 3, 1) == epoch_seed(2, 3, 1)  # a resumed epoch draws the same


def test_a_pair_s_own_generators_are_seeded_per_epoch_and_rank_on_several_processes():
    """Tester FA: on two ranks the checkpoint held rank 0's generator alone, which a resume
    gave every rank, and rank 1's had drawn less (a smaller last batch): the resumed
    weights left the straight run's by 4.4e-4. Each epoch now seeds them from (seed,
    epoch, rank, their place), as the global streams: what a resumed epoch draws is
    whatever was drawn before it."""

    def draws(rank, epoch, before=0, world=2):
        generators = {"model.b": torch.Generator(), "guide.a": torch.Generator()}
        for g in generators.values():
            torch.rand(before, generator=g)  # where the epochs before left it
        Group(rank=rank, world=world).seed_epoch(5, epoch, generators)
        return [torch.rand(3, generator=generators[n]) for n in ("guide.a", "model.b")]

    resumed, straight = draws(1, 4), draws(1, 4, before=17)
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight, strict=True))
    assert not torch.equal(*resumed)  # two generators, two streams
    for other in (draws(0, 4), draws(1, 5)):  # another rank, another epoch
        assert not any(torch.equal(a, b) for a, b in zip(resumed, other, strict=True))
    one = draws(0, 4, before=17, world=1)  # one process: its stream goes on (checkpointed)
    assert not torch.equal(one[0], draws(0, 4, world=1)[0])


def test_the_test_set_s_evaluation_draws_alike_whatever_the_stream_training_left():
    """Tester AV: each rank's stream went on from its own last epoch into the test set's
    evaluation, and a resume restores rank 0's on every rank, so on several processes a
    resumed finished run scored the test set with other draws (−24.775 against −24.767).
    Each rank now seeds its evaluation from (seed, rank), apart from every epoch's seed;
    one process keeps its stream (which a resume restores)."""
    group = Group(rank=1, world=2)
    draws = []
    for scrambled in (1, 99):
        torch.manual_seed(scrambled)  # where training left the stream
        group.seed_evaluation(7)
        draws.append(torch.randn(3))
    assert torch.equal(draws[0], draws[1])
    assert torch.initial_seed() == evaluation_seed(7, 1) != evaluation_seed(7, 0)
    epochs = {epoch_seed(7, epoch, rank) for epoch in range(500) for rank in (0, 1)}
    assert not {evaluation_seed(7, rank) for rank in (0, 1)} & epochs
    torch.manual_seed(5)
    Group(rank=0, world=1).seed_evaluation(7)
    assert torch.initial_seed() == 5


@pytest.mark.slow
def test_a_finished_run_resumed_on_two_ranks_scores_the_test_set_as_it_did(tmp_path):
    run, copy = tmp_path / "run", tmp_path / "copy"
    fit = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--latent-dim", "2"]
    fit += ["--hidden", "8", "--no-progress", "--ll-samples", "5", "--ll-points", "40"]
    assert main(["fit", *fit, "--out", str(run), "--nproc", "2"]) == 0
    shutil.copytree(run, copy)
    assert main(["fit", "--resume", str(copy), "--epochs", "1", "--nproc", "2"]) == 0
    first, again = (RunFolder(r).read_metrics()["test"] for r in (run, copy))
    for key in ("elbo", "log_likelihood", "kl"):
        assert again[key] == first[key], key


def test_the_reduced_gradient_is_the_rows_weighted_one():
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([3.0, -1.0])
    loss = SynchronizedELBO(None, Group())._reduce(2.5, [p], rows=4.0)
    assert loss == 2.5 and p.grad.tolist() == [3.0, -1.0]


def test_a_lost_rank_is_named_when_its_process_is_gone():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    group = Group(0, 3, ((host, os.getpid()), (host, os.getpid()), (host, dead.pid)))
    with pytest.raises(RankLost, match=r"rank 0 of 3: the all-reduce failed, rank 2 stopped"):
        with group._watching("all-reduce"):
            raise RuntimeError("Connection closed by peer")
    group = Group(0, 2, ((host, os.getpid()), ("elsewhere", 1)))
    assert "ranks [1] not checked" in group._who_is_gone()


def test_a_rank_whose_process_is_stopped_is_named_as_hung():
    # tester AV: kill -STOP on rank 2; the others timed out saying "another rank stopped or
    # hung", and the agent blamed rank 0
    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        group = Group(rank=0, world=3, peers=((host, os.getpid()), (host, os.getpid()),
                                              (host, child.pid)))  # fmt: skip
        assert group._who_is_gone(wait=0.0) == "another rank stopped or hung"
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while "rank 2" not in group._who_is_gone(wait=0.0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group._who_is_gone(wait=0.0) == (
            "rank 2 hung (its process is stopped: SIGSTOP or a debugger)"
        )
    finally:
        child.kill()
        child.wait(timeout=10)


def test_a_bad_timeout_is_refused(monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PYRO_VAE_DIST_TIMEOUT: 'soon' is not a positive"):
        _timeout()
    monkeypatch.setenv("PYRO_VAE_DIST_TIMEOUT", "5")
    assert _timeout() == 5.0


def test_the_launcher_stops_its_agent_when_it_is_stopped(monkeypatch):
    import subprocess

    from pyro_vae import distributed

    class Agent:
        signals, waits = [], 0

        def __init__(self, command, env, preexec_fn=None):
            self.command = command

        def wait(self, timeout=None):
            Agent.waits += 1
            if Agent.waits == 1:
                raise KeyboardInterrupt  # Ctrl-C while the ranks train
            return -15

        def send_signal(self, sig):
            Agent.signals.append(sig)

    monkeypatch.setattr(subprocess, "Popen", Agent)
    with pytest.raises(KeyboardInterrupt):
        distributed.launch(["fit", "--out", "x"], 2)
    import signal

    assert Agent.signals == [signal.SIGTERM]  # torchrun's agent stops its ranks on SIGTERM


def test_ranks_given_different_settings_are_refused_before_anything_is_written(tmp_path):
    """Tester L: rank 1 with another --lr trained silently (config.json recorded rank 0's),
    and with other data half of every gradient came from another file. Both ranks now
    refuse, naming the setting, and the folder stays empty."""
    run = tmp_path / "run"
    fit = ["-m", "pyro_vae", "fit", "--data", "digits", "--out", str(run), "--epochs", "1"]
    fit += ["--batch-size", "64", "--latent-dim", "2", "--hidden", "8", "--no-progress"]
    port = _free_port()
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, *fit, "--lr", lr],
            cwd=ROOT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, lr in enumerate(["0.001", "0.01"])
    ]
    errors = [p.communicate(timeout=120)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [2, 2], errors
    for err in errors:
        assert "rank 1 was given train.lr = 0.01 where rank 0 has 0.001" in err, err
    assert not (run / "config.json").exists() and not (run / "checkpoint.pt").exists()


def test_ranks_told_to_resume_and_to_start_a_run_are_refused_at_once(tmp_path):
    """Tester CG: rank 0 with --resume and rank 1 with --out met the group in different
    collectives (config.json's broadcast, the settings' exchange) and waited out
    PYRO_VAE_DIST_TIMEOUT (600 s), then blamed a rank that "stopped or hung". Both ranks
    now refuse in one line naming the two commands, and nothing is written."""
    run, new = tmp_path / "run", tmp_path / "new"
    fit = ["-m", "pyro_vae", "fit", "--epochs", "1", "--no-progress"]
    commands = [[*fit, "--resume", str(run)], [*fit, "--data", "digits", "--out", str(new)]]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS":
           "1", "MASTER_PORT": str(_free_port()), "PYRO_VAE_DIST_TIMEOUT": "60"}  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, command in enumerate(commands)
    ]
    errors = [p.communicate(timeout=120)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [2, 2], errors
    for rank, err in enumerate(errors):
        assert f"error (rank {rank}): ranks: rank(s) 0 resume a run (--resume {run}) where " \
            "rank(s) 1 start a new one (--out)" in err, err  # fmt: skip
    assert not run.exists() and not new.exists()


def test_settings_that_may_differ_between_ranks_are_let_through():
    """The progress bar, the device and the paths of files whose checksums agree."""
    from pyro_vae.distributed import refuse_disagreeing_ranks

    class Pair(Group):
        def __init__(self, other):
            super().__init__(rank=0, world=2)
            self.other = other

        def gather_json(self, obj):
            return [obj, self.other]

    mine = {"model": "/a/m.py:M", "data": {"name": "/a/x.npy", "provenance": {
        "path": "/a/x.npy", "checksum": "s1"}}, "train": {"lr": 0.1, "device": "cuda:0",
        "progress": True}, "code": {"model": {"file": "/a/m.py", "sha256": "c1"}}}  # fmt: skip
    theirs = {"model": "/b/m.py:M", "data": {"name": "/b/x.npy", "provenance": {
        "path": "/b/x.npy", "checksum": "s1"}}, "train": {"lr": 0.1, "device": "cuda:1",
        "progress": False}, "code": {"model": {"file": "/b/m.py", "sha256": "c1"}}}  # fmt: skip
    refuse_disagreeing_ranks(mine, Pair(theirs))
    other_data = {**theirs, "data": {**theirs["data"], "provenance": {"checksum": "s2"}}}
    with pytest.raises(ValueError, match=r"data.provenance.checksum = 's2' where rank 0 has 's1'"):
        refuse_disagreeing_ranks(mine, Pair(other_data))
    refuse_disagreeing_ranks(mine, Group())  # one process: nothing to compare
    # tester CG: the same bytes saved as a2.npy read as other data, in a list of keys
    sizes = {"shape": [5, 4], "checksum": "s1", "files": {"a.npy": 208, "a.labels.npy": 168}}
    named = {**mine, "data": {"name": "/a/a.npy", "provenance": sizes}}
    renamed = {**sizes, "checksum": "s3", "files": {"a2.npy": 208, "a2.labels.npy": 168}}
    with pytest.raises(ValueError, match=r"the files' names differ where their sizes agree "
                       r"\(a2.labels.npy, a2.npy on rank 1, a.labels.npy, a.npy on rank 0\): the "
                       r"checksum covers names and sizes, not contents, so if they hold the "
                       r"same data"):  # fmt: skip
        refuse_disagreeing_ranks(
            named, Pair({**named, "data": {**named["data"], "provenance": renamed}})
        )
    with pytest.raises(ValueError) as other_sizes:  # other data: no such note
        refuse_disagreeing_ranks(named, Pair({**named, "data": {**named["data"], "provenance": {
            **renamed, "files": {"a2.npy": 300, "a2.labels.npy": 168}}}}))  # fmt: skip
    assert "sizes agree" not in str(other_sizes.value)


def _two_ranks(commands: list[list[str]]) -> list[str]:
    """Rank r runs ``python -m pyro_vae`` with ``commands[r]``, as torchrun starts ranks on
    two machines; their stderr, once both exit 0."""
    port = _free_port()
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "pyro_vae", *command],
            cwd=ROOT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": "0"},  # each the first on its node
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, command in enumerate(commands)
    ]
    errors = [p.communicate(timeout=180)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], errors
    return errors


@pytest.mark.slow
def test_a_resume_takes_rank_0_s_folder_on_machines_without_a_shared_file_system(tmp_path):
    """A second machine's ranks were refused ("resume: RUN is not a directory"): only rank
    0 writes the run folder, so without a shared file system there is none on theirs (and
    a copy there could be another epoch's). They now take rank 0's config and checkpoint
    over the process group, and the resumed run is the one resumed from a shared folder,
    weight for weight."""
    import shutil

    fit = ["fit", "--data", "digits", "--batch-size", "64", "--latent-dim", "2"]
    fit += ["--hidden", "8", "--no-progress", "--ll-samples", "0", "--epochs", "1"]
    first, second = tmp_path / "first" / "run", tmp_path / "second" / "run"
    _two_ranks([[*fit, "--out", str(first)], [*fit, "--out", str(second)]])
    assert (first / "checkpoint.pt").exists() and not second.exists()
    shared = tmp_path / "shared"
    shutil.copytree(first, shared)
    resume = ["fit", "--epochs", "2", "--no-progress", "--resume"]
    _two_ranks([[*resume, str(first)], [*resume, str(second)]])  # rank 1 has no folder
    _two_ranks([[*resume, str(shared)], [*resume, str(shared)]])  # both read the one folder
    assert not second.exists()
    apart, together = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (first, shared))
    assert apart["epoch"] == together["epoch"] == 2
    weights = [(part, name) for part in ("model", "guide", "params") for name in together[part]]
    assert len(weights) > 2
    for part, name in weights:
        assert torch.equal(apart[part][name], together[part][name]), (part, name)


def test_what_a_stopping_rank_announces_is_readable_and_cut_visibly():
    """Tester AI: the other rank read "rank 0 stopped (_Terminated)", a private class's
    name, beside a gloo message cut mid-word at 200 characters."""
    from pyro_vae.distributed import stop_reason
    from pyro_vae.interruptions import Terminated

    assert stop_reason(Terminated()) == "terminated (SIGTERM)"
    assert stop_reason(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert stop_reason(ValueError("no more data\nsecond line")) == "ValueError: no more data"
    assert stop_reason(MemoryError()) == "MemoryError"
    long = stop_reason(RuntimeError("x" * 500))
    assert len(long) == 200 and long.startswith("RuntimeError: xxx") and long.endswith("…")
    host = socket.gethostname()
    group = Group(0, 2, ((host, os.getpid()), (host, os.getpid())))
    with pytest.raises(RankLost) as lost:
        with group._watching("all-reduce"):
            raise RuntimeError("Connection closed by peer " + "y" * 300)
    assert str(lost.value).endswith("y…)") and "y" * 201 not in str(lost.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_the_agent_s_process_dies_with_the_launcher_however_the_launcher_ends():
    """Tester AI: ``kill -9`` of ``pyro-vae fit --nproc 2`` left torchrun's agent and its
    ranks training on, orphaned. A child :func:`start_child` starts is sent SIGTERM when its
    parent dies, SIGKILL included (here a child that would otherwise sleep for 2 minutes)."""
    parent_code = (
        "import os, sys, time\n"
        "from pyro_vae.distributed import start_child\n"
        "child = start_child([sys.executable, '-c', 'import time; time.sleep(120)'], "
        "dict(os.environ))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_a_rank_gets_sigterm_when_its_agent_is_killed(tmp_path):
    """Tester BJ: `kill -9` of torchrun's agent left both ranks training, orphaned. A rank
    that called die_with_agent gets SIGTERM from the kernel when its parent dies; here a
    parent process stands for the agent, killed with SIGKILL."""
    child = (
        "import os, signal, sys, time\n"
        "from pyro_vae.distributed import die_with_agent\n"
        "die_with_agent()\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import os, subprocess, sys\n"
        "env = {**os.environ, 'PYRO_VAE_AGENT_PID': str(os.getpid())}\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=env)\n"
        "p.wait()\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    rank = int(agent.stdout.readline())
    agent.kill()
    agent.wait()
    for _ in range(100):  # the kernel's SIGTERM ends the rank (default action): gone
        if not _running(rank):
            break
        time.sleep(0.1)
    else:
        os.kill(rank, signal.SIGKILL)
        pytest.fail("the rank outlived its agent")


def test_the_launcher_waits_for_the_ranks_of_a_killed_agent():
    """Tester BK: after a kill -9 of the agent the launcher said the ranks had stopped
    while they were still running. It adopts them (a child subreaper) and waits: here a
    process standing for the agent leaves a grandchild that runs 1 s more, orphaned."""
    rank = "import time; time.sleep(1)"
    agent = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {rank!r}])\n"
        "print(p.pid)\n"
    )
    script = (
        "import subprocess, sys\n"
        "from pyro_vae.distributed import _adopt_orphans, wait_for_orphans\n"
        "_adopt_orphans()\n"
        f"out = subprocess.run([sys.executable, '-c', {agent!r}], capture_output=True, text=True)\n"
        "wait_for_orphans(30)\n"
        "print(out.stdout.strip(), flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not _running(int(done.stdout))  # gone, and reaped, when wait_for_orphans returned


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, ended but not yet reaped by whoever
    adopted it, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_the_stateful_refusal_lists_every_registered_estimator_without_state():
    """Tester CG: `enum` trained data-parallel but neither the refusal's list of estimators
    without state nor the README's named it. Expected: each registered estimator whose
    default declares no state is named, and each that keeps state is refused."""
    from pyro_vae import estimators
    from pyro_vae.distributed import refuse_stateful
    from pyro_vae.estimators.capabilities import capabilities_of

    with pytest.raises(ValueError, match="expected an estimator without state") as raised:
        refuse_stateful(estimators.get("tracegraph"), 2)
    listed_there = str(raised.value).split("without state (")[1].split(")")[0]
    for name in estimators.names():
        elbo = estimators.get(name)
        if capabilities_of(elbo).keeps_state:
            with pytest.raises(ValueError):
                refuse_stateful(elbo, 2)
        else:
            refuse_stateful(elbo, 2)
            assert name in listed_there.replace(",", " ").split(), (name, listed_there)


def test_ranks_whose_networks_hold_other_buffers_are_refused_before_training():
    """A function guide that picks its encoder by rank lists other buffers on each rank:
    the broadcast hung, or copied one network's statistics into another's (tester DJ)."""
    from pyro_vae.distributed import _named_buffers, _refuse_buffers_differing_by_rank

    with_norm = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    without = torch.nn.Sequential(torch.nn.Linear(2, 3))

    class TwoRanks(Group):
        def gather_json(self, obj):  # rank 1 holds no BatchNorm
            theirs = [[n, list(b.shape), str(b.dtype)] for n, b in _named_buffers([without])]
            return [obj, theirs]

    named = _named_buffers([with_norm])
    assert [name for name, _ in named] == [
        "0.1.num_batches_tracked", "0.1.running_mean", "0.1.running_var",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="rank 0's model and guide hold 3 buffers and rank 1's 0"):
        _refuse_buffers_differing_by_rank(named, TwoRanks(rank=0, world=2))
    _refuse_buffers_differing_by_rank(named, Group())  # one process: nothing to compare


def test_buffers_are_broadcast_one_flattened_tensor_per_dtype_in_the_list_s_order():
    """One broadcast each cost 12 to 17 ms a step for ten BatchNorm layers on two CPU
    processes (``benchmarks/buffer_broadcast.py``); coalesced as DDP does, each dtype's
    buffers go in one tensor, and every rank must cut it the same way. The two-rank test
    above checks the values arrive."""
    from pyro_vae.distributed import coalesced_groups

    a, c = torch.zeros(3), torch.ones(2, 2)
    b, d = torch.tensor(4), torch.zeros(1, dtype=torch.float64)
    groups = coalesced_groups([a, b, c, d])
    assert [[id(t) for t in group] for group in groups] == [[id(a), id(c)], [id(b)], [id(d)]]
    assert coalesced_groups([]) == []


class _EchoRanks(Group):
    """Two ranks that agree on everything: sums are this rank's own, gathers repeat it,
    and the buffers each broadcast is given are recorded."""

    def __init__(self):
        super().__init__(rank=0, world=2)
        self.broadcast = []

    def gather_json(self, obj):
        return [obj, obj]

    def all_reduce(self, tensor):
        tensor.mul_(2)  # both ranks' equal shares: the weighted mean is this rank's

    def broadcast_buffers(self, buffers):
        self.broadcast.append([id(b) for b in buffers])

    def same_on_every_rank(self, value):
        return self.agree


class _DriftedRanks(_EchoRanks):
    """:class:`_EchoRanks` whose other rank's buffers no longer agree with this one's."""

    agree = False


_EchoRanks.agree = True


def test_a_buffer_the_model_reassigns_is_broadcast_as_it_is_now():
    """Tester DO: the buffers were listed once, so one a model reassigns each step
    (``self.seen = self.seen + 1``, a new tensor) was never broadcast and ranks drifted."""
    import pyro
    import pyro.distributions as dist

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))
            self.loc = torch.nn.Parameter(torch.zeros(()))

        def model(self, x, subsample=None):
            pyro.sample("x", dist.Normal(self.loc, 1.0), obs=x)

        def guide(self, x, subsample=None):
            pyro.module("counting", self)
            self.seen = self.seen + 1  # a new tensor each step

    pyro.clear_param_store()
    net, group = Counting(), _EchoRanks()
    elbo = SynchronizedELBO(estimators.get("trace"), group, [net])
    for _ in range(2):
        elbo.loss_and_grads_and_params(net.model, net.guide, torch.tensor(0.5), subsample=[0])
        assert group.broadcast[-1] == [id(net.seen)]


def test_an_expanded_buffer_is_refused_by_name_before_training():
    """Tester DO: a stride-0 buffer failed the first step's write on every rank, each
    blaming the other ("another rank stopped or hung")."""
    net = torch.nn.Module()
    net.register_buffer("spread", torch.zeros(1).expand(5))
    with pytest.raises(ValueError, match="buffer 'spread' of shape \\(5,\\) is an expanded view"):
        SynchronizedELBO(estimators.get("trace"), _EchoRanks(), [net])


def _stepping(net, group, steps: int = 2) -> None:
    """``steps`` synchronized steps of ``net.model`` and ``net.guide`` on one datum."""
    elbo = SynchronizedELBO(estimators.get("trace"), group, [net])
    for _ in range(steps):
        elbo.loss_and_grads_and_params(net.model, net.guide, torch.tensor(0.5), subsample=[0])


class _Reshaping(torch.nn.Module):
    """A buffer the guide reassigns on its second step (``make``), before which it is 5
    zeros."""

    def __init__(self, make):
        super().__init__()
        self.register_buffer("ex", torch.zeros(5))
        self.loc = torch.nn.Parameter(torch.zeros(()))
        self.make, self.steps = make, 0

    def model(self, x, subsample=None):
        import pyro
        import pyro.distributions as dist

        pyro.sample("x", dist.Normal(self.loc, 1.0), obs=x)

    def guide(self, x, subsample=None):
        import pyro

        pyro.module("reshaping", self)
        self.steps += torch.is_grad_enabled()  # a step's run, not a check's
        if self.steps == 2:
            self.ex = self.make()


def test_buffers_that_come_apart_during_training_are_refused_on_every_rank():
    """Tester DP: a buffer reassigned with a shape of the rank's own shifted every buffer
    after it in the flattened broadcast, silently, and one reassigned to an expanded view
    mid-training failed in torch's words. Each step now checks both, on every rank."""
    import pyro

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="the ranks' buffers came apart during training"):
        _stepping(_Reshaping(lambda: torch.zeros(3)), _DriftedRanks())
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="buffer 'ex' of shape \\(5,\\) is an expanded view"):
        _stepping(_Reshaping(lambda: torch.zeros(1).expand(5)), _EchoRanks())
    pyro.clear_param_store()
    _stepping(_Reshaping(lambda: torch.ones(5)), _EchoRanks())  # alike on every rank: kept
