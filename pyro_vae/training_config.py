"""The fit loop's settings (:class:`TrainingConfig`), the training part of a run's
:class:`~pyro_vae.run_config.RunConfig`.

It lives beside the fit loop rather than in ``run_config`` so that :mod:`pyro_vae.train`
reads it without importing the layers above it (``run_config`` builds estimators and
loads data); ``pyro_vae.run_config.TrainingConfig`` and ``pyro_vae.TrainConfig`` are
this class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_vae.checks import as_real, check_count, check_learning_rate, check_seed
from pyro_vae.devices import check_device_name
from pyro_vae.objectives import check_beta
from pyro_vae.precision import check_precision


@dataclass
class TrainingConfig:
    """Settings of the fit loop (:func:`pyro_vae.fit`).

    Attributes:
        epochs: passes over the training set (an upper bound under early stopping).
        batch_size: minibatch size.
        lr: Adam learning rate.
        seed: seeds Pyro/torch/numpy/random at the start, and the per-epoch shuffling.
        patience: stop at the first validation this many epochs or more after the best
            one, none better in between (``None``: never stop early; with
            ``validate_every`` above 1, epochs not validated count only once a later
            validation sees them).
        kl_warmup_epochs: epochs over which β rises linearly to ``beta`` (0: no warm-up).
        beta: the β of the β-VAE objective E_q[log p(x | z)] − β KL(q ‖ p) (Higgins et al.
            2017; :mod:`pyro_vae.annealing`) that training optimizes; 1 is the ELBO. With
            warm-up the β of a step is ``beta`` · warm-up(step). Validation and test
            report the ELBO (β = 1) whatever it is. Free bits are an estimator option
            (``estimators.get(name, free_bits=λ)``). Run folders written before the
            field existed mean 1.
        val_samples: particles per validation datapoint for the validation ELBO; for
            ``TensorData``, draws for the whole-data ELBO. ``None``: 1 per datapoint (the
            mean over many datapoints is already steady), 100 for a whole-data ELBO (one
            draw of a global latent moves it by nats, and the best epoch is chosen on it).
        validate_every: validate (and checkpoint) every this many epochs, and after the last.
        progress: show a progress bar per epoch.
        compile: record the step once per batch shape and replay it
            (:class:`pyro_vae.estimators.compiled.CompiledELBO`): the same losses and weights, less
            Python per step; needs an estimator without state between steps and no KL
            warm-up.
        compile_backend: with ``compile``, also ``torch.compile`` the recording with this
            backend (``"inductor"``: fused kernels after a compile of tens of seconds per
            batch shape; results close to, not bit for bit, the uncompiled ones).
        data_plate: the name of the model's per-datapoint plate, when the rule of
            :func:`pyro_vae.plates.find_data_plate` cannot tell.
        vectorize_particles: how validation draws its particles: ``True`` under one
            particle plate, ``False`` in a loop (models that cannot broadcast), ``None``
            vectorized unless that fails (the estimator has its own option).
        drop_last: leave out each epoch's last partial batch (for state that has one
            value per batch row, such as ``TraceGraph_ELBO``'s decaying-average baseline).
        device: where the run computes: ``"auto"`` (CUDA when there is a GPU, else the
            CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (untested);
            :func:`pyro_vae.devices.resolve_device`. Checked for spelling here, for
            availability when the run starts.
        precision: what the training steps compute in (:mod:`pyro_vae.precision`):
            ``"32"`` (float32), ``"bf16"`` (networks under bfloat16 autocast, log-densities
            and the ELBO in float32; also on the CPU) or ``"16-mixed"`` (float16 autocast
            with gradient scaling; GPUs only, refused when the run starts on the CPU).
            Weights and optimizer state are float32 in every case. Run folders written
            before the field existed mean ``"32"``.
        tensorboard: also write TensorBoard event files into the run folder's
            ``tensorboard/`` (:mod:`pyro_vae.tensorboard_log`: losses, gradient norms,
            the ELBO's terms, reconstructions); needs a run folder and the
            ``tensorboard`` package (``pip install 'pyro_vae[tensorboard]'``), both
            checked when the fit starts. Run folders written before the field existed
            mean ``False``.
    """

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    patience: int | None = 20
    kl_warmup_epochs: float = 0.0
    beta: float = 1.0
    val_samples: int | None = None
    validate_every: int = 1
    progress: bool = True
    compile: bool = False
    compile_backend: str | None = None
    data_plate: str | None = None
    vectorize_particles: bool | None = None
    drop_last: bool = False
    device: str = "auto"
    precision: str = "32"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "validate_every"):
            check_count(name, getattr(self, name), 1)
        check_count("val_samples", self.val_samples, 1, allow_none=True)
        check_seed("seed", self.seed)
        check_count("patience", self.patience, 1, " (None: never stop early)", allow_none=True)
        self.lr = check_learning_rate("lr", self.lr)
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        check_device_name(self.device, "device")
        self.precision = check_precision(self.precision, "precision")
        for name in ("tensorboard", "progress", "compile", "drop_last"):
            # tester EB: drop_last="no" dropped the last batch, compile="off" compiled
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: {getattr(self, name)!r} is not True or False")
        self.beta = check_beta(self.beta, "beta")
        warmup = as_real(self.kl_warmup_epochs)  # tester EB: "5" failed in Python's words
        if warmup is None or not 0 <= warmup < math.inf:  # tester CN: inf overflowed
            raise ValueError(
                f"kl_warmup_epochs: {self.kl_warmup_epochs!r} is not a finite number of epochs >= 0"
            )
        self.kl_warmup_epochs = warmup
        if self.compile_backend is not None and not self.compile:
            raise ValueError(
                f"compile_backend: {self.compile_backend!r} needs compile=True (the backend "
                "compiles the recorded step)"
            )
        if self.data_plate is not None and not isinstance(self.data_plate, str):
            raise ValueError(f"data_plate: {self.data_plate!r} is not a plate name")
        if self.vectorize_particles not in (True, False, None):
            raise ValueError(
                f"vectorize_particles: {self.vectorize_particles!r} is not True, False or None"
            )
        if self.compile and self.kl_warmup_epochs > 0:
            raise ValueError(
                f"compile: True with kl_warmup_epochs={self.kl_warmup_epochs!r}; warm-up "
                "changes β on every step and a recorded step would keep its first β. Turn "
                "one of them off."
            )
