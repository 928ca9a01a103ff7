"""``rtmoe config show``: the resolved config tree, as a command would see it.

``rtmoe config show [--for COMMAND] [--config FILE] [--set SECTION.FIELD=VALUE ...]``
prints defaults < ``--config`` < ``--set`` as TOML (the precedence every command uses,
:data:`rtmoe.config.PRECEDENCE`; a command's own flags sit between the two). ``--for``
keeps the sections that command reads and refuses a ``--set`` it would ignore. A command
that starts from something else than the defaults (finetune: its recipe; evaluate: the
checkpoint) prints its exact tree with ``rtmoe COMMAND ... --print-config``.
"""

from __future__ import annotations

import argparse

from rtmoe import commands
from rtmoe.command import Command, UserError
from rtmoe.config import PRECEDENCE, format_config, resolve_config


def _command_settings(name: str) -> tuple[tuple[str, ...] | None, str | None]:
    """The sections ``rtmoe NAME`` reads and what it starts from (its parser's defaults)."""
    from importlib.metadata import entry_points

    from rtmoe.cli import build_parser

    names = sorted(ep.name for ep in entry_points(group="rtmoe.commands"))
    if name not in names:
        raise UserError(f"--for {name!r} is not a command; the commands are {', '.join(names)}")
    parser = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command_parser = sub.choices[name]
    if command_parser.get_default("_config_flags") is None:
        raise UserError(f"rtmoe {name} reads no settings of the config tree")
    return (
        command_parser.get_default("_config_sections"),
        command_parser.get_default("_config_base_note"),
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show",), help="show: print the resolved tree")
    parser.add_argument(
        "--for",
        dest="for_command",
        metavar="COMMAND",
        help="only the sections COMMAND reads (e.g. stream, finetune)",
    )
    parser.add_argument("--config", metavar="FILE.toml", help="TOML with any subset of sections")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="set one field (a TOML literal; none for None); repeatable",
    )


def _run(args: argparse.Namespace) -> int:
    sections, note = (None, None)
    if args.for_command:
        sections, note = _command_settings(args.for_command)
    who = f"rtmoe {args.for_command}" if args.for_command else "the tree"
    cfg = resolve_config(
        config_file=args.config, overrides=args.set, sections=sections, command=who
    )
    print(f"# {who}: resolved settings ({' < '.join(PRECEDENCE)}; base: the defaults)")
    if note:
        print(
            f"# rtmoe {args.for_command} starts from {note}: `rtmoe {args.for_command} ... "
            "--print-config` shows its exact tree"
        )
    print(format_config(cfg, sections), end="")
    return 0


command = Command(
    help=commands.config.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
