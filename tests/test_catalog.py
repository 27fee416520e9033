"""The catalog of bad inputs: every one gets a clear error, and none loses what was saved.

Each command-line case runs ``pyro-vae`` in this process (``main(argv)``) and must exit 2
(argparse's own refusals exit 2 too) with one message on stderr that contains the given
words, no traceback, and leave every run folder it touched byte for byte as it was. Each
Python case must raise the given exception type with the given words. The cases that
need a process of their own (signals, two fits at once, kill -9) are in test_cli.py and
test_checkpoint.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.guides import AmortizedBernoulli
from pyro_vae.idx import write_idx
from pyro_vae.plates import data_plate

FAST = ["--latent-dim", "3", "--hidden", "16", "--no-progress", "--ll-samples", "10"]


def _train(folder: Path, *extra: str) -> Path:
    assert (
        main(["fit", "--data", "digits", "--epochs", "1", "--out", str(folder), *FAST, *extra]) == 0
    )
    return folder


# session scope: one per xdist worker (module scope is set up again each time worksteal
# brings a worker back to this module, 3 times in a run, 12-16 s each)
@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """Run folders and data directories the cases start from (copied, never changed)."""
    root = tmp_path_factory.mktemp("catalog")
    paths = {
        "vae": _train(root / "vae"),
        "ae": _train(root / "ae", "--model", "models.autoencoder:Autoencoder"),
        "local": _train(root / "local", "--guide", "pyro.infer.autoguide:AutoNormal"),
    }
    images = np.random.default_rng(0).integers(0, 256, size=(20, 4, 4)).astype(np.uint8)
    labels = np.zeros(20, dtype=np.uint8)
    for name, pixels in {
        "idx_ok": images,
        "idx_float": images.astype(np.float32) / 255,
        "idx_signed": images.astype(np.int16) - 128,
    }.items():
        folder = root / name
        folder.mkdir()
        write_idx(folder / "train-images-idx3-ubyte", pixels)
        write_idx(folder / "t10k-images-idx3-ubyte", pixels)
        write_idx(folder / "train-labels-idx1-ubyte", labels)
        write_idx(folder / "t10k-labels-idx1-ubyte", labels)
        paths[name] = folder
    truncated = root / "idx_truncated"
    shutil.copytree(paths["idx_ok"], truncated)
    data = (truncated / "train-images-idx3-ubyte").read_bytes()
    (truncated / "train-images-idx3-ubyte").write_bytes(data[:-7])
    paths["idx_truncated"] = truncated
    (root / "empty").mkdir()
    paths["empty"] = root / "empty"
    intensities = images.astype(np.float32) / 255
    for name, array in {
        "npy_nan": np.where(images > 250, np.nan, intensities),
        "npy_range": intensities * 2,
        "npy_rank": images.reshape(-1),
        "npy_empty": images[:0],
        "npy_labelled": images,
        "npy_changed": images,
        "npy_unlabelled": intensities,
    }.items():
        np.save(root / f"{name}.npy", array)
        paths[name] = root / f"{name}.npy"
    np.save(root / "npy_labelled.labels.npy", labels[:19])
    np.savez(root / "no_x.npz", images=images)
    paths["npz_no_x"] = root / "no_x.npz"
    (root / "text.npy").write_text("not an array")
    paths["npy_text"] = root / "text.npy"
    paths["npy_run"] = _train(root / "npy_run", "--data", str(paths["npy_changed"]))
    np.save(paths["npy_changed"], images[:19])  # the data change after training
    paths.update(_sources(root, images))
    bad = root / "syntax_error.py"
    bad.write_text("def model(x)\n    pass\n")
    paths["syntax"] = bad
    plain = root / "plain.py"
    plain.write_text("def model(x):\n    pass\n\n\nclass Model:\n    pass\n")
    paths["plain"] = plain
    return paths


def _sources(root: Path, images: np.ndarray) -> dict[str, Path]:
    """Bad image folders, tables and IDX files, one fault each."""
    from PIL import Image

    paths = {}
    for name, sizes in {"img_sizes": [(4, 4), (3, 2)], "img_empty_class": [(4, 4)]}.items():
        (root / name / "a").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(images[i, :h, :w]).save(root / name / "a" / f"{i}.png")
        paths[name] = root / name
    (root / "img_empty_class" / "b").mkdir()
    (root / "img_unreadable" / "a").mkdir(parents=True)
    (root / "img_unreadable" / "a" / "x.png").write_text("not a png")
    paths["img_unreadable"] = root / "img_unreadable"
    tables = {
        "csv_nan": "a,b\n1,2\n,3\n4,5\n",
        "csv_text": "a,b\n1,x\n2,y\n",
        "csv_constant": "a,b\n1,7\n2,7\n3,7\n4,7\n5,7\n6,7\n7,7\n8,7\n9,7\n10,7\n",
        "csv_ok": "a,b,y\n0.5,1,0\n1.5,0,1\n2.5,1,0\n3.5,1,1\n",
    }
    for name, text in tables.items():
        (root / f"{name}.csv").write_text(text)
        paths[name] = root / f"{name}.csv"
    channels_first = root / "idx_channels_first"
    channels_first.mkdir()
    for split in ("train", "t10k"):
        write_idx(channels_first / f"{split}-images-idx3-ubyte", np.zeros((4, 3, 8, 8), np.uint8))
        write_idx(channels_first / f"{split}-labels-idx1-ubyte", np.zeros(4, np.uint8))
    paths["idx_channels_first"] = channels_first
    return paths


def _copy(made, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(made[name], target)
    return target


def _edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _nan_weights(run: Path) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for key in ("model", "guide"):
        for value in state[key].values():
            value.fill_(float("nan"))
        for value in (state["best"] or {}).get(key, {}).values():
            value.fill_(float("nan"))
    torch.save(state, run / "checkpoint.pt")


# Set-ups a case may ask for: a name of `made` to copy as {run}, and an edit to make to it.
EDITS = {
    "misspelled": lambda r: _edit_json(r / "config.json", lambda c: c["train"].update(epocs=3)),
    "no_section": lambda r: _edit_json(r / "config.json", lambda c: c.pop("evaluation")),
    "wrong_type": lambda r: _edit_json(r / "config.json", lambda c: c.update(train=[1, 2])),
    "old_format": lambda r: _edit_json(r / "config.json", lambda c: c.update(format="x/0")),
    "not_json": lambda r: (r / "config.json").write_text("{not json"),
    "config_list": lambda r: (r / "config.json").write_text("[1, 2]"),
    "no_config": lambda r: (r / "config.json").unlink(),
    "no_checkpoint": lambda r: (r / "checkpoint.pt").unlink(),
    "corrupt_checkpoint": lambda r: (r / "checkpoint.pt").write_bytes(b"not a checkpoint"),
    "pickled": lambda r: torch.save({"format": "pyro_vae.run/1", "x": object}, r / "checkpoint.pt"),
    "other_shape": lambda r: _edit_json(
        r / "config.json", lambda c: c["model_options"].update(latent_dim=5)
    ),
    "nan_weights": _nan_weights,
    "other_data_shape": lambda r: _edit_json(
        r / "config.json", lambda c: c["data"].update(likelihood="categorical", levels=5)
    ),
}

# (id, setup: None | (made name, edit name or None), argv, words in the message)
# Placeholders in argv: {run} the copied folder, {new} a path that does not exist yet,
# {tmp} the test's folder, and the names of `made`.
# fmt: off
CLI = [
    # --- fit: counts and numbers, refused before any work --------------------------------
    *[
        (f"fit-{flag}-{value}", None, ["fit", "--out", "{new}", flag, value], [flag, value])
        for flag, values in {
            "--epochs": ["0", "-3"],
            "--batch-size": ["0", "-1"],
            "--latent-dim": ["0", "-2"],
            "--patience": ["-1"],
            "--ll-samples": ["-1", "-5"],
            "--ll-points": ["-1"],
            "--seed": ["-1"],
            "--levels": ["1", "0", "300", "100000"],
        }.items()
        for value in values
    ],
    ("fit-hidden-0", None, ["fit", "--out", "{new}", "--hidden", "400", "0"], ["--hidden", "0"]),
    ("fit-hidden-neg", None, ["fit", "--out", "{new}", "--hidden", "-4"], ["--hidden", "-4"]),
    ("fit-arch", None, ["fit", "--out", "{new}", "--arch", "resnet"], ["--arch", "resnet"]),
    ("fit-channels-0", None, ["fit", "--out", "{new}", "--channels", "8", "0"], ["--channels", "0"]),
    ("fit-channels-mlp", None, ["fit", "--out", "{new}", "--channels", "8"], ["channels", "conv"]),
    (
        "fit-channels-too-many",
        None,
        ["fit", "--out", "{new}", "--arch", "conv", "--channels", "8", "16", "32", "64"],
        ["channels", "4 convolutions", "8x8", "at most 3"],
    ),
    *[
        (f"fit-lr-{v}", None, ["fit", "--out", "{new}", "--lr", v], ["--lr", v.lstrip("-")])
        for v in ["0", "-0.1", "nan", "inf"]
    ],
    *[
        (f"fit-threshold-{v}", None, ["fit", "--out", "{new}", "--threshold", v], ["threshold"])
        for v in ["0", "1", "1.5", "-0.2"]
    ],
    *[
        (f"fit-val-{v}", None, ["fit", "--out", "{new}", "--val-fraction", v], ["val_fraction"])
        for v in ["1", "-0.1", "2"]
    ],
    *[
        (f"fit-test-{v}", None, ["fit", "--out", "{new}", "--test-fraction", v], ["test_fraction"])
        for v in ["1", "-0.5", "0"]
    ],
    ("fit-warmup-neg", None, ["fit", "--out", "{new}", "--kl-warmup", "-1"], ["kl_warmup_epochs"]),
    (
        "fit-val-all",
        None,
        ["fit", "--out", "{new}", "--val-fraction", "0.9995"],
        ["training images"],
    ),
    # --- fit: values argparse cannot read ----------------------------------------------
    *[
        (f"fit-{flag}-{value}", None, ["fit", "--out", "{new}", flag, value], [flag, value])
        for flag in ["--epochs", "--batch-size", "--latent-dim", "--seed", "--levels", "--lr"]
        for value in ["abc", "2.5x"]
    ],
    *[
        (f"fit-{flag}-float", None, ["fit", "--out", "{new}", flag, "2.5"], [flag, "2.5"])
        for flag in ["--epochs", "--batch-size", "--latent-dim", "--patience", "--ll-samples"]
    ],
    *[
        (f"fit-choice-{flag}", None, ["fit", "--out", "{new}", flag, "bogus"], [flag, "bogus"])
        for flag in [
            "--likelihood",
            "--binarize",
            "--estimator",
            "--compile",
            "--vectorize-particles",
            "--precision",
        ]
    ],
    ("fit-no-target", None, ["fit", "--data", "digits"], ["--out", "--resume"]),
    ("fit-both-targets", None, ["fit", "--out", "{new}", "--resume", "{new}"], ["not allowed"]),
    ("fit-abbrev", None, ["fit", "--out", "{new}", "--epo", "3"], ["unrecognized arguments", "--epo"]),
    ("fit-unknown-flag", None, ["fit", "--out", "{new}", "--epoch", "3"], ["--epoch"]),
    ("fit-model-opt-no-eq", None, ["fit", "--out", "{new}", "--model-opt", "width"], ["width"]),
    ("fit-est-opt-no-eq", None, ["fit", "--out", "{new}", "--estimator-opt", "k"], ["KEY=VALUE"]),
    ("fit-restart-resume", ("vae", None), ["fit", "--resume", "{run}", "--restart"], ["--restart"]),
    # --- fit: the output folder -------------------------------------------------------
    ("fit-out-empty", None, ["fit", "--out", ""], ["--out", "'' is not a folder path"]),
    ("fit-out-file", None, ["fit", "--out", "{syntax}"], ["is a file"]),
    ("fit-out-unwritable", None, ["fit", "--out", "/proc/pyro_vae_run"], ["cannot create"]),
    ("fit-out-run", ("vae", None), ["fit", "--out", "{run}"], ["already holds a run", "--resume"]),
    (
        "fit-out-run-restart",
        ("vae", None),
        ["fit", "--out", "{run}", "--restart"],
        ["already holds a run"],
    ),
    ("fit-out-failed", ("vae", "no_checkpoint"), ["fit", "--out", "{run}", *FAST], ["--restart"]),
    ("fit-out-others", ("idx_ok", None), ["fit", "--out", "{run}"], ["other files"]),
    # --- fit: data ----------------------------------------------------------------------
    (
        "fit-data-unknown",
        None,
        ["fit", "--out", "{new}", "--data", "mnist"],
        ["unknown dataset 'mnist'"],
    ),
    ("fit-data-npy", None, ["fit", "--out", "{new}", "--data", "x.npy"], ["x.npy' is not a file"]),
    *[
        (f"fit-{name}", None, ["fit", "--out", "{new}", "--data", "{" + name + "}"], words)
        for name, words in [
            ("npy_nan", ["npy_nan.npy", "NaN or infinite", "expected finite"]),
            ("npy_range", ["float values in [0, 2]", "expected intensities in [0, 1]"]),
            ("npy_rank", ["shape (320,) has rank 1", "[N, H, W]"]),
            ("npy_empty", ["(0, 4, 4) is empty"]),
            ("npy_labelled", ["npy_labelled.labels.npy", "shape (19,); expected (20,)"]),
            ("npz_no_x", ["['images']", "under 'x'", "read into memory"]),
            ("npy_text", ["text.npy is not a readable numpy file"]),
        ]
    ],
    (
        "fit-idx-missing",
        None,
        ["fit", "--out", "{new}", "--data", "idx:/nonexistent/dir"],
        ["not a directory"],
    ),
    (
        "fit-idx-empty",
        None,
        ["fit", "--out", "{new}", "--data", "idx:{empty}"],
        ["train-images-idx3-ubyte"],
    ),
    (
        "fit-idx-float",
        None,
        ["fit", "--out", "{new}", "--data", "idx:{idx_float}"],
        ["floating-point pixels"],
    ),
    (
        "fit-idx-signed",
        None,
        ["fit", "--out", "{new}", "--data", "idx:{idx_signed}"],
        ["negative pixels"],
    ),
    (
        "fit-idx-truncated",
        None,
        ["fit", "--out", "{new}", "--data", "idx:{idx_truncated}"],
        ["but the file holds", "bytes"],
    ),
    *[
        (f"{command}-data-changed", ("npy_run", None), [command, "{run}"], ["changed since the run was trained", "--allow-changed-data"])
        # sample reads no data where fit recorded its image facts (pyro_vae.prior_model)
        for command in ("evaluate", "diagnose")
    ],
    (
        "fit-idx-channels-first",
        None,
        ["fit", "--out", "{new}", "--data", "idx:{idx_channels_first}"],
        ["look channels first", "[N, H, W, C]"],
    ),
    ("fit-images-missing", None, ["fit", "--out", "{new}", "--data", "images:/no/dir"], ["not a directory"]),
    ("fit-images-empty", None, ["fit", "--out", "{new}", "--data", "images:{empty}"], ["is empty"]),
    (
        "fit-images-empty-class",
        None,
        ["fit", "--out", "{new}", "--data", "images:{img_empty_class}"],
        ["class folder", "holds no images"],
    ),
    (
        "fit-images-unreadable",
        None,
        ["fit", "--out", "{new}", "--data", "images:{img_unreadable}"],
        ["x.png is not an image Pillow can read"],
    ),
    (
        "fit-images-sizes",
        None,
        ["fit", "--out", "{new}", "--data", "images:{img_sizes}"],
        ["is 4x4", "is 3x2", "--image-size"],
    ),
    (
        "fit-images-crop-alone",
        None,
        ["fit", "--out", "{new}", "--data", "images:{img_sizes}", "--crop"],
        ["crop: True needs image_size"],
    ),
    (
        "fit-images-size-zero",
        None,
        ["fit", "--out", "{new}", "--data", "images:{img_sizes}", "--image-size", "0", "4"],
        ["image_size: [0, 4]"],
    ),
    (
        "fit-layout-digits",
        None,
        ["fit", "--out", "{new}", "--layout", "channels-last"],
        ["layout: 'channels-last' applies to an array (PATH.npy or PATH.npz) only"],
    ),
    ("fit-table-missing", None, ["fit", "--out", "{new}", "--data", "/no/t.csv"], ["not a file"]),
    ("fit-table-nan", None, ["fit", "--out", "{new}", "--data", "{csv_nan}"], ["column 'a'", "missing (NaN)"]),
    (
        "fit-table-not-numeric",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_text}", "--columns", "a", "b"],
        ["columns: 'b'", "numeric"],
    ),
    (
        "fit-table-no-label",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_ok}", "--label-column", "class"],
        ["label_column: 'class'", "['a', 'b', 'y']"],
    ),
    (
        "fit-table-no-column",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_ok}", "--columns", "a", "z"],
        ["columns: ['z']", "['a', 'b', 'y']"],
    ),
    (
        "fit-table-constant",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_constant}", "--likelihood", "normal"],
        ["['b'] are constant on the training split"],
    ),
    (
        "fit-table-gaussian",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_constant}", "--likelihood", "gaussian"],
        ["likelihood: 'gaussian' keeps its mean in (0, 1)", "use likelihood 'normal'"],
    ),
    (
        "fit-table-bernoulli",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_ok}", "--label-column", "y"],
        ["'bernoulli' (fit's default) needs binary 0/1", "column 'a' holds"],
    ),
    # --- fit: the labelled subset, and models that use labels --------------------------
    *[
        (f"fit-labels-fraction-{v}", None, ["fit", "--out", "{new}", "--labels-fraction", v], ["labels_fraction", v, "(0, 1]"])
        for v in ["0", "1.5", "-0.2", "nan"]
    ],
    *[
        (f"fit-labelled-{v}", None, ["fit", "--out", "{new}", "--labelled", v], ["labelled", v])
        for v in ["0", "-3", "abc", "2.5"]
    ],
    ("fit-labels-fraction-abc", None, ["fit", "--out", "{new}", "--labels-fraction", "abc"], ["--labels-fraction", "abc"]),
    (
        "fit-labels-both",
        None,
        ["fit", "--out", "{new}", "--labels-fraction", "0.5", "--labelled", "30"],
        ["labels_fraction, labelled: 0.5 and 30 both given", "expected one"],
    ),
    (
        "fit-labelled-below-classes",
        None,
        ["fit", "--out", "{new}", "--model", "models.m2:M2", "--labelled", "5"],
        ["labelled: 5", "between the 10 classes present and 1330, 10 times the smallest"],
    ),
    (
        "fit-labelled-above-rows",
        None,
        ["fit", "--out", "{new}", "--model", "models.m2:M2", "--labelled", "5000"],
        ["labelled: 5000", "between the 10 classes present and 1330, 10 times the smallest"],
    ),
    (
        "fit-labelled-model-without-labels",
        None,
        ["fit", "--out", "{new}", "--labelled", "5"],
        ["--labelled: 5", "models.vae:VAE uses no labels", "models.m2:M2"],
    ),
    (
        "fit-labelled-unlabelled-data",
        None,
        ["fit", "--out", "{new}", "--data", "{npy_unlabelled}", "--model", "models.m2:M2", "--labelled", "5"],
        ["labelled: 5", "came without labels"],
    ),
    (
        "fit-cvae-labelled-subset",
        None,
        ["fit", "--out", "{new}", "--model", "models.cvae:CVAE", "--labelled", "30", *FAST],
        ["labels: 30 of 1455 training labels are observed", "uses_labels='all'"],
    ),
    (
        "fit-cvae-unlabelled-data",
        None,
        ["fit", "--out", "{new}", "--model", "models.cvae:CVAE", "--data", "{npy_unlabelled}", *FAST],
        ["npy_unlabelled.npy' came without labels", "CVAE uses labels"],
    ),
    (
        "fit-cvae-conv-table",
        None,
        ["fit", "--out", "{new}", "--model", "models.cvae:CVAE", "--data", "{csv_ok}",
         "--label-column", "y", "--likelihood", "normal", "--arch", "conv"],
        ["image_shape: None", "a table", "are no images", "--arch mlp"],
    ),
    (
        "fit-m2-conv-too-many-convolutions",
        None,
        ["fit", "--out", "{new}", "--model", "models.m2:M2", "--estimator", "enum", "--arch",
         "conv", "--channels", "4", "4", "4", "4"],
        ["channels: (4, 4, 4, 4)", "8x8 images", "at most 3"],
    ),
    (
        "fit-cvae-channels-mlp",
        None,
        ["fit", "--out", "{new}", "--model", "models.cvae:CVAE", "--channels", "4"],
        ["channels: (4,)", "arch is 'mlp'", "--arch conv"],
    ),
    (
        "fit-table-image-size",
        None,
        ["fit", "--out", "{new}", "--data", "{csv_ok}", "--image-size", "2", "2"],
        ["image_size: (2, 2) applies to an image folder"],
    ),
    *[
        (
            f"fit-table{flag}-{value}",
            None,
            ["fit", "--out", "{new}", "--data", "{csv_ok}", flag, value],
            [f"{flag}: {shown}", "the data is a table", f"leave {flag} out"],
        )
        for flag, value, shown in (
            ("--binarize", "dynamic", "'dynamic'"),
            ("--binarize", "static", "'static'"),
            ("--threshold", "0.7", "0.7"),
        )
    ],
    (
        "fit-digits-columns",
        None,
        ["fit", "--out", "{new}", "--columns", "a"],
        ["columns: ['a'] applies to a table"],
    ),
    # --- fit: model, guide and estimator ---------------------------------------------------
    (
        "fit-model-module",
        None,
        ["fit", "--out", "{new}", "--model", "no_such_module:VAE"],
        ["cannot import"],
    ),
    (
        "fit-model-attr",
        None,
        ["fit", "--out", "{new}", "--model", "models.vae:Nope"],
        ["no attribute 'Nope'"],
    ),
    (
        "fit-model-spec",
        None,
        ["fit", "--out", "{new}", "--model", "models.vae"],
        ["not an import spec"],
    ),
    (
        "fit-model-file",
        None,
        ["fit", "--out", "{new}", "--model", "/no/such/file.py:M"],
        ["does not exist"],
    ),
    (
        "fit-model-syntax",
        None,
        ["fit", "--out", "{new}", "--model", "{syntax}:model"],
        ["syntax error"],
    ),
    (
        "fit-model-notcallable",
        None,
        ["fit", "--out", "{new}", "--model", "{plain}:Model"],
        ["neither callable"],
    ),
    (
        "fit-model-fn-opts",
        None,
        ["fit", "--out", "{new}", "--model", "{plain}:model", "--model-opt", "a=1"],
        ["not a class"],
    ),
    (
        "fit-model-opt-type",
        None,
        ["fit", "--out", "{new}", "--model-opt", "latent_dim=abc"],
        ["failed in its constructor, given the options", "'latent_dim': 'abc'", "latent_decoder.py, line"],
    ),
    ("fit-model-opt-unknown", None, ["fit", "--out", "{new}", "--model-opt", "widht=3"], ["widht"]),
    (
        "fit-prior-unknown",
        None,
        ["fit", "--out", "{new}", "--model-opt", "prior=laplace"],
        ["prior: 'laplace' is not one of"],
    ),
    (
        "fit-prior-components-normal",
        None,
        ["fit", "--out", "{new}", "--model-opt", "prior_components=3"],
        ["prior_components: 3 given, but prior='normal'"],
    ),
    (
        "fit-vamp-other-guide",
        None,
        ["fit", "--out", "{new}", "--model-opt", "prior=vamp", "--guide", "pyro_vae.guides:AmortizedIAF"],
        ["guide: pyro_vae.guides:AmortizedIAF, but model", "change the prior"],
    ),
    *[
        (
            f"fit-m2-alpha-{value}",
            None,
            ["fit", "--out", "{new}", "--model", "models.m2:M2", "--estimator", "enum",
             "--model-opt", f"alpha={value}"],
            [f"alpha: {shown}", "expected a finite number >= 0"],
        )
        for value, shown in (("-1", "-1"), ("nan", "'nan'"), ("1e999", "inf"), ("abc", "'abc'"))
    ],
    (
        "fit-no-guide",
        None,
        ["fit", "--out", "{new}", "--model", "{plain}:model"],
        ["guide: none given"],
    ),
    ("fit-guide-module", None, ["fit", "--out", "{new}", "--guide", "nope:G"], ["cannot import"]),
    (
        "fit-guide-family",
        None,
        ["fit", "--out", "{new}", "--guide", "pyro_vae.guides:AmortizedBernoulli"],
        ["discrete in the guide", "continuous in the model"],
    ),
    (
        "fit-data-plate",
        None,
        ["fit", "--out", "{new}", "--data-plate", "rows", *FAST],
        ["'rows' is not a plate"],
    ),
    *[
        (
            f"fit-particles-{v}",
            None,
            ["fit", "--out", "{new}", "--estimator-opt", f"num_particles={v}"],
            ["num_particles", v],
        )
        for v in ["0", "-1", "2.5", "abc"]
    ],
    (
        "fit-est-unknown-opt",
        None,
        ["fit", "--out", "{new}", "--estimator-opt", "dreg=true"],
        ["not valid for 'trace'"],
    ),
    (
        "fit-cv-bogus",
        None,
        [
            "fit",
            "--out",
            "{new}",
            "--estimator",
            "score",
            "--estimator-opt",
            "control_variate=bogus",
        ],
        ["control_variate", "bogus"],
    ),
    (
        "fit-decay",
        None,
        ["fit", "--out", "{new}", "--estimator", "score", "--estimator-opt", "decay=1.5"],
        ["decay", "1.5"],
    ),
    (
        "fit-loo-1",
        None,
        [
            "fit",
            "--out",
            "{new}",
            "--estimator",
            "score",
            "--estimator-opt",
            "control_variate=leave-one-out",
        ],
        ["num_particles: 1", "leave-one-out"],
    ),
    (
        "fit-vimco-1",
        None,
        ["fit", "--out", "{new}", "--estimator", "vimco", "--estimator-opt", "num_particles=1"],
        ["num_particles: 1"],
    ),
    (
        "fit-iwae-discrete",
        None,
        ["fit", "--out", "{new}", "--model", "models.sbn:SBN", "--estimator", "iwae", *FAST],
        ["not reparameterizable"],
    ),
    (
        "fit-compile-ema",
        None,
        [
            "fit",
            "--out",
            "{new}",
            "--estimator",
            "score",
            "--estimator-opt",
            "control_variate=ema",
            "--compile",
            "on",
        ],
        ["cannot be compiled"],
    ),
    (
        "fit-compile-warmup",
        None,
        ["fit", "--out", "{new}", "--compile", "on", "--kl-warmup", "2"],
        ["warm-up"],
    ),
    (
        "fit-drop-last-big",
        None,
        ["fit", "--out", "{new}", "--drop-last", "--batch-size", "100000"],
        ["every batch would be dropped"],
    ),
    (
        "fit-tracegraph-partial",
        None,
        [
            "fit",
            "--out",
            "{new}",
            "--model",
            "models.sbn:SBN",
            "--estimator",
            "tracegraph",
            "--guide",
            "tests.test_catalog:BaselineGuide",
            *FAST,
        ],
        ["drop_last", "decaying-average baseline"],
    ),
    # --- fit: the objective (β, free bits and their groups) ---------------------------------
    *[
        (f"fit-beta-{value}", None, ["fit", "--out", "{new}", "--beta", value], words)
        for value, words in {
            "0": ["beta: 0.0", "finite β > 0"],
            "-1": ["beta: -1.0", "finite β > 0"],
            "nan": ["beta: nan", "finite β > 0"],
            "inf": ["beta: inf", "finite β > 0"],
            "abc": ["--beta", "invalid float value: 'abc'"],
        }.items()
    ],
    *[
        (f"fit-free-bits-{value}", None, ["fit", "--out", "{new}", "--free-bits", value], words)
        for value, words in {
            "-1": ["free_bits: -1.0", "finite λ >= 0"],
            "nan": ["free_bits: nan", "finite λ >= 0"],
            "inf": ["free_bits: inf", "finite λ >= 0"],
            "abc": ["--free-bits", "invalid float value: 'abc'"],
        }.items()
    ],
    *[
        (
            f"fit-free-bits-{name}",
            None,
            ["fit", "--out", "{new}", "--estimator", name, "--free-bits", "1"],
            ["free_bits: 1.0", f"not an option of '{name}'", "options of trace"],
        )
        for name in ("iwae", "vimco", "tracegraph")
    ],
    *[
        (
            f"fit-free-bits-groups-{value}",
            None,
            ["fit", "--out", "{new}", "--free-bits", "1", "--free-bits-groups", value],
            words,
        )
        for value, words in {
            "0": ["free_bits_groups: 0", "not a number of groups", "'dims'"],
            "-2": ["free_bits_groups: -2", "not a number of groups", "'dims'"],
            "abc": ["--free-bits-groups", "'abc' is not a number of groups"],
        }.items()
    ],
    (
        "fit-free-bits-groups-alone",
        None,
        ["fit", "--out", "{new}", "--free-bits-groups", "2"],
        ["free_bits_groups: 2 without free_bits"],
    ),
    (
        "fit-free-bits-groups-iwae",
        None,
        ["fit", "--out", "{new}", "--estimator", "iwae", "--free-bits-groups", "2"],
        ["free_bits_groups: 2", "not an option of 'iwae'"],
    ),
    (
        "fit-free-bits-groups-divide",
        None,
        ["fit", "--out", "{new}", *FAST, "--free-bits", "1", "--free-bits-groups", "2"],
        ["free_bits_groups: 2 does not divide the event size 3 of latent site 'z'"],
    ),
    (
        "fit-free-bits-groups-flow",
        None,
        [
            "fit", "--out", "{new}", *FAST, "--free-bits", "1", "--free-bits-groups", "dims",
            "--guide", "pyro_vae.guides:AmortizedIAF",
        ],
        ["free_bits_groups: the guide of latent site 'z'", "does not factorize"],
    ),
    (
        "fit-free-bits-groups-mixture-prior",
        None,
        [
            "fit", "--out", "{new}", *FAST, "--free-bits", "1", "--free-bits-groups", "dims",
            "--model-opt", "prior=mog",
        ],
        ["free_bits_groups: the prior of latent site 'z'", "MixtureSameFamily"],
    ),
    # --- fit --resume -----------------------------------------------------------------
    ("resume-missing", None, ["fit", "--resume", "{new}"], ["is not a directory"]),
    *[
        (
            f"resume-{flag}",
            ("vae", None),
            ["fit", "--resume", "{run}", flag, value],
            [flag, "cannot change a run being resumed"],
        )
        for flag, value in [
            ("--lr", "0.1"),
            ("--batch-size", "7"),
            ("--ll-samples", "50"),
            ("--seed", "3"),
            ("--model", "models.sbn:SBN"),
            ("--estimator", "score"),
            ("--latent-dim", "9"),
            ("--data", "fashion-mnist"),
            ("--hidden", "64"),
            ("--kl-warmup", "2"),
        ]
    ],
    (
        "resume-fewer-epochs",
        ("vae", None),
        ["fit", "--resume", "{run}", "--epochs", "0"],
        ["--epochs", "0"],
    ),
    (
        "resume-lost-checkpoint",
        ("vae", "no_checkpoint"),
        ["fit", "--resume", "{run}"],
        ["records 1 finished epochs"],
    ),
    *[
        (f"resume-{edit}", ("vae", edit), ["fit", "--resume", "{run}"], words)
        for edit, words in [
            ("misspelled", ["epocs"]),
            ("no_section", ["evaluation"]),
            ("wrong_type", ["'train'"]),
            ("old_format", ["format 'x/0'"]),
            ("not_json", ["not valid JSON"]),
            ("config_list", ["holds a list"]),
            ("no_config", ["no config.json"]),
            ("corrupt_checkpoint", ["pickle-free checkpoint"]),
            ("pickled", ["pickle-free"]),
            ("other_shape", ["model_options.latent_dim = 5", "trained with 3"]),
        ]
    ],
    # --- evaluate ---------------------------------------------------------------------------
    (
        "eval-ll-samples",
        ("vae", None),
        ["evaluate", "{run}", "--ll-samples", "-5"],
        ["--ll-samples", "-5"],
    ),
    (
        "eval-ll-points",
        ("vae", None),
        ["evaluate", "{run}", "--ll-points", "-1"],
        ["--ll-points", "-1"],
    ),
    (
        "eval-ll-samples-float",
        ("vae", None),
        ["evaluate", "{run}", "--ll-samples", "1.5"],
        ["--ll-samples", "1.5"],
    ),
    ("eval-missing", None, ["evaluate", "{new}"], ["is not a directory"]),
    ("eval-file", None, ["evaluate", "{syntax}"], ["is not a directory"]),
    *[
        (f"eval-{edit}", ("vae", edit), ["evaluate", "{run}"], words)
        for edit, words in [
            ("misspelled", ["epocs"]),
            ("no_section", ["evaluation"]),
            ("old_format", ["x/0"]),
            ("not_json", ["not valid JSON"]),
            ("no_config", ["no config.json"]),
            ("no_checkpoint", ["no checkpoint.pt"]),
            ("corrupt_checkpoint", ["pickle-free"]),
            ("pickled", ["pickle-free"]),
            ("other_shape", ["model_options.latent_dim = 5", "trained with 3"]),
            ("nan_weights", ["NaN or infinite"]),
            ("other_data_shape", ["data.levels = 5", "trained with None"]),
        ]
    ],
    # --- sample -------------------------------------------------------------------------------
    ("sample-num-0", ("vae", None), ["sample", "{run}", "--num", "0"], ["--num", "0"]),
    ("sample-num-neg", ("vae", None), ["sample", "{run}", "--num", "-3"], ["--num", "-3"]),
    ("sample-seed-neg", ("vae", None), ["sample", "{run}", "--seed", "-1"], ["--seed", "-1"]),
    (
        "sample-out-dir",
        ("vae", None),
        ["sample", "{run}", "--out", "{tmp}"],
        ["not a .png file path"],
    ),
    (
        "sample-out-txt",
        ("vae", None),
        ["sample", "{run}", "--out", "{tmp}/s.txt"],
        ["not a .png file path"],
    ),
    ("sample-nan", ("vae", "nan_weights"), ["sample", "{run}"], ["NaN or infinite"]),
    ("sample-ae", ("ae", None), ["sample", "{run}"], ["not a generative model"]),
    ("sample-missing", None, ["sample", "{new}"], ["is not a directory"]),
    ("sample-old", ("vae", "old_format"), ["sample", "{run}"], ["x/0"]),
    # --- diagnose ---------------------------------------------------------------------------
    *[
        (
            f"diagnose-{flag}-{value}",
            ("vae", None),
            ["diagnose", "{run}", flag, value],
            [flag, value],
        )
        for flag, value in [
            ("--points", "-1"),
            ("--samples", "1"),
            ("--samples", "20"),
            ("--idata-points", "0"),
            ("--idata-samples", "1"),
            ("--worst", "-1"),
            ("--seed", "-1"),
            ("--points", "abc"),
        ]
    ],
    (
        "diagnose-samples-why",
        ("vae", None),
        ["diagnose", "{run}", "--samples", "20"],
        ["--samples: 20", "generalized Pareto", "at least 5 of them", "S >= 21"],
    ),
    ("diagnose-ae", ("ae", None), ["diagnose", "{run}"], ["no latent variables"]),
    ("diagnose-local", ("local", None), ["diagnose", "{run}"], ["free per-datapoint parameters"]),
    ("diagnose-missing", None, ["diagnose", "{new}"], ["is not a directory"]),
    ("diagnose-nan", ("vae", "nan_weights"), ["diagnose", "{run}"], ["NaN or infinite"]),
    # --- amortization-gap -----------------------------------------------------------------
    *[
        (
            f"gap-{flag}-{value}",
            ("vae", None),
            ["amortization-gap", "{run}", flag, value],
            [flag, value],
        )
        for flag, value in [
            ("--points", "0"),
            ("--steps", "0"),
            ("--iwae-samples", "0"),
            ("--seed", "-2"),
            ("--steps", "-5"),
            ("--lr", "abc"),
        ]
    ],
    ("gap-ae", ("ae", None), ["amortization-gap", "{run}"], ["no latent variables"]),
    (
        "gap-local",
        ("local", None),
        ["amortization-gap", "{run}"],
        ["free per-datapoint parameters"],
    ),
    ("gap-missing", None, ["amortization-gap", "{new}"], ["is not a directory"]),
    # --- grad-variance ------------------------------------------------------------------------
    *[
        (
            f"gradvar-{flag}-{value}",
            ("vae", None),
            ["grad-variance", "{run}", flag, value],
            [flag, value],
        )
        for flag, value in [
            ("--num-draws", "1"),
            ("--num-draws", "0"),
            ("--batch-size", "0"),
            ("--seed", "-1"),
        ]
    ],
    (
        "gradvar-unknown",
        ("vae", None),
        ["grad-variance", "{run}", "--estimators", "bogus"],
        ["'bogus' is not one of"],
    ),
    (
        "gradvar-bad-opt",
        ("vae", None),
        ["grad-variance", "{run}", "--estimators", "score:num_particles=0"],
        ["num_particles: 0"],
    ),
    (
        "gradvar-no-eq",
        ("vae", None),
        ["grad-variance", "{run}", "--estimators", "score:leave"],
        ["is not key=value"],
    ),
    ("gradvar-missing", None, ["grad-variance", "{new}"], ["is not a directory"]),
    # --- no command -----------------------------------------------------------------------
    ("no-command", None, [], ["required"]),
    ("bad-command", None, ["train"], ["invalid choice"]),
]
# fmt: on


class BaselineGuide(AmortizedBernoulli):
    """A sigmoid belief net guide whose site asks TraceGraph for its decaying-average
    baseline (one value per batch row, kept in Pyro's param store)."""

    def forward(self, x, num_data=None):
        with data_plate(x, num_data):
            return pyro.sample(
                self.site,
                self.encode(x).to_event(1),
                infer={"baseline": {"use_decaying_avg_baseline": True}},
            )


def _snapshot(folder: Path | None) -> dict[str, bytes]:
    if folder is None or not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()  # lock files too: a refused command leaves them as it found them
    }


