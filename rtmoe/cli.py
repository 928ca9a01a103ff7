"""The ``rtmoe`` command. Subcommands are entry points in the group ``rtmoe.commands``.

offline/, calibration/ and plugins/ register their commands there, so this trunk never
imports them. Every command's ``run`` returns an exit code, and ``main(argv)`` can be
called from tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

from rtmoe import __version__
from rtmoe.engine.base import EngineError


@dataclass(frozen=True)
class Command:
    """One subcommand: a one-line help, its arguments and the function that runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtmoe", description="Real-time SpecMoE EEG decoding: offline, calibration, live."
    )
    parser.add_argument("--version", action="version", version=f"rtmoe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="rtmoe.commands"), key=lambda e: e.name):
        command: Command = ep.load()
        sub_parser = sub.add_parser(ep.name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (UserError, ValueError, FileNotFoundError, EngineError) as err:
        # ValueError covers ConfigError and the data pipeline's input errors, whose
        # messages already name the problem and the fix; EngineError a missing extra or a
        # failed parity check.
        print(f"rtmoe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtmoe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
