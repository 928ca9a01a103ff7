"""Wire messages and the ZeroMQ publisher, over real sockets on random loopback ports.

Every receive goes through a poll with a timeout, and the module has a pytest-timeout
bound, so a broken publisher fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from rtmoe.transport import (
    SCHEMA_VERSION,
    TOPIC_DECODE,
    TOPIC_STATUS,
    DecodeMessage,
    Heartbeat,
    ProtocolError,
    RuntimeState,
    StatusMessage,
    ZmqPublisher,
    decode,
    encode,
    encode_single_frame,
)
from rtmoe.transport.publisher import is_loopback_address

pytestmark = pytest.mark.timeout(30)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schema"
LOCAL = "tcp://127.0.0.1:0"
TIMEOUT_MS = 2000


def make_decode(seq: int = 0, **overrides) -> DecodeMessage:
    fields = dict(
        seq=seq,
        model_id="specmoe-small-0123456789abcdef",
        subject_id="S01",
        labels=("left_hand", "right_hand", "feet", "tongue"),
        probabilities=(0.1, 0.2, 0.3, 0.4),
        label="tongue",
        gates={"expert_0": 0.5, "expert_1": 0.25, "expert_2": 0.75},
        window_first_lsl_s=1000.0,
        window_last_lsl_s=1003.995,
        published_lsl_s=1004.0125,
        latency_ms=17.5,
        compute_ms=4.25,
        skipped_windows=0,
    )
    fields.update(overrides)
    return DecodeMessage(**fields)


def make_status(seq: int = 0, **overrides) -> StatusMessage:
    fields = dict(
        seq=seq,
        state="RUNNING",
        model_id="specmoe-small-0123456789abcdef",
        subject_id=None,
        sfreq=200.0,
        sfreq_effective=199.97,
        samples_received=2000,
        dropped_samples=3,
        gaps=1,
        skipped_windows=2,
        decodes=40,
        publish_drops=0,
        uptime_s=10.0,
        published_lsl_s=1004.5,
        last_sample_lsl_s=1004.49,
        latency_ms_mean=12.0,
        latency_ms_max=20.5,
    )
    fields.update(overrides)
    return StatusMessage(**fields)


def subscriber(address: str, *topics: bytes, conflate: bool = False, **opts) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if conflate:
        sock.setsockopt(zmq.CONFLATE, 1)  # must precede connect
    for option, value in opts.items():
        sock.setsockopt(getattr(zmq, option), value)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(address)
    return sock


def receive(sock: zmq.Socket, timeout_ms: int = TIMEOUT_MS) -> list[bytes] | None:
    """The next message's frames, or None if nothing arrives within the timeout."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv_multipart(zmq.NOBLOCK)


