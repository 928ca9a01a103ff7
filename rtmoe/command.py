"""What a subcommand is: :class:`Command` and its lazy stand-in :class:`LazyCommand`.

A leaf module (standard library and ``rtmoe.errors`` only) so that any layer can define a
command without importing the dispatcher ``rtmoe.cli``, and so that ``rtmoe --help`` stays
light.

The entry points in the group ``rtmoe.commands`` name :class:`LazyCommand` stubs (the
``commands`` modules of rtmoe/, offline/ and calibration/): a one-line help and where the
real :class:`Command` lives. ``rtmoe --help`` and ``rtmoe --version`` read the help lines
only; the module that defines a command (and its torch, numpy, engines, ...) is imported
when that command is run or asked for its own ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass

# Re-exported: commands that import it from here keep working (it lives in rtmoe.errors).
from rtmoe.errors import UserError

__all__ = ["Command", "LazyCommand", "UserError"]


@dataclass(frozen=True)
class Command:
    """One subcommand: a one-line help, its arguments and the function that runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class LazyCommand:
    """A :class:`Command` imported only when used.

    Parameters
    ----------
    help : str
        The one-line help ``rtmoe --help`` lists; the target :class:`Command` takes its
        ``help`` from here (one copy).
    target : str
        ``"module:attribute"`` naming the real :class:`Command`, e.g.
        ``"rtmoe.offline.pretrain:command"``.
    """

    help: str
    target: str

    def load(self) -> Command:
        module_name, _, attribute = self.target.partition(":")
        if not module_name or not attribute:
            raise ValueError(
                f"LazyCommand target {self.target!r} is not 'module:attribute'; name the "
                "module and the Command in it, e.g. 'rtmoe.offline.pretrain:command'"
            )
        return getattr(importlib.import_module(module_name), attribute)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.load().add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return self.load().run(args)
