"""``rtmoe demo``: the shipped recording, streamed live through a decoder, scored as it runs.

Three real parts on this machine: a `Player` replays the demo recording (SCP1 test
trials, 256 Hz) as LSL EEG and marker streams; a `Runtime` decodes it and publishes on
ZeroMQ; this module subscribes to those decodes with a SUB socket, as any experiment
software would, and reads the markers from their LSL stream.

Scoring. Each marker opens a trial lasting ``trial_s``, the median spacing of the
recording's markers (3.5 s in the demo, whose trials are back to back). A trial is
scored with the one decode whose window best matches it: the decode whose last sample's
LSL time is nearest the trial's last sample, provided they are less than one hop apart
(a trial ending before the first window is complete stays unscored). The accuracy is
over the scored trials.
"""

from __future__ import annotations

import math
import secrets
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtmoe.config import RuntimeConfig
from rtmoe.console import StatusLine
from rtmoe.errors import UserError
from rtmoe.models.specmoe import LoadedSpecMoE
from rtmoe.recording import read_recording
from rtmoe.runtime.loop import RunSummary, Runtime
from rtmoe.stream.lsl import resolve_stream
from rtmoe.stream.markers import MarkerInlet
from rtmoe.stream.player import Player
from rtmoe.stream.replay import demo_recording_path
from rtmoe.transport import TOPIC_DECODE, DecodeMessage, decode

#: How often the SUB socket is polled and the console line refreshed, ms.
POLL_MS = 100


@dataclass(frozen=True)
class DemoSummary:
    """Result of a demo run.

    Attributes
    ----------
    decodes_received : int
        Decode messages the subscriber received.
    trials, trials_scored, correct : int
        Markers seen, trials matched to a decode, and correct decodes among them.
    accuracy : float
        ``correct / trials_scored`` (NaN with none scored).
    latency_ms_p50, latency_ms_p99 : float
        Over the received decodes.
    runtime : RunSummary
        The runtime's own summary.
    """

    decodes_received: int
    trials: int
    trials_scored: int
    correct: int
    accuracy: float
    latency_ms_p50: float
    latency_ms_p99: float
    runtime: RunSummary

    def describe(self) -> str:
        return (
            f"demo: {self.decodes_received} decodes received; accuracy "
            f"{self.accuracy:.1%} over {self.trials_scored} scored trials ({self.correct} "
            f"correct, {self.trials} markers); latency p50 {self.latency_ms_p50:.1f} ms "
            f"p99 {self.latency_ms_p99:.1f} ms\nruntime: {self.runtime.describe()}"
        )


class TrialScorer:
    """Matches trials (markers) to decodes by window end; see the module docstring.

    Parameters
    ----------
    trial_s : float
        Trial length, s; the trial's last sample is at ``onset + trial_s - sample_s``.
    sample_s : float
        Input sample period, s.
    hop_s : float
        Decode spacing, s: the largest mismatch a scored trial may have.
    """

    def __init__(self, trial_s: float, sample_s: float, hop_s: float) -> None:
        self.end_offset_s = trial_s - sample_s
        self.hop_s = hop_s
        self._trials: list[tuple[float, str]] = []  # (end time, label), unscored
        self._ends: list[float] = []  # window ends of decodes received
        self._labels: list[str] = []
        self.n_trials = self.n_scored = self.n_correct = 0

    def add_marker(self, onset_lsl_s: float, label: str) -> None:
        self._trials.append((onset_lsl_s + self.end_offset_s, label))
        self.n_trials += 1

    def add_decode(self, msg: DecodeMessage) -> None:
        self._ends.append(msg.window_last_lsl_s)
        self._labels.append(msg.label)

    def score(self, final: bool = False) -> None:
        """Score every trial whose best decode is known (all remaining when ``final``)."""
        if not self._ends:
            return
        ends = np.asarray(self._ends)
        pending = []
        for end_s, label in self._trials:
            if not final and ends[-1] < end_s + self.hop_s:
                pending.append((end_s, label))  # a closer decode may still come
                continue
            best = int(np.argmin(np.abs(ends - end_s)))
            if abs(ends[best] - end_s) < self.hop_s:
                self.n_scored += 1
                self.n_correct += self._labels[best] == label
        self._trials = pending

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_scored if self.n_scored else math.nan


