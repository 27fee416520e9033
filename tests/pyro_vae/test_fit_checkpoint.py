import warnings

import pyro
import pytest
import torch

from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.fit_checkpoint import FitCheckpoint, Resumed, estimator_params, non_finite_entries
from pyro_vae.train import TrainConfig


class Weights:
    def __init__(self, names=("w",)):
        self.names, self.restored = names, None
        self.generator = torch.Generator().manual_seed(3)  # a module's own (tester EX)

    def generators(self):
        return {"model.noise.generator": self.generator}

    def restore(self, state):
        self.restored = state["model"]

    def parameter_keys(self):
        return {"model": {"a", "w"}, "guide": set()}

    def others(self):
        store = dict(pyro.get_param_store().named_parameters())
        return {n: p.detach().clone() for n, p in store.items() if n not in self.names}


class Optim:
    def __init__(self):
        self.state = {"adam": 1}

    def get_state(self):
        return self.state

    def set_state(self, state):
        self.state = state


class SVI:
    def __init__(self):
        self.optim = Optim()


class Estimator:
    param_store_prefix = "cv$"

    def __init__(self):
        self.averages = [1.0]

    def state_dict(self):
        return {"averages": list(self.averages)}

    def load_state_dict(self, state):
        self.averages = state["averages"]


def test_the_estimators_own_param_store_entries_are_kept_apart_from_the_weights():
    pyro.param("w", torch.zeros(2))
    pyro.param("__baseline_avg_z", torch.ones(3))
    pyro.param("cv$net", torch.ones(1))
    kept = estimator_params(Weights(), Estimator())
    assert list(kept) == ["__baseline_avg_z"]
    assert set(estimator_params(Weights(), object())) == {"__baseline_avg_z", "cv$net"}


def test_a_saved_checkpoint_restores_everything_a_resumed_fit_needs(tmp_path):
    pyro.param("w", torch.zeros(2))
    pyro.param("__baseline_avg_z", torch.ones(3))
    run = RunFolder(tmp_path / "run")
    config = TrainConfig(epochs=7, progress=False)
    writer = FitCheckpoint(run, Weights(), SVI(), Estimator(), config)
    last = {"model": {"a": torch.ones(1)}, "guide": {}, "params": {}}
    best = {"epoch": 2, "val_elbo": -1.0, **last}
    history = [{"epoch": 1, "train_elbo": -2.0}, {"epoch": 2, "train_elbo": -1.5}]
    torch.rand(4, generator=writer.weights.generator)  # the epochs' draws, before the save
    writer.save(3, 30, last, best, history, {"validation": "held-out"})
    expected_draw = torch.rand(3)
    own_draw = torch.rand(3, generator=writer.weights.generator)

    assert run.read_metrics()["best_epoch"] == 2 and run.read_metrics()["validation"] == "held-out"
    state = run.load_checkpoint()
    assert state["config"]["epochs"] == 7 and state["estimator"] == {"averages": [1.0]}
    pyro.clear_param_store()
    weights, svi, estimator = Weights(), SVI(), Estimator()
    svi.optim.state, estimator.averages = None, None
    torch.rand(5)  # the stream moves on; restoring puts it back where the save left it
    resumed = FitCheckpoint(run, weights, svi, estimator, config).restore(state)
    assert resumed == Resumed(epoch=3, step=30, best=best, history=history)
    assert torch.equal(weights.restored["a"], torch.ones(1))
    assert svi.optim.state == {"adam": 1} and estimator.averages == [1.0]
    assert torch.equal(pyro.param("__baseline_avg_z"), torch.ones(3))
    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.equal(torch.rand(3, generator=weights.generator), own_draw)  # not seed 3's


def test_without_a_run_folder_nothing_is_written():
    writer = FitCheckpoint(None, Weights(), SVI(), Estimator(), TrainConfig())
    writer.save(1, 1, {}, None, [], {})  # no error, nothing to write to


def test_an_estimator_without_state_saves_none(tmp_path):
    run = RunFolder(tmp_path / "run")
    FitCheckpoint(run, Weights(), SVI(), object(), TrainConfig()).save(1, 4, {}, None, [], {})
    state = run.load_checkpoint()
    assert state["estimator"] is None and state["best"] is None
    assert run.read_metrics()["best_epoch"] is None


class ScaledSVI(SVI):
    """A 16-mixed step's ``precision.scaler`` (a real ``torch.amp.GradScaler``)."""

    def __init__(self, init_scale):
        super().__init__()
        self.precision = type("P", (), {})()
        self.precision.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)


def test_the_gradient_scaler_s_scale_is_saved_and_restored(tmp_path):
    run = RunFolder(tmp_path / "run")
    svi = ScaledSVI(init_scale=2.0**16)
    svi.precision.scaler.scale(torch.ones(()))  # the scale exists from the first step on
    svi.precision.scaler.update(new_scale=2.0**9)  # as after a few overflowing steps
    FitCheckpoint(run, Weights(), svi, object(), TrainConfig()).save(1, 4, {}, None, [], {})
    resumed_svi = ScaledSVI(init_scale=2.0**16)
    FitCheckpoint(run, Weights(), resumed_svi, object(), TrainConfig()).restore(
        {**run.load_checkpoint(), "model": {}}
    )
    assert resumed_svi.precision.scaler.get_scale() == 2.0**9
    assert run.load_checkpoint()["grad_scaler"]["scale"] == 2.0**9


