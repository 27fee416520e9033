"""A run's test metrics as the commands print and keep them."""

from pyro_vae.checkpoint import EVALUATED_ON_TRAINING_SET
from pyro_vae.cli_report import print_test, rows_not_images, with_previous


def test_a_label_model_s_metrics_are_printed_as_conditional(capsys):
    print_test(
        {
            "elbo": -20.0,
            "log_likelihood": -19.5,
            "log_likelihood_samples": 8,
            "log_likelihood_points": 4,
            "kl": 1.25,
            "test_accuracy": 0.875,
            "test_elbo_unlabelled": -28.84,
            "test_log_px_unlabelled": -28.79,
            "test_log_px_unlabelled_points": 180,
            "label_metrics": ["test_accuracy", "test_elbo_unlabelled", "test_log_px_unlabelled",
                              "test_log_px_unlabelled_points"],
            "conditioned_on_labels": True,
        }
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test ELBO | y") and lines[0].endswith("-20.000 nats per image")
    assert lines[1].startswith("test log p(x | y) (IWAE)") and "(K=8, 4 images)" in lines[1]
    assert lines[2].startswith("test KL(q(z | x, y) ‖ p(z))")
    # tester BP: the label metrics had no units
    assert lines[3].split() == ["test", "accuracy", "0.8750", "(share", "correct)"]
    assert lines[4].endswith("-28.8400 nats per image") and lines[4].startswith("test elbo")
    assert lines[5].endswith("-28.7900 nats per image")
    assert lines[6].split() == ["test", "log", "px", "unlabelled", "points", "180"]


def test_a_label_model_s_original_units_lines_keep_what_the_bound_is_of(capsys):
    test = {"elbo": -2.0, "elbo_original_units": -9.0, "units": "standardized columns"}
    for labels_in_bound, given in (("conditioned", " | y"), ("joint", ", y")):
        print_test({**test, "labels_in_bound": labels_in_bound}, table=True)
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"test ELBO{given} ") and "standardized columns" in lines[0]
        assert lines[1].startswith(f"test ELBO{given} ") and "file's units" in lines[1]


def test_a_label_model_s_nats_on_a_standardized_table_say_so_as_the_elbo_does(capsys):
    """Tester FM: M2's unlabelled bounds said "nats per row" where the ELBO's line said
    "nats per row of the standardized columns", of the same table."""
    metrics = ["test_accuracy", "test_elbo_unlabelled", "test_log_px_unlabelled_points"]
    print_test(
        {"elbo": -2.0, "units": "standardized columns", "test_accuracy": 0.5,
         "test_elbo_unlabelled": -3.0, "test_log_px_unlabelled_points": 40,
         "label_metrics": metrics},
        table=True,
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("nats per row of the standardized columns")
    assert lines[1].endswith("(share correct)")
    assert lines[2].endswith("-3.0000 nats per row of the standardized columns")
    assert lines[3].split()[-1] == "40"


def test_a_replaced_block_is_kept_once_after_those_kept_before():
    first, second = {"elbo": -3.0, "seconds": 1.0}, {"elbo": -2.0, "seconds": 1.0}
    assert with_previous({}, "test") == []  # nothing to keep
    assert with_previous({"test": first}, "test") == [first]
    older = {"test": second, "test_previous": first}  # an older run's single block
    assert with_previous(older, "test") == [first, second]
    # the same numbers scored again, at another wall time: not kept twice
    again = {"test": {**second, "seconds": 7.0}, "test_previous": [first, second]}
    assert with_previous(again, "test") == [first, second]


def test_rows_are_rows_and_images_are_images():
    class Data:
        def __init__(self, shape):
            self.image_shape = shape

    assert rows_not_images(Data((6,))) and rows_not_images(Data(None))  # vectors, a table
    assert not rows_not_images(Data((1, 8, 8)))


def test_a_guide_scored_on_its_training_rows_prints_train_not_test(capsys):
    """Tester FG: AutoNormal over local latents is scored on the training rows (it has no
    q for others), and its lines still said "test ELBO" under the note saying so. They
    say "train" now, each number in the column the test lines put it in."""
    metrics = {"elbo": -20.0, "log_likelihood": -19.5, "log_likelihood_samples": 8,
               "log_likelihood_points": 4, "kl": 1.25}  # fmt: skip
    print_test(metrics)
    test = capsys.readouterr().out.splitlines()
    print_test({**metrics, "evaluated_on": EVALUATED_ON_TRAINING_SET})
    note, *train = capsys.readouterr().out.splitlines()
    assert "these are the training images' metrics" in note
    assert [line.split()[0] for line in train] == ["train", "train", "train"]
    assert not any("test" in line for line in train)
    for before, after in zip(test, train, strict=True):  # the numbers in the same column
        assert before.index("nats") == after.index("nats")
