"""The commands that study a fitted run beyond its test metrics: ``sample`` (images from
the prior), ``grad-variance`` (estimators' gradient variance at the fitted weights),
``amortization-gap`` (Cremer et al. 2018), ``diagnose`` (ArviZ, PSIS k̂) and ``compare``
(runs side by side).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from pathlib import Path
from typing import Any

from pyro_vae import estimators
from pyro_vae.checkpoint import CONFIG, RunFolder
from pyro_vae.checks import check_count
from pyro_vae.cli_report import (
    changed_block,
    print_changed_note,
    record_analysis,
    rows_not_images,
    writable_run,
)
from pyro_vae.datasets import names_a_table, row_unit
from pyro_vae.devices import to_device
from pyro_vae.diagnostics.gradient_variance import gradient_variance
from pyro_vae.experiment import Experiment, label_samples, load, model_classes
from pyro_vae.minibatch import Minibatched
from pyro_vae.model_protocol import uses_labels
from pyro_vae.plates import DataPlateError
from pyro_vae.plots import check_grid_size, plot_gradient_variance, plot_samples
from pyro_vae.predictive import prior_mean_images
from pyro_vae.prior_model import RECORD as IMAGE_RECORD
from pyro_vae.prior_model import load_for_prior
from pyro_vae.training_pair import per_datapoint_plate


def _check_png_out(out: Path, own: str) -> None:
    """Refuse, before any work, an ``--out`` that is not a .png file path, or that names an
    existing file of a run folder (one holding config.json) other than this command's own
    figures there (``own``, a glob: written again, as its default is): the run's config,
    weights, metrics and fit figures are the run's (tester H: ``grad-variance --out
    RUN/config.json`` wrote its PNG over the config, and the run was lost).

    Raises:
        ValueError: naming ``--out``, the path and what was expected."""
    if out.is_dir() or out.suffix.lower() != ".png":
        raise ValueError(f"--out: {out} is not a .png file path; expected where to write the PNG")
    where = out.resolve()  # RUN/new/../elbo.png is RUN/elbo.png (tester J)
    in_run = (where.parent / CONFIG).is_file()
    if not in_run or fnmatch.fnmatch(where.name, own):
        return
    written = any(fnmatch.fnmatch(where.name, name) for name in RUN_FOLDER_FIGURES)
    if where.exists() or written:  # one another command writes there later (tester EF)
        later = "; another command (fit, sample, diagnose, grad-variance) writes it there"
        raise ValueError(
            f"--out: {out} is {where}, a{' figure' if written else ''} file of the run folder "
            f"{where.parent}, which this command does not write ({own} are its own there)"
            f"{later if written else ''}; expected a new path, or one of those"
        )


#: The figures the commands write into a run folder under fixed names (fit's, diagnose's,
#: grad-variance's, sample's): an ``--out`` of another command there, written before them,
#: would be replaced by them.
RUN_FOLDER_FIGURES = (
    "elbo.png", "latent.png", "reconstructions.png", "samples.png", "traversal.png",
    "interpolation.png", "conditional_samples.png", "khat.png", "khat_worst.png",
    "posterior.png", "ppc.png", "gradient_variance*.png", "sample_seed*_*.png",
)  # fmt: skip


def sample_command(args: argparse.Namespace) -> int:
    """``pyro-vae sample``: ``--num`` images E[x | z], z ~ p(z), in all, as one grid; a
    model that uses labels draws E[x | z, y] with image i of class i mod C (C classes,
    cycled). Refuses a model with no prior and data whose rows are not images."""
    import pyro
    import torch

    # its own name: samples.png is the fit's figure, which a sample run must not replace
    check_grid_size(args.num)
    out = args.out or RunFolder(args.run).file(f"sample_seed{args.seed}_{args.num}.png")
    _check_png_out(out, "sample_seed*_*.png")
    exp = _load_for_sampling(RunFolder(args.run), args)
    if not exp.generative:
        raise ValueError(
            f"run: {exp.config.model.spec} has no prior to sample from (it is not a generative "
            "model)"
        )
    if rows_not_images(exp.data):
        raise ValueError(
            f"run: its data {exp.config.data.name!r} are "
            # by the run's own --data (tester CK: a table's, read back from the run's
            # record without its columns, was called an array)
            f"{'a table' if names_a_table(exp.config.data.name) else 'an [N, D] array'} "
            "whose rows "
            f"of {exp.data.x_dim} values are not images to draw"
        )
    pyro.set_rng_seed(args.seed)
    if uses_labels(exp.model) is not None:  # --num in all (ten for --num 8 had been drawn)
        classes = model_classes(exp)
        with torch.no_grad():
            images = label_samples(exp, args.num).cpu()
        title = f"conditional samples E[x | z, y], z ~ p(z), image i of class i mod {classes}"
        path = plot_samples(images, exp.data.image_shape, exp.data.pixel_max, out, title)
        print(f"wrote {args.num} conditional samples, classes cycled (of {classes}), to {path}")
        return 0
    with torch.no_grad():
        like = to_device(exp.data.test_x[: args.num], exp.device)
        images = prior_mean_images(exp.model, like, args.num).cpu()
    path = plot_samples(images, exp.data.image_shape, exp.data.pixel_max, out)
    print(f"wrote {args.num} samples to {path}")
    return 0


def _load_for_sampling(run: RunFolder, args: argparse.Namespace) -> Experiment:
    """The run's model with its kept weights, rebuilt from the folder alone where fit
    recorded its data's image facts (:func:`pyro_vae.prior_model.load_for_prior`), else
    with the data loaded; the data's refusal then says why they are needed."""
    device = args.device or "auto"
    exp = load_for_prior(run, device, args.allow_changed_code)
    if exp is not None:
        return exp
    try:
        return load(run, device, args.allow_changed_data, args.allow_changed_code)
    except (FileNotFoundError, ValueError) as err:
        if not (isinstance(err, FileNotFoundError) or str(err).startswith("data:")):
            raise
        name = run.read_config().get("data", {}).get("name")
        raise type(err)(
            f"data: {name!r} could not be read, and `pyro-vae sample` needs it: {run.path}'s "
            f"metrics.json records no image facts (its '{IMAGE_RECORD}': the row width, image "
            "shape, pixel scale and classes, which fit writes when it ends), so the model is "
            f"built from the data; restore the data file, or sample a finished run ({err})"
        ) from err