def test_a_checkpoint_without_a_scaler_leaves_the_scaler_at_its_initial_scale(tmp_path):
    run = RunFolder(tmp_path / "run")
    FitCheckpoint(run, Weights(), SVI(), object(), TrainConfig()).save(1, 4, {}, None, [], {})
    assert run.load_checkpoint()["grad_scaler"] is None
    svi = ScaledSVI(init_scale=128.0)
    FitCheckpoint(run, Weights(), svi, object(), TrainConfig()).restore(
        {**run.load_checkpoint(), "model": {}}
    )
    assert svi.precision.scaler.get_scale() == 128.0


def test_the_checkpoint_records_the_processes_that_trained_each_stretch(tmp_path, monkeypatch):
    """Tester F4: the checkpoint had no process count, so metrics.json rebuilt from it lost
    ``processes_by_epoch``. A fit on 2 processes records them from epoch 1; resumed after
    epoch 3 on 1 process, from epoch 4 (as metrics.json's record of an undamaged run)."""
    import pyro_vae.fit_checkpoint as fit_checkpoint
    from pyro_vae.distributed import Group

    run = RunFolder(tmp_path / "run")
    last, history = {"model": {}, "guide": {}, "params": {}}, [{"epoch": 1}]
    monkeypatch.setattr(fit_checkpoint, "current", lambda: Group(rank=0, world=2))
    two = FitCheckpoint(run, Weights(), SVI(), object(), TrainConfig())
    two.save(1, 4, last, None, history, {})
    two.save(3, 12, last, None, history * 3, {"data_plate": "data"})
    state = run.load_checkpoint()
    assert state["processes_by_epoch"] == [{"from_epoch": 1, "processes": 2}]
    assert state["fit_info"] == {"data_plate": "data"}
    # tester AI: a fit from Python left the processes out of metrics.json (the CLI wrote them)
    metrics = run.read_metrics()
    assert metrics["processes"] == 2
    assert metrics["processes_by_epoch"] == [{"from_epoch": 1, "processes": 2}]
    again = FitCheckpoint(run, Weights(), SVI(), object(), TrainConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error", fit_checkpoint.ProcessCountWarning)
        again.restore(state)  # on 2 again: the same draws, no note
    monkeypatch.setattr(fit_checkpoint, "current", lambda: Group(rank=0, world=1))
    one = FitCheckpoint(run, Weights(), SVI(), object(), TrainConfig())
    # and a resume on another count said nothing from Python (the CLI prints a note)
    with pytest.warns(fit_checkpoint.ProcessCountWarning, match="trained on 2 .* resumes on 1"):
        one.restore(state)
    one.save(4, 16, last, None, history * 4, {})
    assert run.load_checkpoint()["processes_by_epoch"] == [
        {"from_epoch": 1, "processes": 2},
        {"from_epoch": 4, "processes": 1},
    ]
    assert run.read_metrics()["processes_by_epoch"] == run.load_checkpoint()["processes_by_epoch"]


@pytest.fixture(autouse=True)
def _restore_rng():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def test_non_finite_entries_names_each_nan_inf_and_negative_second_moment():
    """What a resume refuses (tester FF): NaN or ±inf in any floating tensor of the state,
    and a negative Adam second moment (its square root is taken each step); integer
    tensors (a step count) and numbers are no weights."""
    nan, inf = float("nan"), float("inf")
    state = {
        "w": torch.tensor([1.0, nan]),
        "ok": torch.ones(2),
        "adam": {"state": {0: {"step": torch.tensor(3), "exp_avg": torch.tensor([inf]),
                               "exp_avg_sq": torch.tensor([0.0, -1e-30])}}},
        "groups": [{"lr": 0.01, "betas": (0.9, 0.999)}],
        "sizes": [torch.tensor([2, 3]), torch.tensor([-inf])],
    }  # fmt: skip
    assert non_finite_entries(state, "s") == [
        "s/w", "s/adam/state/0/exp_avg", "s/adam/state/0/exp_avg_sq", "s/sizes/1",
    ]  # fmt: skip
    assert non_finite_entries({"exp_avg": torch.tensor([-1.0])}, "o") == []  # a first moment


@pytest.mark.parametrize(
    "damage, named",
    [("last", "model/a"), ("best", "best/model/a"), ("adam", "optim/adam/exp_avg")],
)
def test_a_damaged_state_is_refused_before_anything_is_put_back(tmp_path, damage, named):
    """Tester FH: the refusal came after the damaged weights were loaded into the modules
    (a Python resume, refused, left them NaN); and damaged best weights went unnoticed (a
    run that did not beat them ended on them). A buffer may hold inf by design: not
    refused."""
    run = RunFolder(tmp_path / "run")

    def good():
        return {"model": {"a": torch.ones(1), "clip": torch.tensor(float("inf"))},
                "guide": {}, "params": {}}  # fmt: skip

    state = {"epoch": 3, "step": 30, **good(), "best": {"epoch": 2, **good()}, "history": [],
             "optim": {"adam": {"exp_avg": torch.zeros(2)}}, "rng": None}  # fmt: skip
    where = {"last": state["model"], "best": state["best"]["model"]}
    if damage == "adam":
        state["optim"]["adam"]["exp_avg"][0] = float("nan")
    else:
        where[damage]["a"] = torch.tensor([float("nan")])
    weights, svi = Weights(), SVI()
    with pytest.raises(RunFolderError, match=f"holds values no trained state has .* in {named}"):
        FitCheckpoint(run, weights, svi, Estimator(), TrainConfig()).restore(state)
    assert weights.restored is None and svi.optim.state == {"adam": 1}  # nothing put back
