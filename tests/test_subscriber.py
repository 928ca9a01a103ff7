"""rtmoe.plugins.subscriber against the real ZmqPublisher on random 127.0.0.1 ports.

Every receive is bounded by a timeout; the parser is checked against
rtmoe.transport.messages and the JSON Schemas so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
import zmq

import rtmoe.plugins.subscriber as subscriber_module
from rtmoe.config import RuntimeConfig
from rtmoe.plugins.subscriber import Decode, ProtocolError, Status, Subscriber, parse
from rtmoe.transport import messages
from rtmoe.transport.messages import DecodeMessage, StatusMessage
from rtmoe.transport.publisher import DEFAULT_ADDRESS, ZmqPublisher

REPO = Path(__file__).resolve().parents[1]
LABELS = ["left_hand", "right_hand", "feet"]


def decode_msg(seq: int, last_lsl_s: float = 1004.0) -> DecodeMessage:
    p0 = (seq % 10) / 10.0  # known probabilities per seq
    return DecodeMessage(
        seq=seq,
        model_id="specmoe-tiny-0123",
        subject_id="S01",
        labels=LABELS,
        probabilities=[p0, (1.0 - p0) / 2, (1.0 - p0) / 2],
        label="left_hand" if p0 > 0.4 else "right_hand",
        gates={"expert_0": 0.5, "expert_1": 0.25, "expert_2": 0.75},
        window_first_lsl_s=last_lsl_s - 4.0,
        window_last_lsl_s=last_lsl_s,
        published_lsl_s=last_lsl_s + 0.0125,
        latency_ms=12.5,
        compute_ms=4.25,
        skipped_windows=seq % 3,
    )


def status_msg(seq: int, uptime_s: float = 1.0) -> StatusMessage:
    return StatusMessage(
        seq=seq,
        state="RUNNING",
        model_id="specmoe-tiny-0123",
        subject_id=None,
        sfreq=200.0,
        sfreq_effective=199.5,
        samples_received=2000,
        dropped_samples=3,
        gaps=1,
        skipped_windows=2,
        decodes=40,
        publish_drops=0,
        uptime_s=uptime_s,
        published_lsl_s=1004.5,
        last_sample_lsl_s=None,
        latency_ms_mean=12.0,
        latency_ms_max=None,
    )


@pytest.fixture
def pub():
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    yield publisher
    publisher.close()


def handshake(pub: ZmqPublisher, sub: Subscriber) -> None:
    """Publish status probes until one arrives (ZeroMQ's slow joiner), then drain."""
    for i in range(200):
        pub.publish(status_msg(i))
        if sub.recv(0.02) is not None:
            while sub.recv(0.05) is not None:
                pass
            return
    pytest.fail("subscriber never connected")


# -- contract with rtmoe.transport.messages and the schemas ------------------------------


def test_client_imports_only_pyzmq_and_stdlib():
    code = (
        "import sys; before = set(sys.modules); import rtmoe.plugins.subscriber; "
        "new = set(sys.modules) - before; "
        "print(sorted(n for n in new if n.split('.')[0] not in set(sys.stdlib_module_names) "
        "| {'zmq', 'rtmoe'} and 'cython' not in n), "  # pyzmq's compiled backend: Cython's
        "sorted(n for n in new if n.startswith('rtmoe')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    # Only the package shells on the way to the client: rtmoe/__init__ holds the version.
    assert out.stdout.strip() == "[] ['rtmoe', 'rtmoe.plugins', 'rtmoe.plugins.subscriber']"


def test_default_address_is_the_runtimes():
    # The client is one copy-able file, so it keeps its own constant; it must match.
    assert subscriber_module.DEFAULT_ADDRESS == RuntimeConfig().zmq_address == DEFAULT_ADDRESS


def test_field_names_match_messages_and_schemas():
    for kind, cls in (("decode", DecodeMessage), ("status", StatusMessage)):
        client = list(subscriber_module._FIELDS[kind])
        assert client == [f.name for f in fields(cls)]
        schema = json.loads((REPO / f"docs/schema/{kind}.schema.json").read_text())
        assert set(schema["required"]) == set(client) | {"type", "schema_version"}
    wire = {Decode: DecodeMessage, Status: StatusMessage}
    for ours, theirs in wire.items():
        assert [f.name for f in fields(ours)][:-1] == [f.name for f in fields(theirs)]


@pytest.mark.parametrize("framing", ["multipart", "single"])
@pytest.mark.parametrize(
    "msg",
    [
        decode_msg(7),
        status_msg(3),
        dataclasses.replace(decode_msg(7), stream_id="EEG_A"),
        dataclasses.replace(status_msg(3), stream_id="EEG_A"),
    ],
    ids=["decode", "status", "decode-stream", "status-stream"],
)
def test_parse_agrees_with_rtmoe_decode(msg, framing):
    frames = messages.encode(msg) if framing == "multipart" else messages.encode_single_frame(msg)
    reference = messages.to_dict(messages.decode(frames))
    ours = parse(frames, received_s=12.0)
    assert isinstance(ours, Decode if isinstance(msg, DecodeMessage) else Status)
    for name, value in reference.items():
        if name in ("type", "schema_version"):
            continue
        expected = list(value) if isinstance(value, tuple) else value
        got = getattr(ours, name)
        assert (list(got) if isinstance(got, tuple) else got) == expected, name
    assert ours.received_s == 12.0


def _payload(**changes) -> bytes:
    data = messages.to_dict(decode_msg(1))
    data.update(changes)
    for key in [k for k, v in changes.items() if v is _DELETE]:
        del data[key]
    return json.dumps(data).encode()


_DELETE = object()


@pytest.mark.parametrize(
    "payload",
    [
        _payload(schema_version="2.0"),
        _payload(schema_version="one"),
        _payload(latency_ms=_DELETE),
        _payload(seq="7"),
        _payload(seq=True),
        _payload(label="tongue"),
        _payload(probabilities=[0.5, 0.5]),
        _payload(type="status"),
        _payload().replace(b'"latency_ms": 12.5', b'"latency_ms": NaN'),
        b"[1, 2]",
        b"{not json",
    ],
)
def test_parse_rejects_what_rtmoe_rejects(payload):
    frames = [b"rtmoe.decode", payload]
    with pytest.raises(messages.ProtocolError):
        messages.decode(frames)
    with pytest.raises(ProtocolError):
        parse(frames)


def test_parse_accepts_newer_minor_with_unknown_fields():
    frames = [b"rtmoe.decode", _payload(schema_version="1.7", new_field={"x": 1})]
    assert messages.decode(frames).seq == parse(frames).seq == 1


def test_major_mismatch_on_the_wire_names_versions():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=("decode",)) as sub:
            with pytest.raises(ProtocolError, match=r"'2\.0'.*schema 1\.x"):
                for _ in range(100):  # until the subscription reached the PUB
                    raw.send_multipart([b"rtmoe.decode", _payload(schema_version="2.0")])
                    sub.recv(0.02)
    finally:
        raw.close()


def test_decode_probability_by_label():
    d = parse(messages.encode(decode_msg(3)))
    assert d.probability("left_hand") == pytest.approx(0.3)
    with pytest.raises(KeyError, match="tongue"):
        d.probability("tongue")


# -- receiving ---------------------------------------------------------------------------


@pytest.mark.parametrize("single_frame", [False, True])
def test_receives_every_decode_in_order(single_frame):
    with ZmqPublisher("tcp://127.0.0.1:0", single_frame=single_frame) as pub:
        with Subscriber(pub.address) as sub:
            handshake(pub, sub)
            for seq in range(300):
                pub.publish(decode_msg(seq))
                if seq % 50 == 0:
                    pub.publish(status_msg(1000 + seq))
            got = [d.seq for d in sub.decodes(timeout_s=0.5)]
    assert got == list(range(300))
    assert sub.stats.dropped == 0 and sub.stats.restarts == 0
    assert sub.stats.statuses >= 6


def test_latest_returns_newest_of_a_backlog_and_wait_returns_fresh(pub):
    with Subscriber(pub.address) as sub:
        handshake(pub, sub)
        for seq in range(100):
            pub.publish(decode_msg(seq))
        time.sleep(0.3)
        assert sub.latest().seq == 99
        assert sub.stats.decodes == 100 and sub.stats.dropped == 0
        assert sub.latest().seq == 99  # still the newest, no blocking
        assert sub.wait(0.1) is None  # nothing new since latest()
        pub.publish(decode_msg(100))
        assert sub.wait(2.0).seq == 100


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_latest_is_within_one_hop_of_a_live_stream(pub, background):
    hop_s = 0.05
    published: list[tuple[float, int]] = []  # (time after the send, seq)
    sending = [-1]
    lock = threading.Lock()
    stop = threading.Event()

    def feed():
        seq = 0
        while not stop.is_set() and seq < 100:
            sending[0] = seq  # before the send: the message may arrive before append()
            pub.publish(decode_msg(seq))
            with lock:
                published.append((time.monotonic(), seq))
            seq += 1
            time.sleep(hop_s)

    with Subscriber(pub.address) as sub:
        handshake(pub, sub)
        if background:
            sub.start()
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            time.sleep(3 * hop_s)
            for _ in range(60):  # 60 "frames" of ~15 ms
                time.sleep(0.015)
                now = time.monotonic()
                msg = sub.latest()
                with lock:
                    due = max((s for t, s in published if t <= now - hop_s), default=-1)
                assert due == -1 or (msg is not None and due <= msg.seq <= sending[0])
        finally:
            stop.set()
            feeder.join(2.0)


def test_callback_thread_in_order_and_clean_stop(pub):
    got: list[int] = []
    statuses: list[int] = []
    with Subscriber(pub.address) as sub:
        handshake(pub, sub)
        sub.start(on_decode=lambda d: got.append(d.seq), on_status=lambda s: statuses.append(s.seq))
        assert sub.running
        with pytest.raises(RuntimeError, match="background thread"):
            sub.recv(0.0)
        for seq in range(50):
            pub.publish(decode_msg(seq))
        pub.publish(status_msg(500))
        deadline = time.monotonic() + 3.0
        while (len(got) < 50 or not statuses) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sub.wait(1.0).seq == 49
        sub.stop()
        assert not sub.running
        assert got == list(range(50)) and statuses == [500]
        pub.publish(decode_msg(50))  # the socket is usable in the foreground again
        assert sub.recv(2.0).seq == 50


def test_callback_error_stops_the_thread_and_is_raised(pub):
    def on_decode(d):
        if d.seq == 3:
            raise ValueError("boom at 3")

    with Subscriber(pub.address) as sub:
        handshake(pub, sub)
        sub.start(on_decode=on_decode)
        for seq in range(6):
            pub.publish(decode_msg(seq))
        with pytest.raises(RuntimeError, match="boom at 3"):
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sub.wait(0.05)
        assert not sub.running
        sub.stop()


def bind_retrying(address: str, timeout_s: float = 10.0) -> ZmqPublisher:
    """Bind a new publisher to ``address``, retrying while the old socket's port is freed.

    ``close()`` returns before ZeroMQ's I/O thread has released the listening socket, so
    an immediate re-bind of the same port can fail with "Address already in use"; a
    restarted runtime would retry the same way.
    """
    deadline = time.monotonic() + timeout_s
    delay_s = 0.005
    while True:
        try:
            return ZmqPublisher(address)
        except OSError as err:
            if "in use" not in str(err) or time.monotonic() > deadline:
                raise
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.2)