def _refuse_label_model(exp: Experiment, command: str) -> None:
    """A run of a model that uses labels, refused by a command that calls it on images alone."""
    if uses_labels(exp.model) is not None:
        raise ValueError(
            f"run: {exp.config.model.spec} conditions on labels (uses_labels), and "
            f"`pyro-vae {command}` calls the model on images alone; expected a model without "
            "labels"
        )


def _training_batch(exp: Experiment, batch_size: int, seed: int):
    """(model, guide, x, keyword arguments): the first training batch of ``batch_size`` rows
    as fit's steps see it, the pair wrapped as fit wraps it (``num_data=N`` only to
    functions that take it, the per-datapoint plate given N and the batch's rows: tester
    CZ, a model taking ``x`` alone failed here on ``num_data``).

    Raises:
        pyro_vae.plates.DataPlateError: a batch smaller than the training set of a model
            without a per-datapoint plate (nothing scales it by N/B)."""
    rows, (x,) = next(iter(exp.data.indexed_batches(batch_size, 0, seed)))
    x, rows = to_device(x, exp.device), rows.to(exp.device)
    num_data = exp.data.train_x.shape[0]
    chosen = exp.config.training.data_plate
    plate, _, plates = per_datapoint_plate(exp.model, (x,), chosen, None, num_data)
    if plate is None and x.shape[0] < num_data:
        raise DataPlateError(
            f"--batch-size: {batch_size} of {num_data} rows needs the model's per-datapoint "
            f"plate to scale the batch by N/B, and the model has none ({plates}); expected "
            f"--batch-size {num_data} or more"
        )
    model, guide = (Minibatched(fn, plate, num_data) for fn in (exp.model, exp.guide))
    return model, guide, x, {"subsample": rows} if plate is not None else {}


