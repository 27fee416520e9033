"""The ``pyro-vae`` command's entry point, :func:`main`: it parses the command line, runs
``fit`` (in this process, or in several through torchrun's agent with ``--nproc``) or one of
the commands that read a finished run, and reports how each stopped (a refusal, a diverged
fit, a full disk, a lost rank, Ctrl-C, SIGTERM or a closed terminal's SIGHUP) in one line with
its exit status.

The flags are in :mod:`pyro_vae.cli_parser`, the run they describe in
:mod:`pyro_vae.cli_config`, what a resume may change in :mod:`pyro_vae.cli_resume`, and
the commands after a fit in :mod:`pyro_vae.cli_evaluate` and :mod:`pyro_vae.cli_analysis`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import sysconfig
import threading
import time
import traceback
import warnings
from dataclasses import replace
from shlex import quote
from typing import Any

from pyro_vae.checkpoint import (
    DiskFullError,
    FolderNotWritableError,
    RunFolder,
    RunFolderError,
    RunInUseError,
)
from pyro_vae.cli_analysis import (
    amortization_gap_command,
    compare_command,
    diagnose_command,
    grad_variance_command,
    sample_command,
)
from pyro_vae.cli_config import (
    note_unaccepted,
    refuse_ignored_data_flags,
    refuse_labels_before_launch,
    refuse_precision,
    refuse_unused_labels,
    run_config_from_args,
    should_compile,
)
from pyro_vae.cli_evaluate import evaluate_command
from pyro_vae.cli_parser import build_parser, check_counts, command_flags, given_flags
from pyro_vae.cli_report import analysis_block, print_test, rows_not_images, with_previous
from pyro_vae.cli_resume import (
    changeable_on_resume,
    processes_by_epoch_record,
    recorded_processes,
    resume_config,
)
from pyro_vae.datasets import DatasetNotFoundError
from pyro_vae.devices import resolve_device
from pyro_vae.distributed import (
    LAUNCHED_VARIABLE,
    RankLost,
    current,
    launch,
    refuse_batch_terms,
    refuse_before_launch,
    refuse_disagreeing_ranks,
    refuse_mixed_commands,
    run_from_rank_0,
    session,
    started_by_torchrun,
    wait_for_orphans,
)
from pyro_vae.estimators.compiled import CaptureError, compilable, path_gradient_reason
from pyro_vae.experiment import Experiment, build, evaluate_test_set, write_figures
from pyro_vae.fit_checkpoint import ProcessCountWarning
from pyro_vae.idx import IDXFormatError
from pyro_vae.interruptions import (
    HungUp,
    Terminated,
    forget_stops,
    interruptions_unmasked,
    stop_arrived,
)
from pyro_vae.prior_model import RECORD as IMAGE_RECORD
from pyro_vae.prior_model import image_record
from pyro_vae.run_config import RunConfig
from pyro_vae.spec import load_object
from pyro_vae.tables import column_list, is_table_path, refuse_binarization
from pyro_vae.train import TrainingDiverged, fit, training_estimate_name


def _fit(args: argparse.Namespace, given: set[str]) -> int:
    if args.restart and args.resume:
        raise ValueError(
            "restart: --restart starts a run over in --out; it does not go with --resume"
        )
    # bad flags: refused before any work
    config = None if args.resume else run_config_from_args(args)
    if config is not None:
        refuse_unused_labels(config)
    if config is not None and is_table_path(str(config.data.name)):
        flags = ("--binarize", "--threshold")
        refuse_binarization({f: getattr(args, f[2:]) for f in flags if f in given})
    if config is not None:
        refuse_ignored_data_flags(config, args, given)
    run = RunFolder(args.resume or args.out)
    group = current()
    refuse_mixed_commands(group, None if args.resume is None else str(args.resume))
    if not group.is_writer:  # ranks after 0 of a torchrun group neither read nor write it
        state = None
        if args.resume:  # rank 0's config and checkpoint: this machine may have no copy
            config, state = resume_config(run, args, given, run_from_rank_0(group))
        return _train_and_report(run, config, state, args)
    if args.resume and not run.path.is_dir():
        # rank 0 resumes from the folder and writes it: on several machines, the one that
        # holds it must be rank 0 (tester Q: c10d gave rank 0 to the other machine)
        several = (
            f"; rank 0 of {group.world} reads and writes the run folder, so the machine "
            "holding it must be rank 0 (torchrun's c10d rendezvous gives rank 0 to the "
            "first agent to join: start that machine's first, or use --rdzv-backend static "
            "with --node-rank 0 there)"
            if group.world > 1
            else ""
        )
        raise RunFolderError(
            f"resume: {run.path} is not a directory; expected a run folder written by "
            f"`pyro-vae fit --out RUN`{several}"
        )
    with run.claim():
        run.remove_stale_temporaries()
        if args.resume:
            config, state = resume_config(run, args, given, share=group)
        else:
            _check_new_folder(run, args.restart)
            state = None
        return _train_and_report(run, config, state, args)


def _check_new_folder(run: RunFolder, restart: bool, clear: bool = True) -> None:
    """A folder with a checkpoint is never overwritten; one whose fit failed or was killed
    before its first epoch ended (config.json, no checkpoint) is started over only when
    asked to (``--restart``; ``clear``: False to check only, as ``--nproc`` does before it
    starts the processes); a folder of other files is not written into."""
    if run.has_checkpoint:
        # a fit from Python's folder (no config.json) is not the command line's to resume
        # (tester CO: the advice given was then refused)
        resumable = run.file("config.json").is_file()
        how = (
            f"continue it with `pyro-vae fit --resume {quote(str(run.path))}` or choose"
            if resumable
            else "it was fit from Python (no config.json), so resume it there; choose"
        )
        raise RunFolderError(
            f"out: {run.path} already holds a run; {how} another --out (nothing was overwritten)"
        )
    ours = run.holds_run_config()  # a config.json of the user's own is theirs (tester L)
    if ours and not restart:
        raise RunFolderError(
            f"out: {run.path} holds a run that failed or was stopped before its first epoch "
            f"ended (a config.json, no checkpoint); start it over with `--restart`, continue it "
            f"with `pyro-vae fit --resume {quote(str(run.path))}`, or choose another --out "
            "(nothing was overwritten)"
        )
    own = set(run.unfinished_outputs()) if ours else set()
    others = [p.name for p in run.path.iterdir() if not p.name.startswith(".") and p not in own]
    if others:  # refused before anything is cleared
        raise RunFolderError(
            f"out: {run.path} already holds other files ({', '.join(sorted(others)[:3])}...); "
            "expected a new or empty folder for the run (nothing was written or removed)"
        )
    if ours and clear:
        run.clear_unfinished()


def _train_and_report(
    run: RunFolder, config: RunConfig, state: dict[str, Any] | None, args: argparse.Namespace
) -> int:
    refuse_precision(config)  # 16-mixed on the CPU: before the data are loaded
    exp = build(config)
    if not args.resume:
        # with the data's provenance and the model's and guide's files' checksums
        config = replace(config, data=exp.config.data, code=exp.config.code)
        config = note_unaccepted(args, exp, config)
        compile_step = should_compile(args, exp.elbo, exp.model, exp.guide)
        config = replace(config, training=replace(config.training, compile=compile_step))
        exp.config = config
    reason = compilable(exp.elbo) if config.training.compile else None
    if reason is not None:
        raise ValueError(
            f"--compile {'inductor' if config.training.compile_backend else 'on'}: the "
            f"{config.estimator.name} estimator cannot be compiled "
            f"({reason}); use --compile auto or off (nothing was written)"
        )
    reason = path_gradient_reason(exp.elbo, exp.guide) if config.training.compile else None
    if reason is not None:  # said as --compile auto says it (tester BE)
        raise CaptureError(f"could not record one step: {reason}.")

    refuse_disagreeing_ranks(config.to_json(), current())  # before anything is written
    writer = current().is_writer
    if not writer:  # one progress bar, from rank 0
        config = replace(config, training=replace(config.training, progress=False))

    def ready() -> None:  # fit's checks have all passed: now the folder is written
        _FIT_PROGRESS["checked"] = True
        if writer:
            _write_run_start(run, config, exp, state)

    _FIT_PROGRESS["begun"] = True
    try:
        with warnings.catch_warnings():  # _write_run_start's note says it, in its words
            warnings.simplefilter("ignore", ProcessCountWarning)
            result = fit(
                exp.model,
                exp.guide,
                exp.data,
                exp.elbo,
                config.training,
                run,
                resume=state is not None,
                resume_state=state,
                on_ready=ready,
                evaluated_per_datapoint=True,  # evaluate_test_set: refused before training
            )
    except TrainingDiverged as err:
        if writer:  # every rank diverged alike (the loss is averaged): one says so
            run.update_metrics(stop_reason="diverged")  # (tester BJ: said twice, unnamed)
            print(f"error: {_one_line(err)}{_after_divergence(run)}", file=sys.stderr)
        return 1
    _FIT_PROGRESS["trained"] = True
    if writer:
        print(
            f"stopped: {result.stop_reason.replace('_', ' ')}; kept the weights of epoch "
            f"{result.best_epoch or len(result.history)}"
        )
    exp.local_guide = result.local_guide
    ev = exp.config.evaluation
    progress = config.training.progress
    group = current()
    group.seed_evaluation(config.training.seed)  # the same draws after a resume
    test = evaluate_test_set(exp, ev.ll_samples, ev.ll_points, progress=progress, group=group)
    if writer:  # every rank scores its part of the test set; rank 0 writes
        _report(run, exp, result, test)
    return 0


def _write_run_start(run: RunFolder, config: RunConfig, exp, state) -> None:
    """Once fit's checks have passed: config.json, the data's and estimator's records and
    the processes in metrics.json, a resumed run's earlier test block set aside, and the
    line saying what trains on what."""
    rows = "rows" if rows_not_images(exp.data) else "images"
    # metrics.json read first: one that does not read is refused with config.json as it
    # was (it was rewritten first, a refused resume's --epochs left in it: tester L2); one
    # whose epochs are not the checkpoint's is rebuilt from it
    before = run.read_metrics(state)
    processes, world = before.get("processes"), current().world
    written = config.to_json()
    run.write_config(written)
    metrics = run.update_metrics(
        data=exp.data.info, estimator=written["estimator"], processes=world,
        processes_by_epoch=processes_by_epoch_record(before, world),
    )  # fmt: skip
    if state is not None:
        _set_aside_test_block(run, metrics)
        if state.get("epoch", 0) < config.training.epochs:  # it trains on
            _set_aside_analyses(run, metrics)
        if processes is not None and processes != world:  # tester L
            print(
                f"note: {run.path} was trained on {processes} process(es) and resumes on "
                f"{world}: each process draws its own random numbers, so from here the "
                f"run draws other numbers than an uninterrupted one would (resume with "
                f"--nproc {processes} to draw the same)"
            )
    print(
        f"{config.model.spec} on {exp.data.info['dataset']} "
        f"({exp.data.info['num_train']} train, {exp.data.info['num_val']} validation, "
        f"{exp.data.info['num_test']} test {rows}), "
        f"{config.estimator.name} "
        f"estimator -> {run.path}"
    )
    _note_image_folder(exp.data.info)
    _note_full_intensity(exp.data.info)
    _note_untrained_classes(exp.data.info)
    if "columns" in exp.data.info:  # a table: which columns became the features
        label = config.data.label_column
        more = "; config.json's data.provenance lists them all"
        shown = column_list(exp.data.info["columns"], plain=True, more=more)
        print(f"features: {shown}" + (f" (labels: {label})" if label else ""))
        text = exp.data.info.get("text_columns")
        if text:  # tester EK: left out unsaid, as an image folder's stray files are not
            print(
                f"note: the column(s) {column_list(text, plain=True)} hold values that are "
                "not numbers (text, dates, categories) and are left out of the features "
                "(--columns names the features; encode them as numbers first to use them)"
            )


def _after_divergence(run: RunFolder) -> str:
    """What to run after a divergence (tester BM: ``--resume`` repeats the same steps, with
    the run's settings and random stream, to the same NaN; ``--lr`` is refused there; only
    ``--restart`` trains again with other settings, and nothing said so). Where an epoch
    was checkpointed, ``--restart`` is refused (a checkpoint is never overwritten), so a
    new folder is the way (tester EB: the advice given was refused, and its refusal sent
    the user back to ``--resume``)."""
    if run.has_checkpoint:
        return (
            f" {run.path} keeps the checkpoint of its last good epoch (`pyro-vae evaluate "
            f"{quote(str(run.path))}` scores it). To train again with other settings, start a "
            "new run: pyro-vae fit --out <another folder> --lr <smaller> (or --kl-warmup "
            "EPOCHS) and the run's other flags; --resume would repeat the same steps to the "
            "same loss"
        )
    return (
        f" To train again with other settings: pyro-vae fit --out {quote(str(run.path))} --restart "
        "--lr <smaller> (or --kl-warmup EPOCHS); --resume would repeat the same steps to the "
        "same loss"
    )


def _note_untrained_classes(info: dict[str, Any]) -> None:
    """Say which classes of a label model no training row holds (tester BP)."""
    untrained = info.get("untrained_classes")
    if untrained:
        empty = untrained["classes"]
        shown = ", ".join(map(str, empty[:8])) + (", ..." if len(empty) > 8 else "")
        print(
            f"note: {len(empty)} of the model's {untrained['of']} classes have no training "
            f"rows ({shown}): no label of them is drawn and the model never sees one, "
            "though it keeps them among its classes (in p(y) and the test accuracy, where "
            "it has them; a CVAE has neither); a model's classes are its num_classes, else "
            "the dataset's class names, else labels 0 to the largest: relabel the classes "
            "0..C-1, each with training rows (a class of one or two rows can fall into the "
            "validation or test split)"
        )


def _note_full_intensity(info: dict[str, Any]) -> None:
    """Say the full intensity taken for integer pixels of a type that does not tell it
    (anything but uint8): their largest value (tester BM)."""
    full = info.get("full_intensity")
    if full:
        value, dtype = full["value"], full["dtype"]
        # IDX files of float pixels are refused: floats go in an array file instead
        floats = (
            "as float intensities x / full in [0, 1] in a .npy (IDX files of float pixels "
            "are refused)"
            if str(info.get("dataset", "")).startswith("idx:")
            else "as float intensities x / full in [0, 1]"
        )
        print(
            f"note: {dtype} pixels are read as intensities x / {value}, their largest value "
            "(uint8 pixels are read as x / 255); if their full intensity is another value, "
            f"store them as uint8 (0..255) or {floats}"
        )


def _note_image_folder(info: dict[str, Any]) -> None:
    """Say which files of an image folder were left out (not class images, tester P) and
    which colour files made a grey folder RGB (tester Q: one ``.webp``, which Pillow always
    decodes as colour, tripled the input of a grey folder unnamed)."""

    def shown(files: list[str]) -> str:
        return ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")

    left_out = info.get("left_out")
    if left_out:
        print(
            f"note: {len(left_out)} file(s) in the folder are not class images, left out: "
            f"{shown(left_out)}"
        )
    colour = info.get("colour_files")
    if colour:
        images = sum(info[f"num_{split}"] for split in ("train", "val", "test"))
        print(
            f"note: {len(colour)} of the folder's {images} images are colour "
            f"({shown(colour)}), so "
            "every image is read as RGB, 3 channels; convert those to greyscale to train "
            "on one channel"
        )


def _set_aside_test_block(run: RunFolder, metrics: dict[str, Any]) -> None:
    """A resumed fit's earlier test block and stop reason, set aside before it trains on:
    they belong to the weights it had (tester L: a resumed run interrupted later showed, in
    ``compare``, the test ELBO of epoch 4 beside 29 epochs, with no note). The block is
    kept in ``test_previous``, marked with the epoch it scored; ``compare`` shows the run
    as not evaluated until the fit ends and writes its own. ``metrics``: metrics.json as
    it is now."""
    if not metrics.get("test") and metrics.get("stop_reason") is None:
        return
    kept = with_previous(metrics, "test")
    if metrics.get("test") and "scored_weights_of_epoch" not in kept[-1]:  # an older block
        kept[-1] = {**kept[-1], "scored_weights_of_epoch": metrics.get("best_epoch")}
    run.update_metrics(test=None, stop_reason=None, test_previous=kept)


#: metrics.json's blocks of the commands that study a run's weights after training
ANALYSIS_BLOCKS = ("diagnostics", "amortization_gap", "gradient_variance")


def _set_aside_analyses(run: RunFolder, metrics: dict[str, Any]) -> None:
    """A resume that trains on sets each earlier analysis block (diagnose's,
    amortization-gap's, grad-variance's) aside in ``<block>_previous``, marked with the
    epoch whose weights it scored, as the test block is (tester EO: diagnose's block of
    epoch 40 stayed beside the test block of epoch 45, unmarked); diagnose's files stay,
    and a note says which weights they scored. ``metrics``: metrics.json as it is now."""
    moved, scored = {}, metrics.get("best_epoch") or len(metrics.get("epochs") or [])
    for key in ANALYSIS_BLOCKS:
        block = analysis_block(metrics, key)
        if block is None:
            continue
        block = {"scored_weights_of_epoch": scored, **block}
        moved[key] = None
        moved[f"{key}_previous"] = with_previous({**metrics, key: block}, key)
    if not moved:
        return
    run.update_metrics(**moved)
    if "diagnostics" in moved:
        epoch = moved["diagnostics_previous"][-1]["scored_weights_of_epoch"]
        print(
            f"note: diagnose's files in {run.path} (khat.csv, diagnostics.nc, the figures) "
            f"scored the weights of epoch {epoch}; their numbers are kept in metrics.json's "
            f"diagnostics_previous, and `pyro-vae diagnose {quote(str(run.path))}` scores "
            "the weights this resume trains"
        )


def _report(run: RunFolder, exp: Experiment, result, test: dict) -> None:
    """Record the test-set evaluation in metrics.json, print it, draw the figures."""
    test = {**test, "scored_weights_of_epoch": result.best_epoch or len(result.history)}
    metrics = run.read_metrics()  # an evaluate's block written while it trained is kept
    kept = {"test_previous": with_previous(metrics, "test")} if metrics.get("test") else {}
    run.update_metrics(
        stop_reason=result.stop_reason,
        best_epoch=result.best_epoch,
        test=test,
        model_arguments=_jsonable(exp.model_arguments),
        **{IMAGE_RECORD: image_record(exp)},
        **kept,
        **result.info(),
    )
    print_test(test, rows_not_images(exp.data))
    estimate = training_estimate_name(result.objective)
    figures, skipped = write_figures(exp, run, result.history, test, train_estimate=estimate)
    print("figures: " + ", ".join(str(p) for p in figures))
    for why, names in _grouped(skipped).items():  # one line a reason (a table's four)
        print(f"skipped {', '.join(names)}: {why}")


def _grouped(skipped: dict[str, str]) -> dict[str, list[str]]:
    """{reason: the figures skipped for it}, in the order the figures came."""
    grouped: dict[str, list[str]] = {}
    for name, why in skipped.items():
        grouped.setdefault(why, []).append(name)
    return grouped


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


#: The library's words for a setting (a run configuration's field, in a message meant for
#: Python callers too) and the flag that gives it on the command line (tester DM: a model
#: without a guide was told GuideConfig(spec=...) alone).
_FLAGS_FOR_FIELDS = {"GuideConfig(spec=...)": "--guide SPEC"}


def _flag_for(
    err: BaseException, command: str, given: frozenset[str] = frozenset(), resuming: bool = False
) -> str:
    """ "; on the command line: FLAG" where ``err``'s message names a run configuration's
    field that a flag sets (:data:`_FLAGS_FOR_FIELDS`), or opens with the Python name of
    an argument of the library that is a flag of ``command`` (``lr: 100.0 is too large``
    from ``--lr``, ``label_column: ...``; testers FB, FC: the flag was left to guess),
    unless the message names that flag already or it was ``given`` on the command line.
    Only the argument the refusal is about: other names in it (a list of an estimator's
    options, ``batch_size`` among them) are no flags of the command (tester FH); nor, on a
    resume (``resuming``), a flag the resume may not change (tester FM: a run whose data
    folder was gone was pointed to --data); else ""."""
    message = str(err)
    flags = [flag for field, flag in _FLAGS_FOR_FIELDS.items() if field in message]
    leading = re.match(r"([a-z][a-z0-9_]*): ", message)
    flag = command_flags(command).get(leading.group(1)) if leading else None
    if (
        flag
        and flag not in [f.split()[0] for f in flags]
        and not re.search(rf"{flag}(?![-\w])", message)
        and flag not in given
        and (not resuming or changeable_on_resume(flag))
    ):
        flags.append(flag)
    return f"; on the command line: {', '.join(flags)}" if flags else ""


def _one_line(err: BaseException) -> str:
    """``err``'s message on one line: a refusal is one line on stderr, even when it quotes
    a multi-line message of torch's (a state-dict mismatch lists one line per tensor)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Trace Shapes:" in lines:  # Pyro's table of the sites traced when it was raised:
        # of none it is only its headings (tester CN: "; Trace Shapes:; Param Sites:; ...")
        table = lines.index("Trace Shapes:")
        if set(lines[table + 1 :]) <= {"Param Sites:", "Sample Sites:"}:
            lines = lines[:table]
    return "; ".join(lines)