def run_demo(
    model: str | Path | LoadedSpecMoE = "default",
    duration_s: float = 60.0,
    cfg: RuntimeConfig | None = None,
    console: bool = True,
    cache_dir: str | Path | None = None,
    view_port: int | None = None,
    open_view: bool = False,
) -> DemoSummary:
    """Play the demo recording, decode it live, subscribe to the decodes and score them.

    Parameters
    ----------
    model : str, Path or LoadedSpecMoE
        As `Runtime`; its labels should be the recording's (``negativity``,
        ``positivity``) for the accuracy to mean anything.
    duration_s : float
        Seconds to run.
    cfg : RuntimeConfig
        Engine, hop, device, ZeroMQ address (``tcp://127.0.0.1:0`` picks a free port).
    console : bool
        Show a refreshing line with the latest decode, running accuracy and latency.
    view_port : int, optional
        Also serve the live page (`rtmoe.view.ViewServer`, ``rtmoe demo --view``) on
        127.0.0.1 at this port (0: a free one), attached to the demo's publisher; the
        runtime then publishes the signal preview (``preview_hz`` 50 unless set).
    open_view : bool
        Open that page in the web browser.
    """
    import zmq

    cfg = cfg or RuntimeConfig()
    if view_port is not None and not cfg.preview_hz:  # the page draws the channels' traces
        cfg = replace(cfg, preview_hz=50.0)
    replay = read_recording(demo_recording_path())
    name = f"rtmoe-demo-{secrets.token_hex(4)}"
    onsets = np.array([m.onset_s for m in replay.markers])
    trial_s = float(np.median(np.diff(onsets))) if onsets.size > 1 else replay.duration_s
    with Player(replay, name=name, duration_s=duration_s + 5.0) as player:
        runtime = Runtime(model, {"name": name, "source_id": name}, cfg, cache_dir=cache_dir)
        scorer = TrialScorer(trial_s, 1 / replay.sfreq, runtime.hop / runtime.sfreq)
        if console:
            print(
                f"{player.describe()}\ndecoding with {runtime.model_id}; "
                f"{runtime.engine.summary()}\nsubscribed to {runtime.publisher.address}; "
                f"{duration_s:g} s, Ctrl-C stops",
                flush=True,
            )
        view = None
        if view_port is not None:
            from rtmoe.view import ViewServer

            try:
                view = ViewServer(
                    runtime.publisher.address, port=view_port, markers=f"{name}-markers"
                ).start()
            except OSError as err:  # the port is taken: a user error, nothing left open
                runtime.close()
                raise UserError(str(err)) from None
            if console:
                print(f"live page: {view.url}", flush=True)
            if open_view:
                import webbrowser

                webbrowser.open(view.url)
        markers = MarkerInlet(resolve_stream(name=f"{name}-markers", timeout_s=0.5))
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC_DECODE)
        sub.connect(runtime.publisher.address)
        result: dict[str, RunSummary | BaseException] = {}

        def run() -> None:
            try:
                result["run"] = runtime.run(duration_s)
            except BaseException as err:  # re-raised below, in the caller's thread
                result["run"] = err

        thread = threading.Thread(target=run, name="rtmoe-demo")
        restore = _stop_on_signals(runtime)
        player.start()
        thread.start()
        latencies: list[float] = []
        line = StatusLine() if console else None
        last: DecodeMessage | None = None
        try:
            while thread.is_alive() or sub.poll(0):
                if sub.poll(POLL_MS):
                    while sub.poll(0):
                        msg = decode(sub.recv_multipart())
                        scorer.add_decode(msg)
                        latencies.append(msg.latency_ms)
                        last = msg
                for stamp, label in markers.pull():
                    scorer.add_marker(stamp, label)
                scorer.score()
                if line is not None:
                    line.update(_line(runtime, last, scorer))
        except KeyboardInterrupt:
            runtime.stop()
        finally:
            runtime.stop()
            thread.join()
            restore()
            sub.close()
            markers.close()
            if view is not None:
                view.close()
            if line is not None:
                line.close()
    if isinstance(result["run"], BaseException):
        raise result["run"]
    scorer.score(final=True)
    lat = np.asarray(latencies)
    p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
    return DemoSummary(
        decodes_received=lat.size,
        trials=scorer.n_trials,
        trials_scored=scorer.n_scored,
        correct=scorer.n_correct,
        accuracy=scorer.accuracy,
        latency_ms_p50=float(p50),
        latency_ms_p99=float(p99),
        runtime=result["run"],
    )


def _line(runtime: Runtime, last: DecodeMessage | None, scorer: TrialScorer) -> str:
    if last is None:
        return f"{runtime.state.value}: waiting for the first window"
    return (
        f"{runtime.state.value} #{last.seq} {last.label} p={max(last.probabilities):.2f} | "
        f"accuracy {scorer.n_correct}/{scorer.n_scored} | latency {last.latency_ms:.0f} ms"
    )


def _stop_on_signals(runtime: Runtime):
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: runtime.stop())
    return lambda: signal.signal(signal.SIGTERM, previous)
