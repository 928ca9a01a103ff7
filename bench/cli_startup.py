"""Wall time of ``rtmoe --help`` and ``rtmoe --version``: median of fresh processes.

Each run starts a new interpreter through the installed console script (``rtmoe`` next to
this Python, else ``python -c 'from rtmoe.cli import main; main()'``) from a temporary
directory, so no cwd module or build leftover is picked up, and times it from spawn to
exit. Also prints what a ``--help`` run imported (torch, numpy: expected neither).

Usage::

    python bench/cli_startup.py [--runs 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = (
    "import contextlib, io, sys\n"
    "from rtmoe.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n"
    "        main(['--help'])\n"
    "    except SystemExit:\n"
    "        pass\n"
    "print(len(sys.modules), [m for m in ('torch', 'numpy') if m in sys.modules])\n"
)


def rtmoe_command() -> list[str]:
    script = Path(sys.executable).with_name("rtmoe")
    if script.exists():
        return [str(script)]
    found = shutil.which("rtmoe")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from rtmoe.cli import main; sys.exit(main())"]


def time_once(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per flag")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (disk cache)")
    args = parser.parse_args(argv)
    base = rtmoe_command()
    with tempfile.TemporaryDirectory() as cwd:
        for flag in ("--help", "--version"):
            for _ in range(args.warmup):
                time_once([*base, flag], cwd)
            times = [time_once([*base, flag], cwd) for _ in range(args.runs)]
            print(
                f"rtmoe {flag:<9} median {statistics.median(times) * 1e3:6.0f} ms over "
                f"{args.runs} fresh processes (min {min(times) * 1e3:.0f}, "
                f"max {max(times) * 1e3:.0f})"
            )
        probe = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120
        )
        print(f"rtmoe --help imported {probe.stdout.strip()} (modules, heavy ones)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
