"""Class labels in the fit loop: which training labels are observed, and the batches a
model that uses labels is called on.

A model declares that it uses labels with the class attribute ``uses_labels``
(:func:`pyro_vae.model_protocol.uses_labels` reads it):

- ``"all"``: every label it trains on must be observed (the conditional VAE,
  :mod:`models.cvae`; Sohn, Lee & Yan 2015);
- ``"partial"``: labels observed on a subset, latent elsewhere (the semi-supervised M2
  model; Kingma, Rezende, Mohamed & Welling 2014).

For such a model (:func:`for_model`, called by :func:`pyro_vae.fit`) the batches of a
:class:`~pyro_vae.data.DataSplits` pass the model and guide ``(x, y, observed)``: ``x``
``[B, D]`` as for any model, ``y`` the labels (``LongTensor [B]``, 0 where unobserved)
and ``observed`` which of them are (``BoolTensor [B]``). Validation passes ``(x, y,
observed)`` with every held-out label observed. Models that do not declare
``uses_labels`` see the source unchanged, ``(x,)``.

Which training labels are observed is a seeded, class-balanced draw
(:func:`labelled_subset`), as in Kingma et al. (2014), §4.1: the same number of labelled
examples per class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from pyro_vae.checks import as_real
from pyro_vae.data_source import HELD_OUT, ObservationCheck, ValidationSet
from pyro_vae.wrapped_source import WrappedSource


def labelled_subset(
    y: torch.Tensor,
    *,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Which of the labels ``y`` (``[N]`` integers) are observed: a ``BoolTensor [N]``.

    A seeded, class-balanced draw over the C classes present in ``y``:

    - ``count`` = N_l: ⌊N_l / C⌋ rows of each class, and one more for each of the first
      N_l mod C classes in an order drawn from ``seed`` (Kingma et al. 2014 label 100 of
      each MNIST digit);
    - ``fraction`` = f: round(f · n_c) rows (at least one) of each class c of n_c rows, so
      the labelled rows keep the classes' proportions.

    Within a class the rows are a uniform draw without replacement. Neither given: all
    observed.

    Raises:
        ValueError: both given; ``fraction`` not in (0, 1]; ``count`` not an integer
            between C and N; a class with fewer rows than its share of ``count``.
    """
    n = int(y.shape[0])
    if fraction is not None and count is not None:
        raise ValueError(
            f"fraction, count: {fraction!r} and {count!r} both given; expected one of them "
            "(a share of the training labels, or their number)"
        )
    if fraction is None and count is None:
        return torch.ones(n, dtype=torch.bool)
    classes, sizes = torch.unique(y, return_counts=True)
    generator = torch.Generator().manual_seed(int(seed))
    if fraction is not None:
        number = as_real(fraction)
        if number is None:
            raise ValueError(f"fraction: {fraction!r} is not a number in (0, 1]")
        if not 0.0 < number <= 1.0:
            raise ValueError(f"fraction: {fraction!r} is not in (0, 1]; expected 0 < f <= 1")
        quotas = [max(1, round(number * int(s))) for s in sizes]
    else:
        quotas = _count_quotas(count, classes, sizes, n, generator)
    observed = torch.zeros(n, dtype=torch.bool)
    for label, quota in zip(classes.tolist(), quotas, strict=True):
        rows = torch.nonzero(y == label).reshape(-1)
        drawn = torch.randperm(rows.shape[0], generator=generator, device=generator.device)
        observed[rows[drawn[:quota]]] = True
    return observed


