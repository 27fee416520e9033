"""The per-datapoint plate: which of a model's plates indexes the rows of its data.

Minibatch scaling, per-datapoint bounds (IWAE, VIMCO), per-datapoint evaluation, PSIS k̂
per datapoint and NVIL's input-dependent baseline all need to know which plate runs over
the datapoints. Every one of them finds it with :func:`find_data_plate`, by one rule:

    For a model run on a batch of R rows (the leading dim of its first tensor argument),
    the per-datapoint plate is
      1. the plate named by the ``data_plate`` option, when one is given; otherwise
      2. the vectorized plate that encloses an observed site and has R elements in the
         run (particle plates left out): the only such plate, or the one named
         ``"data"`` when there are several (where the only one is not named ``"data"``
         and the observed site is in a plate named ``"data"`` too, of another size,
         which one is meant is ambiguous: refused where the caller takes the option);
      3. none, when no plate qualifies: the model has no per-datapoint plate, and
         whatever needs one refuses with :class:`DataPlateError`.

Plates are identified by name within a run, as Pyro identifies them (two ``pyro.plate``
statements with one name are one plate); the name is found by the rule, never assumed.

:func:`data_plate` (defined in :mod:`pyro_vae.plate_declaration`, below the guides that
use it) is a convenience for writing models and guides: a ``pyro.plate``
named ``"data"`` at ``dim=-1`` over the rows of ``x``, scaled by ``num_data / len(x)`` when
``x`` is a minibatch. Plain ``pyro.plate("data", len(x))`` works as well: the fit loop gives
the per-datapoint plate its full size and the batch's row indices itself
(:mod:`pyro_vae.minibatch`).
"""

from __future__ import annotations

import torch
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.plate_declaration import DATA_DIM, DATA_PLATE, data_plate  # noqa: F401 (public here too)
from pyro_vae.pyro_compat import subsample_declaration
from pyro_vae.traces import PARTICLE_PLATES, sample_sites


class DataPlateError(ValueError):
    """The per-datapoint plate a computation needs is missing or ambiguous."""


def batch_rows(args: tuple, kwargs: dict | None = None) -> int | None:
    """R, the leading dim of the first tensor among the model's arguments (None if none)."""
    for value in (*args, *(kwargs or {}).values()):
        if torch.is_tensor(value) and value.dim() >= 1:
            return int(value.shape[0])
    return None


