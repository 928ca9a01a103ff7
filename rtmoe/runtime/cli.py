"""``rtmoe stream`` (decode an LSL stream live) and ``rtmoe demo`` (the shipped recording).

Entry points (pyproject ``rtmoe.commands``): ``stream`` and ``demo`` name the light stubs in
``rtmoe/commands.py``, whose targets are ``stream_command`` and ``demo_command`` here (this
module is imported only when one of them runs).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from rtmoe import commands
from rtmoe.cli import Command, UserError
from rtmoe.config import RuntimeConfig, add_config_arguments, config_from_args
from rtmoe.engine import ENGINE_KINDS
from rtmoe.signal.channels import FILL_POLICIES
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


#: The flags that set a field of [runtime] (dest → field): a flag given beats --config,
#: --set beats the flag (rtmoe.config.PRECEDENCE).
COMMON_FLAGS = {
    "engine": "runtime.engine",
    "zmq": "runtime.zmq_address",
    "hop_ms": "runtime.hop_ms",
    "device": "runtime.device",
}
STREAM_FLAGS = {
    **COMMON_FLAGS,
    "adapt_s": "runtime.adapt_s",
    "allow_remote": "runtime.allow_remote",
    "single_frame": "runtime.single_frame",
    "fill": "runtime.fill",
    "wait_s": "runtime.wait_s",
    "max_age_s": "runtime.max_age_s",
    "rename": "runtime.rename",
}


def _add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lsl",
        metavar="NAME",
        action="append",
        help="LSL name of the EEG stream; repeat to decode several streams in one runtime "
        "(one batched forward; topics rtmoe.decode.<NAME>, docs/protocol.md)",
    )
    parser.add_argument(
        "--streams",
        metavar="FILE",
        help="TOML file with one [[stream]] table per stream: lsl = NAME and optionally id, "
        "model, subject, profile_version and [runtime] fields such as hop_ms or fill",
    )
    parser.add_argument("--lsl-type", help="LSL type of the EEG stream (e.g. EEG)")
    parser.add_argument("--source-id", help="LSL source_id of the EEG stream")
    _add_common(parser)
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow what other machines can see: a --zmq address reachable from the network "
        "(unauthenticated) and --plugin lsl-out (an LSL stream discoverable on the LAN)",
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
    parser.add_argument(
        "--rename",
        action="append",
        metavar="LABEL=ELECTRODE",
        help="rename a stream channel before matching (e.g. EXG1=C3); repeat for each",
    )
    parser.add_argument("--duration-s", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--wait-s",
        type=float,
        help="seconds to wait for the stream at start-up (state WAITING on the status "
        "topic meanwhile); default: wait until it appears (Ctrl-C stops)",
    )
    parser.add_argument(
        "--max-age-s",
        type=float,
        default=RuntimeConfig().max_age_s,
        help="never publish a decode whose newest sample is older than this (s; such "
        "windows are counted as stale)",
    )
    parser.add_argument(
        "--adapt-s",
        type=float,
        help="unsupervised session adaptation: re-centre the decodes' class bias over this "
        "many seconds of past decodes (assumes interleaved classes; default off; "
        "rtmoe.adaptation)",
    )
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
    add_config_arguments(parser, sections=("runtime",), flags=STREAM_FLAGS)


def check_zmq_address(address: str, allow_remote: bool) -> str | None:
    """Refuse a malformed ``--zmq`` endpoint, or a network-reachable one without opt-in.

    Returns
    -------
    str or None
        What the endpoint makes visible to other machines (for the ``--allow-remote``
        warning), or None for a local endpoint.
    """
    from rtmoe.transport.publisher import is_loopback_address

    transport, sep, rest = address.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc") or not rest:
        raise UserError(
            f"--zmq {address!r} is not a ZeroMQ bind endpoint; write tcp://127.0.0.1:PORT "
            "(or ipc://PATH)"
        )
    if transport == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and int(port) < 65536)):
            raise UserError(
                f"--zmq {address!r} has no valid port; write tcp://127.0.0.1:PORT, e.g. "
                f"{DEFAULT_ADDRESS} (port 0 or * binds a free one)"
            )
    if is_loopback_address(address):
        return None
    if not allow_remote:
        raise UserError(
            f"--zmq {address!r} is reachable from other machines (a wildcard, an interface "
            "or another host); bind to tcp://127.0.0.1:PORT, or pass --allow-remote to "
            "publish unauthenticated decodes on the network"
        )
    return (
        f"ZeroMQ on {address}: every decode and status message, unauthenticated and "
        "unencrypted, to anyone who can reach this machine on that port"
    )


def check_plugins(specs: list[str], allow_remote: bool) -> list[str]:
    """Load every ``--plugin`` spec (a typo fails here) and refuse network sinks without opt-in.

    A plugin that makes decodes visible to other machines says so in a ``network_visible``
    attribute (e.g. ``lsl-out``: LSL outlets are discoverable by every machine on the
    LAN); it needs ``--allow-remote`` like a network ``--zmq`` address. Returns those
    descriptions, for the warning.
    """
    from rtmoe.runtime.plugins import load_plugin

    exposed = []
    for spec in specs:
        what = getattr(load_plugin(spec), "network_visible", None)
        if not what:
            continue
        if not allow_remote:
            raise UserError(
                f"--plugin {spec} publishes {what}; pass --allow-remote to allow that, or "
                "drop the plugin"
            )
        exposed.append(f"--plugin {spec}: {what}")
    return exposed


def check_model_ref(ref: str, flag: str = "--model") -> None:
    """A checkpoint folder or a shipped model name, checked without loading anything."""
    path = Path(ref)
    if path.exists():
        if not ((path / "meta.json").is_file() or (path / "LATEST").is_file()):
            raise UserError(
                f"{flag} {ref}: the folder holds no checkpoint (no meta.json or LATEST); "
                "pass a folder written by `rtmoe finetune --out` or a shipped model name"
            )
        return
    shipped = Path(str(resources.files("rtmoe").joinpath("data", "models")))
    names = sorted(p.name for p in shipped.iterdir() if (p / "meta.json").is_file())
    if ref not in names:
        raise UserError(
            f"{flag} {ref!r} is neither a checkpoint folder nor a shipped model ({names}); "
            "check the path, or pass a folder written by `rtmoe finetune --out`"
        )


def _check_stream_args(args: argparse.Namespace) -> tuple[list[dict], RuntimeConfig, list[str]]:
    """Every check that needs no model, no torch and no LSL: fails in milliseconds.

    Returns one entry per stream (several with a repeated ``--lsl`` or ``--streams``):
    ``query`` (LSL), ``id`` (None for a single stream), ``model``, ``subject``,
    ``profile_version`` (None: the command's) and ``cfg`` (None: the command's)."""
    cfg = config_from_args(args).runtime  # --config/--set/flags; writes the values back
    if args.streams is not None:
        if args.lsl or args.lsl_type or args.source_id:
            raise UserError(
                f"--streams {args.streams} names the streams; drop --lsl, --lsl-type and "
                "--source-id"
            )
        from rtmoe.runtime.streams import read_streams_file

        entries = [
            {**e, "query": {"name": e.pop("lsl")}} for e in read_streams_file(args.streams, cfg)
        ]
    else:
        names = args.lsl or [None]
        if len(names) > 1 and args.source_id:
            raise UserError(
                "--source-id names one stream; with several --lsl, name each stream by --lsl"
            )
        from rtmoe.runtime.streams import stream_id_of

        entries = []
        for name in names:
            query = {"name": name, "type": args.lsl_type, "source_id": args.source_id}
            entries.append(
                {
                    "query": {k: v for k, v in query.items() if v is not None},
                    "id": stream_id_of(name) if len(names) > 1 else None,
                    "model": None,
                    "subject": None,
                    "profile_version": None,
                    "cfg": None,
                }
            )
        if not entries[0]["query"]:
            raise UserError("give the stream to decode: --lsl NAME (or --lsl-type / --source-id)")
    if len(entries) > 1:
        names = [e["query"]["name"] for e in entries]
        if len(set(names)) != len(names):
            raise UserError(f"streams {names}: a stream is named twice; give each stream once")
        ids = [e["id"] for e in entries]
        if len(set(ids)) != len(ids):
            raise UserError(
                f"streams {names} give the same stream ids {ids} (characters other than "
                "letters, digits, '_' and '-' become '_'); rename a stream or set its id"
            )
        if any(spec.split(":")[0] == "lsl-out" for spec in args.plugin or ()):
            raise UserError(
                "--plugin lsl-out with several streams: every stream would open an LSL outlet "
                "of the same name; decode one stream per process to use lsl-out"
            )
    for entry in entries:
        if entry["model"]:
            check_model_ref(entry["model"], f"stream {entry['id']!r} model")
    exposed = []
    zmq = check_zmq_address(args.zmq, args.allow_remote)
    if zmq:
        exposed.append(zmq)
    exposed += check_plugins(args.plugin, args.allow_remote)
    if args.duration_s is not None and not args.duration_s > 0:
        raise UserError(f"--duration-s {args.duration_s:g} must be > 0 seconds (or omitted)")
    if args.profile_version is not None and not args.subject:
        raise UserError("--profile-version needs --subject (whose profile version to load)")
    if args.profile_version is not None and args.profile_version < 1:
        raise UserError(f"--profile-version {args.profile_version} must be >= 1 (v001 is 1)")
    if args.model:
        check_model_ref(args.model)
    if args.wait_s is not None and not args.wait_s >= 0:
        raise UserError(f"--wait-s {args.wait_s:g} must be >= 0 seconds (omit it to wait on)")
    if not args.max_age_s > 0:
        raise UserError(f"--max-age-s {args.max_age_s:g} must be > 0 seconds")
    return entries, cfg, exposed


@contextlib.contextmanager
def _interrupt_on_term():
    """During start-up, SIGTERM and SIGHUP stop like Ctrl-C (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _warn_remote(args: argparse.Namespace, exposed: list[str]) -> None:
    """The one ``--allow-remote`` warning: what other machines can now see."""
    if not args.allow_remote:
        return
    if exposed:
        print(
            "WARNING: --allow-remote: visible from other machines: " + "; ".join(exposed),
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"WARNING: --allow-remote given, but nothing is exposed: --zmq {args.zmq} is "
            "local and no plugin publishes on the network",
            file=sys.stderr,
            flush=True,
        )


def _run_stream(args: argparse.Namespace) -> int:
    try:  # Ctrl-C, SIGTERM or SIGHUP while loading or waiting: a summary and exit 0
        with _interrupt_on_term():
            # Every argument is checked before any model load or LSL resolve.
            streams, cfg, exposed = _check_stream_args(args)
            runtime = _start_stream(args, streams, cfg, exposed)
    except KeyboardInterrupt:
        print("stopped during start-up (loading or waiting for the stream): 0 decodes", flush=True)
        return 0
    if len(streams) > 1:
        return _decode_streams(args, runtime)
    try:
        summary = _decode_stream(args, runtime)
    except KeyboardInterrupt:  # in the instant before run() took over the signals
        summary = runtime.summary()
        runtime.close()
    print(summary.describe(), flush=True)
    return 0


def _start_stream(args: argparse.Namespace, streams: list, cfg: RuntimeConfig, exposed: list):
    profiles: dict[tuple, Any] = {}

    def profile_of(subject: str | None, version: int | None):
        if not subject:
            return None
        if (subject, version) not in profiles:
            from rtmoe.profiles import default_profiles_dir, load_profile

            profiles_dir = args.profiles_dir or default_profiles_dir()
            profile = load_profile(profiles_dir, subject, version)
            if not args.model:
                check_model_ref(profile.base_model, f"profile {profile.path} base model")
            profiles[subject, version] = profile
        return profiles[subject, version]

    specs = []
    for entry in streams:
        subject = entry["subject"] or args.subject
        version = entry["profile_version"] if entry["subject"] else args.profile_version
        profile = profile_of(subject, version)
        model = entry["model"] or args.model or (profile.base_model if profile else "default")
        specs.append((entry, model, profile))
    _warn_remote(args, exposed)
    from rtmoe.runtime.loop import Runtime

    wait = "until it appears" if cfg.wait_s is None else f"up to {cfg.wait_s:g} s"
    for entry in streams:
        what = " and ".join(f"{k}={v!r}" for k, v in entry["query"].items())
        print(f"looking for the LSL stream {what} (waiting {wait}); Ctrl-C stops", flush=True)
    if len(streams) == 1:
        entry, model, profile = specs[0]
        return Runtime(
            model, entry["query"], entry["cfg"] or cfg, cache_dir=args.cache_dir,
            plugins=args.plugin, profile=profile,
        )  # fmt: skip
    from rtmoe.runtime.multi import MultiRuntime, StreamSpec

    plugins = tuple(args.plugin or ())
    return MultiRuntime(
        [
            StreamSpec(e["id"], e["query"], model, profile, plugins, cfg=e["cfg"])
            for e, model, profile in specs
        ],
        cfg,
        cache_dir=args.cache_dir,
    )


def _decode_stream(args: argparse.Namespace, runtime):
    print(
        f"decoding {runtime.model_id} ({', '.join(runtime.labels)}) every "
        f"{runtime.hop / runtime.sfreq * 1e3:g} ms from {runtime.source.channel_names}; "
        f"{runtime.engine.summary()}; publishing on {runtime.publisher.address}"
        + (f"; zero-filled channels {runtime.filled_channels}" if runtime.filled_channels else "")
        + (f"; plugins {list(runtime.plugins.names)}" if len(runtime.plugins) else "")
        + "\nCtrl-C stops.",
        flush=True,
    )
    return runtime.run(args.duration_s, console=True)


def _decode_streams(args: argparse.Namespace, multi) -> int:
    lead = multi.runtimes[0]
    print(
        f"decoding {len(multi.runtimes)} streams with {lead.model_id} every "
        f"{lead.hop / lead.sfreq * 1e3:g} ms; {lead.engine.summary()}; publishing on "
        f"{multi.publisher.address} (topics rtmoe.decode.<stream>)\n"
        + "".join(
            f"  {rt.stream_id}: {rt.source.channel_names}"
            + (f"; zero-filled {rt.filled_channels}" if rt.filled_channels else "")
            + "\n"
            for rt in multi.runtimes
        )
        + "Ctrl-C stops.",
        flush=True,
    )
    try:
        summaries = multi.run(args.duration_s, console=True)
    except KeyboardInterrupt:  # in the instant before run() took over the signals
        summaries = [rt.summary() for rt in multi.runtimes]
        multi.close()
    print(multi.describe(summaries), flush=True)
    return 0


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds to run")
    _add_common(parser)
    from rtmoe.view import DEFAULT_PORT

    parser.add_argument(
        "--view",
        action="store_true",
        help="also serve the live page (rtmoe view) on 127.0.0.1 and open it in the browser",
    )
    parser.add_argument(
        "--view-port",
        type=int,
        default=DEFAULT_PORT,
        help="HTTP port of the --view page (0: a free one)",
    )
    add_config_arguments(parser, sections=("runtime",), flags=COMMON_FLAGS)


def _run_demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(args).runtime
    check_zmq_address(args.zmq, allow_remote=False)  # before the model loads
    if args.model:
        check_model_ref(args.model)
    if args.view and not 0 <= args.view_port < 65536:
        raise UserError(f"--view-port {args.view_port} must be in 0..65535 (0 picks a free one)")
    from rtmoe.runtime.demo import run_demo

    summary = run_demo(
        args.model or "default",
        args.duration_s,
        cfg,
        cache_dir=args.cache_dir,
        view_port=args.view_port if args.view else None,
        open_view=args.view,
    )
    print(summary.describe(), flush=True)
    return 0


stream_command = Command(
    help=commands.stream.help,  # the entry-point stub's line
    add_arguments=_add_stream_arguments,
    run=_run_stream,
)
demo_command = Command(
    help=commands.demo.help,  # the entry-point stub's line
    add_arguments=_add_demo_arguments,
    run=_run_demo,
)