def grad_variance_command(args: argparse.Namespace) -> int:
    """``pyro-vae grad-variance RUN``: each estimator's gradient variance and SNR per
    parameter group, over ``--num-draws`` draws on one training batch at the run's
    weights, printed, plotted to ``--out`` and written to metrics.json. Returns 0.

    Raises:
        ValueError: a bad ``--out``, estimator name or option, a model that uses labels,
            before any work; none of the estimators could run, after."""
    import pyro

    # "trace, iwae" as "trace,iwae": a space after a comma is no part of a name
    given = [s.strip() for s in args.estimators.split(",") if s.strip()]
    if not given:  # tester CK: "none of them could run", of none, after loading the run
        raise ValueError(
            f"--estimators: {args.estimators!r} names no estimator; expected names separated "
            f"by commas, e.g. trace,score (of {', '.join(estimators.names())})"
        )
    twice = sorted({s for s in given if given.count(s) > 1})
    if twice:  # tester CO: two identical rows, unsaid
        raise ValueError(f"--estimators: {', '.join(twice)} given twice; expected each once")
    specs = [estimators.parse(s) for s in given]
    run = writable_run(args.run)
    _check_png_out(args.out or run.file("gradient_variance.png"), "gradient_variance*.png")
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    _refuse_label_model(exp, "grad-variance")
    key, extra, what = changed_block(exp, "gradient_variance")  # on changed inputs, its own
    out = args.out or run.file(f"{key}.png")
    for name, options in specs:
        estimators.get(name, **options)  # reject bad names and options before any work
    model, guide, x, kwargs = _training_batch(exp, args.batch_size, args.seed)
    num_data = exp.data.train_x.shape[0]
    print(
        f"{args.num_draws} gradient draws at the weights of {run.path}, one batch of "
        f"{x.shape[0]} of {num_data} training images"
    )
    width = max(48, *(len(spec) for spec in given))  # (tester FE: a longer spec misaligned)
    print(f"{'estimator':<{width}} {'group':<8} {'variance':>11} {'SNR':>9} {'ms/draw':>8}")
    rows = []
    for (name, options), spec in zip(specs, given, strict=True):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        try:
            stats = gradient_variance(
                model,
                guide,
                estimators.get(name, **options),
                x,
                **kwargs,
                num_draws=args.num_draws,
                progress=True,
            )
        except (ValueError, NotImplementedError) as err:
            print(f"{spec:<{width}} cannot run here: {err}")
            continue
        for group, st in stats.items():
            rows.append(
                {
                    "estimator": spec,
                    "group": group,
                    "variance": st.variance,
                    "snr": st.snr,
                    "seconds_per_draw": st.seconds_per_draw,
                }
            )
            print(
                f"{spec:<{width}} {group:<8} {st.variance:11.4g} {st.snr:9.4g} "
                f"{1000 * st.seconds_per_draw:8.2f}"
            )
    if not rows:
        raise ValueError("estimators: none of them could run on this model and guide")
    path = plot_gradient_variance(rows, out, num_draws=args.num_draws)
    settings = {"seed": args.seed, "batch_size": x.shape[0], "num_draws": args.num_draws}
    record_analysis(run, key, {"rows": rows, **settings, **extra}, exp.weights_epoch)
    print(f"wrote {path}")
    if what is not None:
        figure = " and figure" if args.out is None else ""
        print_changed_note(run, key, what, f"its gradient_variance block{figure}")
    return 0


