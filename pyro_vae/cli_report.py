"""A run's test metrics as the commands print and keep them: one line per metric, per
image or per row; the earlier blocks metrics.json keeps when a block is replaced; and the
run folder a command writes its results into, refused before any work when it cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_vae.checkpoint import EVALUATED_ON_TRAINING_SET, RunFolder, check_writable
from pyro_vae.datasets import row_unit
from pyro_vae.experiment import code_of
from pyro_vae.provenance import code_changes, data_changed


def rows_not_images(data) -> bool:
    """Whether ``data``'s rows are not images (:func:`pyro_vae.datasets.row_unit` of its
    ``image_shape``: a table's, or vectors)."""
    return row_unit(data.image_shape) == "rows"


def print_test(test: dict[str, Any], table: bool = False) -> None:
    """The test metrics, per image, or per row with ``table`` (data whose rows are not
    images: a table's, whose nats are those of the standardized columns when they were
    standardized, then also in the file's units, or vectors')."""
    unit = "row" if table else "image"
    standardized = " of the standardized columns" if "units" in test else ""
    say = print
    if test.get("evaluated_on") == EVALUATED_ON_TRAINING_SET:
        print(
            "note: the guide has free per-datapoint parameters, so it has no posterior for "
            f"test {unit}s; these are the training {unit}s' metrics"
        )
        say = _print_as_training  # (tester FG: the training rows' metrics were "test")
    # a model that uses labels: its bounds are of log p(x | y) (CVAE) or log p(x, y) (M2)
    given = {"conditioned": " | y", "joint": ", y"}.get(test.get("labels_in_bound"), "")
    if not given and test.get("conditioned_on_labels"):  # metrics.json written before
        given = " | y"
    for key, value in test.items():
        if key == "elbo":
            say(f"test ELBO{given:<17}{value:10.3f} nats per {unit}{standardized}")
        elif key == "reconstruction_mse_original_units":
            scale = "per column, file's units squared (error² × training std_j²)"
            say(f"reconstruction MSE        {value:10.6g} {scale}")
        elif key in ("elbo_original_units", "log_likelihood_original_units"):
            what = f"ELBO{given}" if key == "elbo_original_units" else f"log p(x{given}) (IWAE)"
            say(f"test {what:<20} {value:10.3f} nats per row in the file's units")
        elif key.endswith("_original_units"):  # a model's own log-density of x
            what = key.removesuffix("_original_units").replace("_", " ")
            say(f"{what:<25} {value:10.3f} nats per row in the file's units")
        elif key == "reconstruction_log_likelihood":
            say(f"test log Pr(x | z)        {value:10.3f} nats per {unit} (autoencoder)")
        elif key == "log_likelihood":
            say(
                f"{'test log p(x' + given + ') (IWAE)':<26}{value:10.3f} nats per {unit}"
                f"{standardized} "
                f"(K={test['log_likelihood_samples']}, {test['log_likelihood_points']} {unit}s)"
            )
        elif key == "kl":
            kl = {" | y": "test KL(q(z | x, y) ‖ p(z))", ", y": "test KL(q(y, z | x) ‖ p(y, z))"}
            kl = kl.get(given, "test KL(q(z | x) ‖ p(z))")
            # E_q[log q − log p] from the ELBO's draws: near 0 it can come out negative
            say(f"{kl:<26}{value:10.3f} nats per {unit} (Monte Carlo estimate)")
        elif key == "reconstruction_mse":
            scale = "per pixel, [0, 1] scale"
            if table:
                scale = "per column, as observed"
                if "reconstruction_mse_original_units" in test:
                    scale = "per column, standardized (mean over columns and rows)"
            say(f"reconstruction MSE        {value:10.4f} {scale}")
        elif key == "active_units":
            say(f"active latent units       {value:>5} of {test['latent_dim']}")
        elif key in test.get("label_metrics", ()):
            number = f"{value:>10}" if isinstance(value, int) else f"{value:10.4f}"
            per = _label_metric_unit(key, value, unit)
            per += standardized if per.startswith(" nats") else ""  # as the ELBO's (tester FM)
            say(f"{key.replace('_', ' '):<26}{number}{per}")
        elif key == "skipped":
            for metric, why in value.items():
                say(f"skipped {metric}: {why}")


def _print_as_training(line: str) -> None:
    print(_as_training(line))


def _as_training(line: str) -> str:
    """A metric's ``line`` said of the training rows: its leading "test " read "train ",
    the padding after its name one space shorter, so its number stays in its column."""
    if not line.startswith("test "):
        return line
    line = "train " + line.removeprefix("test ")
    gap = line.find("  ")
    return line if gap < 0 else line[:gap] + line[gap + 1 :]


def _label_metric_unit(key: str, value, unit: str) -> str:
    """The unit of a label model's metric, read from its name (tester BP: "test elbo
    unlabelled -28.8401" had none): a bound or log-density in nats per image (row), an
    accuracy a share; a count none."""
    if isinstance(value, int):
        return ""
    if "accuracy" in key:
        return " (share correct)"
    if "elbo" in key or "log_p" in key:
        return f" nats per {unit}"
    return ""


