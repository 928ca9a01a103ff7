"""The PsychoPy component, the marker outlet and the headless neurofeedback example.

PsychoPy itself is not installed here: the window path of the example (``BarView``,
``win.flip``) is not run; everything else is, against a real ZmqPublisher and real LSL.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from rtmoe.plugins.psychopy import BarView, DecodeFeedback
from rtmoe.plugins.psychopy.neurofeedback import main
from rtmoe.transport.messages import DecodeMessage
from rtmoe.transport.publisher import ZmqPublisher

pylsl = pytest.importorskip("pylsl")

from rtmoe.plugins.markers import MarkerOutlet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELS = ("left_hand", "right_hand", "feet")


def probabilities(seq: int) -> list[float]:
    """Known class probabilities of decode ``seq``."""
    p0 = (seq % 10) / 10.0
    return [p0, (1.0 - p0) * 0.75, (1.0 - p0) * 0.25]


def decode_msg(seq: int, age_s: float = 0.0) -> DecodeMessage:
    now = pylsl.local_clock()
    return DecodeMessage(
        seq=seq,
        model_id="specmoe-tiny-0123",
        subject_id=None,
        labels=LABELS,
        probabilities=probabilities(seq),
        label=LABELS[0],
        gates={"expert_0": 0.5},
        window_first_lsl_s=now - age_s - 4.0,
        window_last_lsl_s=now - age_s,
        published_lsl_s=now,
        latency_ms=age_s * 1000.0,
        compute_ms=1.0,
    )


def unique(prefix: str) -> str:
    return f"rtmoe-test-{prefix}-{uuid.uuid4().hex[:10]}"


def test_component_and_example_import_without_psychopy_torch_or_the_trunk():
    code = (
        "import sys; import rtmoe.plugins.psychopy.neurofeedback, rtmoe.plugins.markers; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psychopy', 'torch', 'pylsl') "
        "or m.startswith('rtmoe') and not m.startswith('rtmoe.plugins') and m != 'rtmoe'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("psychopy") is not None, reason="PsychoPy present")
def test_bar_view_without_psychopy_points_to_headless():
    with pytest.raises(ImportError, match="--headless"):
        BarView(win=None)


def test_marker_outlet_round_trip():
    name = unique("cues")
    with MarkerOutlet(name) as outlet:
        streams = pylsl.resolve_byprop("name", name, timeout=3.0)
        assert len(streams) == 1 and streams[0].type() == "Markers"
        inlet = pylsl.StreamInlet(streams[0])
        inlet.open_stream(timeout=3.0)
        deadline = time.monotonic() + 3.0
        while not outlet.have_consumers() and time.monotonic() < deadline:
            time.sleep(0.01)
        stamp = outlet.send("left_hand")
        sample, ts = inlet.pull_sample(timeout=3.0)
        assert sample == ["left_hand"] and ts == pytest.approx(stamp, abs=1e-6)
        with pytest.raises(ValueError, match="marker"):
            outlet.send("")
        inlet.close_stream()
    with pytest.raises(RuntimeError, match="close"):
        outlet.send("feet")


def test_decode_feedback_smooths_once_per_decode_and_refuses_stale():
    with ZmqPublisher("tcp://127.0.0.1:0") as pub:
        with DecodeFeedback(pub.address, max_age_s=0.5, smoothing=0.5) as fb:
            assert fb.age_clock == "lsl"
            frame = fb.update("left_hand")
            assert frame.stale and frame.value is None
            for _ in range(200):  # until the subscription reached the publisher
                pub.publish(decode_msg(0))
                time.sleep(0.01)
                if fb.update("left_hand").seq == 0:
                    break
            assert fb.update("left_hand").value == 0.0
            pub.publish(decode_msg(5))  # p(left_hand) = 0.5
            frame = _until(lambda: fb.update("left_hand"), lambda f: f.seq == 5)
            assert frame.value == pytest.approx(0.25) and not frame.stale
            assert fb.update("left_hand").value == pytest.approx(0.25)  # same decode again
            pub.publish(decode_msg(9, age_s=2.0))  # too old to show
            frame = _until(lambda: fb.update("left_hand"), lambda f: f.seq == 9)
            assert frame.stale and frame.value == pytest.approx(0.25)
            assert frame.probability == pytest.approx(0.9) and frame.age_s > 1.9
            fb.reset()
            assert fb.update("left_hand").value is None


def test_decode_feedback_ignores_invalid_decodes():
    with ZmqPublisher("tcp://127.0.0.1:0") as pub:
        with DecodeFeedback(pub.address, max_age_s=0.5) as fb:
            for _ in range(200):  # until the subscription reached the publisher
                pub.publish(decode_msg(5))  # p(left_hand) = 0.5
                time.sleep(0.01)
                if fb.update("left_hand").seq == 5:
                    break
            assert fb.update("left_hand").value == pytest.approx(0.5)
            bad = dataclasses.replace(
                decode_msg(9), valid=False, flat_channels=3, invalid_reason="3 of 3 channels flat"
            )
            pub.publish(bad)  # p(left_hand) = 0.9, but the signal is bad
            frame = _until(lambda: fb.update("left_hand"), lambda f: f.seq == 9)
            assert not frame.valid and frame.invalid_reason == "3 of 3 channels flat"
            assert frame.value == pytest.approx(0.5) and not frame.stale  # not moved
            pub.publish(decode_msg(8))
            frame = _until(lambda: fb.update("left_hand"), lambda f: f.seq == 8)
            assert frame.valid and frame.value == pytest.approx(0.8)


def _until(get, ok, timeout_s: float = 3.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = get()
        if ok(value):
            return value
        time.sleep(0.01)
    pytest.fail("condition not met in time")


def test_headless_neurofeedback_against_a_live_publisher(tmp_path, capsys):
    marker_name = unique("nf")
    log_path = tmp_path / "nf.jsonl"
    feed_s, hop_s = 2.2, 0.1
    stop = threading.Event()
    published: list[int] = []

    def feed(pub: ZmqPublisher) -> None:
        t0 = time.monotonic()
        seq = 0
        while not stop.is_set() and time.monotonic() - t0 < feed_s:
            pub.publish(decode_msg(seq))
            published.append(seq)
            seq += 1
            time.sleep(hop_s)

    received_markers: list[tuple[str, float]] = []

    def read_markers() -> None:
        streams = pylsl.resolve_byprop("name", marker_name, timeout=3.0)
        if not streams:
            return
        inlet = pylsl.StreamInlet(streams[0])
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            sample, ts = inlet.pull_sample(timeout=0.1)
            if sample is not None:
                received_markers.append((sample[0], ts))

    with ZmqPublisher("tcp://127.0.0.1:0") as pub:
        threads = [
            threading.Thread(target=feed, args=(pub,), daemon=True),
            threading.Thread(target=read_markers, daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            argv = ["--headless", "--address", pub.address, "--duration-s", "3"]
            argv += ["--trial-s", "1", "--smoothing", "0", "--max-age-s", "0.5"]
            argv += ["--log", str(log_path), "--marker-stream", marker_name]
            assert main(argv) == 0
        finally:
            stop.set()
            for thread in threads:
                thread.join(5.0)

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    frames = [r for r in records if r["event"] == "frame"]
    markers = [r for r in records if r["event"] == "marker"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert len(frames) >= 60, "headless loop far below its 60 frames/s"
    assert [m["marker"] for m in markers] == [LABELS[k % 3] for k in range(len(markers))]
    assert len(markers) == summary["trials"] == summary["markers_sent"] == 3
    for frame in frames:
        assert frame["cue"] == LABELS[frame["trial"] % 3]
        expected = probabilities(frame["seq"])[LABELS.index(frame["cue"])]
        assert frame["p"] == pytest.approx(expected)
        if not frame["stale"]:
            assert frame["bar"] == pytest.approx(expected, abs=1e-6)
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs) and seqs[-1] == published[-1]
    # Fresh while fed, stale once the decodes stop (feed ends at 2.2 s, limit 0.5 s).
    assert not any(f["stale"] for f in frames if f["t_s"] < 1.5)
    assert all(f["stale"] for f in frames if f["t_s"] > feed_s + 0.6)
    assert summary["dropped"] == 0 and summary["restarts"] == 0
    assert summary["classes"] == list(LABELS) and summary["age_clock"] == "lsl"
    # Markers seen by a real LSL inlet carry the stamps the example logged.
    assert received_markers, "no marker reached the LSL inlet"
    logged = {(m["marker"], round(m["lsl_s"], 6)) for m in markers}
    assert {(name, round(ts, 6)) for name, ts in received_markers} <= logged


def test_headless_without_a_runtime_fails_clearly(capsys):
    argv = ["--headless", "--address", "tcp://127.0.0.1:1", "--no-markers"]
    assert main([*argv, "--first-decode-timeout-s", "0.2"]) == 1
    assert "no decode from tcp://127.0.0.1:1" in capsys.readouterr().err


def test_decode_feedback_without_pylsl_uses_receive_age(monkeypatch):
    import rtmoe.plugins.psychopy as component
    import rtmoe.plugins.subscriber as subscriber_module

    monkeypatch.setattr(component, "lsl_clock", lambda: None)
    monkeypatch.setattr(subscriber_module, "lsl_clock", lambda: None)
    with ZmqPublisher("tcp://127.0.0.1:0") as pub:
        with DecodeFeedback(pub.address, max_age_s=0.2) as fb:
            assert fb.age_clock == "receive"

            def publish_and_update():
                pub.publish(decode_msg(3, age_s=5.0))  # old in LSL time: not visible here
                return fb.update("feet")

            frame = _until(publish_and_update, lambda f: f.seq == 3)
            assert not frame.stale and frame.age_clock == "receive" and frame.age_s < 0.2
            time.sleep(0.3)
            assert fb.update("feet").stale


def test_headless_neurofeedback_against_rtmoe_demo(tmp_path, capsys):
    """The example experiment reads the real `rtmoe demo` stream (shipped model, replayed
    SCP1 EEG) for a fixed time and logs what it received."""
    import socket

    from rtmoe.config import RuntimeConfig
    from rtmoe.runtime.demo import run_demo

    with socket.socket() as probe:  # a free loopback port for both sides
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    cfg = RuntimeConfig(engine="torch", device="cpu", zmq_address=address)
    result = {}
    demo = threading.Thread(
        target=lambda: result.update(summary=run_demo("default", 12.0, cfg, console=False)),
        daemon=True,
    )
    demo.start()
    log_path = tmp_path / "nf.jsonl"
    argv = ["--headless", "--address", address, "--duration-s", "6", "--trial-s", "2"]
    argv += ["--log", str(log_path), "--no-markers", "--max-age-s", "1.0"]
    argv += ["--first-decode-timeout-s", "120"]  # the demo's start-up on a loaded machine
    assert main(argv) == 0
    demo.join(20.0)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    frames = [json.loads(line) for line in log_path.read_text().splitlines()]
    fresh = [f for f in frames if f.get("event") == "frame" and not f["stale"]]
    assert summary["classes"] == ["negativity", "positivity"]
    assert summary["decodes_received"] > 10 and summary["dropped"] == 0
    assert fresh and all(0.0 <= f["p"] <= 1.0 for f in fresh)
    assert result["summary"].decodes_received >= summary["decodes_received"]