def test_reconnects_after_runtime_restart_counting_a_restart_not_drops():
    first = ZmqPublisher("tcp://127.0.0.1:0")
    address = first.address
    with Subscriber(address) as sub:
        handshake(first, sub)
        first.publish(status_msg(1000, uptime_s=50.0))
        for seq in range(40):
            first.publish(decode_msg(seq))
        assert [d.seq for d in sub.decodes(timeout_s=0.5)] == list(range(40))
        first.close()

        with bind_retrying(address) as second:  # the restarted runtime, same port
            new: list[int] = []
            deadline = time.monotonic() + 5.0
            seq = 0
            while len(new) < 10 and time.monotonic() < deadline:
                if seq % 10 == 0:
                    second.publish(status_msg(seq // 10, uptime_s=seq * 0.01))
                second.publish(decode_msg(seq))
                seq += 1
                msg = sub.recv(0.01)
                while msg is not None:
                    if isinstance(msg, Decode):
                        new.append(msg.seq)
                    msg = sub.recv(0.0)
    assert len(new) >= 10, "no decode after the restart"
    assert new == list(range(new[0], new[0] + len(new)))
    assert sub.stats.disconnects >= 1
    assert sub.stats.restarts == 1
    assert sub.stats.dropped == 0


def test_slow_client_does_not_slow_the_runtime_and_counts_drops():
    n = 5000
    with ZmqPublisher("tcp://127.0.0.1:0", sndhwm=20) as pub:
        with Subscriber(pub.address, rcvhwm=20) as sub:
            handshake(pub, sub)
            durations = []
            for seq in range(n):  # the client reads nothing meanwhile
                t0 = time.perf_counter()
                pub.publish(decode_msg(seq))
                durations.append(time.perf_counter() - t0)
            # PUB drops for the slow peer only, unseen by the publisher.
            assert pub.dropped == 0
            assert max(durations) < 0.05 and sum(durations) < 2.0
            got = [d.seq for d in sub.decodes(timeout_s=0.3)]
            assert pub.publish(decode_msg(n))  # room again once the client caught up
            got += [d.seq for d in sub.decodes(timeout_s=0.5)]
    assert got == sorted(got) and got[-1] == n
    assert sub.stats.dropped > 0, "queues never filled; the test proves nothing"
    assert len(got) + sub.stats.dropped == n + 1


def test_conflate_keeps_only_the_newest():
    with ZmqPublisher("tcp://127.0.0.1:0", single_frame=True) as pub:
        with Subscriber(pub.address, topics=("decode",), conflate=True) as sub:
            for i in range(200):  # until the subscription arrived
                pub.publish(decode_msg(i))
                if sub.recv(0.02) is not None:
                    break
            for seq in range(1000, 1100):
                pub.publish(decode_msg(seq))
            time.sleep(0.3)
            before = sub.stats.decodes
            assert sub.latest().seq == 1099
            assert sub.stats.decodes - before == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="conflate=True"):
        Subscriber("tcp://127.0.0.1:1", conflate=True)
    with pytest.raises(ValueError, match="topics"):
        Subscriber("tcp://127.0.0.1:1", topics=("decodes",))
    with pytest.raises(ValueError, match=r"address='127\.0\.0\.1:5556'"):
        Subscriber("127.0.0.1:5556")


# -- staleness ---------------------------------------------------------------------------


def test_staleness_in_lsl_time_and_receive_time(pub, monkeypatch):
    pylsl = pytest.importorskip("pylsl")
    with Subscriber(pub.address) as sub:
        handshake(pub, sub)
        pub.publish(decode_msg(0, last_lsl_s=pylsl.local_clock() - 0.3))
        assert sub.wait(2.0) is not None
        assert 0.29 < sub.lsl_age_s() < 0.6
        assert sub.latest(max_lsl_age_s=0.1) is None
        assert sub.latest(max_lsl_age_s=2.0).seq == 0
        assert 0.0 <= sub.receive_age_s() < 0.5

        # Without pylsl the LSL age is unknown (None), never a made-up number.
        monkeypatch.setattr(subscriber_module, "lsl_clock", lambda: None)
        assert sub.lsl_age_s() is None
        with pytest.raises(RuntimeError, match="max_receive_age_s"):
            sub.latest(max_lsl_age_s=1.0)
        time.sleep(0.15)
        assert sub.latest(max_receive_age_s=0.1) is None
        assert sub.latest(max_receive_age_s=5.0).seq == 0
