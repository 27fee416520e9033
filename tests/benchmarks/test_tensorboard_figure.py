"""The README's TensorBoard picture is drawn from event files as TensorBoard reads them."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def figure_script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import tensorboard_figure

        yield tensorboard_figure
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_scalars_of_an_event_folder_are_drawn(figure_script, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    for step in (10, 20, 23):
        writer.add_scalar("step/loss", 30.0 - step / 10, step)
    writer.add_scalar("epoch/val_elbo", -28.0, 23)
    writer.close()
    scalars = figure_script.read_scalars(tmp_path / "tensorboard")
    assert scalars["step/loss"] == ([10, 20, 23], [29.0, 28.0, pytest.approx(27.7)])
    out = tmp_path / "scalars.png"
    figure_script.main(["--run", str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 10_000
    # without --out, into the run (tester CM: it was drawn over the README's picture)
    committed = (BENCHMARKS.parent / "docs" / "images" / "tensorboard-scalars.png").read_bytes()
    figure_script.main(["--run", str(tmp_path)])
    assert (tmp_path / "tensorboard-scalars.png").stat().st_size > 10_000
    assert (BENCHMARKS.parent / "docs" / "images" / "tensorboard-scalars.png").read_bytes() == (
        committed
    )


def test_the_committed_picture_exists():
    assert (
        BENCHMARKS.parent / "docs" / "images" / "tensorboard-scalars.png"
    ).stat().st_size > 10_000


def test_a_run_without_events_is_refused_in_one_line(figure_script, tmp_path, capsys):
    """Tester CO: a run fit without --tensorboard ended in TensorBoard's traceback "has
    been permanently deleted"."""
    with pytest.raises(SystemExit) as stopped:
        figure_script.main(["--run", str(tmp_path)])
    assert stopped.value.code == 2
    assert "has no tensorboard/ folder; expected a run fit with --tensorboard" in (
        capsys.readouterr().err
    )
