"""rtmoe.console.StatusLine: rewritten in place on a terminal, plain lines in a file/pipe."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rtmoe.console import StatusLine


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_rewrites_one_line():
    out = _Terminal()
    line = StatusLine(out)
    line.update("RUNNING #1")
    line.update("RUNNING #2")
    line.close()
    assert out.getvalue() == "\rRUNNING #1\033[K\rRUNNING #2\033[K\n"


def test_file_gets_plain_lines_at_most_one_per_period():
    out = io.StringIO()
    line = StatusLine(out, period_s=3600.0)
    line.update("first")
    line.update("second")  # within the period: not written
    line.close()
    assert out.getvalue() == "first\n"
    every = io.StringIO()
    line = StatusLine(every, period_s=0.0)
    for k in range(3):
        line.update(f"status {k}")
    assert every.getvalue().splitlines() == ["status 0", "status 1", "status 2"]
    assert "\r" not in every.getvalue() and "\033" not in every.getvalue()


def test_a_pipe_is_not_a_terminal():
    code = "from rtmoe.console import StatusLine; s = StatusLine(); s.update('x'); s.close()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ})  # fmt: skip
    assert out.returncode == 0 and out.stderr == "x\n"