def amortization_gap_command(args: argparse.Namespace) -> int:
    """``pyro-vae amortization-gap RUN``: log p(x) (IWAE), the local guides' and the
    encoder's ELBO on the first ``--points`` test images, and the approximation and
    amortization gaps between them (Cremer et al. 2018), in nats per image, printed and
    written to metrics.json (earlier results kept). Returns 0.

    Raises:
        ValueError: a model that uses labels, has no latent variables, or a guide that is
            already per-datapoint, or ``--points`` below 1, before any work."""
    import pyro

    from pyro_vae.amortization import amortization_gap
    from pyro_vae.guides import AmortizedFlow, AmortizedLowRankNormal

    run = writable_run(args.run)
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    _refuse_label_model(exp, "amortization-gap")
    if not exp.generative:
        raise ValueError(f"run: {exp.config.model.spec} has no latent variables to fit guides to")
    _refuse_local_guide(
        exp,
        "the amortization gap compares an amortized encoder with "
        "per-datapoint guides, and this guide is already per-datapoint",
    )
    rows = row_unit(exp.data.image_shape)  # "images", or "rows" of a table or vectors
    if args.points < 1:
        raise ValueError(f"points: {args.points} is not a positive number of test {rows}")
    pyro.set_rng_seed(args.seed)
    x = to_device(exp.data.test_x[: args.points], exp.device)
    result = amortization_gap(
        exp.model,
        exp.guide,
        x,
        steps=args.steps,
        lr=args.lr,
        iwae_samples=args.iwae_samples,
        family=args.family,
        progress=True,
    )
    key, extra, what = changed_block(exp, "amortization_gap")  # on changed inputs, its own
    # the settings that change the numbers (tester EO: neither --lr nor --seed was recorded)
    settings = {"seed": args.seed, "lr": args.lr}
    record_analysis(run, key, {**result, **settings, **extra}, exp.weights_epoch)
    if result["local_start"] == "moments":  # a flow's or a low-rank encoder's q (tester DV)
        own = {AmortizedFlow: "flow", AmortizedLowRankNormal: "lowrank"}
        own = next((f for t, f in own.items() if isinstance(exp.guide, t)), None)
        print(
            f"note: the encoder's q is not a diagonal Normal and the per-{rows[:-1]} guides "
            f"are (--family {args.family}), so the gaps compare two families"
            + (f"; --family {own} compares like with like" if own else "")
        )
    if result["log_likelihood_proposal"] == "encoder":
        print("note: log p(x) is the encoder's IWAE, the better proposal here")
    _print_gaps(result, args.iwae_samples, rows, "standardization" in exp.data.info)
    if "note" in result:
        print(f"note: {result['note']}")
    if what is not None:
        print_changed_note(run, key, what, "its amortization_gap block")
    return 0


def _print_gaps(result: dict, iwae_samples: int, rows: str, standardized: bool) -> None:
    """amortization-gap's table of ``result`` (nats per row of ``rows``, of the
    standardized columns where ``standardized``: a table's normal likelihood)."""
    units = " of the standardized columns" if standardized else ""
    print(f"on {result['num_points']} test {rows} (nats per {rows[:-1]}{units}):")
    iwae = f"log p(x), IWAE K={iwae_samples}"  # (tester FC: K's digits moved the column)
    print(f"  {iwae:<30}{result['log_likelihood']:10.3f}")
    print(f"  ELBO, local guides            {result['elbo_local']:10.3f}")
    print(f"  ELBO, amortized encoder       {result['elbo_amortized']:10.3f}")
    print(f"  approximation gap             {result['approximation_gap']:10.3f}")
    print(f"  amortization gap              {result['amortization_gap']:10.3f}")
    if result["amortization_gap_se"] is not None:
        print(
            f"  (standard errors over the {rows}: approximation gap "
            f"{result['approximation_gap_se']:.3f}, amortization gap "
            f"{result['amortization_gap_se']:.3f})"
        )
    rise, rise_se = result["log_likelihood_rise"], result["log_likelihood_rise_se"]
    half = iwae_samples // 2
    print(
        f"  (log p(x) rose {rise:.3f}{'' if rise_se is None else f' ± {rise_se:.3f}'} from "
        f"K={half} to K={2 * half}: its remaining bias is at least about that)"
    )
    if standardized:  # (tester FC: unlabelled, 4 nats from fit's figure in the file's units)
        print(
            "note: log p(x) and the ELBOs are of the standardized columns (fit and evaluate "
            "also give them in the file's units, less sum_j log std_j); the gaps, "
            "differences of them, are the same in either"
        )


