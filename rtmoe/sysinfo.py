"""``rtmoe sys-info``: versions, native libraries and devices, for a bug report.

Every line is measured on this machine when the command runs: a package that is not
installed says so, one that is installed but fails to import shows its error, never a
guess.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from importlib import metadata

from rtmoe import __version__
from rtmoe import commands as rtmoe_commands
from rtmoe.command import Command

#: Distributions reported by version (import name differs for some; only metadata is read).
PACKAGES: tuple[str, ...] = (
    "numpy", "scipy", "torch", "onnxruntime", "torch-tensorrt", "pylsl", "mne-lsl",
    "pyzmq", "mne", "safetensors",
)  # fmt: skip


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _probe(what: Callable[[], str]) -> str:
    try:
        return what()
    except Exception as err:  # a broken native library is exactly what this reports
        return f"unavailable ({type(err).__name__}: {err})"


def _torch() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"CUDA build {torch.version.cuda or 'none'}; no CUDA device"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"CUDA {torch.version.cuda}; devices: {', '.join(names)}"


def _liblsl() -> str:
    import pylsl

    path = getattr(getattr(pylsl, "lib", None), "lib", None)
    where = getattr(path, "_name", "unknown path")
    return f"liblsl {pylsl.library_version()} (protocol {pylsl.protocol_version()}) at {where}"


def _libzmq() -> str:
    import zmq

    return f"libzmq {zmq.zmq_version()}"


def _onnxruntime() -> str:
    import onnxruntime

    return "providers: " + ", ".join(onnxruntime.get_available_providers())


def _engine() -> str:
    from rtmoe.engine.build import choose_backend
    from rtmoe.runtime.loop import resolve_device

    device = resolve_device("auto")
    order, why = choose_backend(device)
    return f"device auto → {device}; engine auto tries {' → '.join(order)} ({why})"


def report() -> list[tuple[str, str]]:
    """``(name, value)`` rows of what ``rtmoe sys-info`` prints."""
    rows = [
        ("rtmoe", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
    ]
    rows += [(dist, _version(dist)) for dist in PACKAGES]
    rows += [
        ("cuda", _probe(_torch)),
        ("liblsl", _probe(_liblsl)),
        ("libzmq", _probe(_libzmq)),
        ("onnxruntime", _probe(_onnxruntime)),
        ("engine", _probe(_engine)),
    ]
    return rows


def _run(args: argparse.Namespace) -> int:
    rows = report()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


command = Command(
    help=rtmoe_commands.sys_info.help,  # the entry-point stub's line
    add_arguments=lambda parser: None,
    run=_run,
)
