"""``pyro-vae evaluate``: a run's test metrics computed again, with the weights the run
kept, into metrics.json's test block (the blocks it replaces are kept beside it, and
results on changed data or code go to a block of their own).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import pyro

from pyro_vae.cli_report import (
    changed_block,
    print_changed_note,
    print_test,
    rows_not_images,
    with_previous,
    writable_run,
)
from pyro_vae.experiment import evaluate_test_set, load


def evaluate_command(args: argparse.Namespace) -> int:
    """``pyro-vae evaluate RUN``: the test metrics of the weights the run kept, printed and
    written to metrics.json's test block (``--ll-samples 0`` keeps the saved log p(x)
    estimate). Returns 0; refusals (an unwritable folder, changed data or code without
    the flag allowing it) raise before any work, as :func:`pyro_vae.experiment.load` does."""
    run = writable_run(args.run)
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    if args.seed is not None:  # (tester DM: every call gave one number, no spread to see)
        pyro.set_rng_seed(args.seed)
    ev = exp.config.evaluation
    samples = ev.ll_samples if args.ll_samples is None else args.ll_samples
    points = ev.ll_points if args.ll_points is None else (args.ll_points or None)
    test = evaluate_test_set(exp, samples, points, progress=True)
    # the weights it scored: a fit still training may have moved on (tester L2)
    test["scored_weights_of_epoch"] = exp.weights_epoch
    if args.seed is not None:
        test["seed"] = args.seed
    key, extra, what = changed_block(exp, "test")  # on changed data or code: its own block
    kept, replaced, redrawn = _write_test_block(run, key, test, extra, samples == 0)
    print_test(test, rows_not_images(exp.data))
    block = f"{run.file('metrics.json')}'s {key} block" + (
        " (what compare shows)" if what is None else ""
    )
    if what is not None:
        print_changed_note(run, key, what, "its test block")
        nan = sorted(k for k, v in test.items() if isinstance(v, float) and math.isnan(v))
        if nan:  # (tester CR: a test ELBO of nan, unexplained, on data shifted 500 sds)
            print(
                f"note: {', '.join(nan)} came out NaN: the run's networks overflow on these "
                "data, which lie far outside those it was trained on"
            )
    if kept:  # (tester BP: printed beside fresh ELBOs as if computed now)
        print(
            f"note: {', '.join(kept)} above "
            f"{'is the saved estimate' if len(kept) == 1 else 'are the saved estimates'}, kept "
            f"in the {key} block: --ll-samples 0 computed none this time"
        )
    if replaced:
        print(
            f"note: log p(x) is now {replaced}, in {block}; the block it replaced is kept in "
            f"{key}_previous"
        )
    cause = f"other Monte Carlo draws than the saved {key} block's" + _unseen_edits(exp)
    if replaced and redrawn:  # the figures drawn after log p(x) from the same stream
        print(f"note: {redrawn}: {cause}")
    elif redrawn:
        print(
            f"note: {redrawn}: {cause}; {block} now holds these, and the block it replaced "
            f"is kept in {key}_previous"
        )
    return 0


def _unseen_edits(exp) -> str:
    """Where the run's data record no checksum of their values (array and IDX files: see
    :mod:`pyro_vae.provenance`), the other cause a moved number may have (tester FB: a
    note put a table's edited values down to Monte Carlo draws alone)."""
    provenance = exp.config.data.provenance or {}
    if not provenance.get("checksum") or provenance.get("content"):
        return ""
    return (
        ", or data edited in place (this run recorded a checksum of its files' names and "
        "sizes, not of their values, and an edit that keeps them and the shape passes it)"
    )


def _write_test_block(run, key: str, test: dict, extra: dict, no_estimate: bool) -> tuple:
    """Write ``test`` (with ``extra``, the changed inputs' provenance or code) to
    metrics.json's ``key``, keeping what it replaces: with ``no_estimate`` (``--ll-samples
    0``) the saved log p(x) of the same inputs is put into ``test``, and a block of other
    numbers or of other inputs goes to ``key + "_previous"`` (tester CW: a second evaluate
    on changed data dropped the first's estimate, nothing kept). Returns (what was kept,
    :func:`_replaced_estimate`, :func:`_redrawn`) against the saved block."""
    metrics = run.read_metrics()  # where gone, the update below restores its history
    previous = metrics.get(key) or {}
    same = all(previous.get(k) == json.loads(json.dumps(v)) for k, v in extra.items())
    kept, replaced, redrawn = [], "", ""
    if same:  # else results on other changed inputs: kept whole, compared with nothing
        kept = _keep_saved_estimates(previous, test) if no_estimate else []
        replaced = _replaced_estimate(previous, test)
        # with log p(x) at other settings, the others that moved are named too (tester EW)
        redrawn = _redrawn(previous, test, skip=_ESTIMATE_KEYS if replaced else ())
    blocks = {key: {**test, **extra}}
    if replaced or redrawn or (previous and not same):  # the blocks replaced stay beside it
        blocks[f"{key}_previous"] = with_previous(metrics, key)
    run.update_metrics(**blocks)
    return kept, replaced, redrawn


def _keep_saved_estimates(previous: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """Under ``--ll-samples 0`` (no log p(x) this time): the saved block's log p(x)
    estimates, with their K and rows, put into ``test`` (the evaluation's, and a label
    model's own, such as M2's unlabelled log p(x)); returns what was kept, as printed."""
    own = ("log_likelihood", "test_log_px")
    saved = {k: v for k, v in previous.items() if k.startswith(own) and k not in test}
    test.update(saved)
    # drawn with the saved block's seed (None: the run's own stream), which a --seed of
    # this evaluation must not claim (tester DO)
    drawn_with = saved.get("log_likelihood_seed", previous.get("seed"))
    if saved and "log_likelihood_seed" not in saved and drawn_with != test.get("seed"):
        test["log_likelihood_seed"] = drawn_with
    labelled = [k for k in saved if k in previous.get("label_metrics", ())]
    if labelled:
        test["label_metrics"] = sorted({*test.get("label_metrics", ()), *labelled})
    names = ["log p(x) (IWAE)"] if "log_likelihood" in saved else []
    return names + [k.replace("_", " ") for k in labelled if not k.endswith(("_K", "_points"))]


_ESTIMATE_KEYS = ("log_likelihood", "log_likelihood_samples", "log_likelihood_points")


def _redrawn(previous: dict, test: dict, skip=()) -> str:
    """'test elbo -24.938, where it was -24.946; kl moved too' where ``test`` gives other
    numbers than the saved block ``previous`` at the same settings (other draws: fit scores
    with the random streams training left, evaluate with its own; tester P: evaluate
    replaced the numbers fit had printed, silently): the ELBO (else the first that moved)
    with its old value, and the names of the others that moved; else ''. ``skip``: keys
    left out (log p(x)'s, where :func:`_replaced_estimate` names it)."""
    numbers = [
        key
        for key in sorted(set(previous) & set(test))
        if isinstance(test[key], float)
        and previous[key] != test[key]
        and key != "seconds"
        and key not in skip
    ]
    if not numbers:
        return ""
    key = "elbo" if "elbo" in numbers else numbers[0]
    others = [name for name in numbers if name != key]
    also = f"; {', '.join(others)} moved too" if others else ""
    return f"test {key} {test[key]:.6g}, where it was {previous[key]:.6g}{also}"


def _replaced_estimate(previous: dict, test: dict) -> str:
    """'K=7 over 20 rows, where it was K=50 over 180 rows' where ``test`` estimates log p(x)
    with other draws or rows than the saved block ``previous``; else '' (tester B's F6: an
    evaluate with fewer draws replaced the fit's estimate without a word)."""
    keys = ("log_likelihood_samples", "log_likelihood_points")
    if "log_likelihood" not in previous or all(previous.get(k) == test.get(k) for k in keys):
        return ""

    def described(block: dict) -> str:
        return f"K={block.get(keys[0])} over {block.get(keys[1])} rows"

    return f"{described(test)}, where it was {described(previous)}"
