"""Wire messages of the decode publisher: frozen dataclasses and pure JSON encode/decode.

Two topics, one JSON object per message (docs/protocol.md is the reference, and
docs/schema/*.schema.json validate the payloads):

- ``rtmoe.decode``: one per decoded window (every hop).
- ``rtmoe.status``: a heartbeat once a second, also while no decode is produced.
- ``rtmoe.preview`` (schema 1.3, opt-in: ``runtime.preview_hz``): the newest samples of
  every model channel, decimated, with per-channel quality flags, after each decode.

A runtime decoding several streams (schema 1.4) names each message's stream in
``stream_id`` and appends it to the topic (``rtmoe.decode.<stream_id>``), so a ZeroMQ
prefix subscription can take one stream; a single-stream runtime sends no stream id and
the topics above, as before.

Framing is either multipart ``[topic, payload]`` or a single frame
``topic + b" " + payload`` for subscribers that use ``ZMQ_CONFLATE`` (which drops
multipart messages). This module has no zmq import: the runtime, the tests and any
subscriber written in Python can use it without a socket.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from rtmoe import __version__
from rtmoe.errors import UserError

#: "MAJOR.MINOR". A major bump is breaking (a field removed, renamed, retyped or given a
#: new meaning); a minor bump only adds fields (and states), which readers must ignore if
#: unknown (an unknown state means "not decoding").
SCHEMA_VERSION = "1.4"
SCHEMA_MAJOR = int(SCHEMA_VERSION.split(".")[0])

TOPIC_DECODE = b"rtmoe.decode"
TOPIC_STATUS = b"rtmoe.status"
TOPIC_PREVIEW = b"rtmoe.preview"
#: A stream id (schema 1.4): it ends the topic, so no dot (topic separator) or space
#: (single-frame separator).
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Between topic and JSON in single-frame messages; a JSON object never starts with it.
SINGLE_FRAME_SEPARATOR = b" "


class ProtocolError(UserError, ValueError):
    """A message cannot be encoded or a payload is not a valid rtmoe message."""


class RuntimeState(StrEnum):
    """What the runtime is doing, as reported on the status topic."""

    WAITING = "WAITING"  # no sample received yet (stream not found or not started)
    RUNNING = "RUNNING"  # samples arrive and windows are decoded
    STALLED = "STALLED"  # samples stopped for longer than the watchdog timeout
    LAGGING = "LAGGING"  # samples arrive later than the lag budget (schema 1.2)
    ERROR = "ERROR"  # the stream is not decodable as opened; ``error`` says why (1.2)
    STOPPING = "STOPPING"  # last status before the publisher closes


class StatusError(StrEnum):
    """Why the state is ``ERROR`` (``StatusMessage.error``, schema 1.2)."""

    RATE_MISMATCH = "rate_mismatch"  # the sender's clock runs at another rate than declared
    STREAM_MISMATCH = "stream_mismatch"  # the stream came back with another rate/channels


@dataclass(frozen=True)
class DecodeMessage:
    """One decoded window, published on ``rtmoe.decode``.

    Times are LSL times (``pylsl.local_clock()`` seconds, the runtime's only time base).

    Parameters
    ----------
    seq : int
        Decode counter, 0 for the first decode of a run, +1 per published decode;
        a gap at the subscriber means decodes were lost in transport.
    model_id : str
        Identifier of the fine-tuned model (name and content hash of its checkpoint).
    subject_id : str or None
        Subject profile in use, ``None`` without one.
    labels : sequence of str, shape (n_outputs,)
        Class names, in the model's output order.
    probabilities : sequence of float, shape (n_outputs,)
        Class probabilities in [0, 1] (softmax output), parallel to ``labels``.
    label : str
        The decided class; one of ``labels``.
    gates : mapping of str to float
        Mean activation in [0, 1] of each expert's spectral gate for this window,
        keyed by expert name (e.g. ``{"expert_0": 0.61, ...}``).
    window_first_lsl_s, window_last_lsl_s : float
        LSL timestamps of the window's first and last sample.
    published_lsl_s : float
        LSL time just before the message was handed to the socket.
    latency_ms : float
        ``published_lsl_s - window_last_lsl_s`` in milliseconds: from the newest
        sample's acquisition to publication.
    compute_ms : float
        Time spent on this window (spectral features and inference), milliseconds.
    skipped_windows : int
        Windows skipped since the previous decode because decoding fell behind.
    extras : mapping of str to float or str
        Outputs of the runtime's plugin stages (schema 1.1), e.g. ``{"decision":
        "left_hand", "evidence": 1.02}``; empty without plugins. Values are finite
        numbers or strings; keys are the stages' documented names.
    valid : bool
        The quality verdict (schema 1.2): False when the window is not fit to act on
        (``invalid_reason`` says why); invalid windows are still published at the steady
        rate, and a subscriber should ignore them.
    repaired_share : float
        Share in [0, 1] of the window's input values that were non-finite or absurd and
        replaced by their channel's last good value (1.2).
    flat_channels : int
        Model channels flat over the window (dead electrode, zero-filled) (1.2).
    out_of_range_channels : int
        Model channels whose preprocessed signal leaves the plausible range in the
        window (artefact, saturation, filter ringing after a burst) (1.2).
    gap_in_window : bool
        Samples are missing inside the window (a gap shorter than the continuity
        limit, bridged) (1.2).
    invalid_reason : str or None
        Why ``valid`` is False, e.g. ``"3 of 3 channels flat"``; None when valid (1.2).
    stream_id : str or None
        The stream this window came from, in a runtime decoding several (1.4); None in a
        single-stream runtime. Also the topic's suffix.
    """

    seq: int
    model_id: str
    subject_id: str | None
    labels: Sequence[str]
    probabilities: Sequence[float]
    label: str
    gates: Mapping[str, float]
    window_first_lsl_s: float
    window_last_lsl_s: float
    published_lsl_s: float
    latency_ms: float
    compute_ms: float
    skipped_windows: int = 0
    extras: Mapping[str, float | str] = field(default_factory=dict)
    valid: bool = True
    repaired_share: float = 0.0
    flat_channels: int = 0
    out_of_range_channels: int = 0
    gap_in_window: bool = False
    invalid_reason: str | None = None
    stream_id: str | None = None

    def __post_init__(self) -> None:
        _check_stream_id(self)
        for name in ("valid", "gap_in_window"):
            if not isinstance(getattr(self, name), bool):
                raise ProtocolError(f"DecodeMessage.{name}={getattr(self, name)!r} must be a bool")
        _set_counts(self, "flat_channels", "out_of_range_channels")
        _set_finite(self, "repaired_share")
        if not 0.0 <= self.repaired_share <= 1.0:
            raise ProtocolError(
                f"DecodeMessage.repaired_share={self.repaired_share} must be in [0, 1]"
            )
        if self.valid != (self.invalid_reason is None):
            raise ProtocolError(
                f"DecodeMessage.valid={self.valid} with invalid_reason="
                f"{self.invalid_reason!r}; an invalid decode says why, a valid one has none"
            )
        # Normalise numpy scalars/arrays to plain tuples and floats so that the message
        # is immutable and json can write it.
        labels = tuple(str(name) for name in self.labels)
        probabilities = tuple(float(p) for p in self.probabilities)
        gates = {str(k): float(v) for k, v in self.gates.items()}
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "probabilities", probabilities)
        object.__setattr__(self, "gates", gates)
        object.__setattr__(self, "extras", _extras(self.extras))
        _set_counts(self, "seq", "skipped_windows")
        if not labels:
            raise ProtocolError("DecodeMessage.labels is empty; pass the class names")
        if len(probabilities) != len(labels):
            raise ProtocolError(
                f"DecodeMessage.probabilities has {len(probabilities)} values but labels "
                f"has {len(labels)}; pass one probability per class"
            )
        if self.label not in labels:
            raise ProtocolError(
                f"DecodeMessage.label={self.label!r} is not one of labels={list(labels)}"
            )
        _check_unit_interval("DecodeMessage.probabilities", probabilities)
        _check_unit_interval("DecodeMessage.gates", gates.values())
        _set_finite(
            self, "window_first_lsl_s", "window_last_lsl_s", "published_lsl_s", "latency_ms"
        )
        _set_finite(self, "compute_ms")
        _check_minimum(self, "compute_ms", 0.0)
        if self.window_first_lsl_s > self.window_last_lsl_s:
            raise ProtocolError(
                f"DecodeMessage.window_first_lsl_s={self.window_first_lsl_s} is after "
                f"window_last_lsl_s={self.window_last_lsl_s}; pass the first sample's time "
                "first"
            )


@dataclass(frozen=True)
class StatusMessage:
    """The once-a-second heartbeat, published on ``rtmoe.status``.

    Counters are totals since the runtime started; they never decrease.

    Parameters
    ----------
    seq : int
        Status counter, 0 for the first heartbeat, +1 per heartbeat.
    state : RuntimeState or str
        ``WAITING``, ``RUNNING``, ``STALLED``, ``LAGGING``, ``ERROR`` or ``STOPPING``.
    model_id, subject_id : str, str or None
        As in :class:`DecodeMessage`.
    sfreq : float
        Nominal sample rate the model expects, Hz.
    sfreq_effective : float or None
        Sample rate measured from the LSL timestamps over the recent past, Hz;
        ``None`` before enough samples arrived.
    samples_received : int
        Samples read from the inlet.
    dropped_samples : int
        Samples missing according to the timestamps (sum over gaps).
    gaps : int
        Number of timestamp discontinuities detected.
    skipped_windows : int
        Windows skipped because decoding fell behind.
    decodes : int
        Decode messages handed to the publisher (sent or dropped).
    publish_drops : int
        Messages that reached no subscriber because the publisher could not send them
        (a full subscriber queue drops for that subscriber only, seen there as seq gaps).
    uptime_s : float
        Seconds since the runtime started.
    published_lsl_s : float
        LSL time of this heartbeat.
    last_sample_lsl_s : float or None
        LSL timestamp of the newest sample received, ``None`` before the first.
    latency_ms_mean, latency_ms_max : float or None
        Mean and maximum ``latency_ms`` of the decodes since the previous heartbeat;
        ``None`` when there were none.
    rtmoe_version : str
        Version of the publishing rtmoe.
    disabled_plugins : sequence of str
        Specs of the runtime plugins disabled because they raised (schema 1.1); empty
        while all run.
    nonfinite_values : int
        NaN/inf input values replaced by their channel's last finite value (schema 1.1).
    filled_channels : sequence of str
        Model channels missing from the stream and fed with zeros (``--fill zeros``,
        schema 1.1).
    sfreq_declared : float or None
        The stream's declared (nominal) rate, Hz; ``None`` before it is found (1.2).
    sfreq_clock : float or None
        The sender's rate as its timestamps show it (the clock model's fit), Hz; the rate
        checked against ``sfreq_declared``; ``None`` until measured (1.2).
    timestamp_jitter_ms : float or None
        RMS of the raw timestamps around the clock model, ms (1.2).
    continuity_resets : int
        Times the signal's continuity was restarted (gaps, jumps, stalls) (1.2).
    lag_ms : float or None
        Smallest age of the newest sample when it was read, over the last heartbeat
        period, ms; ``None`` without samples in the period (1.2).
    stale_windows : int
        Windows not published because their data was older than the maximum age or
        their latency was negative (1.2).
    refused_windows : int
        Windows not decoded because the stream was not the one opened, not yet
        confirmed after a stall, or at the wrong rate (1.2).
    error : StatusError, str or None
        Why the state is ``ERROR`` (``rate_mismatch``, ``stream_mismatch``); else None (1.2).
    error_detail : str or None
        A sentence naming what is wrong and what to do (1.2).
    invalid_decodes : int
        Decodes published with ``valid`` False (1.2).
    stream_id : str or None
        As in :class:`DecodeMessage` (1.4): each stream of a multi-stream runtime has its
        own status, counters and state.
    adaptation_shift : sequence of float or None
        With session adaptation on (``runtime.adapt_s``, 1.4): the log-probability offset
        per class (parallel to the decodes' ``labels``) that the next decode is corrected
        by; None when adaptation is off.
    """

    seq: int
    state: RuntimeState | str
    model_id: str
    subject_id: str | None
    sfreq: float
    sfreq_effective: float | None
    samples_received: int
    dropped_samples: int
    gaps: int
    skipped_windows: int
    decodes: int
    publish_drops: int
    uptime_s: float
    published_lsl_s: float
    last_sample_lsl_s: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_max: float | None = None
    rtmoe_version: str = field(default=__version__)
    disabled_plugins: Sequence[str] = ()
    nonfinite_values: int = 0
    filled_channels: Sequence[str] = ()
    sfreq_declared: float | None = None
    sfreq_clock: float | None = None
    timestamp_jitter_ms: float | None = None
    continuity_resets: int = 0
    lag_ms: float | None = None
    stale_windows: int = 0
    refused_windows: int = 0
    error: StatusError | str | None = None
    error_detail: str | None = None
    invalid_decodes: int = 0
    stream_id: str | None = None
    adaptation_shift: Sequence[float] | None = None

    def __post_init__(self) -> None:
        _check_stream_id(self)
        if self.adaptation_shift is not None:
            shift = tuple(float(v) for v in self.adaptation_shift)
            if not all(map(math.isfinite, shift)):
                raise ProtocolError(f"StatusMessage.adaptation_shift={shift} must be finite")
            object.__setattr__(self, "adaptation_shift", shift)
        if self.error is not None:
            try:
                object.__setattr__(self, "error", StatusError(self.error))
            except ValueError:
                raise ProtocolError(
                    f"StatusMessage.error={self.error!r} is not an error; use one of "
                    f"{[e.value for e in StatusError]} or None"
                ) from None
        _set_counts(self, "continuity_resets", "stale_windows", "refused_windows")
        _set_counts(self, "invalid_decodes")
        try:
            object.__setattr__(self, "state", RuntimeState(self.state))
        except ValueError:
            raise ProtocolError(
                f"StatusMessage.state={self.state!r} is not a state; use one of "
                f"{[s.value for s in RuntimeState]}"
            ) from None
        _set_counts(self, "seq", "samples_received", "dropped_samples", "gaps", "skipped_windows")
        _set_counts(self, "decodes", "publish_drops", "nonfinite_values")
        object.__setattr__(self, "disabled_plugins", tuple(map(str, self.disabled_plugins)))
        object.__setattr__(self, "filled_channels", tuple(map(str, self.filled_channels)))
        _set_finite(self, "sfreq", "uptime_s", "published_lsl_s")
        _check_minimum(self, "uptime_s", 0.0)
        if self.sfreq <= 0:
            raise ProtocolError(f"StatusMessage.sfreq={self.sfreq} must be > 0 Hz")
        _set_finite(
            self,
            "sfreq_effective",
            "last_sample_lsl_s",
            "latency_ms_mean",
            "latency_ms_max",
            "sfreq_declared",
            "sfreq_clock",
            "timestamp_jitter_ms",
            "lag_ms",
            nullable=True,
        )


@dataclass(frozen=True)
class PreviewMessage:
    """Signal preview (schema 1.3), published on ``rtmoe.preview`` after each decode when
    the runtime's ``preview_hz`` is set: the samples the decode added to the window,
    decimated, and the quality of every model channel over the window.

    Parameters
    ----------
    seq : int
        Preview counter, 0 first, +1 per preview.
    model_id : str
        As in :class:`DecodeMessage`.
    ch_names : sequence of str, shape (n_chans,)
        Model channels, in the model's order.
    sfreq : float
        Rate of the columns of ``data_uv``, Hz (the model's rate over the decimation).
    last_lsl_s : float
        LSL time of the last column (the decoded window's ``window_last_lsl_s``); column
        ``j`` of ``n`` is at ``last_lsl_s - (n - 1 - j) / sfreq``.
    data_uv : sequence of sequence of float, shape (n_chans, n)
        The preprocessed signal (the model's input) in µV, each column the mean of
        ``1 / sfreq`` s of model-rate samples; channel-first.
    std_uv, max_abs_uv : sequence of float, shape (n_chans,)
        Standard deviation and largest absolute value of each channel over the decoded
        window, µV.
    flat, out_of_range, filled : sequence of bool, shape (n_chans,)
        Flat over the window (``std_uv`` below the runtime's ``flat_uv``), leaving the
        plausible range (``max_abs_uv`` above ``out_of_range_uv``: saturation, artefact),
        absent from the stream and fed with zeros.
    stream_id : str or None
        As in :class:`DecodeMessage` (1.4).
    """

    seq: int
    model_id: str
    ch_names: Sequence[str]
    sfreq: float
    last_lsl_s: float
    data_uv: Sequence[Sequence[float]]
    std_uv: Sequence[float]
    max_abs_uv: Sequence[float]
    flat: Sequence[bool]
    out_of_range: Sequence[bool]
    filled: Sequence[bool]
    stream_id: str | None = None

    def __post_init__(self) -> None:
        _check_stream_id(self)
        _set_counts(self, "seq")
        _set_finite(self, "sfreq", "last_lsl_s")
        if self.sfreq <= 0:
            raise ProtocolError(f"PreviewMessage.sfreq={self.sfreq} must be > 0 Hz")
        names = tuple(map(str, self.ch_names))
        object.__setattr__(self, "ch_names", names)
        n_chans = len(names)
        rows = tuple(tuple(float(v) for v in row) for row in self.data_uv)
        lengths = {len(row) for row in rows}
        if len(rows) != n_chans or len(lengths) > 1:
            raise ProtocolError(
                f"PreviewMessage.data_uv has {len(rows)} rows of lengths {sorted(lengths)} for "
                f"{n_chans} channels; pass one row per channel, all of one length"
            )
        object.__setattr__(self, "data_uv", rows)
        for name in ("std_uv", "max_abs_uv"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != n_chans:
                raise ProtocolError(f"PreviewMessage.{name} needs {n_chans} values")
            object.__setattr__(self, name, values)
        for name in ("flat", "out_of_range", "filled"):
            flags = tuple(getattr(self, name))
            if len(flags) != n_chans or not all(isinstance(f, bool) for f in flags):
                raise ProtocolError(
                    f"PreviewMessage.{name}={flags!r} needs {n_chans} bools (plain bool, "
                    "e.g. numpy's .tolist())"
                )
            object.__setattr__(self, name, flags)
        values = itertools.chain(*rows, self.std_uv, self.max_abs_uv)
        if not all(map(math.isfinite, values)):
            raise ProtocolError("PreviewMessage values must be finite; NaN/inf cannot be sent")


Message = DecodeMessage | StatusMessage | PreviewMessage

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def to_dict(msg: Message) -> dict[str, Any]:
    """The JSON object of ``msg`` (``type`` and ``schema_version`` first)."""
    if isinstance(msg, DecodeMessage):
        # Written out on the per-hop path: dataclasses.asdict deep-copies (~18 µs vs 0.3 µs).
        return {
            "type": "decode",
            "schema_version": SCHEMA_VERSION,
            "seq": msg.seq,
            "model_id": msg.model_id,
            "subject_id": msg.subject_id,
            "labels": msg.labels,
            "probabilities": msg.probabilities,
            "label": msg.label,
            "gates": msg.gates,
            "window_first_lsl_s": msg.window_first_lsl_s,
            "window_last_lsl_s": msg.window_last_lsl_s,
            "published_lsl_s": msg.published_lsl_s,
            "latency_ms": msg.latency_ms,
            "compute_ms": msg.compute_ms,
            "skipped_windows": msg.skipped_windows,
            "extras": msg.extras,
            "valid": msg.valid,
            "repaired_share": msg.repaired_share,
            "flat_channels": msg.flat_channels,
            "out_of_range_channels": msg.out_of_range_channels,
            "gap_in_window": msg.gap_in_window,
            "invalid_reason": msg.invalid_reason,
            "stream_id": msg.stream_id,
        }
    if isinstance(msg, PreviewMessage):
        data = {"type": "preview", "schema_version": SCHEMA_VERSION}
        data.update((f.name, getattr(msg, f.name)) for f in fields(PreviewMessage))
        return data
    if isinstance(msg, StatusMessage):
        data: dict[str, Any] = {"type": "status", "schema_version": SCHEMA_VERSION}
        data.update((f.name, getattr(msg, f.name)) for f in fields(StatusMessage))
        data["state"] = msg.state.value
        data["error"] = None if msg.error is None else msg.error.value
        return data
    raise ProtocolError(f"msg is a {type(msg).__name__}; pass a DecodeMessage or a StatusMessage")


def topic_of(msg: Message) -> bytes:
    """The topic frame of ``msg``: ``rtmoe.decode``, or ``rtmoe.decode.<stream_id>``."""
    base = _TOPIC_OF[type(msg)]
    return base if msg.stream_id is None else base + b"." + msg.stream_id.encode()


def split_topic(topic: bytes) -> tuple[bytes, str | None]:
    """``(base topic, stream id or None)`` of a received topic frame."""
    for base in _TOPICS:
        if topic == base:
            return base, None
        if topic.startswith(base + b".") and STREAM_ID.fullmatch(topic[len(base) + 1 :].decode()):
            return base, topic[len(base) + 1 :].decode()
    raise ProtocolError(
        f"unknown topic {topic!r}; expected {TOPIC_DECODE!r}, {TOPIC_STATUS!r} or "
        f"{TOPIC_PREVIEW!r}, each optionally followed by .<stream_id>"
    )


def encode(msg: Message) -> tuple[bytes, bytes]:
    """``(topic, payload)`` for a multipart send; payload is compact UTF-8 JSON."""
    data = to_dict(msg)
    try:
        payload = _ENCODER.encode(data).encode()
    except (ValueError, TypeError) as err:
        # Dataclass checks make this unreachable for messages built normally; a message
        # altered with object.__setattr__ still gets a clear error.
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {err}") from None
    return topic_of(msg), payload


def encode_single_frame(msg: Message) -> bytes:
    """``topic + b" " + payload`` as one frame, for subscribers using ``ZMQ_CONFLATE``.

    The topic stays at the start of the frame, so ZeroMQ prefix subscriptions still
    filter by it.
    """
    topic, payload = encode(msg)
    return topic + SINGLE_FRAME_SEPARATOR + payload


def decode(frames: bytes | Sequence[bytes]) -> Message:
    """Parse and validate a received message.

    Parameters
    ----------
    frames : bytes or sequence of bytes
        ``[topic, payload]`` from ``recv_multipart()``, or one single-frame message
        (``recv()``, or a one-element list).

    Returns
    -------
    DecodeMessage or StatusMessage

    Raises
    ------
    ProtocolError
        Unknown topic, bad JSON, non-finite numbers, another schema major version,
        missing fields or wrong types; the message names what is wrong.
    """
    if isinstance(frames, (bytes, bytearray, memoryview)):
        frames = [bytes(frames)]
    frames = [bytes(f) for f in frames]
    if len(frames) == 1:
        topic, sep, payload = frames[0].partition(SINGLE_FRAME_SEPARATOR)
        if not sep:
            raise ProtocolError(
                "single-frame message has no space between topic and JSON; expected "
                "b'rtmoe.decode {...}' or b'rtmoe.status {...}'"
            )
    elif len(frames) == 2:
        topic, payload = frames
    else:
        raise ProtocolError(
            f"message has {len(frames)} frames; expected 2 ([topic, payload]) or 1 (single frame)"
        )
    try:
        base, stream_id = split_topic(topic)
    except UnicodeDecodeError:
        raise ProtocolError(f"topic {topic!r} is not UTF-8") from None
    cls = _TOPICS[base]
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolError(f"{topic.decode()} payload is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{topic.decode()} payload is a JSON {type(data).__name__}, not an object"
        )
    msg = from_dict(data, expected=cls)
    if msg.stream_id != stream_id:
        raise ProtocolError(
            f"topic {topic!r} carries a payload with stream_id={msg.stream_id!r}; a message's "
            "topic ends with .<stream_id> exactly when its payload names one"
        )
    return msg


def from_dict(data: Mapping[str, Any], expected: type[Message] | None = None) -> Message:
    """Validate a parsed payload and build its message; unknown keys are ignored."""
    _check_version(data.get("schema_version"))
    kind = data.get("type")
    cls = _TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"payload type={kind!r}; expected 'decode', 'status' or 'preview'")
    if expected is not None and cls is not expected:
        raise ProtocolError(
            f"payload type={kind!r} arrived on the {_TOPIC_OF[expected].decode()} topic"
        )
    spec = _FIELD_TYPES[cls]
    missing = [name for name in spec if name not in data and name not in _OPTIONAL]
    if missing:
        raise ProtocolError(
            f"{kind} payload lacks required fields {missing} (schema {SCHEMA_VERSION})"
        )
    kwargs = {}
    for name, check in spec.items():
        if name in data:
            value = data[name]
            if not check(value):
                raise ProtocolError(
                    f"{kind} field {name}={value!r} has the wrong type; see docs/protocol.md"
                )
            kwargs[name] = value
    return cls(**kwargs)


def _check_version(version: Any) -> None:
    if not isinstance(version, str):
        raise ProtocolError(
            f"payload schema_version={version!r} is missing or not a 'MAJOR.MINOR' string"
        )
    major_text = version.split(".", 1)[0]
    if not major_text.isdigit():
        raise ProtocolError(f"payload schema_version={version!r} is not 'MAJOR.MINOR'")
    if int(major_text) != SCHEMA_MAJOR:
        raise ProtocolError(
            f"payload schema_version={version!r} has major version {major_text}; this "
            f"reader understands major {SCHEMA_MAJOR} ({SCHEMA_VERSION}); use a matching "
            "rtmoe version on both ends"
        )


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"payload contains {name}; rtmoe messages carry finite numbers only")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _nullable(check):
    return lambda v: v is None or check(v)


def _list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is_extra(v: Any) -> bool:
    return _is_number(v) or _is_str(v)


def _extras(extras: Mapping[str, Any]) -> dict[str, float | str]:
    """Stage outputs as plain ``str -> float | str``; NaN, inf and other types refused."""
    out: dict[str, float | str] = {}
    for key, value in extras.items():
        if isinstance(value, str):
            out[str(key)] = value
            continue
        number = float(value) if _is_number(value) else math.nan
        if not math.isfinite(number):
            raise ProtocolError(
                f"DecodeMessage.extras[{key!r}]={value!r}; extras values must be finite "
                "numbers or strings"
            )
        out[str(key)] = number
    return out


_FIELD_TYPES: dict[type, dict[str, Any]] = {
    DecodeMessage: {
        "seq": _is_int,
        "model_id": _is_str,
        "subject_id": _nullable(_is_str),
        "labels": _list_of(_is_str),
        "probabilities": _list_of(_is_number),
        "label": _is_str,
        "gates": lambda v: isinstance(v, dict) and all(map(_is_number, v.values())),
        "window_first_lsl_s": _is_number,
        "window_last_lsl_s": _is_number,
        "published_lsl_s": _is_number,
        "latency_ms": _is_number,
        "compute_ms": _is_number,
        "skipped_windows": _is_int,
        "extras": lambda v: isinstance(v, dict) and all(map(_is_extra, v.values())),
        "valid": _is_bool,
        "repaired_share": _is_number,
        "flat_channels": _is_int,
        "out_of_range_channels": _is_int,
        "gap_in_window": _is_bool,
        "invalid_reason": _nullable(_is_str),
        "stream_id": _nullable(_is_str),
    },
    StatusMessage: {
        "seq": _is_int,
        "state": _is_str,
        "model_id": _is_str,
        "subject_id": _nullable(_is_str),
        "sfreq": _is_number,
        "sfreq_effective": _nullable(_is_number),
        "samples_received": _is_int,
        "dropped_samples": _is_int,
        "gaps": _is_int,
        "skipped_windows": _is_int,
        "decodes": _is_int,
        "publish_drops": _is_int,
        "uptime_s": _is_number,
        "published_lsl_s": _is_number,
        "last_sample_lsl_s": _nullable(_is_number),
        "latency_ms_mean": _nullable(_is_number),
        "latency_ms_max": _nullable(_is_number),
        "rtmoe_version": _is_str,
        "disabled_plugins": _list_of(_is_str),
        "nonfinite_values": _is_int,
        "filled_channels": _list_of(_is_str),
        "sfreq_declared": _nullable(_is_number),
        "sfreq_clock": _nullable(_is_number),
        "timestamp_jitter_ms": _nullable(_is_number),
        "continuity_resets": _is_int,
        "lag_ms": _nullable(_is_number),
        "stale_windows": _is_int,
        "refused_windows": _is_int,
        "error": _nullable(_is_str),
        "error_detail": _nullable(_is_str),
        "invalid_decodes": _is_int,
        "stream_id": _nullable(_is_str),
        "adaptation_shift": _nullable(_list_of(_is_number)),
    },
    PreviewMessage: {
        "seq": _is_int,
        "model_id": _is_str,
        "ch_names": _list_of(_is_str),
        "sfreq": _is_number,
        "last_lsl_s": _is_number,
        "data_uv": _list_of(_list_of(_is_number)),
        "std_uv": _list_of(_is_number),
        "max_abs_uv": _list_of(_is_number),
        "flat": _list_of(_is_bool),
        "out_of_range": _list_of(_is_bool),
        "filled": _list_of(_is_bool),
        "stream_id": _nullable(_is_str),
    },
}
# Every 1.0 field is required; fields added by a later 1.x are optional when reading (a
# 1.0 publisher does not send them) and always written.
_OPTIONAL = frozenset(
    {
        *("extras", "disabled_plugins", "nonfinite_values", "filled_channels"),  # 1.1
        *("sfreq_declared", "sfreq_clock", "timestamp_jitter_ms", "continuity_resets"),  # 1.2
        *("lag_ms", "stale_windows", "refused_windows", "error", "error_detail"),  # 1.2
        *("valid", "repaired_share", "flat_channels", "out_of_range_channels"),  # 1.2
        *("gap_in_window", "invalid_reason", "invalid_decodes"),  # 1.2
        "stream_id",  # 1.4
        "adaptation_shift",  # 1.4
    }
)
_TOPICS = {
    TOPIC_DECODE: DecodeMessage,
    TOPIC_STATUS: StatusMessage,
    TOPIC_PREVIEW: PreviewMessage,
}
_TOPIC_OF = {cls: topic for topic, cls in _TOPICS.items()}
_TYPES = {"decode": DecodeMessage, "status": StatusMessage, "preview": PreviewMessage}


def _check_stream_id(msg: Any) -> None:
    sid = msg.stream_id
    if sid is not None and not (isinstance(sid, str) and STREAM_ID.fullmatch(sid)):
        raise ProtocolError(
            f"{type(msg).__name__}.stream_id={sid!r} must be 1-64 letters, digits, '_' or '-' "
            "(it ends the topic, so no dots or spaces)"
        )


def _set_counts(obj: Any, *names: str) -> None:
    """Check that fields are ints >= 0 and store them as Python ints (numpy ints too)."""
    for name in names:
        value = getattr(obj, name)
        try:
            if isinstance(value, bool):
                raise TypeError
            count = operator.index(value)
        except TypeError:
            count = -1
        if count < 0:
            raise ProtocolError(f"{type(obj).__name__}.{name}={value!r} must be an int >= 0")
        object.__setattr__(obj, name, count)


def _set_finite(obj: Any, *names: str, nullable: bool = False) -> None:
    """Check that fields are finite numbers and store them as Python floats."""
    for name in names:
        value = getattr(obj, name)
        if value is None and nullable:
            continue
        number = float(value) if _is_number(value) else math.nan
        if not math.isfinite(number):
            raise ProtocolError(
                f"{type(obj).__name__}.{name}={value!r} must be a finite number"
                + (" or None" if nullable else "")
                + "; NaN/inf cannot be sent as JSON"
            )
        object.__setattr__(obj, name, number)


def _check_minimum(obj: Any, name: str, minimum: float) -> None:
    value = getattr(obj, name)
    if value < minimum:
        raise ProtocolError(f"{type(obj).__name__}.{name}={value} must be >= {minimum}")


def _check_unit_interval(name: str, values: Iterable[float]) -> None:
    for value in values:
        # Written as a negated range test so that NaN fails it too.
        if not 0.0 <= value <= 1.0:
            raise ProtocolError(f"{name} contains {value!r}; values must be finite and in [0, 1]")
