import json
import sys

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.provenance import (
    CODE_FLAG,
    CodeChangedError,
    DataChangedError,
    check_code_unchanged,
    check_unchanged,
    checksum,
    code_changes,
    content_checksum,
    file_provenance,
    file_sha256,
)


def test_the_checksum_covers_names_and_sizes_not_contents(tmp_path):
    a = tmp_path / "x.npy"
    np.save(a, np.zeros((4, 3), np.uint8))
    before = checksum(tmp_path, [a])
    np.save(a, np.ones((4, 3), np.uint8))  # same size: not noticed (documented)
    assert checksum(tmp_path, [a]) == before
    np.save(a, np.ones((5, 3), np.uint8))
    assert checksum(tmp_path, [a]) != before
    record = file_provenance(a, [a], (5, 3), np.dtype(np.uint8))
    assert record["path"] == str(a.resolve()) and record["shape"] == [5, 3]
    assert record["dtype"] == "uint8" and record["checksum"].startswith("sha256:")


def test_a_changed_checksum_is_refused_unless_allowed():
    old, new = {"path": "/d", "checksum": "sha256:a"}, {"checksum": "sha256:b"}
    with pytest.raises(DataChangedError, match="--allow-changed-data.*allow_changed_data=True"):
        check_unchanged(old, new, allow=False)
    check_unchanged(old, new, allow=True)
    check_unchanged(None, new, allow=False)  # a config.json from before provenance
    check_unchanged(old, dict(old), allow=False)


def test_the_refusal_names_the_files_that_went_came_or_changed_size(tmp_path):
    # tester B's F8: x.labels.npy deleted, and the refusal named only two checksums
    x, labels = tmp_path / "x.npy", tmp_path / "x.labels.npy"
    np.save(x, np.zeros((4, 3), np.uint8))
    np.save(labels, np.zeros(4, np.int64))
    recorded = file_provenance(x, [x, labels], (4, 3), np.dtype(np.uint8))
    assert recorded["files"] == {"x.npy": x.stat().st_size, "x.labels.npy": labels.stat().st_size}
    labels.unlink()
    np.save(x, np.zeros((5, 3), np.uint8))
    current = file_provenance(x, [x], (5, 3), np.dtype(np.uint8))
    sizes = f"{x.stat().st_size} bytes, not {recorded['files']['x.npy']}"
    with pytest.raises(DataChangedError, match=rf"changed since the run was trained \(x\.labels"
                       rf"\.npy is gone; x\.npy has {sizes}\)"):  # fmt: skip
        check_unchanged(recorded, current, allow=False)
    del recorded["files"]  # recorded before the list was: the checksums alone, as before
    with pytest.raises(DataChangedError, match=r"changed since the run was trained: its files'"):
        check_unchanged(recorded, current, allow=False)


FAST = ["--latent-dim", "2", "--hidden", "8", "--no-progress", "--ll-samples", "2"]


def _run_on_an_array(tmp_path):
    """(the array file, the folder of a one-epoch run on it)."""
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    run = tmp_path / "run"
    fit = ["fit", "--data", str(data), "--epochs", "1", "--batch-size", "8", "--out", str(run)]
    assert main([*fit, *FAST]) == 0
    return data, run


