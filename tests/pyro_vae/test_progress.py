"""Progress bars are drawn on a terminal only."""

import io

from pyro_vae.progress import bar, interactive


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_is_drawn_on_a_terminal_and_not_into_a_file(monkeypatch):
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        for _ in bar(range(3), True, file=stream, mininterval=0):
            pass
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert log.getvalue() == ""
    quiet = Terminal()
    for _ in bar(range(3), False, file=quiet):
        pass
    assert quiet.getvalue() == ""


def test_interactive_asks_whether_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    assert interactive()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not interactive()
    monkeypatch.setattr("sys.stderr", object())
    assert not interactive()