def find_data_plate(
    model_trace: Trace, rows: int | None, name: str | None = None, nameable: bool = False
) -> str | None:
    """The name of the model's per-datapoint plate, by the rule in the module docstring.

    Args:
        model_trace: a trace of the model on the batch.
        rows: R, the batch's number of rows (:func:`batch_rows`); ``None`` means no data.
        name: the ``data_plate`` option: the plate to use, by name.
        nameable: whether the caller takes that option (fit, the estimators, the
            evaluators); only then is a plate matching the rows beside another named
            ``"data"`` around the observed site refused as ambiguous (the option settles
            it); a caller without it (a diagnostic choosing its default sites) takes the
            plate matching the rows, as the rule has it.

    Raises:
        DataPlateError: ``name`` is not one of the model's plates, or several plates
            qualify and none is named ``"data"``, or (``nameable``) one plate qualifies
            and another around the observed site is named ``"data"``.
    """
    sites = sample_sites(model_trace)
    plates = {
        f.name: f
        for s in sites.values()
        for f in s["cond_indep_stack"]
        if f.vectorized and f.name not in PARTICLE_PLATES
    }
    if name is not None:
        if name not in plates:
            raise DataPlateError(
                f"data_plate: {name!r} is not a plate of the model; its plates are "
                f"{sorted(plates) or 'none'}"
            )
        return name
    if rows is None:
        return None
    around_data = {
        f
        for s in sites.values()
        if s["is_observed"]
        for f in s["cond_indep_stack"]
        if f.vectorized and f.name not in PARTICLE_PLATES
    }
    candidates = sorted({f.name for f in around_data if f.size == rows})
    if len(candidates) == 1:
        beside = DATA_PLATE in {f.name for f in around_data} and candidates[0] != DATA_PLATE
        if nameable and beside:
            # tester DS: x laid out [M, N] for plates "data" (N, dim −1) and "inner" (M,
            # dim −2) took "inner" by its rows, and IWAE silently became a bound per row
            # of x over all the datapoints
            raise DataPlateError(
                f"data_plate: the batch's {rows} rows (the leading dim of the model's first "
                f"tensor argument) match the plate {candidates[0]!r}, but the observations are "
                f"in a plate named {DATA_PLATE!r} too, of {plates[DATA_PLATE].size} elements; "
                "which runs over the datapoints is ambiguous: lay the data out with the datapoints "
                "along the leading dim, or name the plate with the data_plate option "
                "(TrainConfig(data_plate=...) for fit, the evaluator's or the estimator's "
                "data_plate=, --data-plate on the command line)"
            )
        return candidates[0]
    if DATA_PLATE in candidates:
        return DATA_PLATE
    if candidates:
        raise DataPlateError(
            f"data_plate: the plates {candidates} all enclose observed sites and run over "
            f"{rows} elements here (a subsample's, where one subsamples), as many as the batch "
            f"has rows, so which one runs over datapoints is ambiguous; name it "
            "with the data_plate option (TrainConfig(data_plate=...) for fit, the "
            "evaluator's or the estimator's data_plate=, --data-plate on the command line)"
        )
    return None


def subsampled_data_plate(model_trace: Trace, rows: int | None) -> str | None:
    """The plate that subsamples the batch's R rows inside the model, Pyro's idiom
    ``with pyro.plate("data", len(x), subsample_size=B) as i: ... obs=x[i]``: the
    vectorized plate enclosing an observed site whose full size is R and whose elements
    in the run are fewer (the only one, or the one named ``"data"``); else None. A
    per-datapoint bound (IWAE, VIMCO) is then taken over the subsample's B datapoints and
    scaled by R/B; what needs each datapoint's row (a baseline b(x_n), k̂ per datapoint)
    cannot use it, as the rows the model drew are its own."""
    if rows is None:
        return None
    candidates = sorted(
        {
            f.name
            for s in sample_sites(model_trace).values()
            if s["is_observed"]
            for f in s["cond_indep_stack"]
            if f.vectorized
            and f.full_size == rows
            and f.size != rows
            and f.name not in PARTICLE_PLATES
        }
    )
    if len(candidates) == 1:
        return candidates[0]
    return DATA_PLATE if DATA_PLATE in candidates else None


def refuse_self_subsampling(model_trace: Trace, rows: int | None, what: str) -> None:
    """Refuse a model that subsamples the batch's rows itself (Pyro's ``pyro.plate(name,
    len(x), subsample_size=B)``) for ``what``, which scores every row of the batch and
    reports it by row: a run that picks its own rows scores others than those reported
    (tester D's F4: ``to_inference_data`` labelled rows 5, 4 and 2 as 0, 1 and 2). That is
    a plate drawing fewer than the batch's ``rows`` (:func:`subsampled_data_plate`). A
    plate that draws as many as the batch has, where the batch is a chunk of more rows,
    is refused only if the model reads the batch by its indices, which a run with the
    chunk's rows among them decides
    (:func:`pyro_vae.minibatch.refuse_reading_the_batch_by_plate`; tester EJ: this refused
    ``pyro.plate("data", num_data or len(x), subsample_size=len(x))`` with ``obs=x``,
    which ``fit`` trains).

    Raises:
        DataPlateError: naming the plate, its subsample size and the rows, and the way
            out."""
    plate = subsampled_data_plate(model_trace, rows)
    if plate is not None:
        raise self_subsampling_error(plate, _declared_size(model_trace, plate), rows, what)


