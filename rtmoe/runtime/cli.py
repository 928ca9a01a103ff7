"""``rtmoe stream`` (decode an LSL stream live) and ``rtmoe demo`` (the shipped recording).

Entry points (pyproject ``rtmoe.commands``): ``stream = "rtmoe.runtime.cli:stream_command"``
and ``demo = "rtmoe.runtime.cli:demo_command"``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rtmoe.cli import Command, UserError
from rtmoe.config import RuntimeConfig
from rtmoe.engine import ENGINE_KINDS
from rtmoe.runtime.channels import FILL_POLICIES
from rtmoe.stream.lsl import LslError
from rtmoe.transport import DEFAULT_ADDRESS


def _add_common(parser: argparse.ArgumentParser) -> None:
    defaults = RuntimeConfig()
    parser.add_argument(
        "--model",
        help="fine-tuned checkpoint folder (rtmoe finetune --out) or shipped model name "
        "(default: the subject profile's base model, else 'default')",
    )
    parser.add_argument(
        "--engine", choices=ENGINE_KINDS, default=defaults.engine, help="inference backend"
    )
    parser.add_argument(
        "--zmq", default=DEFAULT_ADDRESS, help="ZeroMQ bind address of the decode publisher"
    )
    parser.add_argument(
        "--hop-ms", type=float, default=defaults.hop_ms, help="time between decodes (ms)"
    )
    parser.add_argument(
        "--device", default=defaults.device, help="auto (CUDA when present), cpu, cuda[:N]"
    )
    parser.add_argument(
        "--cache-dir", help="engine cache folder (default $RTMOE_CACHE_DIR or ~/.cache)"
    )


def _runtime_config(args: argparse.Namespace, **extra: object) -> RuntimeConfig:
    return dataclasses.replace(
        RuntimeConfig(),
        engine=args.engine,
        zmq_address=args.zmq,
        hop_ms=args.hop_ms,
        device=args.device,
        **extra,
    )


def _add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lsl", metavar="NAME", help="LSL name of the EEG stream")
    parser.add_argument("--lsl-type", help="LSL type of the EEG stream (e.g. EEG)")
    parser.add_argument("--source-id", help="LSL source_id of the EEG stream")
    _add_common(parser)
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --zmq address reachable from other machines (unauthenticated)",
    )
    parser.add_argument(
        "--single-frame",
        action="store_true",
        help="publish 'topic json' single frames (for ZMQ_CONFLATE subscribers)",
    )
    parser.add_argument(
        "--fill",
        choices=FILL_POLICIES,
        default="error",
        help="model channels missing from the stream: error, or zeros (flat, reported)",
    )
    parser.add_argument("--duration-s", type=float, help="stop after this many seconds")
    parser.add_argument("--subject", help="apply this subject's profile (rtmoe calibrate)")
    parser.add_argument(
        "--profiles-dir",
        type=Path,
        help="subject profiles folder (default $RTMOE_HOME/subjects or "
        "~/.local/share/rtmoe/subjects)",
    )
    parser.add_argument(
        "--profile-version", type=int, help="profile version to load (default: the newest)"
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="SPEC",
        help="post-processing stage or sink, name[:key=value,...] (e.g. smooth:alpha=0.3, "
        "lsl-out); repeat to chain, in order; see docs/plugins.md",
    )


def _run_stream(args: argparse.Namespace) -> int:
    from rtmoe.runtime.loop import Runtime

    query = {"name": args.lsl, "type": args.lsl_type, "source_id": args.source_id}
    query = {k: v for k, v in query.items() if v is not None}
    if not query:
        raise UserError("give the stream to decode: --lsl NAME (or --lsl-type / --source-id)")
    cfg = _runtime_config(
        args, allow_remote=args.allow_remote, single_frame=args.single_frame, fill=args.fill
    )
    profile = None
    if args.subject:
        from rtmoe.profiles import default_profiles_dir, load_profile

        profiles_dir = args.profiles_dir or default_profiles_dir()
        profile = load_profile(profiles_dir, args.subject, args.profile_version)
    model = args.model or (profile.base_model if profile else "default")
    try:
        runtime = Runtime(
            model, query, cfg, cache_dir=args.cache_dir, plugins=args.plugin, profile=profile
        )
    except LslError as err:
        raise UserError(str(err)) from None
    print(
        f"decoding {runtime.model_id} ({', '.join(runtime.labels)}) every "
        f"{runtime.hop / runtime.sfreq * 1e3:g} ms from {runtime.source.channel_names}; "
        f"{runtime.engine.summary()}; publishing on {runtime.publisher.address}"
        + (f"; zero-filled channels {runtime.filled_channels}" if runtime.filled_channels else "")
        + (f"; plugins {list(runtime.plugins.names)}" if len(runtime.plugins) else "")
        + "\nCtrl-C stops.",
        flush=True,
    )
    summary = runtime.run(args.duration_s, console=True)
    print(summary.describe(), flush=True)
    return 0


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds to run")
    _add_common(parser)


def _run_demo(args: argparse.Namespace) -> int:
    from rtmoe.runtime.demo import run_demo

    summary = run_demo(
        args.model or "default", args.duration_s, _runtime_config(args), cache_dir=args.cache_dir
    )
    print(summary.describe(), flush=True)
    return 0


stream_command = Command(
    help="decode an LSL EEG stream live and publish decodes over ZeroMQ",
    add_arguments=_add_stream_arguments,
    run=_run_stream,
)
demo_command = Command(
    help="play the shipped demo recording through the live decoder and score it",
    add_arguments=_add_demo_arguments,
    run=_run_demo,
)
