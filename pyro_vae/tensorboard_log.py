"""TensorBoard event files of a fit, so a run (or a sweep of them) can be watched live.

With ``TrainConfig(tensorboard=True)`` :func:`pyro_vae.fit` writes, through
``torch.utils.tensorboard.SummaryWriter``, into ``RUN/tensorboard/`` (``tensorboard
--logdir runs/`` then shows every run of a sweep side by side):

- every :data:`LOG_EVERY`-th optimizer step of the fit, and on the last step of each epoch:
  ``step/loss``, the step's minibatch estimate of the negative ELBO per datapoint (nats;
  the quantity whose running mean is ``train_elbo``, with its sign flipped, KL warm-up's
  β in it), or a total for data whose ELBO does not split into datapoints;
  ``step/grad_norm``, the global gradient norm ‖∇‖₂ over every parameter the step
  updates, after backward and before the optimizer step (unscaled under ``"16-mixed"``);
  ``step/beta``, KL warm-up's β;
- after each epoch: ``epoch/train_elbo``, ``epoch/val_elbo`` (on validation epochs),
  ``epoch/seconds`` and, on the first :data:`TERM_ROWS` rows that validation uses, the
  ELBO's two terms ``epoch/log_likelihood`` = E_q[log p(x | z)] and ``epoch/kl`` =
  E_q[log q(z | x) − log p(z)] (:func:`pyro_vae.evaluate.elbo_terms_per_datapoint`, one
  draw per row, nats per datapoint; a label model's with the labels validation gives,
  terms of the bound it reports), for a model with a per-datapoint plate;
- on validation epochs of image data: ``reconstructions``, :data:`IMAGE_COUNT` fixed
  validation images over their reconstructions E[x | z = E_q z]
  (:func:`pyro_vae.predictive.reconstruct`), for a model that has a mean image and
  takes x alone (a label model's would need the label).

Every step is tagged with the optimizer steps done so far, a resumed fit's continuing from
its checkpoint's: the writer opens with ``purge_step`` one past the checkpoint's step, so
events a killed run wrote after its checkpoint are dropped when the folder is read. The
terms and the images draw on a forked random stream: a fit draws the same with or
without TensorBoard. Nothing here stops a fit: a write that fails, or a term or picture
that cannot be computed for the model, is warned about once
(:class:`TensorBoardWarning`) and that logging stops, while training goes on.
"""

from __future__ import annotations

import importlib
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_vae.devices import forked_streams
from pyro_vae.evaluate import elbo_terms_per_datapoint
from pyro_vae.image_grid import pictures
from pyro_vae.interruptions import reraise_interruption
from pyro_vae.predictive import NoMeanImageError, reconstruct

__all__ = [
    "IMAGE_COUNT",
    "LOG_EVERY",
    "TERM_ROWS",
    "TensorBoardLog",
    "TensorBoardMissing",
    "TensorBoardWarning",
    "require_tensorboard",
]

LOG_EVERY = 10
"""Optimizer steps between two per-step records (the last step of an epoch is always one)."""
TERM_ROWS = 256
"""Validation rows the ELBO's two terms are computed on each epoch."""
IMAGE_COUNT = 8
"""Validation images shown with their reconstructions."""
FOLDER = "tensorboard"
"""The event files' folder inside a run folder."""


class TensorBoardWarning(UserWarning):
    """Some TensorBoard logging failed and stopped; training went on."""


class TensorBoardMissing(ImportError, ValueError):
    """TensorBoard was asked for and the ``tensorboard`` package is not installed: an
    ``ImportError``, and a ``ValueError`` as every refused setting is."""


def require_tensorboard(arg: str = "tensorboard") -> None:
    """Refuse, before any work, a run that asks for TensorBoard (``arg``, named in the
    message) where the ``tensorboard`` package is not installed.

    Raises:
        TensorBoardMissing: ``torch.utils.tensorboard`` cannot be imported.
    """
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError as err:
        raise TensorBoardMissing(
            f"{arg}: TensorBoard logging needs the tensorboard package, which is not "
            f"installed ({err}); install it with pip install 'pyro_vae[tensorboard]'"
        ) from None