def compare_command(args: argparse.Namespace) -> int:
    """``pyro-vae compare RUN...``: one table of the runs' test metrics (printed, and
    comparison.csv) and one figure of their validation curves (comparison.png) in
    ``--out``. Returns 0."""
    from pyro_vae.compare import compare_runs, format_table, write_comparison

    comparison = compare_runs(args.runs)
    csv, png = write_comparison(comparison, args.out)
    legend = (
        "nats per datapoint; evaluated_on: the split the test_elbo, log_px and kl are of; "
        "K: draws of the log p(x) estimate; s_per_epoch: median seconds per epoch"
    )
    if comparison.table["labels"].notna().any():  # a label model's run among them
        legend += "; labels: the training labels observed; test_accuracy: share correct"
    print(legend)
    print(format_table(comparison))
    for note in comparison.notes:
        print(f"note: {note}")
    print(f"wrote {csv} and {png}")
    return 0


def diagnose_command(args: argparse.Namespace) -> int:
    """``pyro-vae diagnose RUN``: PSIS k̂ per test image (or, for a small discrete guide,
    exact divergences), InferenceData (diagnostics.nc), summaries and plots in the run
    folder, the numbers also in metrics.json. Returns 0.

    Raises:
        ValueError: a model that uses labels, has no latent variables, a per-datapoint
            guide, a negative ``--points``, or ``--samples`` whose importance ratios
            would take more than half the machine's memory, before any work."""
    import pyro

    from pyro_vae.diagnostics import write_report
    from pyro_vae.diagnostics.psis import check_ratio_memory
    from pyro_vae.diagnostics.report import check_idata_memory

    run = writable_run(args.run)
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    _refuse_label_model(exp, "diagnose")
    if not exp.generative:
        raise ValueError(f"run: {exp.config.model.spec} has no latent variables to diagnose")
    rows = row_unit(exp.data.image_shape)  # "images", or "rows" of a table or vectors
    _refuse_local_guide(exp, f"k̂ per test {rows[:-1]} needs a posterior for test {rows}")
    if args.points < 0:
        raise ValueError(f"points: {args.points} is negative; expected a number of test {rows}")
    check_count("idata_points", args.idata_points, 1, "; expected a number of test rows")
    # k̂'s rows and diagnostics.nc's, each the flag's own (tester DX: --idata-points 20
    # beside --points 5 wrote 5); 0 points: all (gathered, when memory-mapped)
    khat_points = args.points or len(exp.data.test_x)
    x = exp.data.test_x[: max(khat_points, args.idata_points)]
    check_ratio_memory(args.samples, min(khat_points, len(x)), "--samples")
    values = math.prod(x.shape[1:])  # diagnostics.nc's draws, in the flag's name too
    check_idata_memory(
        args.idata_samples, min(args.idata_points, len(x)), values, "--idata-samples"
    )
    x = to_device(x, exp.device)
    # on changed data or code, its own block and folder: the run's report files stay
    key, extra, what = changed_block(exp, "diagnostics")
    out = run.path if what is None else run.path / key
    pyro.set_rng_seed(args.seed)
    result = write_report(
        exp.model,
        exp.guide,
        x,
        out,
        num_samples=args.samples,
        idata_points=args.idata_points,
        idata_samples=args.idata_samples,
        num_worst=args.worst,
        image_shape=exp.data.image_shape,
        pixel_max=exp.data.pixel_max,
        khat_points=khat_points,
        standardization=exp.data.info.get("standardization"),
    )
    block = {k: v for k, v in result.items() if k != "files"}
    # (tester EO: a block of epoch 40 sat unmarked beside the test block of epoch 45, and
    # --seed, which changes every k̂, was not recorded)
    record_analysis(run, key, {**block, "seed": args.seed, **extra}, exp.weights_epoch)
    _print_khat(result, rows)
    print("wrote " + ", ".join(result["files"]))
    _note_fewer_rows(args, len(exp.data.test_x), rows)
    if "standardization" in exp.data.info:
        print(
            "note: diagnostics.nc's x (observed and predicted), its log_likelihood and "
            "ppc.png are of the table's standardized columns, (value - mean) / std, as the "
            "model saw them (k̂ is the same in the file's units); the observed_data "
            "attributes x_mean and x_std give those units back"
        )
    if what is not None:
        print_changed_note(run, key, what, "its diagnostics block and report files")
    for name, why in result.get("skipped", {}).items():
        print(f"skipped {name}: {why}")
    return 0


