"""TensorBoard's event files of a fit, read back as TensorBoard reads them."""

import json
import math
import os
import sys
import warnings

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pyro_vae.tensorboard_log as tensorboard_log
from models.vae import VAE
from pyro_vae.checkpoint import RunFolder
from pyro_vae.cli import main
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.distributed import Group
from pyro_vae.predictive import NoMeanImageError
from pyro_vae.tensorboard_log import (
    LOG_EVERY,
    TensorBoardLog,
    TensorBoardMissing,
    TensorBoardWarning,
)
from pyro_vae.train import TrainConfig, fit

STEP_TAGS = {"step/loss", "step/grad_norm", "step/beta"}
EPOCH_TAGS = {
    "epoch/train_elbo",
    "epoch/val_elbo",
    "epoch/seconds",
    "epoch/log_likelihood",
    "epoch/kl",
}
SETTINGS = dict(batch_size=64, lr=3e-3, seed=5, kl_warmup_epochs=1.5, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", Preprocessing("bernoulli"))


def _fit(data, folder, epochs=2, resume=False, **settings):
    pyro.set_rng_seed(0)
    model = VAE(data.x_dim, latent_dim=4, hidden_dims=(32,))
    config = TrainConfig(epochs=epochs, **{**SETTINGS, **settings})
    run = None if folder is None else RunFolder(folder)
    return fit(model, model.make_guide(), data, Trace_ELBO(), config, run, resume=resume)


def _events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def _steps_logged(steps_per_epoch: int, epochs: int) -> list[int]:
    """The global steps (counted from 1) that are multiples of :data:`LOG_EVERY`, and each
    epoch's last."""
    total = steps_per_epoch * epochs
    last = {epoch * steps_per_epoch for epoch in range(1, epochs + 1)}
    return sorted({*range(LOG_EVERY, total + 1, LOG_EVERY), *last})


@pytest.fixture(scope="module")
def logged(digits, tmp_path_factory):
    """A 2-epoch fit with TensorBoard on: its result, folder and events."""
    folder = tmp_path_factory.mktemp("runs") / "tb"
    result = _fit(digits, folder, tensorboard=True)
    return result, folder, _events(folder)


def test_every_scalar_is_logged_per_step_or_per_epoch(logged, digits):
    result, _, events = logged
    steps_per_epoch = math.ceil(digits.num_train / SETTINGS["batch_size"])
    assert set(events.Tags()["scalars"]) == STEP_TAGS | EPOCH_TAGS
    for tag in STEP_TAGS:
        assert [e.step for e in events.Scalars(tag)] == _steps_logged(steps_per_epoch, 2), tag
    for tag in EPOCH_TAGS:
        assert [e.step for e in events.Scalars(tag)] == [steps_per_epoch, 2 * steps_per_epoch]
    train_elbo = [e.value for e in events.Scalars("epoch/train_elbo")]
    assert train_elbo == pytest.approx([r["train_elbo"] for r in result.history], rel=1e-6)


def test_the_values_are_those_of_the_run(logged):
    _, folder, events = logged
    metrics = json.loads((folder / "metrics.json").read_text())
    val_elbo = [e.value for e in events.Scalars("epoch/val_elbo")]
    assert val_elbo == pytest.approx([r["val_elbo"] for r in metrics["epochs"]], rel=1e-6)
    kl = [e.value for e in events.Scalars("epoch/kl")]
    log_likelihood = [e.value for e in events.Scalars("epoch/log_likelihood")]
    assert sum(kl) / len(kl) >= 0
    # the terms of 256 of the validation rows: their difference is near the validation ELBO
    for ll, k, elbo in zip(log_likelihood, kl, val_elbo, strict=True):
        assert ll - k == pytest.approx(elbo, abs=3.0)
    loss = [e.value for e in events.Scalars("step/loss")]
    assert all(math.isfinite(v) for v in loss) and loss[-1] < loss[0]
    assert -loss[-1] == pytest.approx(metrics["epochs"][-1]["train_elbo"], abs=5.0)
    assert all(e.value > 0 and math.isfinite(e.value) for e in events.Scalars("step/grad_norm"))
    beta = [e.value for e in events.Scalars("step/beta")]
    assert 0 < beta[0] < beta[-1] == 1.0  # warm-up over 1.5 epochs


def test_reconstructions_of_8_validation_images_every_validation(logged, digits):
    _, _, events = logged
    images = events.Images("reconstructions")
    assert len(images) == 2
    height, width = digits.image_shape
    assert (images[0].width, images[0].height) == (8 * width, 2 * height)  # images over means


def test_logging_changes_nothing_the_fit_draws(logged, digits):
    result, _, _ = logged
    plain = _fit(digits, None)
    assert [(r["train_elbo"], r["val_elbo"]) for r in plain.history] == [
        (r["train_elbo"], r["val_elbo"]) for r in result.history
    ]


def test_a_resumed_run_appends_and_drops_what_a_killed_run_wrote_after_its_checkpoint(
    digits, tmp_path
):
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "run"
    _fit(digits, folder, epochs=1, tensorboard=True)
    steps_per_epoch = RunFolder(folder).load_checkpoint()["step"]
    killed = SummaryWriter(str(folder / "tensorboard"))  # steps of epoch 2, never checkpointed
    for step in (steps_per_epoch + LOG_EVERY, steps_per_epoch + 2 * LOG_EVERY):
        killed.add_scalar("step/loss", 1e6, step)
    killed.close()
    _fit(digits, folder, epochs=2, resume=True, tensorboard=True)
    events = _events(folder)
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss] == _steps_logged(steps_per_epoch, 2)
    assert max(e.value for e in loss) < 1e6
    assert [e.step for e in events.Scalars("epoch/val_elbo")] == [
        steps_per_epoch,
        2 * steps_per_epoch,
    ]


