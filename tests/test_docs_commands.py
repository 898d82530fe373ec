"""Every `futuremask` command line in the README and the docs parses, with no deprecated spelling.

The commands are read from the fenced code blocks (continuation lines joined, comments cut) and given
to the real parser; running them needs data and checkpoints the tests do not have. Lines written as
usage (``[--opt]``, ``...``, shell variables, the placeholder ``P``) and output lines
(``futuremask eval: error: ...``) are passed over.
"""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from futuremask.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "TRAINING.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|[\s/])(?:futuremask|-m futuremask\.cli) (?P<args>(?!-)[a-z].*)$")


def _is_usage(argv: list[str]) -> bool:
    return any(a.startswith("[") or a.endswith("]") or "..." in a or "$" in a or "<" in a or a == "P" for a in argv)


def documented_commands() -> list[tuple[str, str]]:
    """``(file name, command line)`` of every ``futuremask`` command in a code block (not a Python one)."""
    out = []
    for path in DOCS:
        for language, block in re.findall(r"```([a-z]*)\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            if language == "python":
                continue
            block = re.sub(r'"\$\([^"]*\)"', "VALUE", block)  # a quoted command substitution: one argument
            for line in re.sub(r"\\\n", " ", block).splitlines():
                line = line.split(" #")[0].strip()
                found = COMMAND.search(line)
                if found and not line.startswith(("import ", "from ")) and not found["args"].split()[0].endswith(":") \
                        and "--model_args" not in line:  # Python in a heredoc, output lines, lmms-eval's --model
                    if not _is_usage(shlex.split(found["args"])):
                        out.append((path.name, found["args"]))
    return out


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_kind():
    """The extraction can fail: it finds the commands the docs are known to show."""
    firsts = {shlex.split(c)[0] for _, c in COMMANDS}
    assert {"eval", "score", "report", "tune", "bench", "bench-report", "train", "verify", "show-mask"} <= firsts
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:50]}" for w, c in COMMANDS])
def test_a_documented_command_parses_without_deprecation(where, command):
    argv = shlex.split(command)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `futuremask {command}` does not parse: {err.getvalue().strip()}")
    assert err.getvalue() == "", f"{where}: `futuremask {command}`: {err.getvalue().strip()}"