def _note_fewer_rows(args: argparse.Namespace, available: int, rows: str) -> None:
    """A note for each of ``--points`` and ``--idata-points`` asked for more test rows
    than there are: all of them were used (tester FC: diagnostics.nc held 180 rows of the
    500 asked for, with no word)."""
    given = getattr(args, "given_flags", set())  # a default left alone is no request
    for flag, asked, what in [
        ("--points", args.points, "k̂"),
        ("--idata-points", args.idata_points, "diagnostics.nc"),
    ]:
        if asked > available and flag in given:  # (tester FH: noted on every small set)
            print(
                f"note: {flag} {asked} is more than the {available} test {rows}; {what} "
                f"covers all {available}"
            )


def _print_khat(result: dict[str, Any], rows: str = "images") -> None:
    """k̂'s summary lines, ``rows`` naming the test points (:func:`row_unit`)."""
    if "num_states" in result:  # a discrete guide small enough to enumerate
        print(
            f"q(z | x) has {result['num_states']} states per test {rows[:-1]}, enumerated on "
            f"{result['num_points']} {rows}: k̂ does not apply (no Pareto tail); exactly:"
        )
        print(f"  median KL(q ‖ p(z | x))     {result['kl_median']:10.4f} nats")
        print(
            f"  median, max χ²(p ‖ q)       {result['chi2_median']:10.4g}, {result['chi2_max']:.4g}"
        )
        return
    print(f"PSIS k̂ on {result['num_points']} test {rows}, {result['num_samples']} draws each:")
    print(f"  share above 0.5             {100 * result['share_above_0.5']:6.1f}%")
    print(f"  share above 0.7             {100 * result['share_above_0.7']:6.1f}%")
    threshold = result.get("khat_threshold")
    # under 100 draws the bar for them (Vehtari et al. 2024) is below both fixed lines;
    # from 100 to 2155 it lies between them
    if threshold is not None and threshold < 0.5:
        print(
            f"  share above {threshold:.2f}            "
            f"{100 * result['share_above_threshold']:6.1f}%   (the threshold for "
            f"{result['num_samples']} draws: min(1 - 1/log10 S, 0.7))"
        )
    print(f"  median k̂, max k̂             {result['khat_median']:6.2f}, {result['khat_max']:.2f}")
    if result.get("khat_not_applicable"):
        print(
            f"  k̂ not applicable            {result['khat_not_applicable']} {rows} (few "
            "distinct ratios: a discrete q)"
        )


def _refuse_local_guide(exp, why: str) -> None:
    if exp.local_guide:
        raise ValueError(
            f"run: its guide has free per-datapoint parameters (one q per training image, "
            f"none for others); {why}. From Python, pyro_vae.psis_khat_per_datapoint and "
            "to_inference_data take the training images the guide was fitted to"
        )
