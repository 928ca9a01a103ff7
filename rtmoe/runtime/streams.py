"""What ``rtmoe stream`` reads about several streams before anything heavy loads.

The stream ids taken from LSL names and the ``--streams`` TOML file; argument checking
uses them, so this module imports neither torch nor the runtime loop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rtmoe.command import UserError
from rtmoe.config import RuntimeConfig

#: Settings every stream of one runtime shares: one publisher, one device and engine kind.
SHARED = ("zmq_address", "allow_remote", "single_frame", "device", "engine")


def stream_id_of(name: str) -> str:
    """A stream id from an LSL stream name: characters a topic cannot hold become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "stream"


def read_streams_file(path: str | Path, cfg: RuntimeConfig) -> list[dict[str, Any]]:
    """The streams of a TOML file (``rtmoe stream --streams FILE``), checked.

    Each ``[[stream]]`` table names ``lsl`` (the LSL stream name) and optionally ``id``
    (default from the name, `stream_id_of`), ``model``, ``subject``, ``profile_version``
    and any ``[runtime]`` field except the `SHARED` ones (e.g. ``hop_ms``, ``fill``,
    ``max_age_s``), which override ``cfg`` for that stream. Returns one dict per stream:
    ``lsl``, ``id``, ``model``, ``subject``, ``profile_version`` (None where not given)
    and ``cfg`` (that stream's `RuntimeConfig`).
    """
    import dataclasses

    from rtmoe.config import ConfigError, read_toml

    path = Path(path)
    try:
        data = read_toml(path)
    except ConfigError as err:
        raise UserError(f"--streams: {err}") from None
    tables = data.get("stream")
    if set(data) != {"stream"} or not isinstance(tables, list) or not tables:
        raise UserError(
            f'--streams {path}: write one [[stream]] table per stream (with lsl = "NAME"); '
            f"found {sorted(data)}"
        )
    names = {"lsl", "id", "model", "subject", "profile_version"}
    runtime_fields = {f.name for f in dataclasses.fields(RuntimeConfig)} - set(SHARED)
    entries = []
    for i, table in enumerate(tables, 1):
        where = f"--streams {path}, stream {i}"
        unknown = sorted(set(table) - names - runtime_fields)
        if unknown:
            raise UserError(
                f"{where}: unknown keys {unknown}; a stream takes {sorted(names)} and the "
                f"[runtime] fields {sorted(runtime_fields)}"
            )
        lsl = table.get("lsl")
        if not isinstance(lsl, str) or not lsl:
            raise UserError(f'{where}: give the LSL stream name, lsl = "EEG_A"')
        for key in ("id", "model", "subject"):
            if key in table and not isinstance(table[key], str):
                raise UserError(f"{where}: {key} = {table[key]!r} must be a string")
        version = table.get("profile_version")
        if version is not None and (not isinstance(version, int) or version < 1):
            raise UserError(f"{where}: profile_version = {version!r} must be an integer >= 1")
        overrides = {k: v for k, v in table.items() if k in runtime_fields}
        try:
            stream_cfg = dataclasses.replace(cfg, **overrides)
        except ConfigError as err:
            raise UserError(f"{where}: {err}") from None
        entries.append(
            {
                "lsl": lsl,
                "id": table.get("id") or stream_id_of(lsl),
                "model": table.get("model"),
                "subject": table.get("subject"),
                "profile_version": version,
                "cfg": stream_cfg,
            }
        )
    return entries
