"""The labelled subset, and the (x, y, observed) batches of a model that uses labels."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.data import load_data
from pyro_vae.data_source import HELD_OUT, TRAINING_SET
from pyro_vae.labels import LabelledSource, for_model, labelled_subset, refuse_unused_subset
from pyro_vae.model_protocol import uses_labels
from pyro_vae.plates import data_plate
from pyro_vae.train import TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _unbalanced() -> torch.Tensor:
    # 3 classes of 10, 6 and 4 rows, shuffled
    y = torch.tensor([0] * 10 + [1] * 6 + [2] * 4)
    return y[torch.randperm(20, generator=torch.Generator().manual_seed(3))]


def test_a_count_is_split_equally_over_the_classes_and_the_remainder_goes_by_the_seed():
    y = _unbalanced()
    for seed in range(6):
        seen = labelled_subset(y, count=8, seed=seed)
        per_class = torch.bincount(y[seen], minlength=3).tolist()
        assert sorted(per_class) == [2, 3, 3]  # floor(8/3) = 2 each, 8 mod 3 = 2 more
    remainders = {
        tuple(torch.bincount(y[labelled_subset(y, count=8, seed=s)], minlength=3).tolist())
        for s in range(12)
    }
    assert len(remainders) > 1  # which classes get the remainder depends on the seed
    assert torch.equal(labelled_subset(y, count=8, seed=5), labelled_subset(y, count=8, seed=5))
    assert torch.bincount(y[labelled_subset(y, count=12)], minlength=3).tolist() == [4, 4, 4]


def test_a_fraction_keeps_each_class_s_share_at_least_one_row():
    y = _unbalanced()
    seen = labelled_subset(y, fraction=0.5, seed=1)
    assert torch.bincount(y[seen], minlength=3).tolist() == [5, 3, 2]
    tiny = labelled_subset(y, fraction=0.01)
    assert torch.bincount(y[tiny], minlength=3).tolist() == [1, 1, 1]
    assert labelled_subset(y, fraction=1.0).all() and labelled_subset(y).all()


def test_within_a_class_the_draw_is_uniform():
    # each of class 0's 10 rows is drawn with probability 3/10: over 400 seeds, the count
    # per row is Binomial(400, 0.3), sd 9.2, so 120 ± 40 is over 4 sd
    y = _unbalanced()
    counts = sum(labelled_subset(y, count=9, seed=s).int() for s in range(400))
    assert ((counts[y == 0] - 120).abs() < 40).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.5, "count": 3}, "fraction, count: 0.5 and 3 both given"),
        ({"fraction": 0.0}, "fraction: 0.0 is not in (0, 1]"),
        ({"fraction": 1.5}, "fraction: 1.5 is not in (0, 1]"),
        ({"fraction": "half"}, "fraction: 'half' is not a number"),
        (
            {"count": 2},
            "count: 2; expected an integer between the 3 classes present and 12, "
            "3 times the smallest class's 4 training rows",
        ),
        ({"count": 21}, "count: 21; expected an integer between"),
        ({"count": 3.0}, "count: 3.0; expected an integer"),
        ({"count": 13}, "count: 13; expected an integer between the 3 classes present and 12"),
    ],
)
def test_bad_subsets_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        labelled_subset(_unbalanced(), **kwargs)


def test_data_splits_draw_the_subset_and_refuse_data_without_labels(digits):
    assert digits.train_observed.all() and digits.train_observed.shape == (digits.num_train,)
    some = digits.with_labelled_subset(count=30, seed=2)
    assert some.info["num_labelled"] == 30 == int(some.train_observed.sum())
    assert torch.bincount(some.train_y[some.train_observed]).tolist() == [3] * 10
    assert digits.train_observed.all()  # a copy: the original keeps every label
    unlabelled = load_data(np.random.default_rng(0).random((40, 4)))
    assert unlabelled.info["labelled"] is False
    with pytest.raises(ValueError, match="count: 5, but 'array' came without labels"):
        unlabelled.with_labelled_subset(count=5)


def test_labelled_batches_are_the_plain_batches_with_their_labels(digits):
    some = digits.with_labelled_subset(count=100, seed=0)
    source = LabelledSource(some)
    plain = list(digits.indexed_batches(64, epoch=1, seed=7))
    labelled = list(source.indexed_batches(64, epoch=1, seed=7))
    assert len(plain) == len(labelled) == source.steps_per_epoch(64)
    for (rows, (x,)), (rows_l, (x_l, y, seen)) in zip(plain, labelled, strict=True):
        assert torch.equal(rows, rows_l) and torch.equal(x, x_l)
        assert y.dtype == torch.long and seen.dtype == torch.bool
        assert torch.equal(seen, some.train_observed[rows])
        assert torch.equal(y, torch.where(seen, some.train_y[rows], 0))
    assert source.num_train == digits.num_train and source.image_shape == (8, 8)


def test_validation_carries_every_held_out_label(digits):
    check = lambda x, what: None  # noqa: E731 (the likelihood's test is not the point here)
    source = LabelledSource(digits.with_labelled_subset(count=10))
    plan = source.validation_set(False, check)
    assert plan.kind == HELD_OUT and len(plan.args) == 3
    x, y, seen = plan.args
    assert torch.equal(x, digits.val_x) and torch.equal(y, digits.val_y) and seen.all()
    local = source.validation_set(True, check)
    assert local.kind == TRAINING_SET and int(local.args[2].sum()) == 10


class _LabelNoise(PyroModule):
    """A real label-conditioned model: x ~ Bernoulli(sigmoid(W z + V one_hot(y)))."""

    uses_labels = "all"

    def __init__(self, x_dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.classes, self.net = classes, nn.Linear(2 + classes, x_dim)
        self.seen: list[tuple] = []

    def model(self, x, y, observed, num_data=None):
        self.seen.append((x.shape, y.dtype, observed.dtype))
        pyro.module("net", self.net)
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            one_hot = nn.functional.one_hot(y, self.classes).to(x)
            h = torch.cat([z, one_hot.expand(*z.shape[:-1], self.classes)], -1)
            pyro.sample("x", dist.Bernoulli(logits=self.net(h)).to_event(1), obs=x)

    def guide(self, x, y, observed, num_data=None):
        loc = pyro.param("loc", torch.zeros(2))
        with data_plate(x, num_data):
            pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 2), 1.0).to_event(1))


def test_fit_calls_a_label_model_on_x_y_observed(digits):
    pyro.set_rng_seed(0)
    made = _LabelNoise()
    result = fit(made.model, made.guide, digits, pyro.infer.Trace_ELBO(), TrainConfig(epochs=1))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["val_elbo"])
    assert {s[1:] for s in made.seen} == {(torch.long, torch.bool)}


def test_a_model_that_needs_every_label_is_refused_a_subset_and_unlabelled_data(digits):
    made = _LabelNoise()
    with pytest.raises(ValueError, match="labels: 20 of 1455 training labels are observed"):
        fit(made.model, made.guide, digits.with_labelled_subset(count=20), pyro.infer.Trace_ELBO())
    unlabelled = load_data(np.random.default_rng(0).random((40, 64)))
    with pytest.raises(ValueError, match="data: 'array' came without labels"):
        fit(made.model, made.guide, unlabelled, pyro.infer.Trace_ELBO())
    assert made.seen == []  # refused before any step


def test_models_without_the_declaration_see_the_source_itself(digits):
    assert for_model(None, "VAE", digits) is digits
    assert isinstance(for_model("partial", "M2", digits), LabelledSource)
    with pytest.raises(TypeError, match="data: TensorData, but M2 uses labels"):
        from pyro_vae.tensor_data import TensorData

        for_model("partial", "M2", TensorData(torch.zeros(3, 2)))


def test_the_declaration_is_read_off_a_bound_method_s_object_and_checked():
    made = _LabelNoise()
    assert uses_labels(made.model) == "all" == uses_labels(made)
    assert uses_labels(lambda x: None) is None

    class Odd:
        uses_labels = "some"

        def model(self, x):
            pass

    with pytest.raises(ValueError, match="uses_labels: 'some' declared by Odd; expected 'all'"):
        uses_labels(Odd().model)


def test_class_labels_outside_the_models_classes_are_refused_before_training(digits):
    # the CVAE's one-hot reads a label outside 0..C-1 as no class (tester B's F3)
    import dataclasses

    from models.cvae import CVAE

    model = CVAE(x_dim=64, num_classes=5, hidden_dims=(8,), latent_dim=2)
    with pytest.raises(ValueError, match=r"train split's observed labels span 0\.\.9, \d+ of them "
                       r"outside 0\.\.4; CVAE has num_classes=5"):  # fmt: skip
        fit(model, model.make_guide(), digits, pyro.infer.Trace_ELBO())
    shifted = dataclasses.replace(digits, test_y=digits.test_y - 1)  # one class becomes -1
    with pytest.raises(ValueError, match=r"test split's observed labels span -1\.\.8") as info:
        for_model("all", "CVAE", shifted, 10)
    # tester CT: "or the model num_classes to cover them", which no num_classes does
    assert str(info.value).endswith(  # tester CR: −1, scikit-learn's "unlabelled", is not
        "No num_classes covers a label below 0, and none marks a row unlabelled (--labelled "
        "or --labels-fraction choose the labels a model observes): give labels 0..C-1 (these "
        "10 distinct labels as 0..9, or the unlabelled rows' true classes)"
    )
    assert isinstance(for_model("all", "CVAE", digits, 10), LabelledSource)
    unobserved = digits.with_labelled_subset(count=20)  # unobserved training labels not read
    hidden = torch.where(unobserved.train_observed, unobserved.train_y, -1)
    wrong = dataclasses.replace(unobserved, train_y=hidden)
    assert isinstance(for_model("partial", "M2", wrong, 10), LabelledSource)


def test_a_labelled_subset_for_a_model_without_labels_is_refused_by_its_argument():
    given = {"--labelled": None, "--labels-fraction": 0.5}
    with pytest.raises(ValueError) as info:
        refuse_unused_subset(None, "models.vae:VAE", given)
    assert str(info.value).startswith("--labels-fraction: 0.5, but models.vae:VAE uses no labels")
    assert "expected a model that declares uses_labels='partial'" in str(info.value)
    refuse_unused_subset("partial", "models.m2:M2", given)  # M2 reads them
    refuse_unused_subset(None, "models.vae:VAE", {"--labelled": None})  # none asked for


def test_class_labels_are_checked_whole_and_within_the_classes():
    from pyro_vae.labels import check_class_labels

    check_class_labels(torch.tensor([0, 2, 1]), 3)
    check_class_labels(torch.tensor([0.0, 2.0]), 3)  # whole numbers in a float tensor
    check_class_labels(torch.tensor([], dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"labels: labels span 0..3; expected classes 0..2"):
        check_class_labels(torch.tensor([0, 3]), 3, "labels")
    with pytest.raises(ValueError, match=r"y: a label 0.5 is not a whole number"):
        check_class_labels(torch.tensor([1.0, 0.5]), 3)
