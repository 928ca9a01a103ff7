"""Fault bench of the live path (issue 12): real senders, real sockets, real SCP1 EEG.

Every scenario uses independent LSL outlets in separate processes (pylsl, the shipped
demo recording's SCP1 test trials, 6 channels at 256 Hz), the real `Runtime` with the
shipped ``default`` model (3.5 s windows at 200 Hz, 100 ms hop, eager torch on the CPU)
and real ZeroMQ SUB sockets on 127.0.0.1, or the real ``rtmoe calibrate`` command in a
subprocess. Each scenario prints one line of figures and PASS/FAIL against its target:

1. ``jitter``: the outlet pushes chunks of 8 samples *without* timestamps (liblsl stamps
   each chunk at push time) and sleeps a random 0-``--jitter-ms`` ms before every push,
   on this (shared, loaded) machine. Figures: decodes / windows due (target >= 95 %),
   continuity resets. Windows due: the hop-grid window ends after the first full window
   among the samples the sender pushed (resampled to 200 Hz).
2. ``restarts``: the outlet process is SIGKILLed and started again (same source_id)
   ``--restarts`` times. Figures: restarts recovered (a decode of the new outlet's data
   arrives), kill → STALLED and new outlet's first push → RUNNING times (status every
   0.25 s here), decodes whose window spans an outage (target 0).
3. ``values``: one fresh runtime per injection into the EEG at 5 s (NaN and ±Inf on all
   channels for 0.5 s, 1e6 µV on all channels for 1 s, 1e25 on one channel for 50
   samples, 3e38 on all channels for 50 samples, one channel flat from 5 s on).
   Figures: crashes (target 0), decodes published / due, non-finite numbers in
   published decodes (target 0), decodes flagged invalid.
4. ``stuck``: beside a healthy subscriber, one that connects (receive HWM 1, 4 KiB
   socket buffer) and never reads, for ``--stuck-s`` seconds. Figures: decodes and
   heartbeats the healthy one lost (seq gaps and what the runtime published; target 0),
   when the stuck one's queue was full (its last message received, read after the run).
   Its queue (the publisher's SNDHWM of 1000 plus the kernels' socket buffers) holds
   minutes of messages, so a short run may end before it fills: the line says so.
5. ``calibration``: ``rtmoe calibrate --no-fit`` records the demo replayed over LSL (EEG
   + marker outlets, ``--cal-speed`` × real time) and is SIGKILLed ``--cal-kills``
   times while recording (4-10 s after its samples reach the disk), each time started
   again with the same command (it resumes the session), while the replay goes on.
   Figures: cues sent; cues sent while no recorder ran (outages: their EEG is not on
   disk either); cues whose EEG is on disk but whose marker is not (lost, target 0).

``--repeat N`` runs the suite N times and reports the failures.

Usage::

    nice -n 5 python bench/faults.py [--repeat 1] [--jitter-s 60] [--restarts 10]
        [--stuck-s 180] [--cal-kills 5] [--only jitter,restarts,values,stuck,calibration]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SCENARIOS = ("jitter", "restarts", "values", "stuck", "calibration")
CHUNK = 8  # samples per push (31 ms at 256 Hz)


# -- the sender: an LSL outlet in its own process ----------------------------------------


def _sender_main(
    npy: str,
    labels: list[str],
    sfreq: float,
    name: str,
    source_id: str,
    offset: int,
    duration_s: float,
    push_time_stamps: bool,
    jitter_ms: float,
    seed: int,
    go,
    first_stamp,
    last_stamp,
    n_pushed,
) -> None:
    """Push ``data[:, offset:]`` in real time once ``go`` is set (or at once if None).

    With ``push_time_stamps`` the chunks carry no timestamps (liblsl stamps the newest
    sample with its push time and back-computes the others at the nominal rate), and
    a random 0-``jitter_ms`` ms sleep precedes each push; otherwise each sample is
    stamped with its scheduled time.
    """
    import pylsl

    data = np.load(npy, mmap_mode="r")
    n = min(data.shape[1] - offset, round(duration_s * sfreq))
    frames = np.ascontiguousarray(data[:, offset : offset + n].T, dtype=np.float32)
    info = pylsl.StreamInfo(name, "EEG", len(labels), sfreq, "float32", source_id)
    info.set_channel_labels(labels)
    outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)
    if go is not None:
        go.wait(120)
    rng = np.random.default_rng(seed)
    start = pylsl.local_clock()
    i = 0
    while i < n:
        k = min(CHUNK, n - i)
        time.sleep(max(0.0, start + (i + k - 1) / sfreq - pylsl.local_clock()))
        if push_time_stamps:
            time.sleep(rng.uniform(0.0, jitter_ms * 1e-3))
            outlet.push_chunk(frames[i : i + k])
            newest = pylsl.local_clock()  # liblsl's stamp of the newest sample, ~µs off
            oldest = newest - (k - 1) / sfreq
        else:
            stamps = start + (i + np.arange(k)) / sfreq
            outlet.push_chunk(frames[i : i + k], list(stamps))
            newest, oldest = float(stamps[-1]), float(stamps[0])
        if i == 0:
            first_stamp.value = oldest
        last_stamp.value = newest
        i += k
        n_pushed.value = i
    time.sleep(2.0)  # let the last chunks reach the inlet before the outlet goes


class Sender:
    """One sender process; ``start`` spawns it, ``kill`` SIGKILLs it."""

    def __init__(
        self,
        demo: Demo,
        name: str,
        duration_s: float,
        offset: int = 0,
        data_npy: str | None = None,
        push_time_stamps: bool = False,
        jitter_ms: float = 0.0,
        seed: int = 0,
        wait_for_go: bool = True,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.go = ctx.Event() if wait_for_go else None
        self.first_stamp = ctx.Value("d", math.nan)
        self.last_stamp = ctx.Value("d", math.nan)
        self.n_pushed = ctx.Value("q", 0)
        self.name = name
        self.proc = ctx.Process(
            target=_sender_main,
            args=(
                data_npy or demo.npy,
                list(demo.labels),
                demo.sfreq,
                name,
                name,
                offset,
                duration_s,
                push_time_stamps,
                jitter_ms,
                seed,
                self.go,
                self.first_stamp,
                self.last_stamp,
                self.n_pushed,
            ),
            daemon=True,
        )

    def start(self) -> Sender:
        self.proc.start()
        return self

    def release(self) -> None:
        if self.go is not None:
            self.go.set()

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def wait_first_push(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while math.isnan(self.first_stamp.value) and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.first_stamp.value


class Demo:
    """The shipped SCP1 demo recording, saved once as .npy for the sender processes."""

    def __init__(self, work: Path) -> None:
        from rtmoe.recording import read_recording
        from rtmoe.stream.replay import demo_recording_path

        self.recording = read_recording(demo_recording_path())
        self.sfreq = self.recording.sfreq
        self.labels = self.recording.ch_names
        self.work = work
        self.npy = self.save(self.recording.data, "demo")

    def save(self, data: np.ndarray, stem: str) -> str:
        path = self.work / f"{stem}.npy"
        np.save(path, data)
        return str(path)


# -- the decoder side -----------------------------------------------------------------------


def _unique(kind: str) -> str:
    return f"rtmoe-bench-faults-{kind}-{uuid.uuid4().hex[:8]}"


def _subscriber(address: str, stuck: bool = False):
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if stuck:  # fill as soon as possible: one message queued, tiny kernel buffer
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"rtmoe.")
    sub.connect(address)
    return sub


class Collector:
    """A healthy subscriber: a thread receiving everything, (receive LSL time, message)."""

    def __init__(self, address: str) -> None:
        self.sub = _subscriber(address)
        self.messages: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from pylsl import local_clock

        from rtmoe.transport import decode

        while not self._stop.is_set():
            if self.sub.poll(50):
                self.messages.append((local_clock(), decode(self.sub.recv_multipart())))

    def stop(self) -> None:
        time.sleep(0.5)
        self._stop.set()
        self._thread.join(5)
        self.sub.close()

    def decodes(self) -> list:
        from rtmoe.transport import DecodeMessage

        return [m for _, m in self.messages if isinstance(m, DecodeMessage)]

    def statuses(self) -> list:
        from rtmoe.transport import StatusMessage

        return [m for _, m in self.messages if isinstance(m, StatusMessage)]

    def wait(self, predicate: Callable, timeout_s: float, since: int = 0):
        """The first message from index ``since`` on with ``predicate(msg)``, or None."""
        deadline = time.monotonic() + timeout_s
        i = since
        while time.monotonic() < deadline:
            while i < len(self.messages):
                if predicate(self.messages[i][1]):
                    return self.messages[i]
                i += 1
            time.sleep(0.02)
        return None


class Live:
    """A `Runtime` on its own publisher, running in a thread, with a healthy collector."""

    def __init__(self, loaded, query: dict, cfg, stuck: bool = False) -> None:
        from rtmoe.runtime.loop import Runtime
        from rtmoe.transport import ZmqPublisher

        self.publisher = ZmqPublisher("tcp://127.0.0.1:0")
        self.runtime = Runtime(loaded, query, cfg, publisher=self.publisher)
        self.collector = Collector(self.publisher.address)
        self.stuck = _subscriber(self.publisher.address, stuck=True) if stuck else None
        time.sleep(0.3)  # the subscriptions reach the publisher
        # Statuses published while waiting for the stream, before anyone subscribed.
        self.status_seq0 = self.runtime.status_seq
        self.summary = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, duration_s: float | None) -> None:
        self._thread = threading.Thread(target=self._run, args=(duration_s,), daemon=True)
        self._thread.start()

    def _run(self, duration_s) -> None:
        try:
            self.summary = self.runtime.run(duration_s)
        except BaseException as err:  # counted as a crash
            self.error = err

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def stop(self) -> None:
        self.runtime.stop()
        self.join(30)
        self.collector.stop()
        self.publisher.close()


def _cfg(args, **overrides):
    from rtmoe.config import RuntimeConfig

    base = {"engine": args.engine, "device": "cpu", "zmq_address": "tcp://127.0.0.1:0"}
    return RuntimeConfig(**{**base, **overrides})


def _due(runtime, n_pushed_in: int, sfreq_in: float) -> int:
    """Hop-grid window ends after the first full window among ``n_pushed_in`` samples."""
    n_model = math.floor(n_pushed_in * runtime.sfreq / sfreq_in)
    first = -(-runtime.n_times // runtime.hop)
    return max(0, n_model // runtime.hop - first + 1)


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


# -- 1. push-time stamping with jitter --------------------------------------------------------


def scenario_jitter(args, demo: Demo, loaded) -> tuple[str, bool]:
    name = _unique("jitter")
    sender = Sender(
        demo, name, args.jitter_s, push_time_stamps=True, jitter_ms=args.jitter_ms, seed=args.seed
    ).start()
    load = _load()
    live = Live(loaded, {"source_id": name}, _cfg(args))
    sender.release()
    live.start(args.jitter_s + 1.5)
    live.join(args.jitter_s + 60)
    live.stop()
    sender.kill()
    summary, runtime = live.summary, live.runtime
    if summary is None:
        return f"runtime raised {live.error!r}", False
    got = len(live.collector.decodes())
    due = _due(runtime, sender.n_pushed.value, demo.sfreq)
    share = 100 * got / due if due else 0.0
    states = Counter(s.state.value for s in live.collector.statuses())
    ok = share >= 95.0
    line = (
        f"{args.jitter_s:g} s, chunks of {CHUNK} stamped by liblsl at push + U(0,"
        f"{args.jitter_ms:g}) ms sleeps, {load}: decoded {got}/{due} due windows "
        f"({share:.1f} %), continuity resets {summary.resets}, skipped {summary.skipped_windows}"
        f", stale {summary.stale_windows}, refused {summary.refused_windows}, gaps "
        f"{summary.gaps}, raw stamp jitter {runtime.source.timestamp_jitter_ms:.1f} ms, "
        f"latency p50 {summary.latency_ms_p50:.0f} ms p99 {summary.latency_ms_p99:.0f} ms, "
        f"statuses {dict(states)}"
    )
    return line, ok


# -- 2. outlet kills and restarts ------------------------------------------------------------


def scenario_restarts(args, demo: Demo, loaded) -> tuple[str, bool]:
    from rtmoe.transport import DecodeMessage, RuntimeState, StatusMessage

    name = _unique("restart")
    trial = round(3.5 * demo.sfreq)
    senders = [Sender(demo, name, 600.0, wait_for_go=False).start()]
    senders[0].wait_first_push(60)
    live = Live(loaded, {"source_id": name}, _cfg(args, status_period_s=0.25))
    live.start(None)
    col = live.collector

    def decode_after(t):
        return lambda m: isinstance(m, DecodeMessage) and m.window_first_lsl_s >= t

    def status_after(state, t):
        return lambda m: isinstance(m, StatusMessage) and m.state is state and m.published_lsl_s > t

    from pylsl import local_clock

    col.wait(decode_after(senders[0].first_stamp.value), 30)
    to_stalled, to_running, to_decode, outages = [], [], [], []
    recovered = 0
    try:
        for c in range(args.restarts):
            time.sleep(1.0)  # a few decodes of this outlet
            old = senders[-1]
            old.kill()
            killed = local_clock()
            since = len(col.messages)
            stalled = col.wait(status_after(RuntimeState.STALLED, killed), 15, since)
            if stalled is not None:
                to_stalled.append(stalled[1].published_lsl_s - killed)
            time.sleep(1.0)
            offset = ((c + 1) * 20 * trial) % (demo.recording.n_times - 100 * trial)
            new = Sender(demo, name, 600.0, offset=offset, wait_for_go=False).start()
            senders.append(new)
            first = new.wait_first_push(60)
            outages.append((old.last_stamp.value, first))
            since = len(col.messages)
            running = col.wait(status_after(RuntimeState.RUNNING, first), 30, since)
            if running is not None:
                to_running.append(running[1].published_lsl_s - first)
            decoded = col.wait(decode_after(first), 30, since)
            if decoded is not None:
                recovered += 1
                to_decode.append(decoded[0] - first)
        time.sleep(1.0)
    finally:
        live.stop()
        for sender in senders:
            sender.kill()
    if live.error is not None:
        return f"runtime raised {live.error!r}", False
    decodes = col.decodes()
    spanning = sum(
        1
        for m in decodes
        for last_old, first_new in outages
        if m.window_first_lsl_s <= last_old and m.window_last_lsl_s >= first_new
    )

    def span(values):
        return f"{min(values):.2f}-{max(values):.2f} s" if values else "never"

    ok = recovered == args.restarts and spanning == 0 and len(to_stalled) == args.restarts
    line = (
        f"{args.restarts} SIGKILLs of the outlet process, restarted with the same source_id "
        f"after STALLED + 1 s: recovered {recovered}/{args.restarts}; kill -> STALLED "
        f"{span(to_stalled)} ({len(to_stalled)} seen); new outlet's first push -> RUNNING "
        f"{span(to_running)}; -> first decode of its data {span(to_decode)} (window 3.5 s); "
        f"decodes spanning an outage {spanning}; {len(decodes)} decodes, stalls "
        f"{live.summary.stalls}, resets {live.summary.resets}"
    )
    return line, ok


# -- 3. injected values ------------------------------------------------------------------------


def _inject(data: np.ndarray, kind: str, at: int, sfreq: float) -> None:
    half, one = round(0.5 * sfreq), round(sfreq)
    if kind == "NaN":
        data[:, at : at + half] = np.nan
    elif kind == "Inf":
        data[:, at : at + half : 2] = np.inf
        data[:, at + 1 : at + half : 2] = -np.inf
    elif kind == "1e6":
        data[:, at : at + one] = 1e6
    elif kind == "1e25":
        data[1, at : at + 50] = 1e25
    elif kind == "3e38":
        data[:, at : at + 50] = 3e38
    elif kind == "flat":
        data[2, at:] = data[2, at]


def scenario_values(args, demo: Demo, loaded) -> tuple[str, bool]:
    kinds = ("NaN", "Inf", "1e6", "1e25", "3e38", "flat")
    run_s, at_s = args.values_s, 5.0
    n = round(run_s * demo.sfreq)
    crashes = published = due_all = nonfinite_pub = skipped_nonfinite = 0
    parts = []
    for k, kind in enumerate(kinds):
        offset = (k + 1) * 30 * round(3.5 * demo.sfreq)
        data = np.array(demo.recording.data[:, offset : offset + n], dtype=np.float32)
        _inject(data, kind, round(at_s * demo.sfreq), demo.sfreq)
        npy = demo.save(data, f"values-{kind}")
        name = _unique(f"value-{kind}")
        sender = Sender(demo, name, run_s, data_npy=npy).start()
        live = Live(loaded, {"source_id": name}, _cfg(args))
        sender.release()
        live.start(run_s + 1.0)
        live.join(run_s + 60)
        live.stop()
        sender.kill()
        decodes = live.collector.decodes()
        crashed = live.summary is None
        crashes += crashed
        bad = sum(
            not all(
                math.isfinite(v)
                for v in [*m.probabilities, *m.gates.values(), m.latency_ms, m.repaired_share]
            )
            for m in decodes
        )
        due = _due(live.runtime, sender.n_pushed.value, demo.sfreq)
        published += len(decodes)
        due_all += due
        nonfinite_pub += bad
        invalid = sum(not m.valid for m in decodes)
        if not crashed:
            skipped_nonfinite += live.summary.nonfinite_outputs
        flat = max((m.flat_channels for m in decodes), default=0)
        extra = f", flat channels seen {flat}" if kind == "flat" else ""
        parts.append(
            f"{kind} {len(decodes)}/{due} ({invalid} invalid{extra}"
            + (f", CRASH {live.error!r}" if crashed else "")
            + ")"
        )
    ok = crashes == 0 and nonfinite_pub == 0 and published > 0
    line = (
        f"{len(kinds)} runs of {run_s:g} s, injection at {at_s:g} s: crashes {crashes}, decodes "
        f"published {published}/{due_all} due, non-finite numbers in published decodes "
        f"{nonfinite_pub}, non-finite outputs skipped {skipped_nonfinite}; per value "
        f"(decodes/due): {', '.join(parts)}"
    )
    return line, ok


# -- 4. stuck subscriber -----------------------------------------------------------------------


def _seq_lost(seqs: Sequence[int], first: int, published: int) -> int:
    """Messages of seq ``first`` to ``published - 1`` missing from ``seqs``."""
    return len(set(range(first, published)) - set(seqs))


def scenario_stuck(args, demo: Demo, loaded) -> tuple[str, bool]:
    from rtmoe.transport import DecodeMessage, StatusMessage, decode

    name = _unique("stuck")
    sender = Sender(demo, name, args.stuck_s + 10).start()
    live = Live(loaded, {"source_id": name}, _cfg(args), stuck=True)
    sender.release()
    live.start(args.stuck_s)
    live.join(args.stuck_s + 120)
    runtime = live.runtime
    n_decodes, n_status = runtime.decodes, runtime.status_seq
    live.stop()
    sender.kill()
    stuck_got = []
    while live.stuck.poll(1000):
        stuck_got.append(decode(live.stuck.recv_multipart()))
    live.stuck.close()
    if live.summary is None:
        return f"runtime raised {live.error!r}", False
    healthy = live.collector
    lost_decodes = _seq_lost([m.seq for m in healthy.decodes()], 0, n_decodes)
    lost_beats = _seq_lost([m.seq for m in healthy.statuses()], live.status_seq0, n_status)
    n_beats = n_status - live.status_seq0
    beats = [t for t, m in healthy.messages if isinstance(m, StatusMessage)]
    max_beat_gap = max(np.diff(beats), default=math.nan)
    stuck_decodes = [m for m in stuck_got if isinstance(m, DecodeMessage)]
    start = live.runtime._started_s
    if stuck_decodes and stuck_decodes[-1].seq < n_decodes - 1:
        full = stuck_decodes[-1].published_lsl_s - start
        full_text = f"its queue full after {full:.0f} s"
    else:
        full_text = "its queue never filled"
    ok = lost_decodes == 0 and lost_beats == 0
    line = (
        f"{args.stuck_s:g} s with a subscriber that never reads (RCVHWM 1, RCVBUF 4 KiB): "
        f"healthy one lost {lost_decodes} of {n_decodes} decodes and {lost_beats} of "
        f"{n_beats} heartbeats (longest heartbeat interval {max_beat_gap:.2f} s); stuck one "
        f"got {len(stuck_got)} of {n_decodes + n_status} messages, {full_text}; "
        f"publish_drops {live.summary.publish_drops}, skipped {live.summary.skipped_windows}"
    )
    return line, ok


# -- 5. calibration kills --------------------------------------------------------------------


def _nearest(times: np.ndarray, t: float) -> float:
    """Distance (s) from ``t`` to the nearest of the sorted ``times`` (inf if none)."""
    j = int(np.searchsorted(times, t))
    near = [abs(times[i] - t) for i in (j - 1, j) if 0 <= i < times.size]
    return min(near, default=math.inf)


def _times_size(profiles: Path) -> int:
    files = list(profiles.glob("S01/sessions/*/times.f64"))
    return files[0].stat().st_size if files else 0


def scenario_calibration(args, demo: Demo, loaded) -> tuple[str, bool]:
    from rtmoe.calibration.session import read_session
    from rtmoe.recording import marker_sample
    from rtmoe.stream.player import Player

    work = Path(tempfile.mkdtemp(prefix="calib-", dir=demo.work))
    profiles = work / "profiles"
    name = _unique("calib")
    argv = [sys.executable, "-m", "rtmoe.cli", "calibrate", "--subject", "S01", "--lsl", name,
            "--markers", f"{name}-markers", "--profiles-dir", str(profiles), "--no-fit",
            "--idle-stop-s", "3", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(args.seed)
    player = Player(demo.recording, name=name, speed=args.cal_speed, chunk_ms=100)
    starter = threading.Thread(target=lambda: player.wait_for_consumers(120) and player.start())
    starter.start()
    rcs, resumed, problems = [], 0, []
    proc = None
    try:
        for run in range(args.cal_kills + 1):
            log = open(work / f"run{run}.log", "w")
            before = _times_size(profiles)
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + 180
            while _times_size(profiles) <= before and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            if _times_size(profiles) <= before:
                problems.append(f"run {run} recorded nothing")
            if run < args.cal_kills:
                time.sleep(rng.uniform(4.0, 10.0))
                os.kill(proc.pid, signal.SIGKILL)
                rcs.append(proc.wait(30))
            else:
                time.sleep(3.0)
                player.stop()
                rcs.append(proc.wait(180))
            log.close()
            resumed += "resuming session" in (work / f"run{run}.log").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        player.close()
        starter.join(5)
    sessions = list(profiles.glob("S01/sessions/*"))
    if len(sessions) != 1:
        return f"{len(sessions)} session folders, expected 1; {problems}", False
    rec = read_session(sessions[0])
    rate = demo.sfreq * args.cal_speed
    sent = [
        (player.sample_time(marker_sample(m, demo.sfreq)), m.label)
        for m in demo.recording.markers[: player.n_markers]
    ]
    times, mtimes = np.asarray(rec.times), np.asarray(rec.marker_times)
    on_disk_eeg = outage = lost = 0
    tol = 2.0 / rate
    for t, label in sent:
        if _nearest(times, t) > tol:
            outage += 1
            continue
        on_disk_eeg += 1
        match = np.flatnonzero(np.abs(mtimes - t) < 1e-3)
        if not any(rec.marker_labels[i] == label for i in match):
            lost += 1
    orphans = sum(_nearest(times, t) > tol for t in mtimes)
    kills_ok = rcs[:-1] == [-signal.SIGKILL] * args.cal_kills
    ok = lost == 0 and kills_ok and rcs[-1] == 0 and not problems
    line = (
        f"{args.cal_kills} SIGKILLs while recording (replay at {args.cal_speed:g}x, "
        f"{len(rcs)} runs, {resumed} resumed the session, last exit {rcs[-1]}): cues sent "
        f"{len(sent)}, during outages (no recorder) {outage}, with EEG on disk {on_disk_eeg}, of "
        f"those lost {lost}; markers on disk {mtimes.size} ({orphans} without EEG), samples on "
        f"disk {rec.n_samples} of {player.n_samples} sent"
        + (f"; {'; '.join(problems)}" if problems else "")
    )
    return line, ok


RUNNERS = {
    "jitter": scenario_jitter,
    "restarts": scenario_restarts,
    "values": scenario_values,
    "stuck": scenario_stuck,
    "calibration": scenario_calibration,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="run the suite this many times")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--jitter-s", type=float, default=60.0)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--values-s", type=float, default=12.0, help="seconds per injection")
    parser.add_argument("--stuck-s", type=float, default=180.0, help="the issue asks 900")
    parser.add_argument("--cal-kills", type=int, default=5)
    parser.add_argument("--cal-speed", type=float, default=4.0)
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")

    work = Path(tempfile.mkdtemp(prefix="rtmoe-bench-faults-"))
    # liblsl's INFO lines (one per process) would drown the figures.
    (work / "lsl_api.cfg").write_text("[log]\nlevel = -3\n")
    os.environ.setdefault("LSLAPICFG", str(work / "lsl_api.cfg"))
    import torch

    from rtmoe.models.shipped import load_model

    torch.set_num_threads(args.threads)
    demo = Demo(work)
    loaded = load_model("default", torch.device("cpu"))
    print(
        f"rtmoe fault bench: shipped 'default' model, engine {args.engine}, CPU, "
        f"{args.threads} torch thread(s), {os.cpu_count()} cores, {_load()}; EEG: "
        f"{Path(demo.recording.source).name} ({demo.recording.n_chans} ch, {demo.sfreq:g} Hz)",
        flush=True,
    )
    failures: list[str] = []
    for rep in range(args.repeat):
        for i, scenario in enumerate(SCENARIOS, 1):
            if scenario not in chosen:
                continue
            t0 = time.monotonic()
            try:
                line, ok = RUNNERS[scenario](args, demo, loaded)
            except Exception as err:  # a bench failure, reported like a missed target
                line, ok = f"bench error {type(err).__name__}: {err}", False
            verdict = "PASS" if ok else "FAIL"
            if not ok:
                failures.append(f"run {rep + 1} {scenario}")
            print(
                f"[run {rep + 1}/{args.repeat}] {i} {scenario} ({time.monotonic() - t0:.0f} s): "
                f"{line}  {verdict}",
                flush=True,
            )
    print(
        f"suite: {args.repeat} run(s), {len(failures)} failure(s)"
        + (f": {', '.join(failures)}" if failures else ""),
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
