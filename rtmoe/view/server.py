"""The ``rtmoe view`` server: a ZeroMQ subscriber thread and a small HTTP server.

One SUB socket connects to the runtime's publisher (``rtmoe stream --zmq`` or
``rtmoe demo``), subscribes to its decode, status and preview topics, validates every
message with :func:`rtmoe.transport.decode` and hands the payload, unchanged, to every
open page as a Server-Sent Event (``text/event-stream``: ``event: decode``, ``event:
status``, ``event: preview`` (the opt-in signal preview of protocol 1.3, when the runtime
sends it), ``event: marker`` (cues of an LSL marker stream, with ``markers``), and once a
second ``event: view`` with this server's own counters). A page that connects (or
reconnects) first gets a ``snapshot`` event: the decodes and markers of the last
``history_s`` seconds, the previews of the last ``PREVIEW_HISTORY_S`` and the newest
status, so it draws the recent past at once. The page (``static/index.html`` and
``static/view.js``) keeps its own history and draws it on canvases.

Endpoints
---------
``/``, ``/view.js``
    The page and its script (package data; no third-party code, no CDN).
``/events``
    The event stream.
``/state``
    The snapshot as one JSON object (for a poller or ``curl``).
``/hold?name=NAME`` and ``POST /report``
    Test hooks: a page opened with ``?hold=NAME`` requests ``/hold`` while it loads, which
    answers only when :meth:`ViewServer.release` is called (or after ``hold_timeout_s``),
    so a headless browser's ``--dump-dom``/``--screenshot`` is taken after live updates;
    a page opened with ``?report=1`` posts what it shows to ``/report`` a few times a
    second (``&report_ms=`` sets the period), under ``&name=NAME`` or its hold's name
    (:meth:`ViewServer.report`, or ``GET /report?name=NAME``).

The HTTP server binds 127.0.0.1 unless ``allow_remote`` (the page is neither
authenticated nor encrypted), and refuses requests whose ``Host`` header is not this
machine unless ``allow_remote`` (a web page elsewhere cannot reach it by DNS rebinding).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rtmoe import __version__, commands
from rtmoe.command import Command, UserError
from rtmoe.errors import BadValueError
from rtmoe.transport import (
    DEFAULT_ADDRESS,
    TOPIC_DECODE,
    TOPIC_PREVIEW,
    TOPIC_STATUS,
    DecodeMessage,
    PreviewMessage,
    ProtocolError,
    decode,
)
from rtmoe.transport.messages import STREAM_ID
from rtmoe.transport.publisher import is_loopback_address

DEFAULT_PORT = 8765
#: Events kept for pages that fall behind (about 1.5 minutes at 10 decodes a second).
EVENT_BUFFER = 2048
#: Seconds of signal previews a newly opened page receives (its traces' span).
PREVIEW_HISTORY_S = 10.0
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
}
_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def _static(name: str) -> bytes:
    return resources.files("rtmoe.view").joinpath("static", name).read_bytes()


def _event(kind: str, payload: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


class _Hub:
    """What the SUB thread received, and the event log every page reads from.

    One condition guards both, so a snapshot and the event index it was taken at agree:
    a page gets the snapshot, then every event after it, with none missed or repeated.
    """

    def __init__(self, history_s: float) -> None:
        self.cond = threading.Condition()
        self.history_s = history_s
        self.events: collections.deque[bytes] = collections.deque(maxlen=EVENT_BUFFER)
        self.count = 0  # events ever appended
        self.decodes: collections.deque[tuple[float, bytes]] = collections.deque()
        self.previews: collections.deque[tuple[float, bytes]] = collections.deque()
        self.markers: collections.deque[tuple[float, bytes]] = collections.deque()
        self.status: bytes | None = None
        self.view: bytes = b"null"
        self.closed = False

    def append(self, event: bytes) -> None:
        self.events.append(event)
        self.count += 1
        self.cond.notify_all()

    def snapshot(self) -> bytes:
        """The snapshot JSON (call with ``cond`` held)."""
        decodes = b",".join(payload for _, payload in self.decodes)
        previews = b",".join(payload for _, payload in self.previews)
        markers = b",".join(payload for _, payload in self.markers)
        return (
            b'{"view":'
            + self.view
            + b',"status":'
            + (self.status or b"null")
            + b',"decodes":['
            + decodes
            + b'],"previews":['
            + previews
            + b'],"markers":['
            + markers
            + b"]}"
        )

    def wait(self, after: int, timeout_s: float) -> tuple[list[bytes], int, int]:
        """Events after index ``after``: ``(events, new index, events lost)``."""
        with self.cond:
            if self.count <= after and not self.closed:
                self.cond.wait(timeout_s)
            first = self.count - len(self.events)
            start = max(after, first)
            items = list(itertools.islice(self.events, start - first, None))
            return items, self.count, start - after


class ViewServer:
    """Serves the live page of one runtime; see the module docstring.

    Parameters
    ----------
    zmq_address : str
        The runtime's publisher endpoint to connect to, e.g. ``tcp://127.0.0.1:5556``.
    host : str
        Address the page is served on; a loopback address unless ``allow_remote``.
    port : int
        HTTP port; 0 picks a free one (:attr:`url` tells which).
    allow_remote : bool
        Serve on an address other machines can reach (and accept their ``Host`` names).
    history_s : float
        Seconds of decodes a newly opened page receives (and draws), s.
    hold_timeout_s : float
        Longest a ``/hold`` request waits for :meth:`release`, s.
    markers : str, optional
        LSL name of a marker stream (the experiment's cues) to draw on the time axes;
        looked for every 2 s until found (needs pylsl). Its LSL times are clock-corrected,
        so they share the decodes' time base when the runtime runs on this machine.
    stream : str, optional
        The stream to show, of a runtime decoding several (protocol 1.4, ``rtmoe stream
        --lsl A --lsl B``): its topics only. Without it, only a single-stream runtime's
        messages are shown; another's are counted in ``other_streams``.
    context : zmq.Context, optional
        Defaults to ``zmq.Context.instance()`` (``inproc://`` needs the publisher's).

    Attributes
    ----------
    decodes, statuses, previews : int
        Messages received from the runtime (previews: protocol 1.3, when it sends them).
    bad_messages : int
        Messages refused by :func:`rtmoe.transport.decode` (``last_error`` says why).
    seq_holes : int
        Decodes missing from ``seq`` (lost between the runtime and this server).
    restarts : int
        Runtime restarts seen (a ``seq`` or ``uptime_s`` going back).
    other_streams : set of str
        Stream ids of messages not shown (not ``stream``).
    """

    def __init__(
        self,
        zmq_address: str = DEFAULT_ADDRESS,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        allow_remote: bool = False,
        history_s: float = 30.0,
        hold_timeout_s: float = 60.0,
        markers: str | None = None,
        stream: str | None = None,
        context: Any = None,
    ) -> None:
        if not allow_remote and not _is_loopback_host(host):
            raise BadValueError(
                f"host={host!r} is reachable from other machines; serve on 127.0.0.1, or pass "
                "allow_remote=True (rtmoe view --allow-remote) to show the unauthenticated "
                "page on the network"
            )
        if not 0 <= port < 65536:
            raise BadValueError(f"port={port} must be in 0..65535 (0 picks a free port)")
        if not (history_s > 0 and math.isfinite(history_s)):
            raise BadValueError(f"history_s={history_s} must be a finite number of seconds > 0")
        import zmq

        self.zmq_address = zmq_address
        self.allow_remote = allow_remote
        self.hold_timeout_s = hold_timeout_s
        self.decodes = self.statuses = self.previews = self.bad_messages = 0
        self.seq_holes = self.restarts = self.pages_lost_events = 0
        self.last_error: str | None = None
        self.markers = markers
        self.stream = stream
        self.other_streams: set[str] = set()
        self.markers_received = 0
        self.markers_error: str | None = None
        self._hub = _Hub(history_s)
        self._last_seq: int | None = None
        self._last_uptime_s: float | None = None
        self._holds: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self._reports: dict[str, dict[str, Any]] = {}
        self._clients = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._static = {path: (_static(name), ctype) for path, (name, ctype) in _STATIC.items()}

        context = context if context is not None else zmq.Context.instance()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1000)
        try:
            sock.connect(zmq_address)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            raise BadValueError(
                f"cannot connect to zmq_address={zmq_address!r}: {err}; give the runtime's "
                f"publisher endpoint, e.g. {DEFAULT_ADDRESS}"
            ) from None
        suffix = b"" if stream is None else b"." + stream.encode()
        for topic in (TOPIC_DECODE, TOPIC_STATUS, TOPIC_PREVIEW):  # preview: 1.3, opt-in
            sock.setsockopt(zmq.SUBSCRIBE, topic + suffix)
        self._sock = sock
        self._zmq = zmq
        try:
            self._http = ThreadingHTTPServer((host, port), _handler_for(self))
        except OSError as err:
            sock.close(linger=0)
            raise OSError(
                f"cannot serve the page on {host}:{port}: {err}; choose a free port (0 picks one)"
            ) from None
        self._http.daemon_threads = True
        self.host, self.port = self._http.server_address[:2]
        self._threads: list[threading.Thread] = []

    # -- public API ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/``."""
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    @property
    def clients(self) -> int:
        """Pages connected to the event stream now."""
        return self._clients

    def start(self) -> ViewServer:
        """Start the subscriber and HTTP threads (daemons); returns ``self``."""
        if self._threads:
            raise RuntimeError("start() called twice")
        targets = [(self._receive, "rtmoe-view-zmq"), (self._serve, "rtmoe-view-http")]
        if self.markers:
            targets.append((self._read_markers, "rtmoe-view-markers"))
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def serve_forever(self, duration_s: float | None = None) -> None:
        """Run until :meth:`close`, Ctrl-C/SIGTERM, or ``duration_s`` seconds."""
        if not self._threads:
            self.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self._stop.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self._stop.wait(0.5 if remaining is None else min(0.5, remaining))

    def release(self, name: str) -> None:
        """Answer the pending (or next) ``/hold?name=NAME`` request."""
        with self._lock:
            self._holds[name].set()

    def report(self, name: str) -> dict[str, Any] | None:
        """The newest ``/report`` of the page opened with ``?name=NAME`` (or ``?hold=NAME``)."""
        with self._lock:
            return self._reports.get(name)

    def close(self) -> None:
        """Stop the threads, close the HTTP server and the socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._hub.cond:
            self._hub.closed = True
            self._hub.cond.notify_all()
        with self._lock:
            for event in self._holds.values():
                event.set()
        if self._threads:
            self._http.shutdown()
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []
        self._http.server_close()
        self._sock.close(linger=0)

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- threads -------------------------------------------------------------------------

    def _serve(self) -> None:
        self._http.serve_forever(poll_interval=0.5)

    def _receive(self) -> None:
        zmq = self._zmq
        sock = self._sock
        next_view_s = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_view_s:
                self._publish_view()
                next_view_s = now + 1.0
            if not sock.poll(min(250, max(1, int((next_view_s - now) * 1000)))):
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except ProtocolError as err:
            self.bad_messages += 1
            self.last_error = str(err)
            return
        if msg.stream_id != self.stream:  # another stream (or "A1" for "A": a prefix)
            if msg.stream_id is not None:
                self.other_streams.add(msg.stream_id)
            return
        payload = frames[-1] if len(frames) == 2 else frames[0].partition(b" ")[2]
        if b"\n" in payload:  # not rtmoe's compact JSON: one line for the event stream
            payload = json.dumps(json.loads(payload), separators=(",", ":")).encode()
        hub = self._hub
        with hub.cond:
            if isinstance(msg, DecodeMessage):
                self.decodes += 1
                if self._last_seq is not None and msg.seq <= self._last_seq:
                    self.restarts += 1
                    hub.decodes.clear()
                elif self._last_seq is not None:
                    self.seq_holes += msg.seq - self._last_seq - 1
                self._last_seq = msg.seq
                hub.decodes.append((msg.window_last_lsl_s, payload))
                oldest = msg.window_last_lsl_s - hub.history_s
                while hub.decodes and hub.decodes[0][0] < oldest:
                    hub.decodes.popleft()
                hub.append(_event("decode", payload))
            elif isinstance(msg, PreviewMessage):
                self.previews += 1
                if hub.previews and msg.last_lsl_s < hub.previews[-1][0]:
                    hub.previews.clear()  # a restarted runtime
                hub.previews.append((msg.last_lsl_s, payload))
                oldest = msg.last_lsl_s - min(PREVIEW_HISTORY_S, hub.history_s)
                while hub.previews and hub.previews[0][0] < oldest:
                    hub.previews.popleft()
                hub.append(_event("preview", payload))
            else:
                self.statuses += 1
                if self._last_uptime_s is not None and msg.uptime_s < self._last_uptime_s:
                    if self._last_seq is not None:
                        self.restarts += 1
                    self._last_seq = None
                    hub.decodes.clear()
                    hub.previews.clear()
                self._last_uptime_s = msg.uptime_s
                hub.status = payload
                hub.append(_event("status", payload))

    def _read_markers(self) -> None:
        """Find the marker stream (again every 2 s until found) and forward its cues."""
        from rtmoe.stream.lsl import LslError, resolve_stream
        from rtmoe.stream.markers import MarkerInlet

        inlet = None
        try:
            while not self._stop.is_set():
                if inlet is None:
                    try:
                        inlet = MarkerInlet(resolve_stream(name=self.markers, timeout_s=1.0))
                    except LslError as err:
                        self.markers_error = str(err).splitlines()[0]
                        self._stop.wait(2.0)
                        continue
                    self.markers_error = None
                for stamp, label in inlet.pull():
                    self._add_marker(stamp, label)
                self._stop.wait(0.1)
        finally:
            if inlet is not None:
                inlet.close()

    def _add_marker(self, lsl_s: float, label: str) -> None:
        payload = json.dumps(
            {"type": "marker", "lsl_s": lsl_s, "label": label}, separators=(",", ":")
        ).encode()
        hub = self._hub
        with hub.cond:
            self.markers_received += 1
            hub.markers.append((lsl_s, payload))
            while hub.markers and hub.markers[0][0] < lsl_s - hub.history_s:
                hub.markers.popleft()
            hub.append(_event("marker", payload))

    def _publish_view(self) -> None:
        info = {
            "type": "view",
            "zmq_address": self.zmq_address,
            "decodes": self.decodes,
            "statuses": self.statuses,
            "previews": self.previews,
            "bad_messages": self.bad_messages,
            "last_error": self.last_error,
            "seq_holes": self.seq_holes,
            "restarts": self.restarts,
            "pages": self._clients,
            "pages_lost_events": self.pages_lost_events,
            "markers": self.markers,
            "markers_received": self.markers_received,
            "markers_error": self.markers_error,
            "history_s": self._hub.history_s,
            "rtmoe_version": __version__,
        }
        payload = json.dumps(info, separators=(",", ":")).encode()
        with self._hub.cond:
            self._hub.view = payload
            self._hub.append(_event("view", payload))

    # -- HTTP ----------------------------------------------------------------------------

    def _stream(self) -> Iterator[bytes]:
        """The event stream of one page: its snapshot, then every event (keep-alives
        while idle, so a closed page is noticed)."""
        hub = self._hub
        with hub.cond:
            index = hub.count
            snapshot = _event("snapshot", hub.snapshot())
        yield snapshot
        while not self._stop.is_set():
            items, index, lost = hub.wait(index, 1.0)
            if lost:  # this page fell more than EVENT_BUFFER events behind
                self.pages_lost_events += lost
            yield b"".join(items) if items else b": keep-alive\n\n"

    def _hold(self, name: str) -> None:
        with self._lock:
            event = self._holds[name]
        event.wait(self.hold_timeout_s)

    def _store_report(self, body: bytes) -> None:
        data = json.loads(body)
        if isinstance(data, dict):
            with self._lock:
                self._reports[str(data.get("name"))] = data


def _is_loopback_host(host: str) -> bool:
    return is_loopback_address(f"tcp://{host}:0")


def _handler_for(view: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"rtmoe-view/{__version__}"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per request: the page polls and streams

        def _host_ok(self) -> bool:
            if view.allow_remote:
                return True
            host = self.headers.get("Host", "")
            name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
            if _is_loopback_host(name.strip("[]")):
                return True
            self._send(HTTPStatus.FORBIDDEN, b"Host not allowed: open the page as 127.0.0.1\n")
            return False

        def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", _CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if not self._host_ok():
                return
            url = urlsplit(self.path)
            if url.path in view._static:
                body, ctype = view._static[url.path]
                self._send(HTTPStatus.OK, body, ctype)
            elif url.path == "/events":
                self._events()
            elif url.path == "/state":
                with view._hub.cond:
                    body = view._hub.snapshot()
                self._send(HTTPStatus.OK, body, "application/json")
            elif url.path == "/report":
                report = view.report(parse_qs(url.query).get("name", [""])[0])
                self._send(HTTPStatus.OK, json.dumps(report).encode(), "application/json")
            elif url.path == "/hold":
                view._hold(parse_qs(url.query).get("name", [""])[0])
                self._send(HTTPStatus.OK, b"", "text/plain")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found: try /\n")

        def do_POST(self) -> None:
            if not self._host_ok():
                return
            if urlsplit(self.path).path != "/report":
                self._send(HTTPStatus.NOT_FOUND, b"not found\n")
                return
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
                # a page of another site cannot post (browsers send their Origin)
                self._send(HTTPStatus.FORBIDDEN, b"cross-origin report refused\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 65536:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"report too large\n")
                return
            try:
                view._store_report(self.rfile.read(length))
            except ValueError:
                self._send(HTTPStatus.BAD_REQUEST, b"report is not JSON\n")
                return
            self._send(HTTPStatus.NO_CONTENT, b"")

        def _events(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with view._lock:
                view._clients += 1
            try:
                for chunk in view._stream():
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except OSError:
                pass  # the page was closed
            finally:
                with view._lock:
                    view._clients -= 1

    return Handler


# -- the command ---------------------------------------------------------------------------


def check_connect_address(address: str) -> None:
    """Refuse a ``--zmq`` that is not a ZeroMQ endpoint one can connect to."""
    transport, sep, rest = address.partition("://")
    if not sep or transport not in ("tcp", "ipc") or not rest:
        raise UserError(
            f"--zmq {address!r} is not a ZeroMQ endpoint to connect to; give the runtime's "
            f"publisher, e.g. {DEFAULT_ADDRESS} (or ipc://PATH)"
        )
    if transport == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or host == "*" or not (port.isdigit() and 0 < int(port) < 65536):
            raise UserError(
                f"--zmq {address!r} needs a host and a port 1..65535, e.g. {DEFAULT_ADDRESS} "
                "(the address `rtmoe stream` prints as 'publishing on')"
            )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zmq",
        default=DEFAULT_ADDRESS,
        help="the running rtmoe stream/demo's ZeroMQ publisher to attach to",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="HTTP port of the page (0: a free one)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the page is served on (loopback unless --allow-remote)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="serve the page on a network-reachable --host (unauthenticated, unencrypted)",
    )
    parser.add_argument(
        "--history-s",
        type=float,
        default=30.0,
        help="seconds of decodes a newly opened page draws",
    )
    parser.add_argument(
        "--markers",
        metavar="NAME",
        help="LSL name of the experiment's marker stream: cues drawn on the time axes",
    )
    parser.add_argument(
        "--stream",
        metavar="ID",
        help="the stream to show when the runtime decodes several (rtmoe stream --lsl A "
        "--lsl B: its stream ids, e.g. A)",
    )
    parser.add_argument("--open", action="store_true", help="open the page in the web browser")
    parser.add_argument("--duration-s", type=float, help="stop after this many seconds")


def _run(args: argparse.Namespace) -> int:
    check_connect_address(args.zmq)
    if not args.allow_remote and not _is_loopback_host(args.host):
        raise UserError(
            f"--host {args.host!r} is reachable from other machines; serve on 127.0.0.1, or "
            "pass --allow-remote to show the unauthenticated page on the network"
        )
    if args.duration_s is not None and not args.duration_s > 0:
        raise UserError(f"--duration-s {args.duration_s:g} must be > 0 seconds (or omitted)")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port} must be in 0..65535 (0 picks a free port)")
    if args.stream is not None and not STREAM_ID.fullmatch(args.stream):
        raise UserError(
            f"--stream {args.stream!r} is not a stream id (1-64 letters, digits, '_' or '-', "
            "as rtmoe stream prints them)"
        )
    try:
        view = ViewServer(
            args.zmq,
            host=args.host,
            port=args.port,
            allow_remote=args.allow_remote,
            history_s=args.history_s,
            markers=args.markers,
            stream=args.stream,
        )
    except OSError as err:
        raise UserError(str(err)) from None
    if args.allow_remote:
        print(
            f"WARNING: --allow-remote: the page on {args.host}:{view.port} shows every decode "
            "and status to anyone who can reach this machine (unauthenticated)",
            file=sys.stderr,
            flush=True,
        )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: view._stop.set())
    with view:
        print(f"rtmoe view: {view.url} (attached to {args.zmq}); Ctrl-C stops", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(view.url)
        try:
            view.serve_forever(args.duration_s)
        except KeyboardInterrupt:
            pass
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"rtmoe view: stopped; {view.decodes} decodes and {view.statuses} statuses received, "
        f"{view.seq_holes} lost, {view.bad_messages} refused",
        flush=True,
    )
    if view.other_streams:
        print(
            f"rtmoe view: the runtime decodes several streams ({sorted(view.other_streams)}); "
            "show one with --stream ID",
            flush=True,
        )
    return 0


command = Command(
    help=commands.view.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
