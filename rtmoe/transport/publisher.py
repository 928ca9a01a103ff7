"""ZeroMQ publisher of decode and status messages; never blocks the real-time loop.

The socket is a plain PUB: when one subscriber's queue is full (``sndhwm`` messages
waiting at the publisher, after its socket buffers filled) ZeroMQ drops the message for
that subscriber only; every other subscriber still gets it. A stuck subscriber therefore
costs only itself. Those per-subscriber drops are invisible to the publisher (a subscriber
sees them as ``seq`` gaps); :attr:`ZmqPublisher.dropped` counts only messages that could
not be handed to ZeroMQ at all, i.e. reached no subscriber (see docs/protocol.md).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Self

from rtmoe.config import RuntimeConfig
from rtmoe.errors import BadValueError, UserError
from rtmoe.transport.messages import Message, encode, encode_single_frame

if TYPE_CHECKING:
    import zmq

#: The one default endpoint: the config tree's ``runtime.zmq_address``.
DEFAULT_ADDRESS = RuntimeConfig.zmq_address


def is_loopback_address(address: str) -> bool:
    """Whether a ZeroMQ bind endpoint is reachable only from this machine.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local when its host is in
    127.0.0.0/8, ``::1`` or ``localhost``. Wildcards (``*``, ``0.0.0.0``), interface
    names, other hosts and other transports are not.
    """
    transport, sep, rest = address.partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PublisherError(UserError, OSError):
    """The publisher cannot bind its address (a port in use, no such interface)."""


class ZmqPublisher:
    """Bound PUB socket that publishes :mod:`rtmoe.transport.messages` non-blockingly.

    Parameters
    ----------
    address : str
        Bind endpoint. Port ``0`` or ``*`` binds a free port; :attr:`address` then gives
        the bound endpoint.
    allow_remote : bool
        Allow an endpoint reachable from other machines (e.g. ``tcp://*:5556``). The
        messages are unauthenticated and unencrypted, so this is an explicit choice.
    sndhwm : int
        Messages queued per subscriber; beyond it ZeroMQ drops messages for that
        subscriber only (not counted here: the publisher cannot see them).
    single_frame : bool
        Send ``topic + b" " + json`` as one frame instead of ``[topic, json]``, for
        subscribers that set ``ZMQ_CONFLATE`` (which cannot carry multipart messages).
    linger_ms : int
        How long :meth:`close` may wait to flush queued messages (e.g. the final
        STOPPING status), milliseconds.
    context : zmq.Context, optional
        Defaults to the process-wide ``zmq.Context.instance()``; ``inproc://``
        subscribers must use the same context.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        allow_remote: bool = False,
        sndhwm: int = 1000,
        single_frame: bool = False,
        linger_ms: int = 100,
        context: zmq.Context | None = None,
    ) -> None:
        if not allow_remote and not is_loopback_address(address):
            raise BadValueError(
                f"address={address!r} is reachable from other machines (or not a tcp/ipc/"
                "inproc endpoint); bind to tcp://127.0.0.1:PORT, or pass allow_remote=True "
                "(rtmoe stream --allow-remote) to publish unauthenticated decodes on the "
                "network"
            )
        if sndhwm < 1:
            raise ValueError(
                f"sndhwm={sndhwm} must be >= 1 (0 would mean an unbounded queue); use e.g. 1000"
            )
        if linger_ms < 0:
            raise ValueError(f"linger_ms={linger_ms} must be >= 0")
        try:
            import zmq
        except ImportError:
            raise ImportError(
                "ZmqPublisher needs pyzmq; install it with `pip install pyzmq`"
            ) from None
        self._zmq = zmq
        self.single_frame = single_frame
        self.sent = 0
        self.dropped = 0
        context = context if context is not None else zmq.Context.instance()
        socket = context.socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.SNDHWM, sndhwm)
            socket.setsockopt(zmq.LINGER, linger_ms)
            if "[" in address:  # tcp://[::1]:port needs IPv6 enabled on the socket
                socket.setsockopt(zmq.IPV6, 1)
            socket.bind(address)
        except zmq.ZMQError as err:
            socket.close(linger=0)
            raise PublisherError(
                f"cannot bind the publisher to address={address!r}: {err}; choose a free "
                "port (or port 0 for any) on a local interface"
            ) from None
        self._socket: zmq.Socket | None = socket
        self.address: str = socket.getsockopt(zmq.LAST_ENDPOINT).decode()

    def publish(self, msg: Message) -> bool:
        """Send ``msg`` without blocking.

        Returns
        -------
        bool
            True if handed to ZeroMQ (each subscriber whose queue has room gets it; a
            subscriber with a full queue misses it, unseen here); False if ZeroMQ refused
            the send altogether, in which case no subscriber gets it and :attr:`dropped`
            was incremented.
        """
        socket = self._socket
        if socket is None:
            raise RuntimeError("publish() called after close(); create a new ZmqPublisher")
        zmq = self._zmq
        # Reading an option makes ZeroMQ process its pending commands now instead of
        # (throttled) at some later send, among them the read-progress notes of each
        # subscriber's queue, so a subscriber that keeps up is never taken for full.
        socket.getsockopt(zmq.EVENTS)
        try:
            if self.single_frame:
                socket.send(encode_single_frame(msg), zmq.NOBLOCK)
            else:
                topic, payload = encode(msg)
                socket.send(topic, zmq.NOBLOCK | zmq.SNDMORE)
                # PUB never refuses mid-message: a peer either gets all frames or none.
                socket.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket (waiting at most ``linger_ms``); safe to call twice."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def closed(self) -> bool:
        return self._socket is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ZmqPublisher(address={self.address!r}, single_frame={self.single_frame}, "
            f"sent={self.sent}, dropped={self.dropped}, closed={self.closed})"
        )


class Heartbeat:
    """Tells the loop when a status message is due: the first call, then every period.

    The clock is passed in (LSL or monotonic seconds), so the schedule is testable
    without waiting. Due times follow a fixed grid (no drift from late calls); after a
    stall longer than a period the grid restarts from the current time instead of
    firing a burst of catch-up heartbeats.
    """

    def __init__(self, period_s: float = 1.0) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s={period_s} must be > 0 seconds")
        self.period_s = period_s
        self._next_s: float | None = None

    def due(self, now_s: float) -> bool:
        """True (and schedule the next one) if a status should be published at ``now_s``."""
        if self._next_s is not None and now_s < self._next_s:
            return False
        next_s = now_s if self._next_s is None else self._next_s
        next_s += self.period_s
        self._next_s = next_s if next_s > now_s else now_s + self.period_s
        return True
