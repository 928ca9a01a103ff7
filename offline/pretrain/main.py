"""``rtmoe pretrain``: arguments, config resolution and the report; the engine is `loop`.

Thin by design (as MAE's ``main_pretrain`` over its ``engine_pretrain``): everything that
trains lives in `rtmoe.offline.pretrain.loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from rtmoe.checkpoint import CheckpointError, load_checkpoint
from rtmoe.command import Command, UserError
from rtmoe.config import Config, ModelConfig, add_config_arguments, config_from_args, to_dict
from rtmoe.models.registry import MODEL_SIZES, model_config
from rtmoe.offline import commands as offline_commands
from rtmoe.offline.pretrain.loop import pretrain_expert


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="corpus folder from `rtmoe prepare`")
    parser.add_argument("--expert", type=int, required=True, help="expert index k")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, history)")
    parser.add_argument(
        "--size", help="model size (tiny, small, paper): the whole [model]; beats --config"
    )
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(
        parser,
        sections=("signal", "corpus", "spectral", "mask", "model", "pretrain"),
        flags={"epochs": "pretrain.epochs"},
        base_note="the defaults; with --resume the run's own tree",
    )


def _resolve_config(args: argparse.Namespace) -> Config:
    """The defaults (with --resume: the run's config) < --config < --size, --epochs < --set."""
    base = None
    if args.resume:
        with contextlib.suppress(CheckpointError):
            base = load_checkpoint(args.out).config
    size = {}
    if args.size:
        size = {f"model.{k}": v for k, v in to_dict(model_config(args.size)).items()}
    names = dict.fromkeys(size, f"--size {args.size}")
    cfg = config_from_args(args, base=base, flags=size, flag_names=names)
    _check_size_name(cfg.model)
    return cfg


def _check_size_name(model: ModelConfig) -> None:
    """A size's name on other widths would make checkpoints lie about their architecture."""
    if model.name not in MODEL_SIZES:
        return
    sized = to_dict(model_config(model.name))
    differ = [f"{k}={v}" for k, v in to_dict(model).items() if v != sized[k]]
    if differ:
        raise UserError(
            f"[model] name={model.name!r} is a size, but this [model] is not its "
            f"architecture ({', '.join(differ)}); use --size {model.name} for that size, or "
            "name the custom architecture (--set model.name=custom)"
        )


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