def join(pub: ZmqPublisher, sub: zmq.Socket, msg) -> None:
    """Beat the slow joiner: publish ``msg`` until the subscriber gets one, then drain."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pub.publish(msg)
        if receive(sub, timeout_ms=20) is not None:
            while receive(sub, timeout_ms=50) is not None:
                pass
            return
    raise AssertionError(f"subscriber never joined {pub.address}")


# --- messages: pure encode/decode -------------------------------------------------------


def test_decode_payload_is_compact_json_with_the_documented_fields():
    topic, payload = encode(make_decode(seq=7))
    assert topic == TOPIC_DECODE
    assert b" " not in payload  # compact separators; no string here contains a space
    assert json.loads(payload) == {
        "type": "decode",
        "schema_version": SCHEMA_VERSION,
        "seq": 7,
        "model_id": "specmoe-small-0123456789abcdef",
        "subject_id": "S01",
        "labels": ["left_hand", "right_hand", "feet", "tongue"],
        "probabilities": [0.1, 0.2, 0.3, 0.4],
        "label": "tongue",
        "gates": {"expert_0": 0.5, "expert_1": 0.25, "expert_2": 0.75},
        "window_first_lsl_s": 1000.0,
        "window_last_lsl_s": 1003.995,
        "published_lsl_s": 1004.0125,
        "latency_ms": 17.5,
        "compute_ms": 4.25,
        "skipped_windows": 0,
        "extras": {},
        "valid": True,
        "repaired_share": 0.0,
        "flat_channels": 0,
        "out_of_range_channels": 0,
        "gap_in_window": False,
        "invalid_reason": None,
        "stream_id": None,
    }


def test_quality_verdict_is_checked_and_round_trips():
    bad = make_decode(valid=False, repaired_share=0.5, flat_channels=3, invalid_reason="3 flat")
    assert decode(list(encode(bad))) == bad
    with pytest.raises(ProtocolError, match="an invalid decode says why"):
        make_decode(valid=False)
    with pytest.raises(ProtocolError, match="an invalid decode says why"):
        make_decode(invalid_reason="flat")
    with pytest.raises(ProtocolError, match=r"repaired_share=1.5 must be in \[0, 1\]"):
        make_decode(repaired_share=1.5)
    with pytest.raises(ProtocolError, match="valid=1 must be a bool"):
        make_decode(valid=1)


@pytest.mark.parametrize("make", [make_decode, make_status])
def test_roundtrip_multipart_and_single_frame(make):
    msg = make(seq=3)
    frames = encode(msg)
    assert decode(list(frames)) == msg
    single = encode_single_frame(msg)
    assert single == frames[0] + b" " + frames[1]
    assert decode(single) == msg
    assert decode([single]) == msg


def test_numpy_inputs_become_plain_python_values():
    probs = np.array([0.25, 0.75], dtype=np.float32)
    msg = make_decode(
        seq=np.int64(5),
        labels=np.array(["rest", "move"]),
        probabilities=probs,
        label="move",
        gates={"expert_0": np.float32(0.5)},
        latency_ms=np.float32(3.5),
    )
    assert type(msg.seq) is int and msg.seq == 5
    assert msg.labels == ("rest", "move") and msg.probabilities == (0.25, 0.75)
    assert type(msg.latency_ms) is float and msg.gates == {"expert_0": 0.5}
    probs[0] = 0.9  # the message is a snapshot, not a view of the caller's array
    assert decode(encode(msg)) == msg and msg.probabilities[0] == 0.25


def test_status_state_is_an_enum_and_unknown_states_are_refused():
    assert make_status(state="STALLED").state is RuntimeState.STALLED
    with pytest.raises(ProtocolError, match=r"state='PAUSED'.*WAITING"):
        make_status(state="PAUSED")


def test_encode_is_fast():
    msg = make_decode()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        encode(msg)
    us_per_encode = (time.perf_counter() - start) / n * 1e6
    print(f"encode: {us_per_encode:.1f} µs per decode message")
    # ~6 µs measured on a shared 2-core machine; the bound only catches a gross regression.
    assert us_per_encode < 200


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"probabilities": (0.1, math.nan, 0.3, 0.4)}, r"probabilities contains nan"),
        ({"latency_ms": math.nan}, r"latency_ms=nan must be a finite number"),
        ({"published_lsl_s": math.inf}, r"published_lsl_s=inf must be a finite"),
        ({"gates": {"expert_0": math.nan}}, r"gates contains nan"),
        ({"probabilities": (0.1, 0.2, 0.3, 1.4)}, r"in \[0, 1\]"),
        ({"probabilities": (0.5, 0.5)}, r"2 values but labels has 4"),
        ({"label": "rest"}, r"label='rest' is not one of labels"),
        ({"labels": (), "probabilities": ()}, r"labels is empty"),
        ({"seq": -1}, r"seq=-1 must be an int >= 0"),
        ({"seq": 1.5}, r"seq=1.5 must be an int >= 0"),
        ({"window_first_lsl_s": 1004.0}, r"window_first_lsl_s=1004.0 is after"),
    ],
)
def test_invalid_decode_messages_are_refused(overrides, match):
    with pytest.raises(ProtocolError, match=match):
        make_decode(**overrides)


def test_nan_in_status_and_nan_literal_in_payload_are_refused():
    with pytest.raises(ProtocolError, match="sfreq_effective=nan must be a finite number or None"):
        make_status(sfreq_effective=math.nan)
    assert make_status(sfreq_effective=None).sfreq_effective is None
    _, payload = encode(make_decode())
    bad = payload.replace(b'"latency_ms":17.5', b'"latency_ms":NaN')
    assert bad != payload
    with pytest.raises(ProtocolError, match="NaN"):
        decode([TOPIC_DECODE, bad])


def test_a_stream_id_ends_the_topic_and_must_match_the_payload():
    msg = make_decode(stream_id="EEG_A")
    topic, payload = encode(msg)
    assert topic == b"rtmoe.decode.EEG_A" and json.loads(payload)["stream_id"] == "EEG_A"
    assert decode([topic, payload]) == msg
    assert decode(encode_single_frame(msg)) == msg
    assert encode(make_status(stream_id="B-2"))[0] == b"rtmoe.status.B-2"
    assert encode(make_decode())[0] == TOPIC_DECODE  # single stream: the 1.3 topic
    with pytest.raises(ProtocolError, match="stream_id='EEG_A'"):
        decode([TOPIC_DECODE, payload])  # a stream's payload on the plain topic
    with pytest.raises(ProtocolError, match="stream_id=None"):
        decode([b"rtmoe.decode.EEG_A", encode(make_decode())[1]])
    with pytest.raises(ProtocolError, match="unknown topic"):
        decode([b"rtmoe.decoder", payload])
    for bad in ("a.b", "a b", "", "x" * 65):
        with pytest.raises(ProtocolError, match="letters, digits"):
            make_decode(stream_id=bad)


def edit_payload(msg, **changes) -> list[bytes]:
    topic, payload = encode(msg)
    data = json.loads(payload)
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return [topic, json.dumps(data).encode()]


def test_other_major_schema_version_is_refused():
    with pytest.raises(ProtocolError, match=r"schema_version='2\.0' has major version 2.*major 1"):
        decode(edit_payload(make_decode(), schema_version="2.0"))
    with pytest.raises(ProtocolError, match="schema_version=None is missing"):
        decode(edit_payload(make_status(), schema_version=...))


def test_newer_minor_version_with_extra_fields_is_accepted():
    msg = make_decode(seq=11)
    assert decode(edit_payload(msg, schema_version="1.9", confidence=0.8)) == msg


def test_missing_fields_wrong_types_and_bad_framing_are_named():
    with pytest.raises(ProtocolError, match=r"lacks required fields \['label', 'gates'\]"):
        decode(edit_payload(make_decode(), label=..., gates=...))
    with pytest.raises(ProtocolError, match="field seq='3' has the wrong type"):
        decode(edit_payload(make_status(), seq="3"))
    with pytest.raises(ProtocolError, match=r"type='status' arrived on the rtmoe\.decode topic"):
        decode([TOPIC_DECODE, encode(make_status())[1]])
    with pytest.raises(ProtocolError, match=r"unknown topic b'rtmoe\.other'"):
        decode([b"rtmoe.other", encode(make_status())[1]])
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode([TOPIC_STATUS, b"{not json"])
    with pytest.raises(ProtocolError, match="has 3 frames"):
        decode([TOPIC_STATUS, b"{}", b"{}"])
    with pytest.raises(ProtocolError, match="no space between topic and JSON"):
        decode(TOPIC_STATUS)


def test_messages_module_does_not_import_zmq():
    code = "import sys, rtmoe.transport.messages; assert 'zmq' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- JSON Schemas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "msg"),
    [
        ("decode", make_decode(seq=2, subject_id=None)),
        ("status", make_status(seq=0, state="WAITING", sfreq_effective=None)),
        ("status", make_status(seq=9)),
    ],
)
def test_payloads_validate_against_the_json_schemas(name, msg):
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is a test dependency (the dev extra)"
    )
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(encode(msg)[1])
    validator.validate(data)
    # The schema is strict enough to fail: a missing field, a wrong type, a wrong version.
    invalid = [
        {k: v for k, v in data.items() if k != "seq"},
        {**data, "seq": -1},
        {**data, "schema_version": "2.0"},
        {**data, "type": "other"},
    ]
    if name == "decode":
        invalid.append({**data, "probabilities": [0.5, 1.5, 0.0, 0.0]})
        invalid.append({**data, "gates": {"expert_0": "high"}})
    else:
        invalid.append({**data, "state": "PAUSED"})
    for bad in invalid:
        assert not validator.is_valid(bad), bad


# --- publisher over real sockets ---------------------------------------------------------


def test_bind_random_port_reports_the_bound_address():
    with ZmqPublisher(LOCAL) as pub, ZmqPublisher("tcp://127.0.0.1:*") as pub2:
        for p in (pub, pub2):
            host, port = p.address.removeprefix("tcp://").rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
        assert pub.address != pub2.address
    assert pub.closed
    with pytest.raises(RuntimeError, match="after close"):
        pub.publish(make_status())


@pytest.mark.parametrize(
    "address",
    ["tcp://*:5556", "tcp://0.0.0.0:0", "tcp://192.168.1.20:5556", "tcp://eth0:5556",
     "tcp://[::]:5556", "ws://127.0.0.1:5556", "127.0.0.1:5556"],
)  # fmt: skip
def test_non_loopback_bind_is_refused_without_the_flag(address):
    with pytest.raises(ValueError, match=r"address=.*allow_remote=True") as err:
        ZmqPublisher(address)
    assert address in str(err.value)


@pytest.mark.parametrize(
    ("address", "local"),
    [("tcp://127.0.0.1:0", True), ("tcp://127.4.5.6:*", True), ("tcp://localhost:5556", True),
     ("tcp://[::1]:5556", True), ("ipc:///tmp/rtmoe.sock", True), ("inproc://rtmoe", True),
     ("tcp://*:5556", False), ("tcp://10.0.0.1:5556", False), ("tcp://[::]:5556", False),
     ("pgm://eth0;239.192.1.1:5555", False)],
)  # fmt: skip
def test_is_loopback_address(address, local):
    assert is_loopback_address(address) is local


def test_allow_remote_binds_all_interfaces():
    with ZmqPublisher("tcp://0.0.0.0:0", allow_remote=True) as pub:
        assert pub.address.startswith("tcp://0.0.0.0:")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="sndhwm=0 must be >= 1"):
        ZmqPublisher(LOCAL, sndhwm=0)
    with ZmqPublisher(LOCAL) as pub, pytest.raises(OSError, match="cannot bind"):
        ZmqPublisher(pub.address)  # port already taken


@pytest.mark.parametrize("single_frame", [False, True])
def test_both_message_types_roundtrip_over_zmq(single_frame):
    with ZmqPublisher(LOCAL, single_frame=single_frame) as pub:
        sub = subscriber(pub.address, TOPIC_DECODE, TOPIC_STATUS)
        try:
            join(pub, sub, make_status(seq=0))
            sent = [make_decode(seq=1), make_status(seq=1, state="STOPPING"), make_decode(seq=2)]
            assert all(pub.publish(m) for m in sent)
            got = [receive(sub) for _ in sent]
            assert all(frames is not None for frames in got)
            assert [len(frames) for frames in got] == [1 if single_frame else 2] * 3
            assert [decode(frames) for frames in got] == sent
        finally:
            sub.close()
        assert pub.dropped == 0


def test_status_subscriber_receives_only_status():
    with ZmqPublisher(LOCAL) as pub:
        sub = subscriber(pub.address, TOPIC_STATUS)
        try:
            join(pub, sub, make_status(seq=0))
            for seq in range(5):
                pub.publish(make_decode(seq=seq))
            pub.publish(make_status(seq=1))
            for seq in range(5, 10):
                pub.publish(make_decode(seq=seq))
            pub.publish(make_status(seq=2))
            got = [receive(sub) for _ in range(2)]
            assert [decode(frames) for frames in got] == [make_status(seq=1), make_status(seq=2)]
            assert receive(sub, timeout_ms=100) is None  # no decode got through
        finally:
            sub.close()


def test_conflate_subscriber_gets_only_the_newest_of_a_burst():
    n = 200
    with ZmqPublisher(LOCAL, single_frame=True) as pub:
        sub = subscriber(pub.address, TOPIC_DECODE, conflate=True)
        try:
            join(pub, sub, make_decode(seq=0))
            for seq in range(1, n + 1):
                assert pub.publish(make_decode(seq=seq))
            time.sleep(0.2)  # loopback delivers the burst within milliseconds
            seqs = []
            while not seqs or seqs[-1] != n:
                frames = receive(sub)
                assert frames is not None, f"burst did not arrive; got seqs {seqs}"
                assert len(frames) == 1
                seqs.append(decode(frames).seq)
            # A SUB without CONFLATE would hold all 200; a conflating one keeps the last.
            assert len(seqs) <= 2, seqs
            assert receive(sub, timeout_ms=100) is None
        finally:
            sub.close()


def test_stalled_subscriber_never_blocks_publish():
    # Tiny queues on both ends so the pipe fills once the socket buffers have.
    with ZmqPublisher(LOCAL, sndhwm=1) as pub:
        sub = subscriber(pub.address, TOPIC_DECODE, RCVHWM=1, RCVBUF=4096)
        try:
            join(pub, sub, make_decode(seq=0))
            sent_before = pub.sent
            n = 20000
            results = []
            slowest_s = 0.0
            start = time.perf_counter()
            for seq in range(1, n + 1):
                t0 = time.perf_counter()
                results.append(pub.publish(make_decode(seq=seq)))
                slowest_s = max(slowest_s, time.perf_counter() - t0)
            total_s = time.perf_counter() - start
            print(f"slowest publish {slowest_s * 1e3:.2f} ms")
            # PUB drops for the stalled peer only, which the publisher cannot see: every
            # send is accepted and none counts as a drop.
            assert all(results)
            assert pub.dropped == 0 and pub.sent - sent_before == n
            assert slowest_s < 0.5 and total_s < 10  # a blocking send would hang instead
        finally:
            sub.close()


def test_stuck_subscriber_costs_only_itself():
    """A subscriber that stays connected and never reads must not black out the others.

    The healthy subscriber reads in lockstep (each message is received, with a timeout,
    before the next is published), so its own queue never holds more than one message
    and it cannot lose any; the stuck one's queue fills after a few MB of large messages.
    Under XPUB_NODROP the publisher would then refuse every send and the healthy
    subscriber would time out.
    """
    n = 600
    blob = "x" * 200_000  # ~200 kB per message: 120 MB in all, far beyond socket buffers
    with ZmqPublisher(LOCAL, sndhwm=8) as pub:
        stuck = subscriber(pub.address, b"", RCVHWM=1, RCVBUF=4096)
        healthy = subscriber(pub.address, b"")
        try:
            join(pub, stuck, make_status(seq=0))
            join(pub, healthy, make_status(seq=0))
            for seq in range(1, n + 1):
                if seq % 10 == 0:
                    msg = make_status(seq=seq)
                else:
                    msg = make_decode(seq=seq, extras={"blob": blob})
                assert pub.publish(msg)
                frames = receive(healthy, timeout_ms=5000)
                assert frames is not None, f"healthy subscriber got nothing for seq {seq}"
                got = decode(frames)
                assert (type(got), got.seq) == (type(msg), seq)
            assert pub.dropped == 0
            # The stuck subscriber really was stuck: its backlog is far short of n.
            stuck_got = 0
            while stuck_got <= n and receive(stuck, timeout_ms=500) is not None:
                stuck_got += 1
            assert stuck_got < n, "the stuck subscriber's queue never filled"
        finally:
            stuck.close()
            healthy.close()


def test_no_subscriber_is_not_a_drop():
    with ZmqPublisher(LOCAL, sndhwm=1) as pub:
        assert all(pub.publish(make_decode(seq=s)) for s in range(100))
        assert pub.dropped == 0 and pub.sent == 100


# --- heartbeat schedule ------------------------------------------------------------------


def test_heartbeat_is_due_every_period_on_a_fixed_grid():
    beat = Heartbeat(period_s=1.0)
    clock = [100.0, 100.5, 100.99, 101.0, 101.3, 102.05, 102.9, 103.0, 110.2, 110.9, 111.2]
    due = [True, False, False, True, False, True, False, True, True, False, True]
    assert [beat.due(t) for t in clock] == due


def test_heartbeat_period_must_be_positive():
    with pytest.raises(ValueError, match="period_s=0"):
        Heartbeat(period_s=0)


def test_every_source_status_is_a_runtime_state_of_the_same_name():
    from rtmoe.stream.lsl import SourceStatus

    for status in SourceStatus:
        assert RuntimeState(status).value == status.value
