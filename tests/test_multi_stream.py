"""Several streams in one runtime (rtmoe.runtime.multi) over real LSL outlets and ZeroMQ:
both decoded with their own seq and topic, one batched forward for windows due together
(equal to each stream's own forward), and a killed outlet stalls only its stream."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")
zmq = pytest.importorskip("zmq")

from test_runtime import (  # noqa: E402
    MODEL_CHANS,
    N_TIMES,
    Pusher,
    _cfg,
    _cli,
    _drain,
    _offline_check,
    _save_model,
    _subscriber,
)

from rtmoe.command import UserError  # noqa: E402
from rtmoe.plugins.subscriber import Subscriber  # noqa: E402
from rtmoe.runtime.cli import stream_command  # noqa: E402
from rtmoe.runtime.multi import MultiRuntime, StreamSpec  # noqa: E402
from rtmoe.runtime.streams import read_streams_file, stream_id_of  # noqa: E402
from rtmoe.transport import (  # noqa: E402
    DecodeMessage,
    RuntimeState,
    StatusMessage,
    ZmqPublisher,
    decode,
)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model") / "ckpt", MODEL_CHANS)


def _multi(model_dir, pushers, **cfg):
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    specs = [StreamSpec(sid, {"source_id": p.source_id}, model_dir) for sid, p in pushers.items()]
    return MultiRuntime(specs, _cfg(**cfg), publisher=publisher), publisher


def _wait_for_samples(multi, n, timeout_s=10.0):
    """Until every inlet holds ``n`` samples (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    inlets = [rt.source._inlet for rt in multi.runtimes]
    while any(inlet.samples_available() < n for inlet in inlets):
        assert time.monotonic() < deadline, "the outlets' samples never reached the inlets"
        time.sleep(0.01)


def _of(messages, kind, stream_id):
    return [m for m in messages if isinstance(m, kind) and m.stream_id == stream_id]


def _stalled(messages, stream_id):
    return RuntimeState.STALLED in [m.state for m in _of(messages, StatusMessage, stream_id)]


def test_stream_ids_are_topic_safe_and_distinct():
    assert stream_id_of("EEG A.1") == "EEG_A_1"
    with pytest.raises(UserError, match="repeat"):
        MultiRuntime([StreamSpec("A", {}), StreamSpec("A", {})])
    with pytest.raises(UserError, match="letters, digits"):
        MultiRuntime([StreamSpec("a.b", {})])
    onnx = _cfg(engine="onnx")  # one engine kind, device and publisher for all streams
    with pytest.raises(UserError, match=r"stream 'B' sets \['engine'\], which all streams"):
        MultiRuntime([StreamSpec("A", {}), StreamSpec("B", {}, cfg=onnx)], _cfg())


def test_windows_due_together_are_one_batch_equal_to_each_streams_own_decode(model_dir):
    """Both outlets' samples wait at the inlets before the first cycle, so both windows
    are due in it: one forward of batch 2, each row equal to the model on that stream's
    window of its whole-recording chain."""
    pushers = {
        "A": Pusher(MODEL_CHANS, 200.0, 1.0, seed=1),
        "B": Pusher(MODEL_CHANS, 200.0, 1.0, seed=2),
    }
    multi, publisher = _multi(model_dir, pushers)
    try:
        assert multi.runtimes[0].engine is multi.runtimes[1].engine  # one model, one engine
        sub = _subscriber(publisher.address, (b"rtmoe.decode",))
        time.sleep(0.1)  # the subscription reaches the publisher before the first decode
        for p in pushers.values():
            p.start()
        for p in pushers.values():
            p.join()
        _wait_for_samples(multi, 200)
        assert multi.step() == 2 and multi.batches == 1
        decodes = _drain(sub)
        sub.close()
    finally:
        multi.close()
        publisher.close()
    assert sorted(d.stream_id for d in decodes) == ["A", "B"]
    for runtime, pusher in zip(multi.runtimes, pushers.values(), strict=True):
        _offline_check(runtime, pusher, _of(decodes, DecodeMessage, runtime.stream_id), [0, 1, 2])


def _receive_for(sub, seconds: float) -> list:
    """The messages that arrive within ``seconds`` (`_drain` waits for a quiet moment,
    which a live stream publishing every hop may never leave)."""
    messages, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sub.poll(left * 1000):
            messages.append(decode(sub.recv_multipart()))
    return messages


def test_two_outlets_with_their_own_seq_and_a_killed_one_recovers_alone(model_dir):
    a = Pusher(MODEL_CHANS, 200.0, duration_s=1.5, seed=1)
    b = Pusher(MODEL_CHANS, 200.0, duration_s=40.0, seed=2)  # killed at the end
    multi, publisher = _multi(
        model_dir, {"A": a, "B": b}, stall_timeout_ms=300.0, status_period_s=0.2
    )
    sub = _subscriber(publisher.address)
    only_b = Subscriber(publisher.address, topics=("decode",), stream="B")
    time.sleep(0.1)
    # Until stop(): on a loaded machine a fixed duration could end before the last phase.
    thread = threading.Thread(target=multi.run)
    thread.start()
    a.start()
    b.start()
    a.join()
    a.kill()
    before, deadline = [], time.monotonic() + 4.0
    while not _stalled(before, "A") and time.monotonic() < deadline:
        before += _receive_for(sub, 0.1)
    assert _stalled(before, "A"), "stream A never reported STALLED"
    # A's outlet comes back (same source_id); liblsl re-resolves it within seconds.
    a2 = Pusher(MODEL_CHANS, 200.0, 10.0, name=a.name, source_id=a.source_id, seed=3).start()
    after, deadline = [], time.monotonic() + 8.0
    while time.monotonic() < deadline and (
        len(_of(after, DecodeMessage, "A")) < 3 or len(_of(after, DecodeMessage, "B")) < 5
    ):
        after += _receive_for(sub, 0.1)
    multi.stop()
    thread.join(10.0)
    a2.kill()
    b.kill()
    after += _drain(sub)
    b_only = list(only_b.decodes(timeout_s=0.3))
    only_b.close()
    sub.close()
    publisher.close()
    messages = before + after
    for sid in "AB":
        seqs = [m.seq for m in _of(messages, DecodeMessage, sid)]
        assert seqs == list(range(len(seqs))), f"stream {sid}: seq {seqs[:5]}..."
    # B never stalled, and kept decoding while A was stalled and recovering.
    assert not _stalled(messages, "B")
    assert len(_of(after, DecodeMessage, "B")) >= 5
    # A recovered by itself, its windows only from the new outlet's samples.
    resumed = _of(after, DecodeMessage, "A")
    assert len(resumed) >= 3, "stream A was not decoded again after its outlet came back"
    assert min(m.window_first_lsl_s for m in resumed) >= a2.stamps[0]
    spans = [m.window_last_lsl_s - m.window_first_lsl_s for m in resumed]
    np.testing.assert_allclose(spans, (N_TIMES - 1) / 200.0, atol=1e-3)
    # The per-stream subscriber got B's decodes only, all of them.
    assert [d.seq for d in b_only] == [m.seq for m in _of(messages, DecodeMessage, "B")]
    assert only_b.stats.dropped == 0


def test_cli_decodes_every_lsl_stream_given(model_dir, capsys):
    pushers = [Pusher(MODEL_CHANS, 200.0, duration_s=6.0, seed=s).start() for s in (1, 2)]
    argv = [a for p in pushers for a in ("--lsl", p.name)]
    argv += ["--model", str(model_dir), "--engine", "torch", "--zmq", "tcp://127.0.0.1:0"]
    argv += ["--device", "cpu", "--duration-s", "1.5"]
    assert _cli(stream_command, argv) == 0
    for p in pushers:
        p.kill()
    out = capsys.readouterr().out
    assert "decoding 2 streams" in out
    for p in pushers:  # one summary line per stream, each with decodes
        (line,) = [x for x in out.splitlines() if x.startswith(f"{stream_id_of(p.name)}: ")]
        assert int(line.split(": ", 1)[1].split()[0]) > 0, line


def test_cli_refuses_what_several_streams_cannot_do(capsys):
    base = ["--lsl", "A", "--lsl", "B", "--zmq", "tcp://127.0.0.1:0"]
    for extra, match in [
        (["--source-id", "x"], "--source-id names one stream"),
        (["--plugin", "lsl-out"], "every stream would open an LSL outlet"),
    ]:
        with pytest.raises(UserError, match=match):
            _cli(stream_command, [*base, *extra])
    with pytest.raises(UserError, match="same stream ids"):
        _cli(stream_command, ["--lsl", "EEG.A", "--lsl", "EEG A"])


def test_a_streams_file_sets_each_streams_model_id_and_settings(model_dir, tmp_path, capsys):
    # The second amplifier labels its channels by number: its table renames them.
    numbered = [f"ch{i}" for i in range(len(MODEL_CHANS))]
    pushers = [
        Pusher(labels, 200.0, duration_s=8.0, seed=s).start()
        for s, labels in ((1, MODEL_CHANS), (2, numbered))
    ]
    renames = ", ".join(f'"{a}={b}"' for a, b in zip(numbered, MODEL_CHANS, strict=True))
    path = tmp_path / "streams.toml"
    path.write_text(
        f'[[stream]]\nlsl = "{pushers[0].name}"\nid = "left"\nmodel = "{model_dir}"\n\n'
        f'[[stream]]\nlsl = "{pushers[1].name}"\nhop_ms = 200\nfill = "zeros"\nwait_s = "none"\n'
        f"rename = [{renames}]\n"
    )
    entries = read_streams_file(path, _cfg())
    assert [e["id"] for e in entries] == ["left", stream_id_of(pushers[1].name)]
    assert [e["cfg"].hop_ms for e in entries] == [100.0, 200.0]
    assert entries[1]["cfg"].fill == "zeros" and entries[1]["cfg"].wait_s is None
    assert entries[0]["cfg"].rename == () and len(entries[1]["cfg"].rename) == len(MODEL_CHANS)
    argv = ["--streams", str(path), "--model", str(model_dir), "--engine", "torch"]
    argv += ["--zmq", "tcp://127.0.0.1:0", "--device", "cpu", "--duration-s", "1.5"]
    assert _cli(stream_command, argv) == 0
    for p in pushers:
        p.kill()
    out = capsys.readouterr().out
    for sid in ("left", stream_id_of(pushers[1].name)):
        (line,) = [x for x in out.splitlines() if x.startswith(f"{sid}: ")]
        assert int(line.split(": ", 1)[1].split()[0]) > 0, line


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[[stream]]\nid = "a"\n', 'give the LSL stream name, lsl = "EEG_A"'),
        ('[[stream]]\nlsl = "A"\nhop = 5\n', r"unknown keys \['hop'\]"),
        ('[[stream]]\nlsl = "A"\nhop_ms = -5\n', "stream 1: runtime.hop_ms=-5.0 must be > 0"),
        ('[[stream]]\nlsl = "A"\nhop_ms = "fast"\n', "runtime.hop_ms takes a number"),
        ('[[stream]]\nlsl = "A"\nengine = "onnx"\n', r"unknown keys \['engine'\]"),  # shared
        ("[runtime]\nhop_ms = 5\n", r"one \[\[stream\]\] table per stream"),
        ("[[stream]\n", "not valid TOML"),
    ],
)
def test_a_bad_streams_file_names_the_stream_and_the_fix(tmp_path, text, match):
    path = tmp_path / "streams.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        read_streams_file(path, _cfg())