def with_previous(metrics: dict, key: str) -> list:
    """``metrics[key + "_previous"]`` (every block ``key`` held before, oldest first; an
    older run's single block taken as a list of one) with ``metrics[key]`` appended: what
    to keep when ``key`` is replaced (tester H: a second evaluate dropped the fit's own
    test block, the first one kept only the last). A block equal to the last one kept but
    for its ``seconds`` is not kept twice (tester U: each ``fit --resume`` of a finished
    run scored the same weights again, and kept one more copy of the same numbers)."""
    kept = metrics.get(f"{key}_previous") or []
    kept = [kept] if isinstance(kept, dict) else list(kept)
    if not metrics.get(key) or (kept and _untimed(kept[-1]) == _untimed(metrics[key])):
        return kept
    return [*kept, metrics[key]]


def analysis_block(metrics: dict, key: str) -> dict | None:
    """metrics.json's analysis block ``key`` as a dict (grad-variance's rows alone, as
    versions before it recorded its weights wrote them, as ``{"rows": ...}``), or None."""
    block = metrics.get(key)
    return {"rows": block} if isinstance(block, list) else block


def record_analysis(run, key: str, block: dict, epoch: int | None) -> None:
    """An analysis command's ``block`` into metrics.json's ``key``, marked with the
    ``epoch`` whose weights it scored (tester EO: nothing said which weights), the block
    it replaces kept in ``<key>_previous`` (:func:`with_previous`)."""
    metrics = run.read_metrics()
    kept = with_previous({**metrics, key: analysis_block(metrics, key)}, key)
    run.update_metrics(
        **{key: {"scored_weights_of_epoch": epoch, **block}},
        **({f"{key}_previous": kept} if kept else {}),
    )


def _untimed(block: Any) -> Any:
    """A metrics block without its wall time (``seconds``), to tell a repeat of it."""
    return {k: v for k, v in block.items() if k != "seconds"} if isinstance(block, dict) else block


def writable_run(path: str | Path) -> RunFolder:
    """The run folder ``path``, refused before any work when this process cannot write it
    (tester U: ``evaluate`` and ``diagnose`` computed for minutes, then died at their first
    write with a ``PermissionError`` traceback). A path that is not a folder is left to
    :func:`~pyro_vae.experiment.load`, which says so.

    Raises:
        FolderNotWritableError: ``run: cannot create or write to PATH (reason)``, as
            ``fit --resume`` refuses such a folder.
        RunFolderError: its metrics.json is damaged (the results are written there), with
            how to rebuild it, before any work.
    """
    run = RunFolder(path)
    if run.path.is_dir():
        if not run.holds_run_files:  # refused before a lock file is written into it
            run.read_config()  # (tester ED: a refused evaluate left .metrics.lock behind)
        check_writable(run.path)
        # a damaged metrics.json, refused before the work, not after it (tester CF:
        # diagnose wrote its seven files, then failed to add its block to metrics.json,
        # and said "nothing was changed")
        run.read_metrics()
    return run


def changed_inputs(exp) -> tuple[str, dict, str] | None:
    """(metrics key, what to record beside the results, what changed) where the run was
    rebuilt on data or a model/guide file, or a module of the user's own they import, other
    than it recorded (the flags that allow it); its own test block then stays. None where
    nothing changed."""
    recorded, current = exp.config.data.provenance, exp.data.info.get("provenance")
    if current and data_changed(recorded, current):
        return "test_on_changed_data", {"provenance": current}, "the data"
    code = exp.code if exp.code is not None else code_of(exp.config)  # build's, once run
    if code_changes(exp.config.code, code):
        return "test_on_changed_code", {"code": code}, "the model's or guide's code"
    return None


def changed_block(exp, block: str) -> tuple[str, dict, str | None]:
    """(metrics key, what to record beside the results, what changed) for a command that
    writes its results to metrics.json's ``block``: ``block`` itself, with nothing beside
    it and None; or, where the run was rebuilt on changed data or code
    (:func:`changed_inputs`), ``block`` + ``_on_changed_data`` or ``_on_changed_code``,
    the provenance or code, and what changed. The files a command names after its block go
    by the same key, so the run's own block and files stay (tester CT: ``diagnose
    --allow-changed-data`` replaced both; ``grad-variance`` and ``amortization-gap`` did
    too)."""
    changed = changed_inputs(exp)
    if changed is None:
        return block, {}, None
    key, extra, what = changed
    return key.replace("test", block, 1), extra, what


def print_changed_note(run: RunFolder, key: str, what: str, kept: str) -> None:
    """The note after results on changed inputs (:func:`changed_block`): where they went,
    and that the run's own ``kept`` stayed."""
    print(
        f"note: {what} changed since the run was trained; these results went to "
        f"{run.file('metrics.json')}'s {key}, and {kept} (the run's own) stayed unchanged"
    )
