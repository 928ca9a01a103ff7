"""The ``rtmoe`` command. Subcommands are entry points in the group ``rtmoe.commands``.

offline/, calibration/ and plugins/ register their commands there, so this trunk never
imports them. Every command's ``run`` returns an exit code, and ``main(argv)`` can be
called from tests.

Errors: only the project's own (:class:`~rtmoe.errors.UserError` and its subclasses, whose
messages name the problem and the fix) become one line ``rtmoe COMMAND: error: ...`` and
exit code 2. Any other exception is a bug and shows its traceback; ``rtmoe --debug
COMMAND ...`` shows the traceback of a UserError too.

Startup stays light (``rtmoe --help`` and ``rtmoe --version`` import no torch, numpy or
engine): the entry points name :class:`~rtmoe.command.LazyCommand` stubs, and only the
subcommand on the command line gets its arguments added, which is when its module is
imported. A command given as a plain :class:`~rtmoe.command.Command` works the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from rtmoe import __version__

# Re-exported: commands written against `rtmoe.cli` keep working.
from rtmoe.command import Command, LazyCommand
from rtmoe.errors import UserError

__all__ = ["Command", "LazyCommand", "UserError", "build_parser", "main"]


def _requested(argv: Sequence[str], names: set[str]) -> str | None:
    """The subcommand named on the command line (the top level takes only flags)."""
    for token in argv:
        if not token.startswith("-"):
            return token if token in names else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``rtmoe`` parser; only the subcommand named in ``argv`` gets its arguments.

    ``argv=None`` reads ``sys.argv[1:]``, as ``parse_args`` does.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="rtmoe", description="Real-time SpecMoE EEG decoding: offline, calibration, live."
    )
    parser.add_argument("--version", action="version", version=f"rtmoe {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of every error, ours too"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    eps = sorted(entry_points(group="rtmoe.commands"), key=lambda e: e.name)
    requested = _requested(argv, {ep.name for ep in eps})
    for ep in eps:
        command: Command | LazyCommand = ep.load()
        sub_parser = sub.add_parser(ep.name, help=command.help, description=command.help)
        if ep.name == requested:
            command.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=command.run)
    return parser


def _is_user_error(err: BaseException) -> bool:
    """Only the project's own errors: a builtin one (a ValueError, a FileNotFoundError)
    raised anywhere else is a bug, and its traceback is what finds it."""
    return isinstance(err, UserError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args._run(args)
    except KeyboardInterrupt:
        print(f"rtmoe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_user_error(err):
            raise
        print(f"rtmoe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
