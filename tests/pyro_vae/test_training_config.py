"""The fit loop's settings: the command line's defaults, and bad values refused by name."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from pyro_vae import TrainConfig
from pyro_vae.training_config import TrainingConfig


def test_the_defaults_are_the_command_line_s():
    assert TrainConfig is TrainingConfig
    training = TrainingConfig()
    assert (training.epochs, training.patience, training.batch_size, training.lr) == (
        200,
        20,
        128,
        1e-3,
    )
    assert training.tensorboard is False


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: TrainingConfig(epochs=0), ["epochs: 0", "a positive integer"]),
        (lambda: TrainingConfig(epochs=2.5), ["epochs: 2.5"]),
        (lambda: TrainingConfig(batch_size=True), ["batch_size: True"]),
        (lambda: TrainingConfig(seed=-1), ["seed: -1", "a non-negative integer"]),
        (lambda: TrainingConfig(seed=2**32), ["seed: 4294967296", "2**32 - 1"]),
        (lambda: TrainingConfig(patience=0), ["patience: 0", "None: never stop early"]),
        (lambda: TrainingConfig(lr=float("inf")), ["lr: inf", "positive learning rate"]),
        (lambda: TrainingConfig(val_samples=0), ["val_samples: 0"]),
        (lambda: TrainingConfig(compile=True, kl_warmup_epochs=1.0), ["warm-up"]),
        # tester CN: inf overflowed in the schedule, with a traceback; nan was "negative"
        (
            lambda: TrainingConfig(kl_warmup_epochs=float("inf")),
            ["kl_warmup_epochs: inf is not a finite number of epochs >= 0"],
        ),
        (
            lambda: TrainingConfig(kl_warmup_epochs=float("nan")),
            ["kl_warmup_epochs: nan is not a finite"],
        ),
        (lambda: TrainingConfig(kl_warmup_epochs=-1.0), ["kl_warmup_epochs: -1.0 is not"]),
        (lambda: TrainingConfig(tensorboard=1), ["tensorboard: 1", "True or False"]),
        # tester EB: "no" dropped the last batch, "off" compiled, "5" failed in Python's words
        (lambda: TrainingConfig(drop_last="no"), ["drop_last: 'no' is not True or False"]),
        (lambda: TrainingConfig(compile="off"), ["compile: 'off' is not True or False"]),
        (lambda: TrainingConfig(progress=None), ["progress: None is not True or False"]),
        (lambda: TrainingConfig(kl_warmup_epochs="5"), ["kl_warmup_epochs: '5' is not a"]),
        (lambda: TrainingConfig(kl_warmup_epochs=True), ["kl_warmup_epochs: True is not a"]),
    ],
)
def test_a_bad_value_is_refused_naming_field_value_and_expectation(make, words):
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_a_torch_device_is_taken_by_its_name():
    import torch

    assert TrainingConfig(device=torch.device("cpu")).device == "cpu"


def test_numpy_and_tensor_numbers_are_stored_as_python_floats_for_config_json():
    # tester EW: np.float32 and 0-d tensors were refused, or would not have been JSON
    training = TrainingConfig(
        lr=np.float32(0.5), beta=torch.tensor(2.0), kl_warmup_epochs=np.int64(3)
    )
    stored = (training.lr, training.beta, training.kl_warmup_epochs)
    assert stored == (0.5, 2.0, 3.0) and all(type(v) is float for v in stored)
    assert json.loads(json.dumps(dataclasses.asdict(training)))["beta"] == 2.0
