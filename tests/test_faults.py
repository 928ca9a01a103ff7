"""Fault suite of the live path (issue 12): real LSL outlets, real ZeroMQ sockets on loopback.

Each test plays one fault a real sender produces: a clock running at another rate than
declared, samples arriving late or stamped in the future, a stream that comes back
different (another rate, other channels), a stream without source_id that is lost, a
stream that is not there yet at start-up, and signals at any point. Every stream has a
unique name/source_id, the publisher binds a random 127.0.0.1 port, and every wait is
bounded by a deadline; assertions are on counts and states, never on timing.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")
zmq = pytest.importorskip("zmq")

from rtmoe.checkpoint import save_checkpoint  # noqa: E402
from rtmoe.config import Config, RuntimeConfig  # noqa: E402
from rtmoe.models.registry import model_config  # noqa: E402
from rtmoe.models.specmoe import SPECMOE_KIND, TaskConfig, build_specmoe, specmoe_meta  # noqa: E402
from rtmoe.runtime.loop import Runtime  # noqa: E402
from rtmoe.stream.lsl import LslError  # noqa: E402
from rtmoe.transport import (  # noqa: E402
    DecodeMessage,
    RuntimeState,
    StatusError,
    StatusMessage,
    ZmqPublisher,
    decode,
)

CHANS = ("C3", "C4", "CZ")
SFREQ = 200.0
HOP_MS = 100.0


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _save_model(directory, n_times):
    config = Config().replace(model=model_config("tiny"), moe={"n_experts": 2})
    task = TaskConfig(name="faults", ch_names=CHANS, n_times=n_times, labels=("a", "b"))
    torch.manual_seed(0)
    model = build_specmoe(config, task, config.moe).train()
    with torch.no_grad():
        for _ in range(3):
            model(0.3 * torch.randn(8, task.n_chans, n_times))
    return save_checkpoint(
        directory, model.eval(), config, kind=SPECMOE_KIND, meta=specmoe_meta(task)
    )


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    """0.5 s windows: decodes start early."""
    return _save_model(tmp_path_factory.mktemp("short") / "ckpt", 100)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """2.4 s windows: longer than the 2 s the clock model needs to measure a rate."""
    return _save_model(tmp_path_factory.mktemp("long") / "ckpt", 480)


def _unique(prefix: str) -> str:
    return f"rtmoe-fault-{prefix}-{uuid.uuid4().hex[:10]}"


class Sender:
    """An LSL outlet fed from a thread: declared rate, push rate and stamps chosen apart.

    Sample ``i`` is pushed (in chunks of 8) at ``start + i / push_rate`` and stamped
    ``start + i / stamp_rate`` (+ ``jump_s`` from ``jump_at_s`` of push time on).
    """

    def __init__(
        self,
        declared=SFREQ,
        push_rate=None,
        stamp_rate=None,
        duration_s=3.0,
        name=None,
        source_id=None,
        labels=CHANS,
        jump_at_s=None,
        jump_s=0.0,
        edit=None,
    ):
        self.name = name or _unique("eeg")
        self.source_id = self.name if source_id is None else source_id
        self.push_rate = push_rate or declared
        self.stamp_rate = stamp_rate or self.push_rate
        n = round(duration_s * self.push_rate)
        t = np.arange(n) / self.push_rate
        rng = np.random.default_rng(0)
        self.data = (
            30 * np.sin(2 * np.pi * 10 * t + np.arange(len(labels))[:, None])
            + 10 * rng.normal(size=(len(labels), n))
        ).astype(np.float32)
        if edit is not None:  # edit(data, t): bad values, flat channels...
            edit(self.data, t)
        info = pylsl.StreamInfo(self.name, "EEG", len(labels), declared, "float32", self.source_id)
        info.set_channel_labels(list(labels))
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)
        self.jump_at = None if jump_at_s is None else round(jump_at_s * self.push_rate)
        self.jump_s = jump_s
        self.first_stamp = np.nan
        self.n_pushed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push, daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def _push(self, chunk=8):
        start = pylsl.local_clock()
        n = self.data.shape[1]
        while self.n_pushed < n:
            i, k = self.n_pushed, min(chunk, n - self.n_pushed)
            due = start + (i + k - 1) / self.push_rate
            if self._stop.wait(max(0.0, due - pylsl.local_clock())):
                return
            idx = i + np.arange(k)
            stamps = start + idx / self.stamp_rate
            if self.jump_at is not None:
                stamps = stamps + np.where(idx >= self.jump_at, self.jump_s, 0.0)
            if i == 0:
                self.first_stamp = float(stamps[0])
            self.outlet.push_chunk(np.ascontiguousarray(self.data[:, i : i + k].T), list(stamps))
            self.n_pushed += k

    def kill(self):
        self._stop.set()
        self._thread.join(10.0)
        self.outlet = None
        gc.collect()


def _cfg(**overrides) -> RuntimeConfig:
    base = {
        "hop_ms": HOP_MS,
        "engine": "torch",
        "device": "cpu",
        "resolve_timeout_s": 0.3,
        "status_period_s": 0.25,
    }
    return RuntimeConfig(**{**base, **overrides})


def _subscriber(address: str):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"rtmoe.")
    sub.connect(address)
    return sub


def _drain(sub, quiet_ms=300):
    messages = []
    while sub.poll(quiet_ms):
        messages.append(decode(sub.recv_multipart()))
    return messages


def _split(messages):
    return (
        [m for m in messages if isinstance(m, DecodeMessage)],
        [m for m in messages if isinstance(m, StatusMessage)],
    )


def _run(model, sender, duration_s, query=None, **cfg):
    """Run the runtime over ``sender`` for ``duration_s``; (runtime, summary, decodes, statuses)."""
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    runtime = Runtime(model, query or {"name": sender.name}, _cfg(**cfg), publisher=publisher)
    sub = _subscriber(publisher.address)
    time.sleep(0.1)
    sender.start()
    summary = runtime.run(duration_s)
    sender.kill()
    decodes, statuses = _split(_drain(sub))
    sub.close()
    publisher.close()
    return runtime, summary, decodes, statuses


class Background:
    """A runtime running in a thread, with a subscriber collecting what it publishes."""

    def __init__(self, model, query, duration_s=30.0, **cfg):
        self.publisher = ZmqPublisher("tcp://127.0.0.1:0")
        self.runtime = Runtime(model, query, _cfg(**cfg), publisher=self.publisher)
        self.sub = _subscriber(self.publisher.address)
        time.sleep(0.1)
        self.messages: list = []
        self.summary = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(duration_s,), daemon=True)
        self._thread.start()

    def _run(self, duration_s):
        try:
            self.summary = self.runtime.run(duration_s)
        except BaseException as err:  # a traceback in the loop fails the test below
            self.error = err

    def until(self, predicate, timeout_s):
        """Collect messages until ``predicate(new_messages)`` holds or the timeout passes."""
        new, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = _drain(self.sub, 100)
            self.messages += got
            new += got
            if predicate(new):
                return new
        return new

    def stop(self):
        self.runtime.stop()
        self._thread.join(10.0)
        assert not self._thread.is_alive()
        self.messages += _drain(self.sub)
        self.sub.close()
        self.publisher.close()
        assert self.error is None, f"the runtime raised {self.error!r}"


def _has_state(state, error=None):
    def check(messages):
        return any(
            isinstance(m, StatusMessage)
            and m.state is state
            and (error is None or m.error is error)
            for m in messages
        )

    return check


def _n_decodes(n):
    return lambda messages: sum(isinstance(m, DecodeMessage) for m in messages) >= n


# -- 1. rate ----------------------------------------------------------------------------


def test_rate_mismatch_is_a_status_error_and_nothing_is_decoded(long_model):
    # Declares 200 Hz, runs at 240 Hz (stamps at the true sample times, as liblsl gives).
    sender = Sender(declared=SFREQ, push_rate=240.0, duration_s=4.0)
    _, summary, decodes, statuses = _run(long_model, sender, 4.3)
    assert decodes == []
    errors = [s for s in statuses if s.state is RuntimeState.ERROR]
    assert errors, [s.state for s in statuses]
    last = errors[-1]
    assert last.error is StatusError.RATE_MISMATCH
    assert "200 Hz" in last.error_detail and "rate_tolerance" in last.error_detail
    assert last.sfreq_declared == SFREQ
    assert last.sfreq_clock == pytest.approx(240.0, rel=0.01)
    assert last.timestamp_jitter_ms is not None and last.continuity_resets == 0
    assert last.refused_windows >= 1 and summary.refused_windows >= last.refused_windows
    assert summary.sfreq_mismatch == pytest.approx(240.0, rel=0.01)
    assert "refused" in summary.describe()


def test_right_rate_reports_declared_rate_jitter_and_resets(short_model):
    sender = Sender(duration_s=1.5)
    _, summary, decodes, statuses = _run(short_model, sender, 1.8)
    assert len(decodes) >= 5
    running = [s for s in statuses if s.state is RuntimeState.RUNNING]
    assert running and all(s.error is None and s.error_detail is None for s in running)
    assert running[-1].sfreq_declared == SFREQ
    lags = [s.lag_ms for s in running if s.lag_ms is not None]
    assert lags and all(-20.0 < lag < HOP_MS for lag in lags)
    assert summary.refused_windows == 0 and summary.stale_windows == 0


# -- 2. lag and age ---------------------------------------------------------------------


def test_lagging_stream_is_lagging_and_old_windows_are_never_published(short_model):
    # Stamped at the declared 200 Hz but pushed at 100 samples/s: the data's age grows by
    # 0.5 s every second, while the timestamps look perfectly regular.
    sender = Sender(declared=SFREQ, push_rate=100.0, stamp_rate=SFREQ, duration_s=3.0)
    _, summary, decodes, statuses = _run(short_model, sender, 3.2, max_age_s=0.6)
    assert all(m.latency_ms <= 600.0 for m in decodes)
    assert summary.stale_windows >= 3
    lagging = [s for s in statuses if s.state is RuntimeState.LAGGING]
    assert lagging, [s.state for s in statuses]
    assert all(s.lag_ms > HOP_MS for s in lagging if s.lag_ms is not None)
    assert statuses[-1].stale_windows == summary.stale_windows
    assert "stale" in summary.describe()


def test_timestamps_jumping_ahead_never_publish_negative_latency(short_model):
    # A sender whose clock jumps 2 s ahead after 1.2 s: its windows would be "from the future".
    sender = Sender(duration_s=3.0, jump_at_s=1.2, jump_s=2.0)
    _, summary, decodes, _ = _run(short_model, sender, 3.2)
    assert decodes, "the windows before the jump are decoded"
    assert all(m.latency_ms > -20.0 for m in decodes)
    assert max(m.window_last_lsl_s for m in decodes) < sender.first_stamp + 1.3
    assert summary.stale_windows >= 3


# -- 3. identity on recovery --------------------------------------------------------------


def test_stream_back_at_another_rate_is_refused_until_the_right_one_returns(short_model):
    first = Sender(duration_s=1.2)
    bg = Background(short_model, {"source_id": first.source_id}, stall_timeout_ms=300.0)
    try:
        first.start()
        assert _n_decodes(3)(bg.until(_n_decodes(3), 8.0))
        first.kill()
        assert _has_state(RuntimeState.STALLED)(bg.until(_has_state(RuntimeState.STALLED), 5.0))
        # Same source_id and channels, another rate: liblsl reconnects to it by itself.
        wrong = Sender(declared=250.0, duration_s=20.0, name=first.name, source_id=first.source_id)
        wrong.start()
        check = _has_state(RuntimeState.ERROR, StatusError.STREAM_MISMATCH)
        seen = bg.until(check, 15.0)
        assert check(seen), [getattr(m, "state", None) for m in seen]
        error = [m for m in seen if isinstance(m, StatusMessage) and m.error][-1]
        assert "rate 250 Hz (opened at 200 Hz)" in error.error_detail
        wrong.kill()
        # The right stream comes back: decoded again.
        right = Sender(duration_s=20.0, name=first.name, source_id=first.source_id)
        right.start()
        after = bg.until(_n_decodes(3), 15.0)
        right.kill()
    finally:
        bg.stop()
    decodes, statuses = _split(bg.messages)
    assert _n_decodes(3)(after), "no decodes after the right stream came back"
    # No decode ever holds a sample of the wrong stream.
    assert not [m for m in decodes if wrong.first_stamp <= m.window_last_lsl_s < right.first_stamp]
    assert min(m.window_first_lsl_s for m in _split(after)[0]) >= right.first_stamp
    assert bg.summary.refused_windows >= 0 and statuses[-1].state is RuntimeState.STOPPING


def test_stream_back_with_other_channels_is_a_clear_error(short_model):
    first = Sender(duration_s=1.0)
    bg = Background(short_model, {"source_id": first.source_id}, stall_timeout_ms=300.0)
    try:
        first.start()
        bg.until(_n_decodes(2), 8.0)
        first.kill()
        labels = tuple(f"E{i}" for i in range(8))
        other = Sender(
            duration_s=20.0, name=first.name, source_id=first.source_id, labels=labels
        ).start()
        check = _has_state(RuntimeState.ERROR, StatusError.STREAM_MISMATCH)
        seen = bg.until(check, 15.0)
        other.kill()
    finally:
        bg.stop()
    assert check(seen), [getattr(m, "state", None) for m in seen]
    error = [m for m in seen if isinstance(m, StatusMessage) and m.error][-1]
    assert "8 channels (opened with 3)" in error.error_detail
    assert "waits for it" in error.error_detail


def test_lost_stream_without_source_id_is_found_again(short_model):
    first = Sender(duration_s=1.0, source_id="")
    with pytest.warns(UserWarning, match="no source_id"):
        bg = Background(short_model, {"name": first.name}, stall_timeout_ms=300.0)
    try:
        first.start()
        bg.until(_n_decodes(2), 8.0)
        first.kill()
        assert _has_state(RuntimeState.STALLED)(bg.until(_has_state(RuntimeState.STALLED), 5.0))
        time.sleep(0.5)
        assert bg.error is None  # losing it is no traceback
        again = Sender(duration_s=20.0, name=first.name, source_id="").start()
        after = bg.until(_n_decodes(3), 15.0)
        again.kill()
    finally:
        bg.stop()
    assert _n_decodes(3)(after), "the stream was not found again"
    assert min(m.window_first_lsl_s for m in _split(after)[0]) >= again.first_stamp
    assert bg.summary.reconnects == 1 and "1 reconnects" in bg.summary.describe()


# -- 5. quality verdict -------------------------------------------------------------------


def test_bad_windows_still_publish_at_the_steady_rate_and_say_why(short_model):
    def edit(data, t):
        data[:, (t >= 1.0) & (t < 1.2)] = np.nan  # repaired
        data[0, (t >= 2.8) & (t < 2.9)] = 1e5  # out of range (and the filter rings)

    # 30 ms of samples missing at 2.0 s: shorter than max_gap_ms, bridged.
    sender = Sender(duration_s=3.6, jump_at_s=2.0, jump_s=0.03, edit=edit)
    _, summary, decodes, statuses = _run(short_model, sender, 3.8)
    assert [m.seq for m in decodes] == list(range(len(decodes))) and len(decodes) >= 10
    ends = np.array([m.window_last_lsl_s for m in decodes])
    steps = np.diff(ends) / (HOP_MS * 1e-3)
    np.testing.assert_allclose(steps, np.round(steps), atol=0.4)  # on the hop grid
    t0 = sender.first_stamp

    def overlaps(m, lo, hi):  # the window holds samples pushed in [lo, hi) s
        return m.window_first_lsl_s - t0 < hi and m.window_last_lsl_s - t0 >= lo

    clean = [m for m in decodes if m.window_last_lsl_s - t0 < 0.95]
    assert clean and all(m.valid and m.invalid_reason is None for m in clean)
    repaired = [m for m in decodes if overlaps(m, 1.05, 1.15)]  # >= 10 % of the window
    assert repaired, "no decode over the NaN burst (a stall on a loaded machine?)"
    assert all(not m.valid and "repaired" in m.invalid_reason for m in repaired)
    assert all(m.repaired_share > 0.01 for m in repaired)
    # Repairs are counted per chunk (8 samples): a chunk's margin around the burst.
    assert all(m.repaired_share == 0 for m in decodes if not overlaps(m, 0.95, 1.25))
    gaps = [m for m in decodes if m.gap_in_window]
    assert all(not m.valid and "missing" in m.invalid_reason for m in gaps)
    assert all(overlaps(m, 1.99, 2.05) for m in gaps)
    wild = [m for m in decodes if overlaps(m, 2.8, 2.9)]
    assert all(m.out_of_range_channels >= 1 and not m.valid for m in wild)
    assert gaps or wild  # at least one of them survived the machine's load
    n_invalid = sum(not m.valid for m in decodes)
    # Invalid decodes are published like the others, and counted.
    assert summary.invalid_decodes == n_invalid and statuses[-1].invalid_decodes == n_invalid
    assert "flagged invalid" in summary.describe()


def test_flat_stream_is_invalid_not_confident(short_model):
    def edit(data, t):
        data[:] = 50.0  # every channel stuck at its offset

    sender = Sender(duration_s=1.5, edit=edit)
    _, _, decodes, _ = _run(short_model, sender, 1.8)
    assert len(decodes) >= 5
    assert all(not m.valid and m.flat_channels == 3 for m in decodes)
    assert all("3 of 3 channels flat" in m.invalid_reason for m in decodes)


# -- 4. start-up and signals ---------------------------------------------------------------


def test_waits_for_a_stream_that_is_not_there_yet_then_decodes(short_model):
    name = _unique("late")
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    sub = _subscriber(publisher.address)
    built: dict = {}

    def build():
        try:
            built["runtime"] = Runtime(short_model, {"name": name}, _cfg(), publisher=publisher)
        except BaseException as err:
            built["error"] = err

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    waiting, deadline = [], time.monotonic() + 10.0
    while len(waiting) < 2 and time.monotonic() < deadline:
        waiting += [m for m in _drain(sub, 100) if isinstance(m, StatusMessage)]
    assert len(waiting) >= 2 and all(m.state is RuntimeState.WAITING for m in waiting)
    assert waiting[0].sfreq_declared is None and waiting[0].samples_received == 0
    sender = Sender(duration_s=2.0, name=name)
    thread.join(15.0)
    assert "runtime" in built, built.get("error")
    runtime = built["runtime"]
    sender.start()
    # SIGHUP (a closed terminal) ends the run like Ctrl-C: a summary, no traceback.
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGHUP))
    timer.start()
    summary = runtime.run(10.0)
    timer.join()
    sender.kill()
    decodes, statuses = _split(_drain(sub))
    sub.close()
    publisher.close()
    assert summary.duration_s < 5.0 and summary.decodes == len(decodes) >= 3
    assert statuses[-1].state is RuntimeState.STOPPING
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # handlers restored


def test_wait_timeout_is_a_clear_error(short_model):
    name = _unique("absent")
    t0 = time.monotonic()
    with pytest.raises(LslError, match=rf"no LSL stream matches name='{name}' within wait_s=0.5"):
        Runtime(short_model, {"name": name}, _cfg(wait_s=0.5, zmq_address="tcp://127.0.0.1:0"))
    assert time.monotonic() - t0 < 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(model, name, port):
    argv = [sys.executable, "-m", "rtmoe.cli", "stream", "--lsl", name, "--model", str(model)]
    argv += ["--engine", "torch", "--device", "cpu", "--zmq", f"tcp://127.0.0.1:{port}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _read_until(proc, text, timeout_s):
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    err = proc.stderr.read() if proc.poll() is not None else ""
    raise AssertionError(f"{text!r} not printed within {timeout_s} s: {lines} {err[-2000:]}")


def test_cli_sighup_while_waiting_and_ctrl_c_during_start_up_exit_0(short_model):
    port = _free_port()
    proc = _cli(short_model, _unique("never"), port)
    try:
        sub = _subscriber(f"tcp://127.0.0.1:{port}")
        _read_until(proc, "looking for the LSL stream", 120.0)
        states, deadline = [], time.monotonic() + 60.0
        while not states and time.monotonic() < deadline:
            states = [m.state for m in _drain(sub, 200) if isinstance(m, StatusMessage)]
        sub.close()
        assert RuntimeState.WAITING in states
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "0 decodes" in out and "Traceback" not in err

    proc = _cli(short_model, _unique("never"), _free_port())
    try:
        _read_until(proc, "looking for the LSL stream", 120.0)
        proc.send_signal(signal.SIGINT)  # while the model loads or the search starts
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "0 decodes" in out and "Traceback" not in err


def test_cli_refuses_bad_wait_and_age_before_loading(capsys):
    from rtmoe.cli import main

    assert main(["stream", "--lsl", "x", "--max-age-s", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-age-s 0" in err and "must be > 0" in err
    assert main(["stream", "--lsl", "x", "--wait-s", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--wait-s -1" in err and "must be >= 0" in err