def _launch(argv: list[str], args: argparse.Namespace) -> int:
    """``fit --nproc N``: the same command in N processes through torchrun's agent, once
    the flags have passed their checks here (a refusal exits 2 before any process starts)."""
    nproc = args.nproc
    # the folder's refusals too, read-only, here: refused on a rank, they were followed by
    # the other ranks' "terminated" and torchrun's traceback, and exit 1 (tester L2)
    run = RunFolder(args.resume or args.out)
    run.refuse_if_in_use()  # refused here, once, not on each rank in gloo's words (tester AI)
    given = given_flags(argv)
    if args.resume:
        config, _ = resume_config(run, args, given)
    else:
        config = run_config_from_args(args)
        refuse_unused_labels(config)
        refuse_ignored_data_flags(config, args, given)
        if run.path.is_dir():
            _check_new_folder(run, args.restart, clear=False)
        refuse_labels_before_launch(config)
    refuse_precision(config)
    device = resolve_device(config.training.device, "--device")
    refuse_before_launch(config.estimator.build(), config.training.batch_size, nproc, device)
    # a model's class declares its batch_terms: refused here, once, not on every rank
    refuse_batch_terms(load_object(config.model.spec, "--model"), nproc)
    if "WORLD_SIZE" in os.environ:
        raise ValueError(
            f"--nproc: {nproc} under torchrun, which has started the processes already; "
            "expected --nproc only outside torchrun"
        )
    rest, skip = [], False
    for token in argv:
        if skip or token == "--nproc" or token.startswith("--nproc="):
            skip = token == "--nproc"
            continue
        rest.append(token)
    # from here the ranks may train and checkpoint: a stop reads the folder, not "it had
    # not begun" (after a Ctrl-C the launcher's last line said so beside the ranks' own
    # "holds the checkpoint of epoch 99")
    _FIT_PROGRESS["begun"] = True
    status = launch(rest, nproc)
    if status in _RANK_SIGNALS:  # a rank sent the signal alone (the agent has named it)
        print(f"{_RANK_SIGNALS[status]}; {_where_it_stopped_readable(args)}", file=sys.stderr)
    if status < 0:  # the agent itself killed (kill -9): its ranks got SIGTERM from the kernel
        name = signal.Signals(-status).name if -status in signal.valid_signals() else -status
        wait_for_orphans()  # the ranks stopping on their SIGTERM, adopted by this process
        _wait_until_free(RunFolder(args.resume or args.out))
        print(
            f"error: torchrun's agent was killed ({name}), and its ranks stopped with it; "
            f"{_where_it_stopped_readable(args)}",
            file=sys.stderr,
        )
        return 128 - status
    return status