class TensorBoardLog:
    """The TensorBoard records of one fit (module docstring); a context manager that
    closes the writer on the way out, an exception's included.

    Args:
        folder: where the event files go (a run folder's ``tensorboard/``).
        model, guide: the pair as given to the fit, for the ELBO's terms and the pictures.
        rows: the rows validation uses (``[N, ...]``, on the run's device), or the tuple
            of the model's data arguments validation passes (a label model's ``(x, y,
            observed)``: its terms are then of the bound validation reports, labels
            given, and it has no pictures), or ``None`` (no terms, no pictures).
        data_plate: the model's per-datapoint plate (``None``: no terms).
        divisor: what turns a step's loss into the reported ELBO's units (N for ELBOs
            per datapoint, 1 for whole-data totals).
        steps_per_epoch: optimizer steps per epoch (the last of each is recorded).
        start_step: optimizer steps done before this fit (a resumed fit's checkpoint's).
        image_shape, pixel_max: the images' ``(H, W)`` and white level, or ``None`` for
            data that are not images.
        log_every: optimizer steps between per-step records.
        writer: the ``SummaryWriter`` (default: one opened on ``folder`` with
            ``purge_step = start_step + 1``).
    """

    def __init__(
        self,
        folder: str | Path,
        model,
        guide,
        rows: torch.Tensor | tuple[torch.Tensor, ...] | None,
        data_plate: str | None,
        divisor: float,
        steps_per_epoch: int,
        start_step: int = 0,
        image_shape: tuple[int, ...] | None = None,
        pixel_max: float = 1.0,
        log_every: int = LOG_EVERY,
        writer: Any = None,
    ) -> None:
        self.model, self.guide, self.data_plate = model, guide, data_plate
        self.divisor, self.steps_per_epoch, self.log_every = divisor, steps_per_epoch, log_every
        self.image_shape, self.pixel_max = image_shape, pixel_max
        # a label model's terms take its labels too (tester ED: M2's, on x alone, were the
        # bound on log p(x), log C from the val_elbo on log p(x, y) logged beside them)
        args = None if rows is None else rows if isinstance(rows, tuple) else (rows,)
        # copies of the rows it keeps: views would hold a second copy of the whole
        # validation set alive (on a GPU, beside the fit's own) for the whole fit
        self.term_rows = None if args is None else tuple(a[:TERM_ROWS].clone() for a in args)
        # pictures of a model that takes x alone: a label model's reconstructions need the
        # label (they failed with a warning at the first validation)
        pictured = args is not None and len(args) == 1 and image_shape is not None
        self.images = self.term_rows[0][:IMAGE_COUNT] if pictured else None
        self.writer, self._warned = writer, set()
        if self.writer is None:
            self.writer = self._guarded("open", lambda: _summary_writer(folder, start_step + 1))

    @classmethod
    def for_fit(cls, run, model, guide, data, pair, batches, start_step: int) -> TensorBoardLog:
        """The log of a fit into run folder ``run`` (:class:`pyro_vae.checkpoint.RunFolder`)
        of ``model`` and ``guide`` on data source ``data``, set up as ``pair``
        (:class:`pyro_vae.training_pair.TrainingPair`) with ``batches``
        (:class:`pyro_vae.data_source.TrainingBatches`), from ``start_step`` steps done."""
        plan = data.validation_set(pair.local, lambda *args: None)  # checked at set-up
        per_datapoint = plan is not None and not plan.whole_data and pair.plate is not None
        images = _image_data(data)
        return cls(
            Path(run.path) / FOLDER,
            model,
            guide,
            plan.args if per_datapoint else None,
            pair.plate,
            batches.divisor,
            batches.steps_per_epoch,
            start_step,
            None if images is None else tuple(int(s) for s in images.image_shape),
            1.0 if images is None else float(images.pixel_max),
        )

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wants_step(self, step: int, batch: int) -> bool:
        """Whether optimizer step ``step`` (counted from 1 over the whole fit, a resumed
        fit's from its checkpoint's), on batch ``batch`` (from 0) of its epoch, is
        recorded: every :attr:`log_every`-th step of the fit and the last of each epoch
        (tester EO: counted within each epoch, 12 steps an epoch logged 10, 12, 22, 24,
        unevenly spaced, where the docs said every 10 steps)."""
        if self.writer is None:
            return False
        return step % self.log_every == 0 or batch + 1 == self.steps_per_epoch

    def step(self, step: int, loss: float, grad_norm: float | None, beta: float) -> None:
        """Record optimizer step ``step`` (counted from 1 over the whole fit): its
        ``loss`` (a negative ELBO estimate, in nats), the gradient norm and β."""
        values = {"step/loss": loss / self.divisor, "step/beta": beta}
        if grad_norm is not None:
            values["step/grad_norm"] = grad_norm
        self._scalars(values, step)

    def epoch(self, step: int, record: dict[str, Any], validated: bool) -> None:
        """Record an epoch that ended after ``step`` optimizer steps: its ``record`` (as
        :func:`pyro_vae.fit` keeps it), the ELBO's terms and, when it ended with
        validation (``validated``), the reconstructions; then flush to disk."""
        if self.writer is None:
            return
        values = {f"epoch/{key}": record.get(key) for key in ("train_elbo", "val_elbo", "seconds")}
        if self.term_rows is not None:
            values.update(self._guarded("ELBO terms", self._terms, on_fail="term_rows") or {})
        self._scalars({k: v for k, v in values.items() if v is not None}, step)
        if validated and self.images is not None:
            grid = self._guarded("reconstructions", self._reconstructions, on_fail="images")
            if grid is not None:
                self._write(lambda w: w.add_images("reconstructions", grid, step))
        self._write(lambda w: w.flush())

    def close(self, quiet: bool = False) -> None:
        """Flush and close the writer (once; later records are not written); a failure
        is warned about unless ``quiet``."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as err:  # a full disk must not fail the fit it records
                reraise_interruption(err)  # a SIGTERM's error stops it (pyro_vae.interruptions)
                if not quiet:
                    _warn("close", err)

    def _terms(self) -> dict[str, float]:
        with forked_streams():
            terms = elbo_terms_per_datapoint(
                self.model, self.guide, self.term_rows, data_plate=self.data_plate
            )
        return {
            "epoch/log_likelihood": terms.log_likelihood.mean().item(),
            "epoch/kl": terms.kl.mean().item(),
        }

    def _reconstructions(self) -> torch.Tensor | None:
        """``[2·IMAGE_COUNT, 1 or 3, H, W]`` in [0, 1] (grey or RGB, as
        :func:`pyro_vae.image_grid.pictures` draws them): the images, then their reconstructions
        (TensorBoard lays them out 8 to a row); ``None`` for a model without a mean image."""
        with forked_streams(), torch.no_grad():
            try:
                means = reconstruct(self.model, self.guide, self.images)
            except NoMeanImageError:
                self.images = None
                return None
        pixels = torch.cat([self.images.reshape(means.shape), means]).detach().float().cpu()
        drawn = torch.as_tensor(pictures(pixels, self.image_shape, self.pixel_max))
        return drawn.unsqueeze(1) if drawn.dim() == 3 else drawn.permute(0, 3, 1, 2)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        def write(writer) -> None:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)

        self._write(write)

    def _write(self, action: Callable[[Any], None]) -> None:
        """``action(writer)``, unless the writer is closed or has failed."""
        writer = self.writer
        if writer is not None:
            self._guarded("write", lambda: action(writer))

    def _guarded(self, what: str, action: Callable[[], Any], on_fail: str = "writer") -> Any:
        """``action()``, or, when it raises, ``None`` and a warning (once per part of the
        logging), with attribute ``on_fail`` set to ``None`` so that part stops."""
        try:
            return action()
        except Exception as err:  # nothing TensorBoard does may stop the fit it records
            reraise_interruption(err)  # but a SIGTERM does (pyro_vae.interruptions)
            if on_fail == "writer":
                self.close(quiet=True)
            setattr(self, on_fail, None)
            if on_fail not in self._warned:
                self._warned.add(on_fail)
                _warn(what, err)
            return None


def _warn(what: str, err: BaseException) -> None:
    warnings.warn(
        f"tensorboard: {what} failed ({type(err).__name__}: {err}); this logging stops, "
        "training goes on",
        TensorBoardWarning,
        stacklevel=3,
    )


def _summary_writer(folder: str | Path, purge_step: int):
    """TensorBoard's writer into ``folder``, once a file has been made there: a folder
    that takes none fails here, in this thread, for the one warning (tester CM: the
    writer's own thread failed too, and printed a 40-line traceback beside it)."""
    from torch.utils.tensorboard import SummaryWriter

    Path(folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


def _image_data(data):
    """The image data (:class:`pyro_vae.data.DataSplits`, with ``image_shape`` and
    ``pixel_max``) inside the wrappers of devices and ranks, or ``None`` for other data."""
    while data is not None and getattr(data, "image_shape", None) is None:
        data = getattr(data, "data", None)
    return data
