"""The end-of-fit test-set evaluation shared over two gloo ranks on loopback: each scores
its part of the rows, and the reduced means are the single-process ones when the noise is
aligned (:func:`tests.pyro_vae.distributed_worker.aligned_noise`).

Run as ``python -m tests.pyro_vae.test_distributed_evaluation OUT`` with torchrun's
variables set, this module is one rank: it writes its metrics to ``OUT/rank{RANK}.json``.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from pyro_vae.distributed import session
from pyro_vae.experiment import evaluate_test_set
from tests.pyro_vae.distributed_worker import FEATURES, TinyVAE, aligned_noise
from tests.pyro_vae.test_distributed import _ranks

TEST_ROWS = 12
TABLE_MSE = ("reconstruction_mse", "reconstruction_mse_original_units")


def _evaluate(rank: int, world: int, group=None) -> dict:
    """The test-set metrics of a fixed :class:`TinyVAE` on 12 rows, as rank ``rank`` of
    ``world`` with noise aligned; then the log-likelihood of one row (rank 1 has none)."""
    torch.manual_seed(0)
    vae = TinyVAE()
    x = torch.randn(TEST_ROWS, FEATURES, generator=torch.Generator().manual_seed(3))
    data = SimpleNamespace(test_x=x, train_x=x, dynamic=False, pixel_max=1.0)
    exp = SimpleNamespace(
        local_guide=None,
        device=torch.device("cpu"),
        data=data,
        generative=True,
        model=vae.model,
        guide=vae.guide,
    )
    with aligned_noise(rank, world):
        metrics = evaluate_test_set(exp, 4, None, elbo_samples=3, group=group)
    one = evaluate_test_set(exp, 2, 1, elbo_samples=1, group=group)
    # the rows as a standardized table's: both reconstruction errors, reduced together
    std = [0.5 + j for j in range(FEATURES)]
    data.info = {"standardization": {"mean": [0.0] * FEATURES, "std": std}}
    with aligned_noise(rank, world):
        table = evaluate_test_set(exp, 0, None, elbo_samples=1, group=group)
    return {
        **metrics,
        "one_row": one["log_likelihood"],
        "one_row_points": one["log_likelihood_points"],
        **{f"table_{k}": table[k] for k in TABLE_MSE},
    }


def test_two_ranks_share_the_test_set_and_report_the_single_process_means(tmp_path):
    ranks = _ranks(["-m", "tests.pyro_vae.test_distributed_evaluation", str(tmp_path)])
    expected = _evaluate(rank=0, world=1)  # meanwhile, here
    assert [p.wait(timeout=120) for p in ranks] == [0, 0]
    got = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    table = [f"table_{k}" for k in TABLE_MSE]
    for key in ("elbo", "log_likelihood", "reconstruction_mse", *table):
        for rank in range(2):
            assert abs(got[rank][key] - expected[key]) <= 1e-5 * abs(expected[key]), (key, rank)
    assert got[0]["one_row"] == got[1]["one_row"] and got[0]["one_row_points"] == 1
    assert got[0]["num_test"] == got[1]["num_test"] == TEST_ROWS
    assert got[0]["log_likelihood_points"] == TEST_ROWS
    assert "active_units" in got[0] and "active_units" not in got[1]  # rank 0 alone counts them
    assert expected["elbo"] < expected["log_likelihood"] < 0  # the numbers mean something
    assert expected[table[1]] > 2 * expected[table[0]] > 0  # std_j^2 from 0.25 to 20.25


if __name__ == "__main__":
    torch.set_num_threads(1)
    with session() as group:
        result = _evaluate(group.rank, group.world, group)
    (Path(sys.argv[1]) / f"rank{group.rank}.json").write_text(json.dumps(result))
