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


def test_evaluate_refuses_a_run_whose_array_changed_and_the_flag_lets_it_through(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    run = tmp_path / "run"
    fit = ["fit", "--data", str(data), "--epochs", "1", "--batch-size", "8", "--out", str(run)]
    assert main([*fit, *FAST]) == 0
    recorded = json.loads((run / "config.json").read_text())["data"]["provenance"]
    assert recorded["path"] == str(data.resolve()) and recorded["shape"] == [30, 4, 4]
    assert main(["evaluate", str(run), "--ll-samples", "0"]) == 0
    capsys.readouterr()
    np.save(data, np.random.default_rng(0).integers(0, 256, (31, 4, 4), dtype=np.uint8))
    for command in (["evaluate", str(run)], ["sample", str(run)], ["diagnose", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "changed since the run was trained" in err and "--allow-changed-data" in err
    before = json.loads((run / "metrics.json").read_text())["test"]
    assert main(["evaluate", str(run), "--ll-samples", "0", "--allow-changed-data"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == before  # the run's own results are kept
    assert metrics["test_on_changed_data"]["provenance"]["shape"] == [31, 4, 4]
    assert "test_on_changed_data" in capsys.readouterr().out


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


@pytest.mark.parametrize("layout", ["another-folder", "shadowed-stdlib"])
def test_the_module_an_import_loads_now_is_the_one_compared(tmp_path, layout):
    # tester J's F2: `import nets` resolved from the working folder at fit time (A) and at
    # evaluate time (B) loaded two files, and evaluate ran B's with no word; F4: a script
    # named copy.py beside the model file was recorded for `import copy`, which loads the
    # standard library's, and an edit to the script refused the run. Each command runs in
    # its own process, as a user's would, so nothing is cached between them
    import os
    import subprocess

    project, first, second = (tmp_path / d for d in ("project", "A", "B"))
    for folder in (project, first, second):
        folder.mkdir()
    name = "nets" if layout == "another-folder" else "copy"
    source = HELPER_MODEL_FILE.replace("prov_nets", "nets_here")
    source = source.replace("from nets_here", f"import {name}\nfrom nets_here")
    (project / "mine.py").write_text(source)
    (project / "nets_here.py").write_text(NETS)
    for folder, body in ((first, "A = 1\n"), (second, "A = 2\n")):
        (folder if layout == "another-folder" else project).joinpath(f"{name}.py").write_text(body)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def cli(cwd, *args):
        command = [sys.executable, "-m", "pyro_vae.cli", *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)

    fit = ["fit", "--model", f"{project / 'mine.py'}:Mine", "--data", str(data)]
    fit += ["--likelihood", "gaussian", "--epochs", "1", "--no-progress", "--ll-samples", "2"]
    assert cli(first, *fit, "--out", str(run)).returncode == 0
    recorded = json.loads((run / "config.json").read_text())["code"]
    done = cli(second, "evaluate", str(run), "--ll-samples", "0")
    if layout == "another-folder":
        assert recorded["import:nets"]["file"] == str((first / "nets.py").resolve())
        assert done.returncode == 2
        assert "module nets (imported by the model's or guide's file): loads from " in done.stderr
        assert str((second / "nets.py").resolve()) in done.stderr
    else:  # the standard library's copy is what runs, not the script beside the model
        assert "import:copy" not in recorded and "import:nets_here" in recorded
        (project / "copy.py").write_text("A = 3\n")
        assert cli(second, "evaluate", str(run), "--ll-samples", "0").returncode == 0
