"""Subscriber client for rtmoe decodes: pyzmq and the standard library only.

It runs inside PsychoPy's Python or any lab's Python without rtmoe (and without torch);
copying this one file next to an experiment is enough. docs/protocol.md is the
reference for the wire format; the field names below are the schema-validated contract,
and tests/test_subscriber.py checks that this parser agrees with
``rtmoe.transport.messages`` on real encoded messages, so the two cannot drift.

Two ways to read:

- **In order** (loggers, closed-loop logic): :meth:`Subscriber.recv`,
  :meth:`Subscriber.messages` / :meth:`Subscriber.decodes` (iterators that end after a
  silence), or :meth:`Subscriber.start` with a callback run on a background thread.
- **Newest only** (a display that polls each frame): :meth:`Subscriber.latest`
  (non-blocking) and :meth:`Subscriber.wait` (blocks for a decode not yet returned).

``seq`` holes are counted as drops on this side (:attr:`SubscriberStats.dropped`).
A ``seq`` (or heartbeat ``uptime_s``) that goes back is a runtime restart, not a drop;
ZeroMQ reconnects to a restarted runtime by itself, and holes across a reconnection
are not counted as drops.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

#: Major version of docs/protocol.md this client understands ("1.x", any minor).
SCHEMA_MAJOR = 1
TOPIC_DECODE = "rtmoe.decode"
TOPIC_STATUS = "rtmoe.status"
DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
_TOPICS = {"decode": TOPIC_DECODE, "status": TOPIC_STATUS}


class ProtocolError(ValueError):
    """A payload is not a valid rtmoe message, or has another schema major version."""


@dataclass(frozen=True)
class Decode:
    """One decode as received (fields as in docs/protocol.md, times in LSL seconds).

    ``received_s`` is this machine's ``time.monotonic()`` when the message was read;
    it is not part of the wire message. ``valid`` False (schema 1.2) means the window is
    not fit to act on (``invalid_reason`` says why): show it as such, do not react to it.
    """

    seq: int
    model_id: str
    subject_id: str | None
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    label: str
    gates: dict[str, float]
    window_first_lsl_s: float
    window_last_lsl_s: float
    published_lsl_s: float
    latency_ms: float
    compute_ms: float
    skipped_windows: int
    extras: dict[str, float | str]
    valid: bool = True
    repaired_share: float = 0.0
    flat_channels: int = 0
    out_of_range_channels: int = 0
    gap_in_window: bool = False
    invalid_reason: str | None = None
    stream_id: str | None = None
    received_s: float = field(default=math.nan, compare=False)

    def probability(self, label: str) -> float:
        """Probability of class ``label``."""
        try:
            return self.probabilities[self.labels.index(label)]
        except ValueError:
            raise KeyError(
                f"label={label!r} is not a class of model {self.model_id!r}; "
                f"use one of {list(self.labels)}"
            ) from None


@dataclass(frozen=True)
class Status:
    """One heartbeat as received (fields as in docs/protocol.md)."""

    seq: int
    state: str
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
    last_sample_lsl_s: float | None
    latency_ms_mean: float | None
    latency_ms_max: float | None
    rtmoe_version: str
    disabled_plugins: tuple[str, ...]
    nonfinite_values: int
    filled_channels: tuple[str, ...]
    sfreq_declared: float | None = None
    sfreq_clock: float | None = None
    timestamp_jitter_ms: float | None = None
    continuity_resets: int = 0
    lag_ms: float | None = None
    stale_windows: int = 0
    refused_windows: int = 0
    error: str | None = None
    error_detail: str | None = None
    invalid_decodes: int = 0
    stream_id: str | None = None
    adaptation_shift: tuple[float, ...] | None = None
    received_s: float = field(default=math.nan, compare=False)

    @property
    def decoding(self) -> bool:
        """Whether the runtime publishes decodes in this state (``RUNNING``/``LAGGING``);
        a state this client does not know counts as not decoding."""
        return self.state in ("RUNNING", "LAGGING")


Message = Decode | Status


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_extra(v: Any) -> bool:
    return _is_num(v) or _is_str(v)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(map(check, v))


# The schema 1.4 contract: every 1.0 field is required, the 1.1 to 1.4 fields are
# optional (an older runtime does not send them); fields of a later 1.x are ignored.
_FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "decode": {
        "seq": _is_int,
        "model_id": _is_str,
        "subject_id": _or_null(_is_str),
        "labels": _list_of(_is_str),
        "probabilities": _list_of(_is_num),
        "label": _is_str,
        "gates": lambda v: isinstance(v, dict) and all(map(_is_num, v.values())),
        "window_first_lsl_s": _is_num,
        "window_last_lsl_s": _is_num,
        "published_lsl_s": _is_num,
        "latency_ms": _is_num,
        "compute_ms": _is_num,
        "skipped_windows": _is_int,
        "extras": lambda v: isinstance(v, dict) and all(map(_is_extra, v.values())),
        "valid": _is_bool,
        "repaired_share": _is_num,
        "flat_channels": _is_int,
        "out_of_range_channels": _is_int,
        "gap_in_window": _is_bool,
        "invalid_reason": _or_null(_is_str),
        "stream_id": _or_null(_is_str),
    },
    "status": {
        "seq": _is_int,
        "state": _is_str,
        "model_id": _is_str,
        "subject_id": _or_null(_is_str),
        "sfreq": _is_num,
        "sfreq_effective": _or_null(_is_num),
        "samples_received": _is_int,
        "dropped_samples": _is_int,
        "gaps": _is_int,
        "skipped_windows": _is_int,
        "decodes": _is_int,
        "publish_drops": _is_int,
        "uptime_s": _is_num,
        "published_lsl_s": _is_num,
        "last_sample_lsl_s": _or_null(_is_num),
        "latency_ms_mean": _or_null(_is_num),
        "latency_ms_max": _or_null(_is_num),
        "rtmoe_version": _is_str,
        "disabled_plugins": _list_of(_is_str),
        "nonfinite_values": _is_int,
        "filled_channels": _list_of(_is_str),
        "sfreq_declared": _or_null(_is_num),
        "sfreq_clock": _or_null(_is_num),
        "timestamp_jitter_ms": _or_null(_is_num),
        "continuity_resets": _is_int,
        "lag_ms": _or_null(_is_num),
        "stale_windows": _is_int,
        "refused_windows": _is_int,
        "error": _or_null(_is_str),
        "error_detail": _or_null(_is_str),
        "invalid_decodes": _is_int,
        "stream_id": _or_null(_is_str),
        "adaptation_shift": _or_null(_list_of(_is_num)),
    },
}
# Fields a 1.0 (or 1.1) runtime does not send, and the value they are read as.
_ADDED_SINCE_1_0: dict[str, Any] = {
    "extras": {},
    "disabled_plugins": [],
    "nonfinite_values": 0,
    "filled_channels": [],
    # 1.2
    "sfreq_declared": None,
    "sfreq_clock": None,
    "timestamp_jitter_ms": None,
    "continuity_resets": 0,
    "lag_ms": None,
    "stale_windows": 0,
    "refused_windows": 0,
    "error": None,
    "error_detail": None,
    "invalid_decodes": 0,
    "valid": True,
    "repaired_share": 0.0,
    "flat_channels": 0,
    "out_of_range_channels": 0,
    "gap_in_window": False,
    "invalid_reason": None,
    "stream_id": None,  # 1.4: set only by a runtime decoding several streams
    "adaptation_shift": None,  # 1.4: set only with session adaptation on
}


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"payload contains {name}; rtmoe sends finite numbers only")


def parse(frames: bytes | Sequence[bytes], received_s: float = math.nan) -> Message:
    """Parse one received message, in either framing.

    Parameters
    ----------
    frames : bytes or sequence of bytes
        ``[topic, payload]`` (multipart) or one ``topic + b" " + payload`` frame.
    received_s : float
        ``time.monotonic()`` at receipt, stored in the result.

    Returns
    -------
    Decode or Status

    Raises
    ------
    ProtocolError
        Another schema major version, unknown topic or type, bad JSON, non-finite
        numbers, missing fields or wrong types.
    """
    if isinstance(frames, (bytes, bytearray, memoryview)):
        frames = [frames]
    if len(frames) == 1:
        topic, sep, payload = bytes(frames[0]).partition(b" ")
        if not sep:
            raise ProtocolError("single-frame message has no space between topic and JSON")
    elif len(frames) == 2:
        topic, payload = bytes(frames[0]), bytes(frames[1])
    else:
        raise ProtocolError(f"message has {len(frames)} frames; expected 1 or 2")
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except ValueError as err:
        raise ProtocolError(f"{topic!r} payload is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{topic!r} payload is not a JSON object")
    version = data.get("schema_version")
    major = version.split(".", 1)[0] if isinstance(version, str) else ""
    if not major.isdigit() or int(major) != SCHEMA_MAJOR:
        raise ProtocolError(
            f"payload schema_version={version!r}; this client reads schema "
            f"{SCHEMA_MAJOR}.x; use plugins/subscriber.py from the same rtmoe version "
            "as the runtime"
        )
    kind = data.get("type")
    stream_id = data.get("stream_id")
    suffix = f".{stream_id}" if isinstance(stream_id, str) else ""
    if kind not in _FIELDS or (_TOPICS[kind] + suffix).encode() != topic:
        raise ProtocolError(f"payload type={kind!r} on topic {topic!r} is not an rtmoe message")
    values = {}
    for name, check in _FIELDS[kind].items():
        if name not in data and name in _ADDED_SINCE_1_0:
            values[name] = _ADDED_SINCE_1_0[name]
            continue
        if name not in data:
            raise ProtocolError(f"{kind} payload lacks field {name!r}")
        if not check(data[name]):
            raise ProtocolError(f"{kind} field {name}={data[name]!r} has the wrong type")
        values[name] = data[name]
    if kind == "status":
        values["disabled_plugins"] = tuple(values["disabled_plugins"])
        values["filled_channels"] = tuple(values["filled_channels"])
        if values["adaptation_shift"] is not None:
            values["adaptation_shift"] = tuple(map(float, values["adaptation_shift"]))
        return Status(**values, received_s=received_s)
    if len(values["probabilities"]) != len(values["labels"]) or not values["labels"]:
        raise ProtocolError(
            f"decode has {len(values['probabilities'])} probabilities for "
            f"{len(values['labels'])} labels"
        )
    if values["label"] not in values["labels"]:
        raise ProtocolError(f"decode label={values['label']!r} is not one of its labels")
    values["labels"] = tuple(values["labels"])
    values["probabilities"] = tuple(map(float, values["probabilities"]))
    values["gates"] = {k: float(v) for k, v in values["gates"].items()}
    for name in ("window_first_lsl_s", "window_last_lsl_s", "published_lsl_s"):
        values[name] = float(values[name])
    values["latency_ms"] = float(values["latency_ms"])
    values["compute_ms"] = float(values["compute_ms"])
    values["repaired_share"] = float(values["repaired_share"])
    values["extras"] = {k: v if _is_str(v) else float(v) for k, v in values["extras"].items()}
    return Decode(**values, received_s=received_s)


@cache
def lsl_clock() -> Callable[[], float] | None:
    """``pylsl.local_clock`` if pylsl can be imported, else None (LSL ages unknown)."""
    try:
        from pylsl import local_clock
    except (ImportError, RuntimeError):  # RuntimeError: pylsl without its liblsl binary
        return None
    return local_clock


@dataclass
class SubscriberStats:
    """What this client has seen; counters since it was created.

    Attributes
    ----------
    decodes, statuses : int
        Messages received.
    dropped : int
        Decodes missing from ``seq`` between two received decodes of one runtime run:
        lost between the runtime and this client (its own queue, or the publisher's
        queue for a slow subscriber). With ``conflate=True`` these are the decodes that
        were replaced by newer ones, by design.
    restarts : int
        Runtime restarts seen: a decode or status ``seq`` that goes back, or a status
        ``uptime_s`` that does. Never counted as drops.
    disconnects : int
        Times the connection to the runtime was lost (ZeroMQ reconnects by itself).
    """

    decodes: int = 0
    statuses: int = 0
    dropped: int = 0
    restarts: int = 0
    disconnects: int = 0


class Subscriber:
    """Connects to an rtmoe publisher and reads decodes and heartbeats.

    Parameters
    ----------
    address : str
        The runtime's endpoint, e.g. ``tcp://127.0.0.1:5556``.
    topics : sequence of {"decode", "status"}
        Topics to subscribe to.
    conflate : bool
        Keep only the newest message in the receive queue (``ZMQ_CONFLATE``). Needs the
        runtime's single-frame option and ``topics=("decode",)``; ``seq`` holes are then
        expected and counted in ``stats.dropped``.
    stream : str, optional
        With a runtime decoding several streams (schema 1.4): read only this stream's
        messages (topics ``rtmoe.decode.<stream>``); by default all streams arrive, each
        message naming its ``stream_id``, and ``seq`` holes are counted per stream.
    rcvhwm : int
        Messages this client may queue before ZeroMQ stops taking more from the runtime
        (the runtime then counts ``publish_drops`` and this client sees ``seq`` holes).
    context : zmq.Context, optional
        Defaults to ``zmq.Context.instance()``.

    Notes
    -----
    A ZeroMQ socket belongs to one thread at a time: while :meth:`start` runs the
    background thread, use :meth:`latest`, :meth:`wait` and the callback, not
    :meth:`recv` or the iterators.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        topics: Sequence[str] = ("decode", "status"),
        conflate: bool = False,
        stream: str | None = None,
        rcvhwm: int = 1000,
        context: zmq.Context | None = None,
    ) -> None:
        unknown = [t for t in topics if t not in _TOPICS]
        if unknown or not topics:
            raise ValueError(f"topics={list(topics)}; use a non-empty subset of {list(_TOPICS)}")
        if conflate and list(topics) != ["decode"]:
            raise ValueError(
                f"conflate=True with topics={list(topics)}: a status would replace the newest "
                "decode; use topics=('decode',) and a second Subscriber for status"
            )
        if rcvhwm < 1:
            raise ValueError(f"rcvhwm={rcvhwm} must be >= 1 messages")
        self.address = address
        self.stream = stream
        self.stats = SubscriberStats()
        context = context if context is not None else zmq.Context.instance()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if conflate:
            sock.setsockopt(zmq.CONFLATE, 1)  # must precede connect
        # Watch connection events so that a restarted runtime is not mistaken for drops.
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.connect(address)
        except zmq.ZMQError as err:
            self._monitor.close(linger=0)
            sock.close(linger=0)
            raise ValueError(
                f"cannot connect to address={address!r}: {err}; use the runtime's endpoint, "
                "e.g. tcp://127.0.0.1:5556"
            ) from None
        suffix = "" if stream is None else f".{stream}"
        for topic in topics:
            # With CONFLATE only single frames arrive; the space keeps "rtmoe.decode"
            # from also matching longer topic names (prefixes are filtered in _poll).
            prefix = _TOPICS[topic] + suffix + (" " if conflate else "")
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._sock: zmq.Socket | None = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._cond = threading.Condition()
        self._latest: Decode | None = None
        self._latest_status: Status | None = None
        self._n_decodes_seen = 0  # stats.decodes when latest()/wait() last returned
        self._last_seq: dict[tuple[str, str | None], int] = {}  # by kind and stream
        self._last_uptime_s: dict[str | None, float] = {}  # by stream
        self._resync = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None

    # -- receiving -------------------------------------------------------------------

    def _poll(self, timeout_s: float | None) -> Message | None:
        """Read one message (None on timeout), handling connection events first."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("the Subscriber is closed; create a new one")
        deadline = None if timeout_s is None else time.monotonic() + max(timeout_s, 0.0)
        while True:
            # A disconnect reaches the monitor before any message of a restarted runtime
            # can arrive, so reading it first lets _handle judge the next seq correctly.
            self._drain_monitor()
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                remaining_ms = None
                if deadline is not None:
                    remaining_ms = (deadline - time.monotonic()) * 1000.0
                    if remaining_ms <= 0:
                        return None
                self._poller.poll(remaining_ms)
                continue
            msg = parse(frames, time.monotonic())
            if self.stream is None or msg.stream_id == self.stream:  # not stream "A1" for "A"
                return self._handle(msg)

    def _drain_monitor(self) -> None:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.stats.disconnects += 1
                self._resync = True

    def _handle(self, msg: Message) -> Message:
        kind = "decode" if isinstance(msg, Decode) else "status"
        key = (kind, msg.stream_id)
        last = self._last_seq.get(key)
        restarted = last is not None and msg.seq <= last
        if kind == "status":
            uptime = self._last_uptime_s.get(msg.stream_id)
            restarted |= uptime is not None and msg.uptime_s < uptime
            self._last_uptime_s[msg.stream_id] = msg.uptime_s
        if restarted:
            self.stats.restarts += 1
            self._last_seq.clear()
            self._last_uptime_s = {msg.stream_id: msg.uptime_s} if kind == "status" else {}
            self._resync = False
        elif self._resync:
            # After a reconnection a higher seq may be the same run or a new one (whose
            # first heartbeat's uptime_s will tell); holes across it are not drops.
            self._resync = False
            self._last_seq.clear()
        elif last is not None and kind == "decode":
            self.stats.dropped += msg.seq - last - 1
        self._last_seq[key] = msg.seq
        with self._cond:
            if kind == "decode":
                self.stats.decodes += 1
                self._latest = msg
            else:
                self.stats.statuses += 1
                self._latest_status = msg
            self._cond.notify_all()
        return msg

    def recv(self, timeout_s: float | None = 1.0) -> Message | None:
        """The next message in arrival order, or None after ``timeout_s`` seconds.

        ``timeout_s=None`` waits forever (not advised in an experiment).
        """
        self._check_foreground("recv()")
        return self._poll(timeout_s)

    def messages(self, timeout_s: float = 1.0) -> Iterator[Message]:
        """Yield every message in order; stops after ``timeout_s`` seconds of silence."""
        self._check_foreground("messages()")
        while (msg := self._poll(timeout_s)) is not None:
            yield msg

    def decodes(self, timeout_s: float = 1.0) -> Iterator[Decode]:
        """Yield every decode in order; stops after ``timeout_s`` seconds without one."""
        self._check_foreground("decodes()")
        deadline = time.monotonic() + timeout_s
        while (msg := self._poll(deadline - time.monotonic())) is not None:
            if isinstance(msg, Decode):
                deadline = time.monotonic() + timeout_s
                yield msg

    def latest(
        self, *, max_lsl_age_s: float | None = None, max_receive_age_s: float | None = None
    ) -> Decode | None:
        """The newest decode received so far, without blocking; None if none (or stale).

        Reads everything queued first (so the counters stay exact and the answer is the
        newest, not the oldest queued); with :meth:`start` running it only reads what
        the background thread stored.

        Parameters
        ----------
        max_lsl_age_s : float, optional
            Return None when the newest decode's window ended more than this many
            seconds ago in LSL time (:meth:`lsl_age_s`). Needs pylsl; rtmoe must run on
            this machine (LSL clocks of two machines differ).
        max_receive_age_s : float, optional
            Return None when the newest decode was received more than this many seconds
            ago (``time.monotonic``; does not include the runtime's own latency).
        """
        self._raise_background_error()
        if self._thread is None:
            while self._poll(0) is not None:
                pass
        with self._cond:
            msg = self._latest
            self._n_decodes_seen = self.stats.decodes
        if msg is None:
            return None
        if max_lsl_age_s is not None:
            age = self.lsl_age_s(msg)
            if age is None:
                raise RuntimeError(
                    "max_lsl_age_s needs pylsl (pip install pylsl) for the LSL clock; "
                    "install it, or pass max_receive_age_s instead"
                )
            if age > max_lsl_age_s:
                return None
        if max_receive_age_s is not None and self.receive_age_s(msg) > max_receive_age_s:
            return None
        return msg

    def wait(self, timeout_s: float = 1.0) -> Decode | None:
        """The newest decode not yet returned by :meth:`latest`/:meth:`wait`.

        Blocks up to ``timeout_s`` seconds for one; None on timeout.
        """
        self._raise_background_error()
        deadline = time.monotonic() + timeout_s
        if self._thread is None:
            while self._poll(0) is not None:
                pass
            while self.stats.decodes == self._n_decodes_seen:
                if self._poll(deadline - time.monotonic()) is None:
                    return None
            while self._poll(0) is not None:
                pass
        with self._cond:
            fresh = self._cond.wait_for(
                lambda: self.stats.decodes > self._n_decodes_seen or self._error is not None,
                max(deadline - time.monotonic(), 0.0),
            )
            self._raise_background_error()
            if not fresh:
                return None
            self._n_decodes_seen = self.stats.decodes
            return self._latest

    @property
    def latest_status(self) -> Status | None:
        """The newest heartbeat received (updated by :meth:`latest`, :meth:`recv`, ...)."""
        return self._latest_status

    # -- staleness -------------------------------------------------------------------

    def lsl_age_s(self, msg: Decode | None = None) -> float | None:
        """Seconds of LSL time since the window of ``msg`` (default: newest) ended.

        ``pylsl.local_clock() - window_last_lsl_s``: acquisition-to-now, including the
        runtime's latency. None when there is no decode or pylsl is unavailable, i.e.
        unknown (never a made-up value). Valid when rtmoe runs on this machine.
        """
        msg = msg if msg is not None else self._latest
        clock = lsl_clock()
        if msg is None or clock is None:
            return None
        return clock() - msg.window_last_lsl_s

    def receive_age_s(self, msg: Decode | None = None) -> float | None:
        """Seconds since ``msg`` (default: newest decode) was received; None if none."""
        msg = msg if msg is not None else self._latest
        return None if msg is None else time.monotonic() - msg.received_s

    # -- background thread -----------------------------------------------------------

    def start(
        self,
        on_decode: Callable[[Decode], object] | None = None,
        on_status: Callable[[Status], object] | None = None,
    ) -> Subscriber:
        """Receive on a background thread, calling ``on_decode``/``on_status`` per message.

        Callbacks run on that thread, in order; keep them short. An exception in a
        callback (or a :class:`ProtocolError`) stops the thread and is raised again by
        :meth:`latest`, :meth:`wait` and :meth:`stop`. Returns ``self``.
        """
        if self._thread is not None:
            raise RuntimeError("start() called twice; call stop() first")
        self._stop.clear()
        self._error = None

        def run() -> None:
            try:
                while not self._stop.is_set():
                    msg = self._poll(0.05)  # short, so that stop() is prompt
                    if isinstance(msg, Decode) and on_decode is not None:
                        on_decode(msg)
                    elif isinstance(msg, Status) and on_status is not None:
                        on_status(msg)
            except BaseException as err:  # handed to the caller's thread
                with self._cond:
                    self._error = err
                    self._cond.notify_all()

        self._thread = threading.Thread(target=run, name="rtmoe-subscriber", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the background thread (waits up to ``timeout_s``); safe if not started."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"subscriber thread did not stop within timeout_s={timeout_s}")
        self._raise_background_error()

    @property
    def running(self) -> bool:
        """Whether the background thread is receiving."""
        return self._thread is not None and self._thread.is_alive()

    def _check_foreground(self, name: str) -> None:
        if self._thread is not None:
            raise RuntimeError(
                f"{name} while the background thread owns the socket; use latest()/wait() "
                "or the start() callbacks, or call stop() first"
            )

    def _raise_background_error(self) -> None:
        err = self._error
        if err is not None:
            self._error = None
            raise RuntimeError(f"the subscriber thread stopped: {err!r}") from err

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread and close the sockets; safe to call twice."""
        try:
            self.stop()
        finally:
            if self._sock is not None:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._sock.close(linger=0)
                self._sock = None

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Subscriber(address={self.address!r}, stats={self.stats})"