def _declared_size(model_trace: Trace, plate: str) -> int:
    """The ``subsample_size`` ``plate`` declared: its subsample site's, or, in a trace
    without that site, the plate's size in the run."""
    node = model_trace.nodes.get(plate)
    if node is not None and site_is_subsample(node):
        declared = subsample_declaration(node["fn"])[1]
        if declared is not None:
            return declared
    sites = sample_sites(model_trace).values()
    return next(f.size for s in sites for f in s["cond_indep_stack"] if f.name == plate)


def self_subsampling_error(plate: str, declared: int | None, rows, what: str) -> DataPlateError:
    """The :class:`DataPlateError` of :func:`refuse_self_subsampling`."""
    return DataPlateError(
        f"model: plate {plate!r} subsamples the batch's {rows} rows itself "
        f"(pyro.plate(..., subsample_size={declared})), and {what} scores every row of the "
        "batch and reports it by row; leave subsample_size out of the model for it (a model "
        "argument, None when evaluating), or use pyro_vae.plates.data_plate(x, num_data), "
        "whose batches the caller chooses"
    )


class DeclaredSubsamples(Messenger):
    """Records ``{plate: (full size, declared subsample_size or None)}`` as each
    ``pyro.plate``'s subsample site passes, in ``declared``: it is read before Pyro's own
    check of the plate, so a run that Pyro fails (``pyro.plate("data", 3,
    subsample_size=4)``: "subsample_size does not match len(subsample), 4 vs 3. Did you
    accidentally use different subsample_size in the model and guide?") still shows which
    plate declared what."""

    def __init__(self) -> None:
        super().__init__()
        self.declared: dict[str, tuple[int, int | None]] = {}

    def _pyro_sample(self, msg) -> None:
        if site_is_subsample(msg):
            self.declared[msg["name"]] = subsample_declaration(msg["fn"])

    def drawing(self, rows: int | None) -> list[str]:
        """The plates that declared a ``subsample_size`` of ``rows``: each draws as many
        rows as the batch has, by indices the model may read the batch by."""
        return [plate for plate, (_, declared) in self.declared.items() if declared == rows]

    def refusal(self, rows: int | None, what: str) -> DataPlateError | None:
        """The :func:`refuse_self_subsampling` error for a plate over the batch's ``rows``
        that declared a subsample size larger than them (a run Pyro fails), else None."""
        for plate, (size, declared) in self.declared.items():
            if size == rows and declared is not None and declared > size:
                return self_subsampling_error(plate, declared, rows, what)
        return None


def describe_plates(model_trace: Trace) -> str:
    """The plates around the model's observed sites, with what keeps each from being the
    per-datapoint plate of the rule: for error messages."""
    seen: dict[str, str] = {}
    for site in sample_sites(model_trace).values():
        if not site["is_observed"]:
            continue
        for f in site["cond_indep_stack"]:
            if f.name in PARTICLE_PLATES:
                continue
            if not f.vectorized:
                seen[f.name] = f"{f.name} (sequential: a Python loop, not vectorized)"
            else:
                seen[f.name] = f"{f.name} ({f.size} elements)"
    return ", ".join(seen.values()) or "none"


def require_data_plate(plate: str | None, rows: int | None, what: str) -> str:
    """``plate``, or a :class:`DataPlateError` saying that ``what`` needs one."""
    if plate is None:
        found = f"batch of {rows} rows" if rows is not None else "call without a data tensor"
        raise DataPlateError(
            f"model: {what} needs a per-datapoint plate, and the model has none for this "
            f"{found} (no plate with that many elements encloses an observed site); put "
            "the per-datapoint sites in pyro.plate(..., len(x)) or name the plate with "
            "the data_plate option"
        )
    return plate


def frames_in(site: dict, plate: str) -> list:
    """The frames of ``site`` that belong to ``plate`` (one or none)."""
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name == plate]