def test_without_the_package_tensorboard_is_refused_before_any_work(
    digits, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TensorBoardMissing) as refused:
        _fit(digits, tmp_path / "py", tensorboard=True)
    message = str(refused.value)
    assert message.startswith("tensorboard: ") and "pip install 'pyro_vae[tensorboard]'" in message
    assert "\n" not in message and not (tmp_path / "py").exists()
    assert isinstance(refused.value, ImportError)
    run = tmp_path / "cli"
    assert main(["fit", "--out", str(run), "--tensorboard", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tensorboard: ") and "pip install 'pyro_vae[tensorboard]'" in err
    assert len(err.splitlines()) == 1 and not run.exists()


def test_a_logging_run_resumes_without_the_package_warning_that_logging_stops(
    digits, tmp_path, monkeypatch
):
    """Tester CM: a run fit with --tensorboard could not be resumed where the package was
    gone, and nothing turned its logging off; logging never stops training."""
    from pyro_vae.tensorboard_log import TensorBoardWarning

    _fit(digits, tmp_path / "run", epochs=1, tensorboard=True)
    logged = sorted(p.name for p in (tmp_path / "run" / "tensorboard").iterdir())
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(TensorBoardWarning, match="not installed .*; this resume trains on without"):
        _fit(digits, tmp_path / "run", epochs=2, resume=True, tensorboard=True)
    assert RunFolder(tmp_path / "run").load_checkpoint()["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "run" / "tensorboard").iterdir()) == logged


def test_tensorboard_needs_a_run_folder(digits):
    with pytest.raises(ValueError, match=r"tensorboard: True needs a run folder"):
        _fit(digits, None, tensorboard=True)
    with pytest.raises(ValueError, match=r"tensorboard: 'yes' is not True or False"):
        TrainConfig(tensorboard="yes")


def test_a_failing_writer_warns_once_and_training_finishes(digits, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    with pytest.warns(TensorBoardWarning, match="No space left on device") as caught:
        result = _fit(digits, tmp_path / "run", epochs=1, tensorboard=True)
    assert len([w for w in caught if w.category is TensorBoardWarning]) == 1
    assert len(result.history) == 1 and RunFolder(tmp_path / "run").has_checkpoint


@pytest.mark.skipif(not os.path.isdir("/proc/self/fdinfo"), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_file_warns_once_without_the_writer_thread_s_traceback(
    digits, tmp_path, monkeypatch
):
    """Tester CM: ``tensorboard/`` linked to /proc/self/fdinfo gave the one warning and a
    40-line traceback from TensorBoard's writer thread."""
    import threading

    failed_threads = []
    monkeypatch.setattr(threading, "excepthook", failed_threads.append)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to("/proc/self/fdinfo")
    with pytest.warns(TensorBoardWarning, match="open failed") as caught:
        result = _fit(digits, tmp_path / "run", epochs=1, tensorboard=True)
    assert len([w for w in caught if w.category is TensorBoardWarning]) == 1
    assert len(result.history) == 1 and failed_threads == []


def test_only_rank_0_writes(digits, tmp_path, monkeypatch):
    class OtherRank(Group):
        is_writer = property(lambda self: False)

    monkeypatch.setattr("pyro_vae.train.current", OtherRank)
    _fit(digits, tmp_path / "run", epochs=1, tensorboard=True)
    assert not (tmp_path / "run" / "tensorboard").exists()


DELTA_VAE = """
import pyro, pyro.distributions as dist
from torch import nn


class DeltaVAE(nn.Module):
    def __init__(self, x_dim=64, latent_dim=2):
        super().__init__()
        self.k, self.enc = latent_dim, nn.Linear(x_dim, latent_dim)
        self.dec = nn.Linear(latent_dim, x_dim)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.enc(x)).to_event(1))

    def make_guide(self):
        return self.guide
"""


@pytest.mark.slow
def test_on_two_ranks_the_elbo_terms_are_the_whole_validation_set_s(tmp_path):
    """Tester EA: on two ranks the ELBO's terms were rank 0's half of the validation rows',
    and did not add up to the val_elbo logged beside them (the mean over the ranks). With
    a point-mass guide the terms are exact: log-likelihood − KL is the ELBO, on the
    digits' 162 validation rows (fewer than TERM_ROWS)."""
    (tmp_path / "delta_vae.py").write_text(DELTA_VAE)
    run = tmp_path / "run"
    flags = ["--model", f"{tmp_path / 'delta_vae.py'}:DeltaVAE", "--data", "digits"]
    flags += ["--epochs", "2", "--batch-size", "50", "--no-progress", "--ll-samples", "0"]
    assert main(["fit", *flags, "--tensorboard", "--nproc", "2", "--out", str(run)]) == 0
    events = _events(run)
    terms = [events.Scalars(f"epoch/{t}") for t in ("log_likelihood", "kl", "val_elbo")]
    assert len(terms[0]) == 2
    for ll, kl, elbo in zip(*terms, strict=True):
        assert ll.value - kl.value == pytest.approx(elbo.value, abs=1e-4)


def test_a_label_model_s_elbo_terms_are_those_of_the_bound_it_validates(digits, tmp_path):
    """Tester ED: M2's terms were computed on x alone, the bound on log p(x), log 10 nats
    from the val_elbo on log p(x, y) logged beside them (−36.92 against −39.20). With
    its labels they add up to it, to one draw's noise (0.06 nats here)."""
    from models.m2 import M2
    from pyro_vae.estimators import get

    data = digits.with_labelled_subset(count=10)
    pyro.set_rng_seed(0)
    model = M2(data.x_dim, latent_dim=4, hidden_dims=(32,))
    config = TrainConfig(**{**SETTINGS, "epochs": 2, "tensorboard": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", TensorBoardWarning)  # no pictures of it, unsaid
        fit(model, model.make_guide(), data, get("enum"), config, RunFolder(tmp_path / "m2"))
    events = _events(tmp_path / "m2")
    terms = [events.Scalars(f"epoch/{t}") for t in ("log_likelihood", "kl", "val_elbo")]
    assert len(terms[0]) == 2
    for ll, kl, elbo in zip(*terms, strict=True):  # log 10 = 2.3 apart before
        assert ll.value - kl.value == pytest.approx(elbo.value, abs=0.5)


def test_the_cli_flag_goes_into_config_json_and_resume_turns_it_on(tmp_path, monkeypatch):
    monkeypatch.setattr("pyro_vae.cli.write_figures", lambda *args, **kwargs: ([], {}))
    fast = ["--latent-dim", "2", "--hidden", "16", "--no-progress", "--ll-samples", "5"]
    run = tmp_path / "run"
    assert main(["fit", "--epochs", "1", "--batch-size", "512", "--out", str(run), *fast]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["tensorboard"] is False
    assert not (run / "tensorboard").exists()
    argv = ["fit", "--resume", str(run), "--epochs", "2", "--tensorboard", "--no-progress"]
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["train"]["tensorboard"] is True
    assert [e.step for e in _events(run).Scalars("epoch/train_elbo")] == [6]  # 3 steps an epoch


# ---- the log's parts, with a writer that records ----------------------------------------


class Recorder:
    def __init__(self):
        self.scalars, self.images, self.flushes, self.closed = {}, {}, 0, False

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def add_images(self, tag, images, step):
        self.images.setdefault(tag, []).append((step, images))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def _board(rows=None, plate="data", image_shape=None, writer=None, steps_per_epoch=25):
    model = VAE(4, latent_dim=2, hidden_dims=(8,))
    return TensorBoardLog(
        "unused",
        model,
        model.make_guide(),
        rows,
        plate,
        divisor=100.0,
        steps_per_epoch=steps_per_epoch,
        image_shape=image_shape,
        writer=writer or Recorder(),
    )


def test_steps_every_log_every_and_the_last_of_an_epoch():
    """Every 10th step of the fit, counted over epochs (tester EO: counted within each
    epoch, 12 steps an epoch logged 10, 12, 22, 24), and the last of each epoch."""
    board = _board(steps_per_epoch=12)
    steps = range(1, 37)
    assert [s for s in steps if board.wants_step(s, (s - 1) % 12)] == [10, 12, 20, 24, 30, 36]
    board.step(10, 250.0, 3.0, 0.5)
    assert board.writer.scalars == {
        "step/loss": [(10, 2.5)],  # per datapoint: the loss over N = 100
        "step/beta": [(10, 0.5)],
        "step/grad_norm": [(10, 3.0)],
    }
    board.close()
    assert not board.wants_step(10, 9)


def test_data_without_rows_to_validate_on_log_no_terms_and_no_images():
    board = _board(rows=None, image_shape=(2, 2))
    board.epoch(25, {"epoch": 1, "train_elbo": -3.0, "seconds": 0.1}, validated=True)
    assert set(board.writer.scalars) == {"epoch/train_elbo", "epoch/seconds"}
    assert board.writer.images == {} and board.writer.flushes == 1


def test_a_model_without_a_mean_image_is_skipped_silently(monkeypatch):
    def no_mean(*args):
        raise NoMeanImageError("no observation of x with a mean")

    monkeypatch.setattr(tensorboard_log, "reconstruct", no_mean)
    board = _board(rows=torch.rand(10, 4).round(), image_shape=(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        board.epoch(25, {"train_elbo": -3.0, "val_elbo": -3.1, "seconds": 0.1}, validated=True)
    assert board.writer.images == {} and "epoch/kl" in board.writer.scalars


def test_a_folder_that_cannot_be_written_warns_and_logs_nothing(tmp_path):
    (tmp_path / "tensorboard").write_text("a file where the folder should be")
    model = VAE(4, latent_dim=2, hidden_dims=(8,))
    with pytest.warns(TensorBoardWarning, match="open failed"):
        board = TensorBoardLog(
            tmp_path / "tensorboard", model, model.make_guide(), None, None, 1.0, 5
        )
    assert board.writer is None and not board.wants_step(5, 4)
    board.epoch(5, {"train_elbo": -1.0}, validated=True)
    board.close()
