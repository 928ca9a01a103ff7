"""``rtmoe pretrain``: arguments, config resolution and the report; the engine is `loop`.

Thin by design (as MAE's ``main_pretrain`` over its ``engine_pretrain``): everything that
trains lives in `rtmoe.offline.pretrain.loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from rtmoe.offline import commands as offline_commands
from rtmoe.checkpoint import CheckpointError, load_checkpoint
from rtmoe.command import Command
from rtmoe.config import Config, load_config
from rtmoe.models.registry import model_config
from rtmoe.offline.pretrain.loop import pretrain_expert


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="corpus folder from `rtmoe prepare`")
    parser.add_argument("--expert", type=int, required=True, help="expert index k")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, history)")
    parser.add_argument("--size", help="model size (tiny, small, paper); overrides --config")
    parser.add_argument("--config", help="TOML config (any subset of sections)")
    parser.add_argument("--epochs", type=int, help="overrides pretrain.epochs")
    parser.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _resolve_config(args: argparse.Namespace) -> Config:
    """--config, then --size and --epochs; a bare --resume reuses the run's config."""
    if args.resume and not (args.config or args.size or args.epochs):
        with contextlib.suppress(CheckpointError):
            return load_checkpoint(args.out).config
    cfg = load_config(args.config) if args.config else Config()
    if args.size:
        cfg = cfg.replace(model=model_config(args.size))
    if args.epochs is not None:
        cfg = cfg.replace(pretrain={"epochs": args.epochs})
    return cfg


def _run(args: argparse.Namespace) -> int:
    result = pretrain_expert(
        args.corpus,
        args.out,
        _resolve_config(args),
        args.expert,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.val[-1] if result.val else {}
        held_out = (
            f"; held-out loss {last['model_loss']:.4g} vs masked-input baseline "
            f"{last['baseline_loss']:.4g}"
            if "model_loss" in last
            else ""
        )
        print(
            f"expert {args.expert}: {result.stop_reason} after {result.step} steps "
            f"({result.epoch} epochs){held_out}; checkpoint {result.checkpoint}"
        )
    return 0


command = Command(
    help=offline_commands.pretrain.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