def test_evaluate_refuses_a_run_whose_array_changed_and_the_flag_lets_it_through(tmp_path, capsys):
    data, run = _run_on_an_array(tmp_path)
    recorded = json.loads((run / "config.json").read_text())["data"]["provenance"]
    assert recorded["path"] == str(data.resolve()) and recorded["shape"] == [30, 4, 4]
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 0
    capsys.readouterr()
    np.save(data, np.random.default_rng(0).integers(0, 256, (31, 4, 4), dtype=np.uint8))
    for command in (["evaluate", str(run)], ["diagnose", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "changed since the run was trained" in err and "--allow-changed-data" in err
    # sample reads no data: it draws from the model the run folder rebuilds alone
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    before = json.loads((run / "metrics.json").read_text())["test"]
    assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-data"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == before  # the run's own results are kept
    assert metrics["test_on_changed_data"]["provenance"]["shape"] == [31, 4, 4]
    assert "test_on_changed_data" in capsys.readouterr().out


def test_evaluate_on_changed_data_again_keeps_what_it_replaces(tmp_path, capsys):
    """Tester CW: a second ``evaluate --allow-changed-data --ll-samples 0`` dropped the
    first's log p(x) estimate (the run's own test block keeps it, and test_previous
    whatever is replaced). Expected: the same rules for test_on_changed_data; results on
    data changed once more replace it whole, the earlier ones kept in its _previous."""
    data, run = _run_on_an_array(tmp_path)
    changed = ["evaluate", str(run), "--allow-changed-data"]
    np.save(data, np.random.default_rng(1).integers(0, 256, (31, 4, 4), dtype=np.uint8))
    assert main([*changed, "--ll-samples", "3"]) == 0
    first = json.loads((run / "metrics.json").read_text())["test_on_changed_data"]
    assert first["log_likelihood_samples"] == 3
    assert main([*changed, "--ll-samples", "0"]) == 0  # the saved estimate is kept in it
    block = json.loads((run / "metrics.json").read_text())["test_on_changed_data"]
    assert block["log_likelihood"] == first["log_likelihood"]
    assert "kept in the test_on_changed_data block" in capsys.readouterr().out
    assert main([*changed, "--ll-samples", "5"]) == 0  # another K: the first goes beside it
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_on_changed_data"]["log_likelihood_samples"] == 5
    assert metrics["test_on_changed_data_previous"][-1]["log_likelihood"] == first["log_likelihood"]
    np.save(data, np.random.default_rng(2).integers(0, 256, (32, 4, 4), dtype=np.uint8))
    assert main([*changed, "--ll-samples", "0"]) == 0  # other data: nothing carried over
    metrics = json.loads((run / "metrics.json").read_text())
    assert "log_likelihood" not in metrics["test_on_changed_data"]
    assert metrics["test_on_changed_data"]["provenance"]["shape"] == [32, 4, 4]
    assert metrics["test_on_changed_data_previous"][-1]["provenance"]["shape"] == [31, 4, 4]


MODEL_FILE = """
import pyro, torch, pyro.distributions as dist
from torch import nn


class Mine(nn.Module):
    def __init__(self, x_dim=16):
        super().__init__()
        self.dec, self.enc = nn.Linear(2, x_dim), nn.Linear(x_dim, 4)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Laplace(self.dec(z).sigmoid(), 0.3).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))
"""


def test_a_run_whose_data_were_moved_says_the_run_read_them_there(tmp_path, capsys):
    # tester BM: `evaluate` said "data: '...x.npy' is not a file; expected a .npy or .npz
    # array", as if --data had been mistyped, naming neither the run nor its config.json
    data, run = _run_on_an_array(tmp_path)
    data.rename(tmp_path / "elsewhere.npy")
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["fit", "--resume", str(run), "--no-progress"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{data.resolve()}' is not a file" in err
        assert "this run read its data there (config.json's data.name, checksum sha256:" in err
        assert "put them back there, or a link to them" in err
        # tester BW: it named --allow-changed-data to fit --resume, which does not take it
        assert "but fit, take --allow-changed-data" in err
    (tmp_path / "elsewhere.npy").rename(data)  # the way out it names
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 0
    assert main(["fit", "--data", str(tmp_path / "absent.npy"), "--out", str(tmp_path / "n")]) == 2
    assert "this run read" not in capsys.readouterr().err  # a new run's --data, as given


def test_a_model_file_edited_after_the_run_is_refused_and_the_flag_keeps_the_run_s_results(
    tmp_path, capsys
):
    # tester F's F1: the Laplace likelihood edited to a Normal of the same parameters was
    # evaluated, and a resumed run went on training it, with no word
    data, code = tmp_path / "x.npy", tmp_path / "mine.py"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    code.write_text(MODEL_FILE)
    run = tmp_path / "run"
    fit = ["fit", "--model", f"{code}:Mine", "--data", str(data), "--likelihood", "gaussian"]
    assert (
        main([*fit, "--epochs", "1", "--out", str(run), "--no-progress", "--ll-samples", "2"]) == 0
    )
    recorded = json.loads((run / "config.json").read_text())["code"]
    assert recorded["model"]["file"] == str(code.resolve()) and "guide" not in recorded
    before = json.loads((run / "metrics.json").read_text())["test"]
    code.write_text(MODEL_FILE.replace("dist.Laplace(", "dist.Normal("))
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["fit", "--resume", str(run), "--epochs", "2"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"model: {code.resolve()} changed since the run was trained" in err
        assert "--allow-changed-code" in err
    assert main(["evaluate", str(run), "--ll-samples", "2", "--allow-changed-code"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == before  # the run's own results are kept
    assert metrics["test_on_changed_code"]["elbo"] != before["elbo"]  # another likelihood


def test_an_imported_module_s_file_is_read_again_and_named_when_it_changed(tmp_path):

    helper = tmp_path / "nets.py"
    helper.write_text("A = 1\n")
    recorded = {"model": {"file": "/m.py", "sha256": "sha256:m"}}
    recorded["import:nets"] = {"file": str(helper), "sha256": file_sha256(helper)}
    current = {"model": {"file": "/m.py", "sha256": "sha256:m"}}  # no imports: not yet run
    check_code_unchanged(recorded, current, allow=False)
    helper.write_text("A = 2\n")
    now = {"file": str(helper), "sha256": file_sha256(helper)}
    assert code_changes(recorded, current) == [("import:nets", recorded["import:nets"], now)]
    with pytest.raises(CodeChangedError) as info:
        check_code_unchanged(recorded, current, allow=False)
    assert str(info.value).startswith(
        f"module nets (imported by the model's or guide's file): {helper} changed since the run "
        f"was trained (its bytes give {file_sha256(helper)}, config.json recorded "
        f"{recorded['import:nets']['sha256']}); "
    )
    assert CODE_FLAG in str(info.value)
    check_code_unchanged(recorded, current, allow=True)
    # tester J: run from another folder, `import nets` loads another file; where the
    # imports as they resolve now name it, that file is compared (same bytes: no change)
    elsewhere = tmp_path / "other" / "nets.py"
    elsewhere.parent.mkdir()
    elsewhere.write_text("A = 1\n")
    moved = {**current, "import:nets": {"file": str(elsewhere), "sha256": file_sha256(elsewhere)}}
    check_code_unchanged(recorded, moved, allow=False)
    elsewhere.write_text("A = 3\n")
    moved["import:nets"]["sha256"] = file_sha256(elsewhere)
    with pytest.raises(CodeChangedError, match=f"loads from {elsewhere} now .* trained with "):
        check_code_unchanged(recorded, moved, allow=False)
    helper.unlink()
    assert code_changes(recorded, current)[0][2]["sha256"] == "no file"
    with pytest.raises(CodeChangedError, match=f"{helper} is gone \\(config.json recorded"):
        check_code_unchanged(recorded, current, allow=False)
    check_code_unchanged({"model": recorded["model"]}, current, allow=False)  # an older run


HELPER_MODEL_FILE = MODEL_FILE.replace(
    "from torch import nn\n", "from torch import nn\nfrom prov_nets import likelihood\n"
).replace("dist.Laplace(self.dec(z).sigmoid(), 0.3)", "likelihood(self.dec(z).sigmoid())")
NETS = """import pyro.distributions as dist


def likelihood(loc):
    return dist.Laplace(loc, 0.3)
"""


def test_a_helper_module_edited_after_the_run_is_refused_by_evaluate_and_resume(tmp_path, capsys):
    # a model file importing its likelihood from a module beside it: an edit to that module
    # alone was evaluated and resumed with no word
    data, code, nets = tmp_path / "x.npy", tmp_path / "mine.py", tmp_path / "prov_nets.py"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    code.write_text(HELPER_MODEL_FILE)
    nets.write_text(NETS)
    run = tmp_path / "run"
    fit = ["fit", "--model", f"{code}:Mine", "--data", str(data), "--likelihood", "gaussian"]
    try:
        assert (
            main([*fit, "--epochs", "1", "--out", str(run), "--no-progress", "--ll-samples", "2"])
            == 0
        )
        recorded = json.loads((run / "config.json").read_text())["code"]
        assert recorded["import:prov_nets"]["file"] == str(nets.resolve())
        assert main(["evaluate", str(run), "--ll-samples", "0"]) == 0  # unchanged: goes on
        nets.write_text(NETS.replace("dist.Laplace(", "dist.Normal("))
        capsys.readouterr()
        for command in (["evaluate", str(run)], ["fit", "--resume", str(run), "--epochs", "2"]):
            assert main(command) == 2
            err = capsys.readouterr().err
            named = f"module prov_nets (imported by the model's or guide's file): {nets.resolve()}"
            assert f"{named} changed since the run was trained" in err
            assert recorded["import:prov_nets"]["sha256"] in err and "--allow-changed-code" in err
        before = json.loads((run / "metrics.json").read_text())["test"]
        assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-code"]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["test"] == before  # the run's own results are kept
        changed = metrics["test_on_changed_code"]["code"]["import:prov_nets"]
        assert changed["sha256"] == file_sha256(nets)
    finally:
        sys.modules.pop("prov_nets", None)


#: How the model file reaches a module ``nets`` (or ``copy``), for the test below.
IMPORTS = {
    # the working folder, where `python -m` puts it on sys.path (tester J's F2)
    "working-folder": "import nets\n",
    # the file puts the working folder there itself, run by a console script (tester K's F1)
    "file-adds-working-folder": "import os, sys\nsys.path.insert(0, os.getcwd())\nimport nets\n",
    # the file puts a folder of its own there (tester K's F2: refused, wrongly, from B)
    "file-adds-a-folder": "import sys\nsys.path.insert(0, {lib!r})\nimport nets\n",
    # a script named like the standard library's module beside it (tester J's F4)
    "shadowed-stdlib": "import copy\n",
}


@pytest.mark.parametrize("layout", sorted(IMPORTS))
def test_the_module_an_import_loads_is_the_one_compared(tmp_path, layout):
    # fit run from folder A, evaluate from folder B (each holding its own nets.py), each
    # command in its own process, as a user's would, so nothing is cached between them: a
    # helper that loads from another file now is refused naming both, one that loads from
    # the same file is not, whatever the folders hold
    project, first, second, lib = (tmp_path / d for d in ("project", "A", "B", "lib"))
    for folder in (project, first, second, lib):
        folder.mkdir()
    source = HELPER_MODEL_FILE.replace("prov_nets", "nets_here")
    imports = IMPORTS[layout].format(lib=str(lib))
    (project / "mine.py").write_text(source.replace("from nets_here", imports + "from nets_here"))
    (project / "nets_here.py").write_text(NETS)
    for folder, body in ((first, "A = 1\n"), (second, "A = 2\n"), (lib, "A = 0\n")):
        folder.joinpath("nets.py").write_text(body)
    (project / "copy.py").write_text("A = 1\n")
    cli = _process_cli(tmp_path, console=layout == "file-adds-working-folder")
    run = tmp_path / "run"
    assert cli(first, "fit", *_fit_args(project, tmp_path), "--out", str(run)).returncode == 0
    recorded = json.loads((run / "config.json").read_text())["code"]
    (project / "copy.py").write_text("A = 3\n")  # no module of the run's
    done = cli(second, "evaluate", str(run), "--ll-samples", "0")
    if layout in ("working-folder", "file-adds-working-folder"):
        assert recorded["import:nets"]["file"] == str((first / "nets.py").resolve())
        assert done.returncode == 2, done.stderr
        assert "module nets (imported by the model's or guide's file): loads from " in done.stderr
        assert str((second / "nets.py").resolve()) in done.stderr
    else:  # lib's nets.py, or the standard library's copy, is what runs either way
        assert done.returncode == 0, done.stderr
        assert "import:copy" not in recorded and "import:nets_here" in recorded


def _process_cli(tmp_path, console: bool):
    """The CLI in a process of its own: ``python -m`` (the working folder first on
    sys.path), or with ``-P`` as a console script runs (not on it)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    flags = ["-P"] if console else []

    def cli(cwd, *args):
        command = [sys.executable, *flags, "-m", "pyro_vae.cli", *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)

    return cli


def _fit_args(project, tmp_path) -> list[str]:
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    fit = ["--model", f"{project / 'mine.py'}:Mine", "--data", str(data)]
    return fit + ["--likelihood", "gaussian", "--epochs", "1", "--no-progress", "--ll-samples", "2"]


def test_data_reshaped_in_place_with_every_size_kept_are_refused_naming_both_shapes(tmp_path):
    """Tester CE: a .npy re-saved from [60, 6] to [60, 2, 3] (the same bytes) was scored as
    images, over the run's own test block; the shape was recorded and not compared."""
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((60, 6), np.float32))
    recorded = file_provenance(x, [x], (60, 6), np.dtype(np.float32))
    np.save(x, np.zeros((60, 2, 3), np.float32))
    current = file_provenance(x, [x], (60, 2, 3), np.dtype(np.float32))
    assert current["checksum"] == recorded["checksum"]  # names and sizes kept
    with pytest.raises(DataChangedError, match=r"keep their names and sizes \(sha256:\w+\), "
                       r"but hold shape \[60, 2, 3\] \(float32\) where config.json recorded "
                       r"\[60, 6\] \(float32\)"):  # fmt: skip
        check_unchanged(recorded, current, allow=False)
    check_unchanged(recorded, current, allow=True)
    check_unchanged({k: v for k, v in recorded.items() if k != "shape"}, current, allow=False)


def test_a_table_whose_columns_were_reordered_in_place_is_read_by_name(tmp_path, capsys):
    """A CSV whose columns were swapped in place kept its name, size and shape, so the run's
    weights for one column were read against the other's values with no word; then it was
    refused, and --allow-changed-data read it by position (tester CT: 2.25 nats off).
    Expected: the same columns in another order are read by name, in the run's order, and
    score as before, bit for bit; a renamed column is refused naming both lists, and under
    --allow-changed-data too (tester CR: read by position, a shift in it unseen); a column
    added beside the run's is left out; other rows of the same columns are read as they are
    under --allow-changed-data, into test_on_changed_data."""
    rng = np.random.default_rng(0)
    values = rng.uniform(1, 9, (60, 3))
    data = tmp_path / "t.csv"

    def write(order):
        lines = [",".join(order)] + [
            ",".join(f"{values[i, 'abcd'.index(c) % 3]:.3f}" for c in order)
            for i in range(len(values))
        ]
        data.write_text("\n".join(lines) + "\n")

    write("abc")
    run = tmp_path / "run"
    argv = ["fit", "--data", str(data), "--likelihood", "normal", "--out", str(run),
            "--epochs", "1", "--batch-size", "16", *FAST]  # fmt: skip
    assert main(argv) == 0
    size = data.stat().st_size
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 0
    scored = json.loads((run / "metrics.json").read_text())["test"]
    write("bac")
    assert data.stat().st_size == size
    for allow in ([], ["--allow-changed-data"]):
        assert main(["evaluate", str(run), "--ll-samples", "0", *allow]) == 0
        again = json.loads((run / "metrics.json").read_text())["test"]
        assert {k: v for k, v in again.items() if k != "seconds"} == {
            k: v for k, v in scored.items() if k != "seconds"
        }
    capsys.readouterr()
    write("abd")  # one renamed: its values are another column's, its name new
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 2
    assert "columns gone: ['c']; columns new: ['d']" in capsys.readouterr().err
    before = json.loads((run / "metrics.json").read_text())["test"]
    assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-data"]) == 2
    assert "no longer has the run's feature columns ['c'] (its columns now: a, b, d)" in (
        capsys.readouterr().err
    )
    values = np.concatenate([values, values[:5] + 1])  # 5 rows more, the same columns
    write("dabc")  # and a column beside them, read by no input
    assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-data"]) == 0
    # tester CI: the results on changed data replaced the run's own test block, with a
    # note that put the difference down to Monte Carlo draws
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == before
    assert metrics["test_on_changed_data"]["provenance"]["columns"] == ["a", "b", "c"]
    assert metrics["test_on_changed_data"]["provenance"]["shape"] == [65, 3]
    assert "test_on_changed_data" in capsys.readouterr().out


def test_a_table_edited_in_place_at_the_same_size_is_refused_by_its_content(tmp_path, capsys):
    """Tester FB: column a shifted by +4 in 40% of rows (5.xxx to 9.xxx: every size kept)
    was scored as the run's data, into its own test block, with a note putting the change
    down to Monte Carlo draws. A table's values read are now recorded (``content``)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "t.csv"
    values = rng.uniform(5, 6, (60, 3))
    np.savetxt(data, values, fmt="%.3f", delimiter=",", header="a,b,c", comments="")
    run = tmp_path / "run"
    argv = ["fit", "--data", str(data), "--likelihood", "normal", "--out", str(run),
            "--epochs", "1", "--batch-size", "16", *FAST]  # fmt: skip
    assert main(argv) == 0
    size, saved = data.stat().st_size, (run / "metrics.json").read_text()
    values[::3, 0] += 4  # 5.xxx to 9.xxx: the same number of characters
    np.savetxt(data, values, fmt="%.3f", delimiter=",", header="a,b,c", comments="")
    assert data.stat().st_size == size
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "keep their names, sizes and shape, but the values read from them changed" in err
    assert (run / "metrics.json").read_text() == saved  # nothing written
    assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-data"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(saved)["test"] == metrics["test"]  # the run's own block kept
    recorded = json.loads((run / "config.json").read_text())["data"]["provenance"]["content"]
    assert metrics["test_on_changed_data"]["provenance"]["content"] != recorded


def test_the_content_checksum_is_of_the_values_not_of_their_formatting():
    a = np.arange(6.0).reshape(2, 3)
    same = content_checksum([a, np.zeros(2, np.int64)])
    assert same == content_checksum([np.asfortranarray(a), np.zeros(2, np.int64)])
    assert same != content_checksum([a.reshape(3, 2), np.zeros(2, np.int64)])
    assert same != content_checksum([a.astype(np.float32), np.zeros(2, np.int64)])
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], 9)
    assert same != content_checksum([b, np.zeros(2, np.int64)])


def test_a_moved_number_on_an_array_run_names_an_edit_in_place_as_a_cause(tmp_path, capsys):
    # tester FB: an edit in place was put down to Monte Carlo draws alone; an array file's
    # checksum (names and sizes) cannot see one, so the note names it beside the draws
    data, run = _run_on_an_array(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ll-samples", "0", "--seed", "3"]) == 0
    moved = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: test")]
    assert moved and (
        "other Monte Carlo draws than the saved test block's, or data edited in place (this "
        "run recorded a checksum of its files' names and sizes, not of their values" in moved[0]
    )
