"""A stop (Ctrl-C, SIGTERM, SIGHUP) and the errors raised while it unwinds, against torch.save's."""

import io

import pytest
import torch

from pyro_vae import interruptions
from pyro_vae.interruptions import (
    HungUp,
    Terminated,
    forget_stops,
    interruption_behind,
    interruptions_unmasked,
    raise_if_stopped,
    reraise_interruption,
    stop_arrived,
)


class _StoppedWriter(io.BytesIO):
    """A file object whose ``write`` number ``at`` raises ``stop``, as a SIGTERM landing
    between two of torch.save's writes raises in the main thread."""

    def __init__(self, stop: BaseException, at: int = 3) -> None:
        super().__init__()
        self.stop, self.at, self.calls = stop, at, 0

    def write(self, data) -> int:
        self.calls += 1
        if self.calls == self.at:
            raise self.stop
        return super().write(data)


def _interrupted_save(stop: BaseException) -> BaseException:
    """What torch.save raises when ``stop`` lands between its writes."""
    try:
        torch.save({"weights": torch.zeros(1000)}, _StoppedWriter(stop))
    except BaseException as err:  # noqa: BLE001  whatever it is, it is the subject here
        return err
    raise AssertionError("torch.save finished")


@pytest.mark.parametrize("stop", [Terminated(), HungUp(), KeyboardInterrupt()])
def test_torch_save_stopped_mid_write_raises_its_own_error_which_is_the_stop(stop):
    # tester AV: torch.save's zip writer, stopped between writes, raises "unexpected pos"
    # on closing, chained on the stop; the command printed its traceback and exited 1
    err = _interrupted_save(stop)
    assert isinstance(err, RuntimeError) and "unexpected pos" in str(err)
    assert interruption_behind(err) is stop
    with pytest.raises(type(stop)) as raised, interruptions_unmasked():
        raise err
    assert raised.value is stop


def test_an_error_with_no_stop_behind_it_passes_as_it_is():
    plain = RuntimeError("a crash")
    plain.__context__ = ValueError("handled before")
    assert interruption_behind(plain) is None
    with pytest.raises(RuntimeError, match="a crash"), interruptions_unmasked():
        raise plain
    reraise_interruption(plain)  # raises nothing


def test_a_cycle_of_contexts_ends_the_search():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert interruption_behind(a) is None


def test_a_recorded_stop_is_raised_where_a_handler_swallowed_it():
    # a handler that lets errors pass (a figure, a TensorBoard record) and an error with no
    # chain back to the stop: the stop the SIGTERM handler recorded is raised instead
    forget_stops()
    raise_if_stopped()  # none recorded: nothing
    stop = Terminated()
    stop_arrived(stop)
    try:
        with pytest.raises(Terminated) as raised:
            raise_if_stopped()
        assert raised.value is stop
        with pytest.raises(Terminated):
            reraise_interruption(OSError("the event file's disk"))
    finally:
        forget_stops()
    assert not interruptions._ARRIVED
    reraise_interruption(OSError("the event file's disk"))  # none recorded now


def test_a_closed_terminal_s_stop_is_a_termination_with_its_own_status_and_words():
    # every handler of Terminated takes a SIGHUP's stop; the shell's 128 + 1 for it
    assert issubclass(HungUp, Terminated)
    assert (Terminated.status, HungUp.status) == (143, 129)
    assert "SIGHUP" in HungUp.announced and "SIGTERM" in Terminated.announced