def _count_quotas(
    count: Any, classes: torch.Tensor, sizes: torch.Tensor, n: int, generator: torch.Generator
) -> list[int]:
    """Rows to label in each class for ``count`` labels: ⌊count / C⌋ each, the remainder
    one each to the first classes of a seeded order."""
    c, smallest = int(classes.shape[0]), int(sizes.min())
    if isinstance(count, bool) or not isinstance(count, int) or not c <= count <= c * smallest:
        raise ValueError(  # the most a balanced draw always fills (tester BP: "and the 1455
            # training rows", then 1455 refused as more than 10 times the smallest class)
            f"count: {count!r}; expected an integer between the {c} classes present and "
            f"{c * smallest}, {c} times the smallest class's {smallest} training rows (a "
            "balanced draw takes as many of each class)"
        )
    quotas = [count // c] * c
    for i in torch.randperm(c, generator=generator)[: count % c].tolist():
        quotas[i] += 1
    return quotas  # each at most ⌈count / C⌉ ≤ the smallest class's size


class LabelledSource(WrappedSource):
    """A :class:`~pyro_vae.data.DataSplits` as a model that uses labels sees it: each
    batch ``(rows, (x, y, observed))``, ``y`` 0 where ``observed`` is false; validation on
    ``(x, y, all true)``. The batches' rows, order and binarization are those the source
    gives any other model (the same seeded stream). Any other attribute is the source's.
    """

    def indexed_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        observed = self.data.train_observed
        batches = self.data.train_batches(batch_size, epoch, seed, drop_last)
        for rows, x, y in batches.indexed():
            seen = observed.index_select(0, rows)
            yield rows, (x, torch.where(seen, y.long(), 0), seen)

    def check_training_data(self, check: ObservationCheck) -> None:
        self.data.check_training_data(check)

    @property
    def keywords(self) -> dict[str, int]:
        """What a model or guide that names them is given with each training batch
        (:class:`~pyro_vae.minibatch.Minibatched`): ``num_labelled``, the training rows
        whose labels are observed (N_l, by which M2's classifier term divides)."""
        return {"num_labelled": int(self.data.train_observed.sum())}

    def validation_set(self, local_guide: bool, check: ObservationCheck) -> ValidationSet | None:
        """The source's validation on ``(x, y, observed)``: held-out rows with all their
        labels; for a guide with free per-datapoint parameters, the training rows with the
        labels training observed."""
        plan = self.data.validation_set(local_guide, check)
        if plan is None:
            return None
        if plan.kind == HELD_OUT:
            y = self.data.val_y.long()
            seen = torch.ones_like(y, dtype=torch.bool)
        else:
            seen = self.data.train_observed
            y = torch.where(seen, self.data.train_y.long(), 0)
        return ValidationSet(plan.kind, (*plan.args, y, seen), plan.whole_data, plan.draws)


def for_model(mode: str | None, name: str, data: Any, num_classes: int | None = None) -> Any:
    """``data`` as a model declaring ``uses_labels = mode`` (``None``: none; read by
    :func:`pyro_vae.model_protocol.uses_labels`) should see it: a :class:`LabelledSource`
    for a model that uses labels, else ``data`` itself. ``name``: the model's, for errors.

    Raises:
        ValueError: the model uses labels and the data's labels did not come with the data
            (``info["labelled"]`` false), or it declares ``"all"`` and only some training
            labels are observed.
        TypeError: the model uses labels and ``data`` is not a
            :class:`~pyro_vae.data.DataSplits` (nothing else carries labels).

    ``num_classes``: the model's C where it reads class labels; every observed label must
    then be one of 0..C−1 (:func:`check_label_range`).
    """
    if mode is None:
        return data
    if not hasattr(data, "train_observed"):
        raise TypeError(
            f"data: {type(data).__name__}, but {name} uses labels (uses_labels={mode!r}); "
            "expected pyro_vae.DataSplits, whose batches carry labels"
        )
    check_labelled(data.info, name, mode)
    if num_classes is not None:
        check_label_range(data, num_classes, name)
    seen = int(data.train_observed.sum())
    if mode == "all" and seen < data.num_train:
        raise ValueError(
            f"labels: {seen} of {data.num_train} training labels are observed, but {name} "
            "declares uses_labels='all' (it conditions on every label); leave out the "
            "labelled subset (labels_fraction, labelled), or use a model that takes partial "
            "labels"
        )
    return LabelledSource(data)


def check_class_labels(y: torch.Tensor, num_classes: int, name: str = "y") -> None:
    """Refuse class labels ``y`` (``[B]``, any dtype) that are not whole numbers in
    0..C−1, where a model reads them itself: the CVAE's condition, a comparison with each
    class, read 7, −1 or 1.7 as no class at all (an all-zero condition) and M2's
    ``y.long()`` read 1.7 as class 1, with no word, from Python (tester EM; the command
    line checks a run's labels as it loads them, :func:`check_label_range`). One value
    read per call (whether any label is bad); none while a step is being recorded
    (``--compile``), which cannot read values, and whose replays run no Python: fit
    checks every label of its data before the first step (:func:`for_model`).

    Raises:
        ValueError: naming ``name``, the labels' span or a label that is not whole, and
            0..C−1."""
    if y.numel() == 0 or _recording_a_step():
        return
    whole = y == y.round() if y.is_floating_point() else torch.ones_like(y, dtype=torch.bool)
    if not bool((~whole | (y < 0) | (y >= num_classes)).any()):
        return
    if not bool(whole.all()):
        odd = float(y[~whole].reshape(-1)[0])
        raise ValueError(
            f"{name}: a label {odd:.6g} is not a whole number; expected class labels "
            f"0..{num_classes - 1}"
        )
    raise ValueError(
        f"{name}: labels span {y.min().item():g}..{y.max().item():g}; expected classes "
        f"0..{num_classes - 1} (num_classes={num_classes}: a label outside would be read as "
        "no class)"
    )


def _recording_a_step() -> bool:
    """Whether a step is being recorded (make_fx, ``--compile``) or compiled (Dynamo)."""
    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def check_label_range(data, num_classes: int, name: str) -> None:
    """Refuse, before training, observed class labels outside 0..C−1 in any split of
    ``data`` (:class:`~pyro_vae.data.DataSplits`): a model that one-hot encodes them by
    comparison (the CVAE's condition) reads such a label as no class at all, an all-zero
    condition, and trains on it without a word (tester B's F3: labels of −1, and
    ``num_classes=5`` on ten digit classes).

    Raises:
        ValueError: naming the split, the labels' span, how many are outside and C."""
    for split in ("train", "val", "test"):
        y = getattr(data, f"{split}_y", None)
        if y is None or not torch.is_tensor(y) or not y.numel():
            continue
        values = y[data.train_observed] if split == "train" else y
        outside = (values < 0) | (values >= num_classes)
        if bool(outside.any()):
            way = "Give labels 0..C-1, or the model num_classes to cover them"
            if bool((values < 0).any()):  # no num_classes covers a label below 0 (tester CT)
                distinct = int(torch.unique(values).numel())
                way = (
                    f"No num_classes covers a label below 0, and none marks a row unlabelled "
                    f"(--labelled or --labels-fraction choose the labels a model observes): "
                    f"give labels 0..C-1 (these {distinct} distinct labels as 0..{distinct - 1}"
                    ", or the unlabelled rows' true classes)"
                )
            raise ValueError(
                f"labels: the {split} split's observed labels span {int(values.min())}.."
                f"{int(values.max())}, {int(outside.sum())} of them outside 0..{num_classes - 1}"
                f"; {name} has num_classes={num_classes} (a label outside would be read as no "
                f"class). {way}"
            )


def check_labelled(info: dict, name: str, mode: str) -> None:
    """Refuse data whose labels did not come with it (``info["labelled"]`` false: every
    label 0) for the model ``name`` that uses labels.

    Raises:
        ValueError: naming the dataset.
    """
    if info.get("labelled", True) is False:
        raise ValueError(
            f"data: {info.get('dataset', 'the data')!r} came without labels (every label is "
            f"0), but {name} uses labels (uses_labels={mode!r}); give labels with the data "
            "(an .npz with 'y', PATH.labels.npy, a table's label column, an image folder's "
            "class folders)"
        )


def refuse_unused_subset(mode: str | None, name: str, given: dict[str, Any]) -> None:
    """Refuse a labelled subset asked for (``given``: argument name to value, None where not
    given: ``--labelled``, ``--labels-fraction``) for the model ``name`` that declares no
    ``uses_labels`` (``mode`` None): it would be recorded and never read.

    Raises:
        ValueError: naming the argument, its value and what was expected.
    """
    asked = {arg: value for arg, value in given.items() if value is not None}
    if mode is not None or not asked:
        return
    arg, value = next(iter(asked.items()))
    raise ValueError(
        f"{arg}: {value}, but {name} uses no labels (it declares no uses_labels), so the "
        "subset would be recorded and never read; expected a model that declares "
        f"uses_labels='partial' (e.g. models.m2:M2), or leave {arg} out"
    )
