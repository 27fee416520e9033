"""Regenerate every number the README says a command prints, by running that command.

``python benchmarks/readme_numbers.py`` runs each command below on the current code and
rewrites, in ``README.md``, the block between ``<!-- readme-numbers: NAME -->`` and
``<!-- /readme-numbers -->`` with what the command printed (and, for the diagnosis, a
table computed from the ``khat.csv`` it wrote). ``--check`` rewrites nothing and exits 1,
naming the blocks, when the README differs from what the commands print now;
``--only NAME`` runs one command (and the ones it needs).

Commands (the README shows each one as it is run here):

- ``digits``: the README's main command, ``pyro-vae fit --data digits --out RUN`` (about
  30 s on 2 cores).
- ``fashion-fit``: ``pyro-vae fit --data fashion-mnist --epochs 5 --val-fraction 0``
  (a few minutes; needs Debian's ``dataset-fashion-mnist``).
- ``fashion-diagnose``: ``pyro-vae diagnose`` on that run (1,000 draws for each of the
  first 1,000 test images).

Runs go to a temporary folder (``--runs DIR`` keeps them). Not run by CI: the
Fashion-MNIST commands take minutes; ``tests/benchmarks/test_readme_numbers.py`` checks
the block rewriting.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median, quantiles

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(<!-- readme-numbers: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /readme-numbers -->)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Command:
    """One README command: its arguments (``{runs}`` is the runs folder) and what to show."""

    name: str
    argv: tuple[str, ...]
    show: Callable[[str, Path], str]  # (stdout, runs folder) -> the block's markdown
    needs: tuple[str, ...] = ()


def _lines_between(stdout: str, first: str, stop: str) -> list[str]:
    """The printed lines from the one starting with ``first`` up to one starting with ``stop``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(stop)), len(lines))
    return lines[start:end]


def _fenced(lines: list[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```\n"


def _show_fit(stdout: str, runs: Path) -> str:
    return _fenced(_lines_between(stdout, "stopped:", "figures:"))


def _show_diagnosis(stdout: str, runs: Path) -> str:
    printed = _lines_between(stdout, "PSIS k̂", "wrote ")
    with open(runs / "fashion" / "khat.csv", newline="") as f:
        khat = [float(row["khat"]) for row in csv.DictReader(f)]
    share = {t: 100 * sum(k > t for k in khat) / len(khat) for t in (0.5, 0.7, 1.0)}
    q = quantiles(khat, n=20, method="inclusive")
    table = [
        "| k̂ above 0.5 | k̂ above 0.7 | k̂ above 1 | median k̂ | 5% / 95% quantiles | max |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {share[0.5]:.1f}% | **{share[0.7]:.1f}%** | {share[1.0]:.1f}% | {median(khat):.2f} "
        f"| {q[0]:.2f} / {q[-1]:.2f} | {max(khat):.2f} |",
    ]
    return _fenced(printed) + "\n" + "\n".join(table) + "\n"


COMMANDS = {
    c.name: c
    for c in (
        Command("digits", ("fit", "--data", "digits", "--out", "{runs}/digits"), _show_fit),
        Command(
            "fashion-fit",
            ("fit", "--data", "fashion-mnist", "--epochs", "5", "--val-fraction", "0")
            + ("--out", "{runs}/fashion"),
            _show_fit,
        ),
        Command(
            "fashion-diagnose", ("diagnose", "{runs}/fashion"), _show_diagnosis, ("fashion-fit",)
        ),
    )
}


def replace_blocks(text: str, bodies: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with the named blocks' bodies replaced, and the names whose body changed.

    Raises:
        ValueError: a name in ``bodies`` has no block in ``text``.
    """
    found = {m.group("name") for m in BLOCK.finditer(text)}
    missing = sorted(set(bodies) - found)
    if missing:
        raise ValueError(f"README.md has no <!-- readme-numbers: NAME --> block for {missing}")
    changed: list[str] = []

    def body(m: re.Match) -> str:
        name = m.group("name")
        if name not in bodies:
            return m.group(0)
        if m.group("body") != bodies[name]:
            changed.append(name)
        return m.group(1) + bodies[name] + m.group(4)

    return BLOCK.sub(body, text), changed


def _pyro_vae() -> list[str]:
    script = Path(sys.executable).with_name("pyro-vae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pyro_vae.cli"]


def _run(command: Command, runs: Path) -> str:
    argv = _pyro_vae() + [a.format(runs=runs) for a in command.argv]
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{command.name}: exited {done.returncode}; README.md left as it was")
    return command.show(done.stdout, runs)


def _order(only: str | None) -> list[Command]:
    if only is None:
        return list(COMMANDS.values())
    if only not in COMMANDS:
        sys.exit(f"--only: {only!r} is not one of {sorted(COMMANDS)}")
    return [COMMANDS[n] for n in COMMANDS[only].needs] + [COMMANDS[only]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help=f"one of {sorted(COMMANDS)}")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    parser.add_argument("--runs", type=Path, default=None, help="keep the runs in this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        bodies = {c.name: _run(c, runs) for c in _order(args.only)}
    text, changed = replace_blocks(README.read_text(), bodies)
    if args.check:
        print("README.md differs in: " + ", ".join(changed) if changed else "README.md is current")
        return 1 if changed else 0
    README.write_text(text)
    print("rewrote " + (", ".join(changed) if changed else "nothing (README.md was current)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
