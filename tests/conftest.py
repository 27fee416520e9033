"""Shared fixtures: every test starts from a seeded RNG and an empty parameter store;
``one_thread`` runs a module single-threaded.

The suite runs in two pytest-xdist workers (``-n 2`` in pyproject.toml), one per core;
each worker then keeps torch to one thread, since two workers of two threads each on two
cores spend their time handing work back and forth.
"""

import os
from collections import Counter
from pathlib import Path

import pyro
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    # and so do the processes the tests start (tutorial kernels, the CLI in a subprocess)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"


@pytest.fixture(autouse=True)
def _seeded():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for modules of tiny tensors: with two threads on a busy 2-core
    machine the hand-offs cost more than the work (3-10x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_SLOW_FOLDERS = ("tutorials", "benchmarks")

# Integration tests of 5-20 s each (2 workers, 2 cores) whose paths other default tests also
# cover more cheaply; they run in `pytest -m slow` (and so in CI), which keeps the default
# run under 5 minutes on a loaded 2-core machine. Node ids, with what covers them by default.
_SLOW_TESTS = {
    # all three signals' stop-and-resume runs (7 s each): the stop inside a checkpoint write
    # (KeyboardInterrupt and SIGTERM's Terminated), the terminal-closing test and
    # test_a_run_killed_before_its_first_checkpoint_restarts_on_resume stay
    *(
        "tests/pyro_vae/test_cli.py::test_a_stopped_fit_says_where_it_stands_and_resumes"
        f"[{variant}]"
        for variant in ("SIGINT-130-interrupted", "SIGTERM-143-terminated", "SIGHUP-129-hung up")
    ),
    # test_distributed's two-rank resume and test_distributed_announce's stopped rank stay
    "tests/pyro_vae/test_distributed.py::"
    "test_a_killed_rank_stops_the_other_and_the_folder_evaluates_and_resumes",
    # test_hmm's CAVI tests and the conformance suite stay; this one is 1,000s of SVI steps
    "tests/models/test_hmm.py::test_naive_mean_field_svi_bounds_the_likelihood_near_cavi",
    # test_a_run_killed_before_its_first_checkpoint... and the SIGINT test stay
    "tests/pyro_vae/test_cli.py::test_a_run_killed_at_any_moment_can_be_evaluated_and_resumed",
    # the run lock's unit tests in test_checkpoint stay
    "tests/pyro_vae/test_cli.py::test_two_fits_into_one_folder_one_runs_the_other_is_refused",
    # test_the_command_line_takes_the_class_as_pyro_wrote_it stays
    "tests/examples/test_pyro_style_vae.py::"
    "test_an_autoguide_from_the_command_line_is_evaluated_on_its_own_rows",
    # test_amortized_iaf's Python tests and the low-rank guide's CLI round trip stay
    "tests/pyro_vae/guides/test_amortized_iaf.py::test_the_cli_round_trip",
    # test_conditional_guide's unbiased ELBO and gradient stay; this one is 1,500 SVI steps
    "tests/pyro_vae/cavi/test_conditional_guide.py::"
    "test_svi_reaches_the_best_log_normal_q_by_quadrature_and_stays_below_the_evidence",
    # test_gmm's CAVI-against-enumeration tests stay; this one adds an SVI run
    "tests/models/test_gmm.py::test_cavi_and_svi_bounds_sit_below_the_brute_force_evidence",
    # test_data_indexing's crossed-effects tests stay; this one probes a design of 729
    # coefficients (the extra rows that keep a large least-squares design well conditioned),
    # on its data and on them shifted by 300 (each check point's own rounding allowed)
    "tests/pyro_vae/cavi/test_data_indexing.py::"
    "test_six_latents_in_one_factor_match_mean_field_written_out[unshifted]",
    "tests/pyro_vae/cavi/test_data_indexing.py::"
    "test_six_latents_in_one_factor_match_mean_field_written_out[shifted]",
    # test_draw_tracking's unit test of the same copies stays; this one is 250 looped losses
    "tests/pyro_vae/test_traces.py::"
    "test_a_guide_branching_on_a_draw_in_python_is_looped_and_estimates_its_own_elbo"
    "[copy_branching_guide]",
    # The default run stays under 5 minutes on a loaded 2-core machine (CI ran it in 4:56);
    # these run in CI's slow pass. test_ising's CAVI-against-enumeration tests stay; this
    # one adds an SVI run
    "tests/models/test_ising.py::test_svi_matches_cavi_below_the_exact_log_partition",
    # test_checkpoint's lock and atomic-write tests stay; this one is a stress run
    "tests/pyro_vae/test_checkpoint.py::test_concurrent_metrics_updates_lose_nothing",
    # test_draw_tracking's unit test stays; this one is 250 looped losses, as its copy's
    "tests/pyro_vae/test_traces.py::"
    "test_a_guide_branching_on_a_draw_in_python_is_looped_and_estimates_its_own_elbo"
    "[branching_guide]",
    # test_training_pair's global-latent autoguide tests stay; this one trains per row
    "tests/pyro_vae/test_training_pair.py::"
    "test_an_autoguide_over_local_latents_learns_each_rows_own_posterior",
    # leave-one-out K=4 and VIMCO stay on the subsampled local case and every other case
    *(
        "tests/pyro_vae/estimators/test_conformance.py::"
        f"test_mean_gradient_matches_the_analytic_elbo_gradient[{name}-local-weighted-score-guide]"
        for name in ("score-leave-one-out-K4", "vimco")
    ),
    # plain iwae and every one-sample estimator keep the unequal sibling plates in the
    # default run; these multi-sample estimators keep the other cases there
    *(
        "tests/pyro_vae/estimators/test_conformance.py::"
        f"test_mean_gradient_matches_the_analytic_elbo_gradient[{name}-sibling-plates-unequal-"
        f"{guide}]"
        for name, guide in (
            ("iwae-dreg", "reparam"),
            ("iwae-dreg", "score-guide"),
            ("iwae-stl", "reparam"),
            ("score-leave-one-out-K4", "reparam"),
            ("vimco", "reparam"),
            ("vimco", "score-guide"),
        )
    ),
    # test_package's import check stays; this one imports ArviZ in a subprocess
    "tests/pyro_vae/diagnostics/test_arviz_compat.py::test_arviz_loads_without_its_refactor_notice",
    # test_amortization's gap tests stay; this one fits local guides at two K
    "tests/pyro_vae/test_amortization.py::"
    "test_the_iwae_rise_from_half_k_is_its_expected_rise_and_noted_where_it_matters",
    # test_cli's resumed test block set aside stays; these are two more resumes
    "tests/pyro_vae/test_cli.py::"
    "test_a_resume_that_trains_on_sets_earlier_analyses_aside_marked_with_their_epoch",
    "tests/pyro_vae/test_cli.py::"
    "test_a_lost_metrics_json_gets_the_checkpoint_s_history_from_analyses_and_a_resume",
    # test_score_function's unbiasedness of each control variate stays; this one is the
    # neural control variate's wide-signal case
    "tests/pyro_vae/estimators/test_score_function.py::"
    "test_the_neural_control_variate_is_unbiased_by_default_where_its_signal_varies_widely",
    # test_compiled's replay tests stay; this one collects a dead callable's recording
    "tests/pyro_vae/estimators/test_compiled.py::"
    "test_a_new_callable_never_replays_a_dead_ones_recording",
    # the score variant stays; iwae's adds Dynamo's compile of the same decoder
    "tests/pyro_vae/test_module_hooks.py::"
    "test_a_compiled_network_runs_under_the_checks_as_the_plain_one_does[iwae]",
    # the seed test of test_cli_evaluate stays; this one fits and evaluates five times
    "tests/pyro_vae/test_cli_evaluate.py::test_a_kept_log_likelihood_keeps_the_seed_it_was_drawn_with",
    # the aot_eager backend's run of the same test and test_train's compiled resumes stay;
    # inductor compiles C++ (19 s)
    "tests/pyro_vae/estimators/test_compiled.py::"
    "test_a_backend_compiles_the_recording_and_trains_the_same[inductor]",
    "tests/pyro_vae/test_precision.py::test_a_backend_compiles_the_recorded_bf16_step[inductor]",
    # test_score_function_is_noisier_than_pathwise_here stays; this one takes 4,000 draws
    # (its variance held to 10%, 4.5 standard errors)
    "tests/pyro_vae/diagnostics/test_gradient_variance.py::"
    "test_pathwise_gradient_variance_matches_the_closed_form",
    # test_gmm's Bartlett and Wishart tests and the conformance suite's enum cases stay
    "tests/models/test_gmm.py::test_svi_recovers_cavis_mixture_on_separated_clusters",
    # test_the_plated_mixtures_guide_scores_its_bound stays
    "tests/pyro_vae/cavi/test_mixture_components.py::"
    "test_a_mixture_of_bernoullis_in_plates_is_a_bound_on_the_enumerated_evidence",
    # its one-latent case [1] stays
    "tests/pyro_vae/cavi/test_factor_support.py::"
    "test_a_fit_on_the_support_is_the_written_out_cavi_and_the_whole_basis_fit[2]",
    # test_regression's exact-posterior guide and test_auto's regression against the
    # hand-written class stay; this one is 3,000 SVI steps
    "tests/models/test_regression.py::test_mean_field_svi_is_a_lower_bound_near_cavi",
    # test_cli's conv VAE (fit, evaluate, sample, resume) and its user-model-file test stay
    "tests/examples/test_conv_vae.py::test_the_command_line_trains_and_evaluates_it_from_its_file",
    # test_svi_matches_cavi_below_the_exact_log_partition stays
    "tests/models/test_ising.py::test_svi_is_exact_without_couplings",
    # REINFORCE scores every guide site alike, reparameterizable or not (no branch on
    # has_rsample): the leave-one-out baseline at K = 4 (1,000 runs each) stays held on
    # the reparameterizable guides of the same cases
    *(
        "tests/pyro_vae/estimators/test_conformance.py::"
        f"test_mean_gradient_matches_the_analytic_elbo_gradient[score-leave-one-out-K4-{case}"
        "-score-guide]"
        for case in (
            "beta-bernoulli",
            "local-subsampled",
            "sibling-plates-unequal",
        )
    ),
    # test_provenance's unit tests of the comparison stay; each layout starts two fresh
    # interpreters (7 s)
    *(
        f"tests/pyro_vae/test_provenance.py::test_the_module_an_import_loads_is_the_one_compared"
        f"[{layout}]"
        for layout in (
            "working-folder",
            "file-adds-a-folder",
            "file-adds-working-folder",
            "shadowed-stdlib",
        )
    ),
    # evaluate's variant stays (the same check of the folder before any work)
    "tests/pyro_vae/test_cli.py::"
    "test_a_run_folder_that_cannot_be_written_is_refused_before_any_work[command1]",
    # test_compiled's refusals of a step it cannot record stay; this one fits a spline flow
    "tests/pyro_vae/test_cli.py::"
    "test_a_step_that_cannot_be_recorded_is_refused_before_anything_is_written",
    # two ranks' resume (test_two_ranks_take_the_single_process_steps_and_resume_exactly),
    # which ends with both ranks leaving the group, and the settings refusal stay; a torchrun
    # launch of two ranks takes 4-6 s
    *(
        f"tests/pyro_vae/test_distributed.py::{name}"
        for name in (
            "test_a_python_fit_on_two_ranks_shows_rank_0_s_progress_alone",
            "test_every_rank_leaves_the_group_once_rank_0_is_done",
            # test_a_rank_gets_sigterm_when_its_agent_is_killed stays
            "test_the_launcher_waits_for_the_ranks_of_a_killed_agent",
        )
    ),
    # test_a_resume_that_raised_patience_stopped_before_its_first_epoch_resumes stays; this
    # one fits 10 and 8 epochs beside the resume
    "tests/pyro_vae/test_cli.py::"
    "test_an_early_stopped_run_given_more_epochs_is_refused_until_patience_is_raised",
    # test_ranks_given_different_settings_are_refused_before_anything_is_written stays (the
    # same comparison of the ranks' settings before anything is written)
    "tests/pyro_vae/test_distributed.py::"
    "test_ranks_told_to_resume_and_to_start_a_run_are_refused_at_once",
    # the sd 10⁻⁴ walk that reaches mean field's optimum stays
    "tests/pyro_vae/cavi/test_newton_means.py::"
    "test_a_random_walk_too_tight_for_float64_is_not_reported_converged",
    # c = 1 stays (the same estimator against the same pathwise gradient)
    "tests/pyro_vae/estimators/test_vimco.py::test_mean_gradient_matches_the_pathwise_iwae_gradient[3.0]",
    # test_checkpoint's removal of a killed writer's staging folder stays (the same
    # staging); this one kills a report's process
    "tests/pyro_vae/diagnostics/test_report.py::"
    "test_a_report_removes_the_staging_folder_a_killed_report_left",
    # test_an_inconsistent_environment_is_refused_naming_the_variable stays (the same
    # check); this one runs the command in a fresh interpreter
    "tests/pyro_vae/test_torchrun_environment.py::"
    "test_the_command_refuses_a_bad_environment_in_one_line_before_any_work",
    # CI ran the default tests in 5:19 after the moves above (4:11-4:47 here): ten more of
    # 2-7 s each, with what covers them by default.
    # test_distributed's two-rank resume stays (the same group, on the training data)
    "tests/pyro_vae/test_distributed_evaluation.py::"
    "test_two_ranks_share_the_test_set_and_report_the_single_process_means",
    # the stop inside a checkpoint write (KeyboardInterrupt, SIGTERM) stays: the same handler
    "tests/pyro_vae/test_cli.py::test_a_fit_whose_terminal_closes_stops_keeping_its_checkpoint",
    # test_settings_that_may_differ_between_ranks_are_let_through stays (the same comparison)
    "tests/pyro_vae/test_distributed.py::"
    "test_ranks_given_different_settings_are_refused_before_anything_is_written",
    # the conformance suite's dreg cases stay (its mean gradient against the analytic one)
    "tests/pyro_vae/estimators/test_conformance.py::"
    "test_dreg_mean_gradient_equals_iwaes_for_model_and_guide_parameters",
    # test_training_pair's other validation tests stay; this one trains 100 epochs
    "tests/pyro_vae/test_training_pair.py::"
    "test_the_best_whole_data_epoch_is_chosen_on_common_random_numbers",
    # test_resume_extends_a_run stays (the same resume of a finished run)
    "tests/pyro_vae/test_cli.py::test_resuming_a_finished_run_again_keeps_no_identical_copies",
    # test_a_lost_metrics_json_gets_the_checkpoint_s_history... stays (the same rebuild)
    "tests/pyro_vae/test_cli.py::"
    "test_a_rebuilt_metrics_json_has_the_processes_by_epoch_of_the_undamaged_one",
    # its fit variant [argv0] stays (the same exit of a rank)
    "tests/pyro_vae/test___main__.py::test_a_rank_leaves_with_the_commands_status_and_no_traceback"
    "[argv1-2-the following arguments are required: RUN]",
    # test_iwae's other subsampling tests stay; this one is Pyro's own idiom end to end
    "tests/pyro_vae/estimators/test_iwae.py::"
    "test_pyros_subsample_size_idiom_gives_the_per_datapoint_bound",
    # test_conditional_guide's quadrature test of elbo_estimate stays (the same integral)
    "tests/pyro_vae/cavi/test_conditional_guide.py::"
    "test_the_elbo_and_its_gradient_are_unbiased_against_quadrature",
    # test_distributed's announcement tests (a stopping rank's text, announced and gone
    # ranks named together) stay; this one launches two ranks
    "tests/pyro_vae/test_distributed_announce.py::"
    "test_a_rank_that_stops_on_an_error_is_named_while_its_process_lives",
    # the multi-particle estimators (1-3 s a case) keep the subsampled and sibling-plate
    # cases, which scale by the plate (and dreg keeps its equality with iwae), and every
    # case's score-guide variant; the reparameterized global-latent and poutine.scale cases
    # stay with iwae, trace, tracegraph and score at every setting
    *(
        "tests/pyro_vae/estimators/test_conformance.py::"
        f"test_mean_gradient_matches_the_analytic_elbo_gradient[{name}-{case}-reparam]"
        for name in ("score-leave-one-out-K4", "iwae-dreg", "vimco", "iwae-stl")
        for case in ("beta-bernoulli", "local-weighted")
    ),
    # test_train's test_the_objective_records_free_bits_groups and the resume tests of
    # other estimator options stay; this one fits twice from the command line
    "tests/pyro_vae/test_cli.py::test_free_bits_groups_go_into_config_json_and_survive_resume",
    # test_tables' rows-not-images printout (a table) stays; this one fits an .npy of vectors
    "tests/pyro_vae/test_cli.py::test_vectors_are_called_rows_not_images",
    # Four more of 6-16 s each on a loaded machine, with what covers them by default (the
    # default run took 4:33 in CI and 5:36 once here, against a 5-minute budget):
    # test_evaluate's exact test of the chunk and half merging (_iwae_rows, on known
    # weights) and its K-against-exact tests stay; this one draws K = 64 twice over 150 rows
    "tests/pyro_vae/test_evaluate.py::test_chunking_does_not_change_the_estimand",
    # the detection tests of test_plate_escapes and the conformance suite's leave-one-out
    # REINFORCE cases stay; this one takes 500 looped REINFORCE gradients
    "tests/pyro_vae/estimators/test_plate_escapes.py::"
    "test_score_scores_such_a_draw_by_the_whole_batch_and_is_unbiased",
    # test_auto's probabilistic PCA in plates (mean-field VB at its fixed point) stays;
    # this one writes out 4,000 sweeps of factor analysis with a latent mean
    "tests/pyro_vae/cavi/test_auto.py::"
    "test_factor_analysis_with_a_vague_latent_mean_reaches_the_optimum_not_the_saddle",
}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` the end-to-end runs of the tutorials and the benchmark scripts, and the
    long integration tests of :data:`_SLOW_TESTS`: the default run leaves them out
    (pyproject.toml's addopts), ``pytest -m slow`` runs them."""
    _check_slow_ids(items)
    tests = Path(__file__).parent
    for item in items:
        parts = Path(item.fspath).relative_to(tests).parts
        if (parts and parts[0] in _SLOW_FOLDERS) or item.nodeid in _SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def _check_slow_ids(items) -> None:
    """Refuse a collection in which a parametrized test of :data:`_SLOW_TESTS` was collected
    whole (more than one of its ids: not one id asked for on the command line) but not under
    an id listed (an id renamed would silently move the test back into the default run).
    A listed test not collected at all (another file or test asked for) is left to
    tests/test_slow_list.py, which checks that each listed function exists."""
    collected = {item.nodeid for item in items}
    ids_of = Counter(node_id.split("[")[0] for node_id in collected)
    stale = sorted(n for n in _SLOW_TESTS if ids_of[n.split("[")[0]] > 1 and n not in collected)
    if stale:
        raise pytest.UsageError(
            f"tests/conftest.py: _SLOW_TESTS lists {stale}, which no collected test has as its "
            "id; list the test by the id pytest gives it (pytest --collect-only -q)"
        )