@pytest.mark.parametrize(("setup", "argv", "words"), [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_a_bad_command_line_is_refused_clearly_and_loses_nothing(
    made, tmp_path, capsys, setup, argv, words
):
    run = None
    if setup is not None:
        name, edit = setup
        run = _copy(made, name, tmp_path)
        if edit is not None:
            EDITS[edit](run)
    paths = {
        **{k: str(v) for k, v in made.items()},
        "new": str(tmp_path / "new"),
        "tmp": str(tmp_path),
    }
    if run is not None:
        paths["run"] = str(run)
    argv = [a.format(**paths) for a in argv]
    before = _snapshot(run)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, f"not one line: {err!r}"
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert _snapshot(run) == before
    new = tmp_path / "new"
    assert not new.exists() or not any(new.iterdir())


# --- the Python API ----------------------------------------------------------------------
def _vae(x_dim=64):
    from models.vae import VAE

    model = VAE(x_dim, latent_dim=2, hidden_dims=(8,))
    return model, model.make_guide()


def _m2(**options):
    from models.m2 import M2

    return M2(64, latent_dim=2, hidden_dims=(8,), **options)


def _digits():
    from pyro_vae.data import Preprocessing, load_data

    return load_data("digits", Preprocessing("bernoulli"))


def _fit(data=None, model=None, guide=None, elbo=None, config=None, **kwargs):
    from pyro.infer import Trace_ELBO

    from pyro_vae import TrainConfig, fit

    if model is None:
        model, guide = _vae()
    return fit(
        model,
        guide,
        _digits() if data is None else data,
        elbo or Trace_ELBO(),
        config or TrainConfig(epochs=1, progress=False),
        **kwargs,
    )


def _config(**kwargs):
    from pyro_vae import TrainConfig

    return TrainConfig(**kwargs)


def _evaluator(name, x, **kwargs):
    import pyro_vae

    model, guide = _vae()
    return getattr(pyro_vae, name)(model, guide, x, **kwargs)


def _tensor_data(*tensors):
    from pyro_vae import TensorData

    return TensorData(*tensors)


def _get(name, **options):
    from pyro_vae import estimators

    return estimators.get(name, **options)


def _load(name, **kwargs):
    from pyro_vae.data import load_data

    return load_data(name, **kwargs)


def _prep(**kwargs):
    from pyro_vae.data import Preprocessing

    return Preprocessing(**kwargs)


def _ae_iwae():
    from models.autoencoder import Autoencoder
    from pyro_vae import iwae_log_likelihood

    model = Autoencoder(64, latent_dim=2, hidden_dims=(8,))
    return iwae_log_likelihood(model, model.make_guide(), torch.zeros(3, 64), 5)


def _missing_argument():
    from pyro_vae import elbo_per_datapoint
    from tests.pyro_vae.test_evaluate import two_view_guide, two_view_model

    return elbo_per_datapoint(two_view_model, two_view_guide, torch.zeros(3))


def _idata(**kwargs):
    from pyro_vae import to_inference_data

    model, guide = _vae()
    return to_inference_data(model, guide, kwargs.pop("x", torch.zeros(3, 64)), **kwargs)


def _read_idata(path):
    from pyro_vae import load_inference_data

    return load_inference_data(path)


def _auto_cavi(**kwargs):
    from models.regression import BayesianRegression
    from pyro_vae.cavi import AutoCAVI

    X = torch.randn(5, 2, dtype=torch.float64)
    return AutoCAVI(BayesianRegression(), **kwargs).fit(X, X[:, 0])


def _cavi(kind, *args, **kwargs):
    import pyro_vae.cavi as cavi

    return getattr(cavi, kind)(**kwargs).fit(*args)


NAN_X = torch.full((3, 64), float("nan"))
# fmt: off
PY = [
    # TrainConfig
    *[
        (f"config-{field}-{value}", lambda f=field, v=value: _config(**{f: v}), ValueError, [field])
        for field, value in [
            ("epochs", 0), ("epochs", -1), ("epochs", 2.5), ("batch_size", 0), ("lr", 0.0),
            ("lr", float("nan")), ("lr", -1e-3), ("patience", 0), ("kl_warmup_epochs", -1.0),
            ("val_samples", 0), ("validate_every", 0), ("data_plate", 3),
            ("vectorize_particles", "yes"), ("compile_backend", "inductor"),
            ("precision", "fp16"), ("tensorboard", "yes"),
        ]
    ],
    ("config-compile-warmup", lambda: _config(compile=True, kl_warmup_epochs=2.0), ValueError, ["warm-up"]),
    # fit
    ("fit-model-str", lambda: _fit(model="models.vae:VAE", guide=lambda x: None), TypeError, ["model: expected a Pyro model/guide callable"]),
    ("fit-data-list", lambda: _fit(data=[1, 2, 3]), TypeError, ["data: expected pyro_vae.DataSplits or pyro_vae.TensorData"]),
    ("fit-resume-no-run", lambda: _fit(resume=True), ValueError, ["resume: True needs a run folder"]),
    ("fit-float64", lambda: _fit(data=_tensor_data(torch.rand(6, 64, dtype=torch.float64))), ValueError, ["torch.float64", "weights are torch.float32"]),
    ("fit-wrong-width", lambda: _fit(model=_vae(10)[0], guide=_vae(10)[1]), ValueError, ["does not match the model", "[N, 10]"]),
    # estimators
    ("get-unknown", lambda: _get("elbo"), ValueError, ["estimator: 'elbo' is not one of"]),
    ("get-bad-option", lambda: _get("iwae", k=3), ValueError, ["not valid for 'iwae'", "['k'] not among its options (num_particles"]),
    *[
        (f"get-particles-{v}", lambda v=v: _get("trace", num_particles=v), ValueError, ["num_particles"])
        for v in [0, -2, 1.5, "5", True]
    ],
    ("score-cv", lambda: _get("score", control_variate="mean"), ValueError, ["control_variate: 'mean'"]),
    ("score-decay", lambda: _get("score", decay=1.0), ValueError, ["decay: 1.0"]),
    ("score-vectorize", lambda: _get("score", vectorize_particles="auto"), ValueError, ["vectorize_particles"]),
    ("iwae-data-plate", lambda: _get("iwae", data_plate=3), ValueError, ["data_plate: 3"]),
    ("vimco-one", lambda: _get("vimco", num_particles=1), ValueError, ["needs at least 2"]),
    # evaluators
    *[
        (f"{name}-{arg}", lambda n=name, a=arg: _evaluator(n, torch.zeros(3, 64), **{a: 0}), ValueError, [f"{arg}: 0"])
        for name in ("elbo_per_datapoint", "iwae_log_likelihood")
        for arg in ("num_samples", "batch_size")
    ],
    ("elbo-nan-x", lambda: _evaluator("elbo_per_datapoint", NAN_X), ValueError, ["NaN or infinite"]),
    ("iwae-nan-x", lambda: _evaluator("iwae_log_likelihood", NAN_X), ValueError, ["NaN or infinite"]),
    ("elbo-rows-mismatch", lambda: _evaluator("elbo_per_datapoint", (torch.zeros(3, 64), torch.zeros(4))), ValueError, ["rows"]),
    ("elbo-not-tensor", lambda: _evaluator("elbo_per_datapoint", [[0.0] * 64]), ValueError, ["expected a tensor"]),
    ("elbo-wrong-rows", lambda: _evaluator("elbo_per_datapoint", torch.zeros(3, 64), rows=torch.arange(2)), ValueError, ["rows: shape (2,)"]),
    ("elbo-float64", lambda: _evaluator("elbo_per_datapoint", torch.zeros(3, 64, dtype=torch.float64)), ValueError, ["torch.float64"]),
    ("iwae-autoencoder", _ae_iwae, ValueError, ["not a generative model"]),
    ("elbo-missing-argument", _missing_argument, ValueError, ["['y'] are neither observed nor drawn"]),
    ("active-units-one", lambda: _evaluator("active_units", torch.zeros(1, 64)), ValueError, ["at least 2"]),
    # data
    ("load-unknown", lambda: _load("cifar"), ValueError, ["unknown dataset 'cifar'"]),
    ("load-label-column-digits", lambda: _load("digits", label_column="y"), ValueError, ["label_column: 'y' applies to a table"]),
    ("load-crop-alone", lambda: _load("images:/x", crop=True), ValueError, ["crop: True needs image_size"]),
    ("load-layout-digits", lambda: _load("digits", layout="channels-last"), ValueError, ["layout: 'channels-last' applies to an array"]),
    ("load-layout-bad", lambda: _load("digits", layout="NHWC"), ValueError, ["layout: 'NHWC' is not one of channels-first, channels-last"]),
    ("load-image-size", lambda: _load("images:/x", image_size=(2, -1)), ValueError, ["image_size: (2, -1)"]),
    ("load-val-1", lambda: _load("digits", val_fraction=1.0), ValueError, ["val_fraction: 1.0"]),
    ("load-test-neg", lambda: _load("digits", test_fraction=-0.1), ValueError, ["test_fraction: -0.1"]),
    ("load-test-0", lambda: _load("digits", test_fraction=0.0), ValueError, ["without test images"]),
    ("load-array-rank", lambda: _load(np.zeros(5)), ValueError, ["data: shape (5,) has rank 1"]),
    ("load-array-nan", lambda: _load(np.full((2, 3), np.nan)), ValueError, ["row 0 has NaN"]),
    ("load-array-range", lambda: _load(np.full((2, 3), -0.5)), ValueError, ["[-0.5, -0.5]", "[0, 1]"]),
    ("load-array-dtype", lambda: _load(np.zeros((2, 3), complex)), ValueError, ["dtype complex128"]),
    ("load-array-labels", lambda: _load(np.zeros((2, 3)), labels=np.zeros(3, int)), ValueError, ["labels: shape (3,)"]),
    ("load-tensor", lambda: _load(torch.zeros(2, 3)), TypeError, ["data: a torch.Tensor"]),
    ("load-dataset-ragged", lambda: _load([torch.zeros(3), torch.zeros(2)]), ValueError, ["item 1 has shape (2,)"]),
    ("prep-likelihood", lambda: _prep(likelihood="poisson"), ValueError, ["likelihood: 'poisson'"]),
    ("prep-binarize", lambda: _prep(binarize="random"), ValueError, ["binarize: 'random'"]),
    ("prep-threshold", lambda: _prep(threshold=1.0), ValueError, ["threshold: 1.0"]),
    ("prep-levels", lambda: _prep(levels=1), ValueError, ["levels: 1"]),
    ("tensordata-rows", lambda: _tensor_data(torch.zeros(3), torch.zeros(4)), ValueError, ["tensors[1]: 4 rows"]),
    ("tensordata-nan", lambda: _tensor_data(torch.tensor([1.0, float("nan")])), ValueError, ["NaN or infinite"]),
    ("tensordata-scalar", lambda: _tensor_data(torch.tensor(1.0)), ValueError, ["leading data dimension"]),
    # diagnostics
    ("idata-one-sample", lambda: _idata(num_samples=1), ValueError, ["num_samples: 1"]),
    ("idata-nan", lambda: _idata(x=NAN_X), ValueError, ["NaN or infinite"]),
    ("idata-missing", lambda: _read_idata("/no/such/file.nc"), ValueError, ["is not a file"]),
    # CAVI
    ("regression-no-rows", lambda: _cavi("BayesianLinearRegression", torch.zeros(0, 3), torch.zeros(0)), ValueError, ["0"]),
    ("m2-alpha", lambda: _m2(alpha=-0.5), ValueError, ["alpha: -0.5"]),
    ("m2-num-classes", lambda: _m2(num_classes=1), ValueError, ["num_classes: 1"]),
    ("m2-labels-shape", lambda: _m2()(torch.zeros(4, 64), torch.zeros(3, dtype=torch.long)), ValueError, ["y: shape (3,); expected [4]"]),
    ("m2-label-metrics-k", lambda: _m2().label_metrics(_m2().make_guide(), torch.zeros(4, 64), torch.zeros(4, dtype=torch.long), iwae_samples=-1), ValueError, ["iwae_samples: -1 is not a non-negative integer"]),
    ("regression-nan", lambda: _cavi("BayesianLinearRegression", torch.full((4, 2), float("nan")), torch.zeros(4)), ValueError, ["NaN"]),
    ("mixture-components", lambda: _cavi("BayesianGaussianMixture", torch.zeros(5, 2), n_components=0), ValueError, ["n_components"]),
    ("ising-update", lambda: _cavi("IsingMeanField", torch.zeros(4, 4), update="random"), ValueError, ["update"]),
    ("autocavi-blocks", lambda: _auto_cavi(blocks="all"), ValueError, ["blocks: 'all'", "'auto'"]),
    ("autocavi-markov-chains", lambda: _auto_cavi(markov_chains="False"), ValueError, ["markov_chains: 'False'", "True or False"]),
    ("autocavi-n-init", lambda: _auto_cavi(n_init=0), ValueError, ["n_init", "0"]),
    ("autocavi-init-family", lambda: _auto_cavi(init={"weights": torch.distributions.Gamma(1.0, 1.0)}), ValueError, ["init['weights']", "Gamma is not a distribution of the Normal family"]),
    ("autocavi-block-order", lambda: _auto_cavi(blocks=[("precision", "weights")]), ValueError, ["('precision', 'weights')", "(Gamma, Normal (.to_event(1)))", "Normal-Gamma"]),
]
# fmt: on


@pytest.mark.parametrize(("call", "error", "words"), [c[1:] for c in PY], ids=[c[0] for c in PY])
def test_a_bad_python_call_raises_a_typed_error_that_says_why(call, error, words):
    with pytest.raises(error) as raised:
        call()
    for word in words:
        assert word in str(raised.value), f"{word!r} not in {str(raised.value)!r}"
