"""The opt-in signal preview topic (``rtmoe.preview``, protocol 1.3; ``runtime.preview_hz``).

A real LSL outlet (3 channels, one of them flat) feeds a real `Runtime` (tiny model)
publishing on a random 127.0.0.1 port; a SUB socket subscribed to every ``rtmoe.`` topic
checks that previews come only when asked for, one per decode, with the decode's time,
the right shape and rate, and the flat channel flagged. Every wait has a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")
zmq = pytest.importorskip("zmq")

from rtmoe.checkpoint import save_checkpoint  # noqa: E402
from rtmoe.config import Config, ConfigError, RuntimeConfig  # noqa: E402
from rtmoe.models.registry import model_config  # noqa: E402
from rtmoe.models.specmoe import SPECMOE_KIND, TaskConfig, build_specmoe, specmoe_meta  # noqa: E402
from rtmoe.runtime.loop import Runtime  # noqa: E402
from rtmoe.transport import (  # noqa: E402
    DecodeMessage,
    PreviewMessage,
    ProtocolError,
    ZmqPublisher,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parents[1]
CHANS = ("C3", "C4", "CZ")
SFREQ = 200.0


def _preview(**overrides) -> PreviewMessage:
    fields = {
        "seq": 0,
        "model_id": "m",
        "ch_names": ["a", "b"],
        "sfreq": 50.0,
        "last_lsl_s": 10.0,
        "data_uv": [[1.0, 2.0], [3.0, 4.5]],
        "std_uv": [1.0, 0.0],
        "max_abs_uv": [2.0, 4.5],
        "flat": [False, True],
        "out_of_range": [False, False],
        "filled": [False, True],
    }
    return PreviewMessage(**{**fields, **overrides})


def test_preview_message_round_trips_and_checks_its_shape():
    msg = _preview()
    topic, payload = encode(msg)
    assert topic == b"rtmoe.preview" and b'"schema_version":"1.4"' in payload
    assert decode([topic, payload]) == msg
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "schema" / "preview.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(payload))
    assert set(schema["required"]) == {"type", "schema_version"} | {
        f.name for f in dataclasses.fields(PreviewMessage)
    }
    with pytest.raises(ProtocolError, match="2 rows"):
        _preview(data_uv=[[1.0, 2.0], [3.0]])
    with pytest.raises(ProtocolError, match="bools"):
        _preview(flat=[0, 1])
    with pytest.raises(ProtocolError, match="finite"):
        _preview(data_uv=[[1.0, float("nan")], [3.0, 4.0]])
    with pytest.raises(ConfigError, match="preview_hz"):
        RuntimeConfig(preview_hz=-1.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = Config().replace(model=model_config("tiny"), moe={"n_experts": 2})
    task = TaskConfig(name="preview", ch_names=CHANS, n_times=100, labels=("a", "b"))
    torch.manual_seed(0)
    model = build_specmoe(config, task, config.moe).eval()
    return save_checkpoint(
        tmp_path_factory.mktemp("model") / "ckpt", model, config, kind=SPECMOE_KIND,
        meta=specmoe_meta(task),
    )  # fmt: skip


class Sender:
    """3 channels at 200 Hz in real time; CZ flat (a dead electrode)."""

    def __init__(self, duration_s: float = 30.0) -> None:
        self.name = f"rtmoe-preview-{uuid.uuid4().hex[:10]}"
        n = round(duration_s * SFREQ)
        t = np.arange(n) / SFREQ
        rng = np.random.default_rng(0)
        self.data = (30 * np.sin(2 * np.pi * 10 * t) + 10 * rng.normal(size=(3, n))).astype(
            np.float32
        )
        self.data[2] = 5.0
        info = pylsl.StreamInfo(self.name, "EEG", 3, SFREQ, "float32", self.name)
        info.set_channel_labels(list(CHANS))
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()

    def _push(self, chunk: int = 8) -> None:
        start = pylsl.local_clock()
        for i in range(0, self.data.shape[1], chunk):
            due = start + (i + chunk - 1) / SFREQ
            if self._stop.wait(max(0.0, due - pylsl.local_clock())):
                return
            stamps = start + (i + np.arange(chunk)) / SFREQ
            frames = np.ascontiguousarray(self.data[:, i : i + chunk].T)
            self.outlet.push_chunk(frames, list(stamps))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def _run(model_dir, preview_hz: float, n_decodes: int = 8):
    torch.set_num_threads(1)
    sender = Sender()
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    cfg = RuntimeConfig(
        hop_ms=100.0, engine="torch", device="cpu", resolve_timeout_s=2.0,
        preview_hz=preview_hz,
    )  # fmt: skip
    runtime = Runtime(model_dir, {"name": sender.name}, cfg, publisher=publisher)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"rtmoe.")
    sub.connect(publisher.address)
    time.sleep(0.2)
    thread = threading.Thread(target=runtime.run, args=(60.0,), daemon=True)
    thread.start()
    messages = []
    deadline = time.monotonic() + 60.0
    try:
        while time.monotonic() < deadline:
            if sub.poll(200):
                messages.append(decode(sub.recv_multipart()))
            if sum(isinstance(m, DecodeMessage) for m in messages) >= n_decodes:
                break
    finally:
        runtime.stop()
        thread.join(20.0)
        while sub.poll(300):
            messages.append(decode(sub.recv_multipart()))
        sub.close()
        publisher.close()
        sender.close()
    return runtime, messages


def test_no_preview_unless_asked_for(model_dir):
    _, messages = _run(model_dir, preview_hz=0.0, n_decodes=3)
    assert sum(isinstance(m, DecodeMessage) for m in messages) >= 3
    assert not any(isinstance(m, PreviewMessage) for m in messages)


def test_one_preview_per_decode_with_its_time_shape_and_flags(model_dir):
    runtime, messages = _run(model_dir, preview_hz=50.0)
    decodes = [m for m in messages if isinstance(m, DecodeMessage)]
    previews = [m for m in messages if isinstance(m, PreviewMessage)]
    assert len(decodes) >= 8
    # each decode is followed by its preview, same window end
    assert [p.seq for p in previews] == list(range(len(previews)))
    by_time = {d.window_last_lsl_s for d in decodes}
    assert len(previews) >= len(decodes) - 1
    assert all(p.last_lsl_s in by_time for p in previews)
    p = previews[-1]
    assert p.ch_names == CHANS and p.model_id == runtime.model_id
    assert p.sfreq == 50.0  # 200 Hz in blocks of 4
    assert {len(row) for row in p.data_uv} == {runtime.hop // 4}  # 20 new samples -> 5
    assert p.flat == (False, False, True) and p.filled == (False, False, False)
    assert p.std_uv[0] > 1.0 and p.std_uv[2] < 0.1