def _wait_until_free(run: RunFolder, seconds: float = 60.0) -> None:
    """Wait, at most ``seconds``, until no process holds ``run`` (ranks finishing their
    stop), so that the command the launcher names next is not refused as in use."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            run.refuse_if_in_use()
            return
        except RunInUseError:
            time.sleep(0.2)


#: The exit statuses of a rank stopped by its own SIGTERM, Ctrl-C or SIGHUP under ``fit --nproc``:
#: the ranks leave the account of where the run stopped to the launcher, which gets here
#: (and not to its own ``Terminated`` or ``KeyboardInterrupt``) when the signal went to a
#: rank alone (tester AI: nothing said where the run stopped but the other rank's error).
_RANK_SIGNALS = {
    143: "a rank was terminated (SIGTERM)",
    130: "a rank was interrupted (SIGINT)",
    129: "a rank was hung up (SIGHUP)",
}


def _on_stop_signal(signum, frame) -> None:
    """SIGTERM's and SIGHUP's handler: the stop raised in the main thread."""
    stop = HungUp() if signum == signal.SIGHUP else Terminated()
    stop_arrived(stop)  # raised again where something swallows it (pyro_vae.interruptions)
    raise stop


#: the signals :func:`main` stops on as it does on Ctrl-C, naming where the run stopped
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _tell(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write (``print`` writes them apart,
    and unbuffered, two ranks' lines ran together: "(nothing was written)error (rank 0):",
    tester CG); where stderr is gone (a closed terminal: writes fail with EIO after a
    SIGHUP), point stdout and stderr at /dev/null instead, so that nothing written later,
    nor Python's flush at exit, turns the stop into a crash."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            for stream in (sys.stdout, sys.stderr):
                os.dup2(null, stream.fileno())


#: Whether this process stopped because another rank had (:class:`RankLost`): it then
#: leaves after that rank, so that torchrun's agent names the rank that failed first
#: (``python -m pyro_vae``).
FOLLOWED_A_LOST_RANK = {"followed": False}

#: How far this process's fit got, for what a stop says: ``begun``, whether it has passed
#: its checks and begun training (a stop before then changed nothing: a rank stopped by
#: torchrun's agent when another refused named the old run's checkpoint as if it had
#: trained: tester L2); ``checked``, whether fit's own checks have passed too, and its
#: folder been written (a refusal from them, such as a step that cannot be recorded, wrote
#: nothing); ``trained``, whether training has ended and the test-set evaluation begun.
_FIT_PROGRESS = {"begun": False, "checked": False, "trained": False}


def _where_it_stopped(args: argparse.Namespace, change: str = "") -> str:
    """What the run folder holds after a stop, and the resume that continues it, with
    ``change`` (``" --compile off"``) added where the stop needs it."""
    if args.command != "fit":
        return "its run folder is as it was: files are only ever replaced whole"
    run = RunFolder(args.resume or args.out)
    if not _FIT_PROGRESS["begun"]:
        return f"it had not begun training, so {run.path} is as it was"
    if not run.path.is_dir():
        if int(os.environ.get("RANK", "0")) > 0:  # another machine's rank 0 writes it
            return f"rank 0 writes {run.path} on its own machine; the folder there holds the run"
        return f"nothing was written: {run.path} does not exist"
    if run.has_checkpoint:
        try:
            epoch = run.load_checkpoint()["epoch"]
        except RunFolderError:
            epoch = "?"
        processes = recorded_processes(run)
        nproc = f" --nproc {processes}" if processes > 1 else ""
        return (
            f"{run.path} holds the checkpoint of epoch {epoch}; continue with "
            f"`pyro-vae fit --resume {quote(str(run.path))}{nproc}"
            f"{_resume_flags(args, run, change)}`"
        )
    # no checkpoint yet: no epoch had finished, or the first one's write was cut off
    # (tester AX: "no epoch had finished" after epoch 1 had)
    none = f"{run.path} holds no checkpoint yet (one is written as each epoch ends)"
    if run.holds_run_config():  # its settings are there: no flag to type again
        # a rank under torchrun has no --nproc of its own (tester AX: the ranks' advice
        # left it out where the launcher's gave it)
        nproc = max(getattr(args, "nproc", 1) or 1, int(os.environ.get("WORLD_SIZE", "1")))
        again = f" --nproc {nproc}" if nproc > 1 else ""
        return (
            f"{none}; start it again from its own config.json with "
            f"`pyro-vae fit --resume {quote(str(run.path))}{again}"
            f"{_resume_flags(args, run, change)}`"
        )
    return f"{none}; start it over with `pyro-vae fit --restart --out {quote(str(run.path))} ...`"


#: The flags a resume may give that :func:`_resume_flags` repeats, with how each is typed.
_REPEATED_ON_RESUME = {
    "--patience": lambda a: f" --patience {a.patience}",
    "--device": lambda a: f" --device {a.device}",
    "--compile": lambda a: f" --compile {a.compile}",
    "--tensorboard": lambda a: " --tensorboard",
    "--no-progress": lambda a: " --no-progress",
}


def _resume_flags(args: argparse.Namespace, run: RunFolder, change: str = "") -> str:
    """The flags of the resume that continues a stopped resume as it was asked: its
    ``--epochs`` where config.json does not say so yet (:func:`_epochs_not_recorded`), the
    other flags it was given that a resume may change, until fit's checks have passed and
    config.json records them (tester EJ: a resume with ``--compile on --patience 5``
    stopped in its set-up advised a resume without them, which went on with the run's
    own), and ``change``, in place of a flag it replaces."""
    if not args.resume:
        return change
    given = set() if _FIT_PROGRESS["checked"] else getattr(args, "given_flags", set())
    replaced = {token for token in change.split() if token.startswith("--")}
    repeated = "".join(
        typed(args)
        for flag, typed in _REPEATED_ON_RESUME.items()
        if flag in given and flag not in replaced
    )
    return f"{_epochs_not_recorded(args, run)}{repeated}{change}"


def _epochs_not_recorded(args: argparse.Namespace, run: RunFolder) -> str:
    """`` --epochs N`` where a resume asked for N epochs and config.json does not yet say
    so (tester DD: a resume to 30 epochs stopped in its first seconds advised a command
    that trained nothing, config.json still saying 5), else ''."""
    epochs = getattr(args, "epochs", None)  # (a rank's own arguments may not hold it)
    if not args.resume or epochs is None:
        return ""
    try:
        recorded = (run.read_config().get("train") or {}).get("epochs")
    except (RunFolderError, OSError, ValueError):
        recorded = None
    return "" if recorded == epochs else f" --epochs {epochs}"


def _raised_in_user_code(err: BaseException) -> str:
    """' (raised in FILE, line N, in FUNC)' for the innermost frame of ``err``'s traceback
    outside pyro_vae and installed packages (a model's own file), or ''. A one-line report
    of a model's error mid-run named no file (tester CR)."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = (os.path.dirname(os.path.abspath(__file__)), sysconfig.get_paths()["stdlib"])
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if path.startswith(ours) or "-packages" + os.sep in path or frame.filename[:1] == "<":
            continue
        return f" (raised in {frame.filename}, line {frame.lineno}, in {frame.name})"
    return ""


def _where_it_stopped_after_checks(args: argparse.Namespace, change: str = "") -> str:
    """Where a fit that passed its checks stopped on an error: mid-training,
    :func:`_where_it_stopped_readable` (its resume with ``change``); after training, in the
    test-set evaluation, that the folder holds the trained weights and how to score them."""
    if not _FIT_PROGRESS["trained"]:
        return _where_it_stopped_readable(args, change)
    run = args.resume or args.out
    return (  # (tester CR: advised to evaluate, which met the same error)
        f"training had finished, and {run} holds its weights; "
        f"`pyro-vae evaluate {quote(str(run))}` scores them once the model no longer raises "
        "this error"
    )


def _where_it_stopped_readable(args: argparse.Namespace, change: str = "") -> str:
    """:func:`_where_it_stopped`, or that the folder cannot be read either."""
    try:
        return _where_it_stopped(args, change)
    except OSError as err:
        return f"{args.resume or args.out} cannot be read either ({err.strerror})"


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyro-vae`` command. Returns the exit status: 0 done, 1 training diverged,
    its folder could no longer be written (a full disk, permissions: the last checkpoint
    is kept) or the model raised once the run had begun (the message says what the folder
    holds), 2 refused (the message says why; nothing was overwritten), 130
    interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP: its terminal
    closed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # Pyro's "INFO Guessed max_plate_nesting = 2" (what its ELBO guessed at its first
    # step) is a note for a Python session; in a command's output a stray line (tester H)
    logging.getLogger("pyro.infer.elbo").setLevel(logging.WARNING)
    given = given_flags(argv)
    args.given_flags = given  # what a stop's advice repeats (_resume_flags)
    handler = {
        "fit": lambda a: _fit(a, given),
        "evaluate": evaluate_command,
        "sample": sample_command,
        "grad-variance": grad_variance_command,
        "amortization-gap": amortization_gap_command,
        "diagnose": diagnose_command,
        "compare": compare_command,
    }[args.command]
    _FIT_PROGRESS.update(begun=False, checked=False, trained=False)
    forget_stops()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        previous = {sig: signal.signal(sig, _on_stop_signal) for sig in _STOP_SIGNALS}
        previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        return _run_command(handler, args, argv)
    except Terminated as stop:  # a SIGTERM while a stop or a refusal was being reported
        if in_main_thread:
            for sig in _STOP_SIGNALS:  # exiting now: any more are moot
                signal.signal(sig, signal.SIG_IGN)
        if _says_where_it_stopped():
            _tell(f"\n{stop.announced}; {_where_it_stopped(args)}")
        return stop.status
    finally:
        forget_stops()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _compile_kept(args: argparse.Namespace) -> str:
    """For a resume refused because its step cannot be recorded: the way out, a resume
    with ``--compile off`` (tester BE: it was refused as a change to the run; tester BF:
    the ``--restart`` command advised next trained the defaults, its flags left to
    retype)."""
    if args.command != "fit" or not args.resume:
        return ""
    resume = quote(str(args.resume))
    return f"; its resume may change that: `pyro-vae fit --resume {resume} --compile off`"


def _without_torch_compile(err: BaseException) -> tuple[str, str]:
    """For an error of ``torch.compile`` itself (``--compile inductor``: no working C++
    compiler, a backend failure), the resume flag that steps without it and why, else
    ``("", "")`` (tester EE: the resume advised met the same error)."""
    if not type(err).__module__.startswith(("torch._inductor", "torch._dynamo")):
        return "", ""
    why = (
        " (torch.compile failed; --compile on records the step without it, its weights "
        "within float32 rounding of inductor's)"
    )
    return " --compile on", why


def _error() -> str:
    """``error``, or under torchrun with several ranks ``error (rank R)``: each rank that
    refuses says so, and two ranks' identical lines read as one said twice (tester U)."""
    with contextlib.suppress(ValueError):  # a WORLD_SIZE that is no number: the refusal's
        if started_by_torchrun():
            return f"error (rank {os.environ.get('RANK', '?')})"
    return "error"


def _says_where_it_stopped() -> bool:
    """Whether this process reports where a Ctrl-C or SIGTERM stopped the run: one process
    does. Under torchrun that is rank 0; under ``fit --nproc`` the launcher, its ranks
    quiet (a Ctrl-C there printed the launcher's line, rank 0's, and another rank's
    "terminated (SIGTERM)" from torchrun's agent, all three naming the same checkpoint:
    tester U)."""
    if not started_by_torchrun():
        return True
    return not os.environ.get(LAUNCHED_VARIABLE) and os.environ.get("RANK") == "0"


def _run_command(handler, args: argparse.Namespace, argv: list[str]) -> int:
    """:func:`main`'s command with its exit status, each stop reported in one line."""
    try:
        # an error raised while a Ctrl-C or SIGTERM unwound (torch.save's "unexpected pos")
        # is that stop, reported as one (tester AV: a traceback and exit 1)
        with interruptions_unmasked():
            check_counts(args)
            if args.command != "fit" and started_by_torchrun():
                raise ValueError(
                    f"{args.command}: runs in one process, and torchrun started "
                    f"{os.environ.get('WORLD_SIZE')}; run `pyro-vae {args.command} ...` "
                    "without torchrun (each rank would repeat the whole work)"
                )  # tester BJ: each rank repeated it
            if getattr(args, "nproc", 1) > 1:
                return _launch(argv, args)
            with session():
                return handler(args)
    except (DiskFullError, FolderNotWritableError) as err:
        if args.command != "fit" or not _FIT_PROGRESS["begun"]:  # nothing was computed
            _tell(f"{_error()}: {_one_line(err)}")
            return 2
        # a fit stopped mid-run by its folder (tester U: a 40-line traceback): what the
        # folder holds, as a Ctrl-C says it
        _tell(f"{_error()}: {_one_line(err)}; {_where_it_stopped_readable(args)}")
        return 1
    except (ValueError, RunFolderError, DatasetNotFoundError, IDXFormatError) as err:
        if args.command == "fit" and _FIT_PROGRESS["checked"]:  # not a refusal: a stop
            # mid-run (a model's own ValueError at epoch 2 said only its words, and exit 2,
            # "refused", beside epoch 1's checkpoint): what the folder holds
            where = f"{_raised_in_user_code(err)}; {_where_it_stopped_after_checks(args)}"
            _tell(f"{_error()}: {_one_line(err)}{where}")
            return 1
        given = frozenset(getattr(args, "given_flags", ()))
        resuming = args.command == "fit" and getattr(args, "resume", None) is not None
        _tell(f"{_error()}: {_one_line(err)}{_flag_for(err, args.command, given, resuming)}")
        return 2
    except RankLost as err:
        _tell(f"{_error()}: {err}; {_where_it_stopped(args)}")
        FOLLOWED_A_LOST_RANK["followed"] = True
        return 1
    except CaptureError as err:  # --compile on for a step that cannot be recorded
        if not _FIT_PROGRESS["checked"]:  # refused by fit's checks: nothing was written
            _tell(
                f"{_error()}: {_one_line(err)} On the command line: --compile off "
                f"(nothing was written){_compile_kept(args)}"
            )
            return 2
        _tell(  # a later step's call signature (a last, smaller batch)
            f"{_error()}: {_one_line(err)} On the command line: --compile off. "
            f"{_where_it_stopped(args, ' --compile off')}"
        )
        return 1
    except KeyboardInterrupt:
        # a second Ctrl-C while the stop is reported (reading the checkpoint's epoch) left
        # tracebacks, "lost sys.stderr" and exit -2 (tester U): the first one is the stop
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _says_where_it_stopped():
            _tell(f"\ninterrupted (Ctrl-C); {_where_it_stopped(args)}")
        return 130
    except Terminated as stop:  # SIGTERM or SIGHUP
        if _says_where_it_stopped():
            _tell(f"{stop.announced}; {_where_it_stopped(args)}")
        return stop.status
    except Exception as err:  # noqa: BLE001 - any other error once a fit has begun
        if args.command != "fit" or not _FIT_PROGRESS["checked"]:
            raise
        # its traceback, for the model's own code, then what the folder holds (tester CR:
        # a model's RuntimeError at step 40 gave 116 lines and nothing of the checkpoint)
        change, why = _without_torch_compile(err)
        if not change:  # torch.compile's own: some 120 lines of its internals (tester EH)
            traceback.print_exc()
        _tell(f"{_error()}: {_one_line(err)}{why}; {_where_it_stopped_after_checks(args, change)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
