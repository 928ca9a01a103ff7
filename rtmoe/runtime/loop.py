"""The real-time loop: LSL source → preprocessing → device ring → Welch PSD → engine → ZMQ.

One thread does everything, in this order, every cycle:

1. ``source.pull()`` drains the inlet (never blocks).
2. `SignalChain` maps channels, repairs non-finite samples, resamples to the
   model's rate, filters and scales; each output sample carries the LSL timestamp of the
   newest input sample it reads, kept in a timestamp ring aligned with the sample ring.
3. The samples go to the `RingBuffer` on the compute device.
4. When a new window end on the hop grid (absolute sample index a multiple of the hop)
   has arrived, the newest such window is decoded: `SlidingWelch` PSD, engine,
   `DecodeMessage`, plugin stages, published, plugin sinks (`rtmoe.runtime.plugins`).
   Older due windows are skipped and counted, never queued, so latency cannot grow
   without bound (overload policy).
5. Once per ``status_period_s`` a `StatusMessage` (and the console line) is emitted.

Nothing is logged per hop; per-hop numbers go to preallocated arrays (`Runtime.timings`,
`Runtime.latencies_ms`). On the device nothing is allocated after warm-up (ring, frame
ring, PSD, model input and engine outputs are preallocated). On the host, the pure DSP
functions (resampler, ``scipy.signal.sosfilt``) return fresh arrays the size of the
chunk (tens of samples), and each decode builds its small message object and JSON.

Continuity (see `RuntimeConfig.max_gap_ms`): the source's timestamps are modelled
(`rtmoe.stream.clock`: push-time jitter and small backward steps are absorbed, real gaps
and jumps kept), and a step longer than ``max_gap_ms``
(missing samples, a restarted outlet after a stall) or backwards starts a new segment:
preprocessing states restart from the next sample and no window may start before it,
so decoding resumes after one window of new samples. A stall whose samples arrive late
but without a hole in their timestamps keeps continuity. The runtime itself never
restarts: the LSL inlet reconnects to an outlet with the same source_id on its own.

Sample values never stop it either: non-finite and absurd samples are repaired by the
preprocessing, and a decode whose model output is still not finite is skipped and
counted (`Runtime.nonfinite_outputs`), never published.

Trust. Nothing is published that the runtime cannot stand behind (`RuntimeConfig`):

- *Start-up*: given a query, the runtime waits for the stream (state ``WAITING``, a
  status every second once the first look-up found nothing) for ``wait_s`` seconds
  (default: until it appears); several matching streams are an error at once.
- *Rate*: the sender's clock rate (`rtmoe.stream.clock`) departing from the declared one
  beyond ``rate_tolerance`` is state ``ERROR`` (``rate_mismatch``); due windows are
  refused (`refused_windows`), never decoded at the wrong rate.
- *Identity*: a stream that came back with another rate, channel count or channel names
  (checked by `LslSource` after every stall) is state ``ERROR`` (``stream_mismatch``):
  its samples are discarded and the runtime waits for the right one; until a recovered
  stream is confirmed, due windows are refused too. A stream without source_id that is
  lost is looked for again by name and type (state ``STALLED`` meanwhile).
- *Age*: a window whose newest sample is older than ``max_age_s`` at publication, or
  whose latency is negative beyond the clock's jitter (max(10 ms, 3 × jitter)), is not
  published (`stale_windows`). When even the freshest sample read over a whole status
  period was older than ``max_lag_ms`` (default one hop), the state is ``LAGGING``.

- *Quality*: every decode carries a verdict (``valid``, repaired share, flat and
  out-of-range channels, samples missing in the window; thresholds in `RuntimeConfig`);
  invalid windows are still published at the steady rate, marked, and counted.

Every due window is accounted for: decodes + skipped + stale + refused + non-finite.
SIGINT, SIGTERM and SIGHUP stop `run` cleanly (summary, a last ``STOPPING`` status).
"""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from rtmoe.adaptation import PriorRecentring
from rtmoe.config import RuntimeConfig
from rtmoe.console import StatusLine
from rtmoe.dsp.spectral import welch_nperseg, welch_psd
from rtmoe.engine import Engine, build_engine
from rtmoe.errors import BadValueError
from rtmoe.models.shipped import load_model
from rtmoe.models.specmoe import LoadedSpecMoE
from rtmoe.profiles import Profile, apply_profile
from rtmoe.runtime.plugins import Plugin, PluginContext, PluginRunner
from rtmoe.runtime.preview import Preview
from rtmoe.signal.chain import SignalChain, continuity_breaks
from rtmoe.signal.channels import map_channels, rename_channels
from rtmoe.stream.lsl import LslError, LslSource, SourceStatus, StreamSearch, describe_stream
from rtmoe.stream.ring import RingBuffer
from rtmoe.stream.sliding import SlidingWelch
from rtmoe.transport import (
    DecodeMessage,
    Heartbeat,
    RuntimeState,
    StatusError,
    StatusMessage,
    ZmqPublisher,
)

if TYPE_CHECKING:
    import pylsl

#: Columns of `Runtime.timings`, milliseconds per decode (pull/preprocess/ring summed over
#: the cycles since the previous decode; "publish" includes the plugins' stages and sinks).
STAGES: tuple[str, ...] = ("pull", "preprocess", "ring", "psd", "engine", "publish")


class Window(NamedTuple):
    """A window ready for the engine: its end (ring sample index), PSD and timings."""

    end: int
    psd: torch.Tensor  # (n_chans, n_bins) on the device; the signal is in Runtime._x
    t0: float  # perf_counter at the start of the PSD
    t1: float  # ... once the PSD and the model input were ready


@dataclass(frozen=True)
class RunSummary:
    """What a run did; printed by ``rtmoe stream`` at shutdown.

    Attributes
    ----------
    decodes, skipped_windows, publish_drops : int
    samples_received, dropped_samples, gaps, stalls, resets, nonfinite_values : int
        From the source (LSL timestamps) and the preprocessing.
    nonfinite_outputs : int
        Decodes skipped because the model's output was not finite.
    stale_windows : int
        Windows not published: data older than ``max_age_s`` or negative latency.
    refused_windows : int
        Windows not decoded: wrong or unconfirmed stream, or a rate mismatch.
    reconnects : int
        Lost streams (without source_id) found again and reconnected.
    invalid_decodes : int
        Decodes published with ``valid`` False (repaired, flat, out-of-range, gaps).
    sfreq_mismatch : float or None
        The sender's clock rate where it departs from the declared one
        (`rtmoe.stream.lsl.LslSource.sfreq_mismatch`).
    latency_ms_p50, latency_ms_p99 : float
        Over the decodes kept in `Runtime.latencies_ms` (NaN without decodes).
    duration_s : float
    """

    decodes: int
    skipped_windows: int
    publish_drops: int
    samples_received: int
    dropped_samples: int
    gaps: int
    stalls: int
    resets: int
    nonfinite_values: int
    latency_ms_p50: float
    latency_ms_p99: float
    duration_s: float
    nonfinite_outputs: int = 0
    sfreq_mismatch: float | None = None
    stale_windows: int = 0
    refused_windows: int = 0
    reconnects: int = 0
    invalid_decodes: int = 0

    def describe(self) -> str:
        return (
            f"{self.decodes} decodes in {self.duration_s:.1f} s, latency p50 "
            f"{self.latency_ms_p50:.1f} ms p99 {self.latency_ms_p99:.1f} ms; skipped "
            f"windows {self.skipped_windows}, publish drops {self.publish_drops}; source: "
            f"{self.samples_received} samples, {self.gaps} gaps ({self.dropped_samples} "
            f"samples missing), {self.stalls} stalls, {self.resets} continuity resets, "
            f"{self.nonfinite_values} non-finite values repaired"
            + (
                f", {self.nonfinite_outputs} non-finite outputs skipped"
                if self.nonfinite_outputs
                else ""
            )
            + (f"; {self.stale_windows} stale windows not published" if self.stale_windows else "")
            + (
                f"; {self.refused_windows} windows refused (wrong stream or rate)"
                if self.refused_windows
                else ""
            )
            + (f"; {self.reconnects} reconnects" if self.reconnects else "")
            + (f"; {self.invalid_decodes} decodes flagged invalid" if self.invalid_decodes else "")
            + (
                f"; stream runs at {self.sfreq_mismatch:.2f} Hz, not its declared rate"
                if self.sfreq_mismatch is not None
                else ""
            )
        )


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BadValueError(f"device={device!r} but no CUDA GPU is visible; use --device cpu")
    return resolved


class Runtime:
    """The live decoder: owns the source, the preprocessing, the ring and the engine.

    Parameters
    ----------
    model : str, Path or LoadedSpecMoE
        Checkpoint folder, shipped model name (e.g. ``"default"``) or a loaded model.
    stream : mapping, pylsl.StreamInfo or LslSource
        Keyword arguments of `rtmoe.stream.lsl.resolve_stream` (``name``, ``type``,
        ``source_id``), a resolved stream, or an open source.
    cfg : RuntimeConfig
        Hop, watchdog, continuity, channel fill, device, engine and publisher settings.
    publisher : ZmqPublisher, optional
        Default: one bound to ``cfg.zmq_address`` (closed by the runtime at the end).
    subject_id : str, optional
        Reported in every message.
    cache_dir : path, optional
        Engine cache (default `rtmoe.engine.default_cache_dir`).
    plugins : sequence of str, Stage or Sink, optional
        Post-processing stages and sinks (specs such as ``"smooth:alpha=0.3"`` or plugin
        objects), run in order on every decode; see `rtmoe.runtime.plugins`.
    profile : Profile, optional
        A subject profile (rtmoe calibrate): its weights and labels replace the base
        model's, its alignment mixes channels before the ring buffer; refused for
        another base model or montage.
    stream_id : str, optional
        Names the stream in every message and topic (schema 1.4), for a runtime decoding
        several (`rtmoe.runtime.multi`); None: a single-stream runtime, plain topics.
    engine : rtmoe.engine.Engine, optional
        An engine already built for this model's window (another stream's, to decode
        both in one batch); default: one is built (``max_batch`` windows at most).

    Attributes
    ----------
    loaded : LoadedSpecMoE
    source : LslSource
    engine : rtmoe.engine.Engine
    publisher : ZmqPublisher
    device : torch.device
    hop : int
        Samples between decodes at the model's rate.
    model_id : str
        Task name and the first 12 hex digits of the weights' sha256.
    filled_channels : list of str
        Model channels fed with zeros (``fill="zeros"``).
    plugins : PluginRunner
    decodes, skipped_windows : int
    nonfinite_outputs : int
        Windows whose model output was not finite: skipped, never published.
    stale_windows : int
        Windows not published: older than ``cfg.max_age_s`` or negative latency.
    refused_windows : int
        Windows not decoded: wrong or unconfirmed stream, or a rate mismatch.
    invalid_decodes : int
        Decodes published with ``valid`` False (the quality verdict, `_quality`).
    state : RuntimeState
    error, error_detail : StatusError or None, str or None
        Why the state is ``ERROR`` (as on the status topic).
    last_decode : DecodeMessage or None
    adaptation : PriorRecentring or None
        Session adaptation (``cfg.adapt_s`` > 0): published probabilities are corrected.
    """

    def __init__(
        self,
        model: str | Path | LoadedSpecMoE,
        stream: Mapping[str, Any] | pylsl.StreamInfo | LslSource,
        cfg: RuntimeConfig | None = None,
        *,
        publisher: ZmqPublisher | None = None,
        subject_id: str | None = None,
        cache_dir: str | Path | None = None,
        plugins: Sequence[str | Plugin] = (),
        profile: Profile | None = None,
        stream_id: str | None = None,
        engine: Engine | None = None,
        max_batch: int = 1,
    ) -> None:
        cfg = cfg or RuntimeConfig()
        self.stream_id = stream_id
        self.cfg = cfg
        self.plugins = PluginRunner(plugins)  # first: a bad spec fails before any loading
        for name, what in self.plugins.network_visible:
            if not cfg.allow_remote:  # the same opt-in as a network ZeroMQ address
                raise BadValueError(
                    f"plugin {name!r} publishes {what}; set allow_remote=True (rtmoe stream "
                    "--allow-remote) to allow that, or drop the plugin"
                )
        self.device = resolve_device(cfg.device)
        self.loaded = load_model(model, self.device)
        if self.loaded.task.regression:
            raise BadValueError(
                f"model task {self.loaded.task.name!r} is a regression task; the live decoder "
                "publishes class probabilities, so give it a classification checkpoint"
            )

        from pylsl import local_clock

        self._clock = local_clock  # LSL time: the one time base of every message
        self._heartbeat = Heartbeat(cfg.status_period_s)
        self._stop = threading.Event()
        task, sig = self.loaded.task, self.loaded.config.signal
        self.sfreq = sig.sfreq
        self.n_times = task.n_times
        self.hop = max(1, round(cfg.hop_ms * 1e-3 * self.sfreq))
        sha = str(self.loaded.checkpoint.meta.get("weights_sha256", ""))[:12]
        self.model_id = f"{task.name}-{sha}" if sha else task.name
        self.subject_id = subject_id or (profile.subject if profile is not None else None)
        self.decodes = self.skipped_windows = self.status_seq = 0
        self._skipped_published = 0  # skipped_windows when the last decode went out
        self.nonfinite_outputs = self.stale_windows = self.refused_windows = 0
        self.invalid_decodes = 0
        self.state = RuntimeState.WAITING
        self.error: StatusError | None = None
        self.error_detail: str | None = None
        self.source: LslSource | None = None
        self.preprocessor: SignalChain | None = None
        self.filled_channels: list[str] = []
        self.adaptation: PriorRecentring | None = None  # set after the setup, when on
        self._lag_now = math.inf  # smallest newest-sample age read in this status period
        self._lag_prev = -math.inf  # ... in the previous one (-inf: none)
        budget_ms = cfg.max_lag_ms if cfg.max_lag_ms is not None else self.hop / self.sfreq * 1e3
        self._lag_budget_s = budget_ms * 1e-3
        self._beat_latency = [0.0, 0.0, 0]  # sum, max, count since the last status
        self._started_s = self._clock()
        self._owns_publisher = publisher is None
        self.publisher: ZmqPublisher = publisher  # type: ignore[assignment]  # set below
        try:
            self._setup(stream, cfg, task, sig, profile, cache_dir, engine, max_batch)
        except BaseException:
            if self.publisher is not None:
                self.state = RuntimeState.STOPPING
                try:  # a last status; never hides the error being raised
                    self._publish_status(self._clock())
                except Exception:
                    pass
                if self._owns_publisher:
                    self.publisher.close()
            if self.source is not None and self.source is not stream:
                self.source.close()
            raise
        if cfg.adapt_s > 0:  # session adaptation, one update per published decode
            self.adaptation = PriorRecentring(len(self.labels), cfg.adapt_s, self.hop / self.sfreq)
        self._max_gap_s = cfg.max_gap_ms * 1e-3
        self._poll_s = cfg.poll_ms * 1e-3
        n_records = cfg.timing_records
        self._timings = np.zeros((n_records, len(STAGES)))
        self._latencies = np.zeros(n_records)
        self._pending = np.zeros(3)  # pull, preprocess, ring since the last decode
        self.last_decode: DecodeMessage | None = None
        self._segment_start = 0
        self._last_end = 0
        self._last_stamp = math.nan
        self._started_s = math.nan
        self.plugins.open(
            PluginContext(
                self.model_id,
                self.subject_id,
                tuple(self.labels),
                tuple(self.gate_names),
                self.sfreq,
                self.hop / self.sfreq,
            )
        )

    def _setup(
        self, stream, cfg: RuntimeConfig, task, sig, profile, cache_dir, engine, max_batch
    ) -> None:
        """Open (or wait for) the source, then everything that depends on its channels."""
        if isinstance(stream, LslSource):
            self.source = stream
        else:
            if isinstance(stream, Mapping):
                query = dict(stream)
                attempt_s = float(query.pop("timeout_s", cfg.resolve_timeout_s))
                stream = self._await_stream(query, attempt_s)
            self.source = LslSource(
                stream,
                max_buflen_s=cfg.max_buflen_s,
                stall_timeout_ms=cfg.stall_timeout_ms,
                rate_tolerance=cfg.rate_tolerance,
            )
        if profile is not None:  # refuses another base model or montage
            self.loaded = apply_profile(self.loaded, profile, self.source.channel_names)
            task = self.loaded.task
            sha = str(self.loaded.checkpoint.meta.get("weights_sha256", ""))[:12]
            self.model_id = f"{task.name}-{sha}" if sha else task.name
        labels = rename_channels(self.source.channel_names, cfg.rename)
        index = map_channels(labels, task.ch_names, cfg.fill)
        self.filled_channels = [name for name, i in zip(task.ch_names, index, strict=True) if i < 0]
        alignment = profile.alignment if profile is not None else None
        self.preprocessor = SignalChain(index, self.source.sfreq, sig, alignment)

        n_chans = task.n_chans
        self.capacity = self.n_times + 2 * self.hop
        self.ring = RingBuffer(n_chans, self.capacity, self.device)
        self._stamps = np.zeros(self.capacity)
        # Per output sample: input values repaired / read (chunk granularity), for the
        # window's repaired share; where the newest bridged timestamp gap lies.
        self._repaired = np.zeros(self.capacity)
        self._read = np.zeros(self.capacity)
        self._carry = [0.0, 0.0]  # repaired, read of chunks that produced no output yet
        self._gap_span = (-1, -1)  # ring positions [lo, hi) holding the newest gap
        self._unit_uv = sig.unit_uv
        self._n_present = int(np.count_nonzero(np.asarray(index) >= 0))
        self._n_segments = 0
        nperseg = welch_nperseg(self.n_times, self.sfreq, self.loaded.config.spectral)
        self.welch = SlidingWelch(n_chans, self.n_times, self.hop, self.sfreq, nperseg, self.device)
        self._x = torch.zeros((1, n_chans, self.n_times), device=self.device)
        if engine is None:
            gen = torch.Generator().manual_seed(0)
            example = 0.2 * torch.randn((1, n_chans, self.n_times), generator=gen)
            example = example.to(self.device)
            engine = build_engine(
                self.loaded.model,
                (example, welch_psd(example, self.sfreq, nperseg).contiguous()),
                cfg.engine,
                cache_dir,
                max_batch=max_batch,
            )
        self.engine = engine
        self.labels = list(task.labels)
        self.gate_names = [f"expert_{k}" for k in range(self.engine.n_experts)]
        self._preview = None  # the opt-in rtmoe.preview topic (protocol 1.3)
        if cfg.preview_hz > 0:
            self._preview = Preview(
                task.ch_names,
                self.sfreq,
                self.hop,
                cfg.preview_hz,
                unit_uv=self._unit_uv,
                flat_uv=cfg.flat_uv,
                out_of_range_uv=cfg.out_of_range_uv,
                filled=self.filled_channels,
            )
        if self.publisher is None:
            self.publisher = self._make_publisher()

    def _make_publisher(self) -> ZmqPublisher:
        cfg = self.cfg
        return ZmqPublisher(
            cfg.zmq_address, allow_remote=cfg.allow_remote, single_frame=cfg.single_frame
        )

    def _await_stream(self, query: dict[str, Any], attempt_s: float) -> pylsl.StreamInfo:
        """State ``WAITING`` until exactly one stream matches (``cfg.wait_s`` at most).

        After a first look-up found nothing, the publisher is bound and a status is
        published every period while the look-ups go on in the background.
        """
        search = StreamSearch(**query, attempt_s=attempt_s)
        wait_s = self.cfg.wait_s
        start = self._clock()
        while True:
            info = search.poll()  # several matches: LslError at once
            if info is not None:
                return info
            now = self._clock()
            if search.attempts:
                if wait_s is not None and now - start >= wait_s:
                    import pylsl

                    visible = pylsl.resolve_streams(wait_time=min(attempt_s, 1.0))
                    listing = "".join(f"\n  {describe_stream(i)}" for i in visible) or " none"
                    raise LslError(
                        f"no LSL stream matches {search.query} within wait_s={wait_s:g} s "
                        f"({search.attempts} look-ups). Streams visible now:{listing}\nStart "
                        "the amplifier's LSL app, check the spelling, or raise --wait-s "
                        "(omit it to wait until the stream appears)."
                    )
                if self.publisher is None:
                    self.publisher = self._make_publisher()
                if self._heartbeat.due(now):
                    self._publish_status(now)
            time.sleep(0.02)

    # -- public API ----------------------------------------------------------------------

    def run(self, duration_s: float | None = None, console: bool = False) -> RunSummary:
        """Decode until `stop`, Ctrl-C/SIGTERM/SIGHUP or ``duration_s`` s; then clean up.

        Returns the run's summary; the source and an owned publisher are closed (a last
        ``STOPPING`` status is published first).
        """
        restore = stop_on_signals(self.stop)
        line = StatusLine(period_s=0.0) if console else None  # one line per status period
        clock = self._clock
        self._started_s = start = clock()
        try:
            while not self._stop.is_set():
                now = clock()
                if duration_s is not None and now - start >= duration_s:
                    break
                self.step(self._poll_s)
                if self.beat(now) and line is not None:
                    line.update(self.console_line())
        finally:
            restore()
            if line is not None:
                line.close()
            summary = self.finish()
        return summary

    def beat(self, now: float) -> bool:
        """Publish the status if one is due at ``now``; whether it was."""
        if not self._heartbeat.due(now):
            return False
        self._publish_status(now)
        return True

    def finish(self) -> RunSummary:
        """End a run: its summary, a last ``STOPPING`` status, then `close`."""
        summary = self.summary()
        self.state = RuntimeState.STOPPING
        self._publish_status(self._clock())
        self.close()
        return summary

    def stop(self) -> None:
        """Ask `run` to finish after the current cycle (thread- and signal-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Close the plugins, the source and, if the runtime created it, the publisher.

        Idempotent: a second call does nothing.
        """
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.plugins.close()
        self.source.close()
        if self._owns_publisher:
            self.publisher.close()

    def step(self, wait_s: float = 0.0) -> bool:
        """One cycle: pull, preprocess, push, and decode if a window is due.

        ``wait_s``: with nothing buffered, wait up to this long for the next sample.
        Returns whether a window was decoded.
        """
        end = self._due(wait_s)
        window = self._window(end) if end is not None else None
        if window is None:
            return False
        probs, gates = self.engine(self._x, window.psd.unsqueeze(0))
        return self._publish(window, probs, gates)

    def _due(self, wait_s: float) -> int | None:
        """Pull, preprocess and push; the end of the window to decode now, if any.

        Due windows that are refused (wrong stream or rate) or skipped (the decoder fell
        behind: only the newest is decoded) are counted here.
        """
        gaps_before = self.source.n_gaps  # the pull counts this chunk's gap
        t0 = time.perf_counter()
        data, stamps = self.source.pull(wait_s)
        self._pending[0] += (time.perf_counter() - t0) * 1e3
        if stamps.size:
            pushed_before, segments_before = self.ring.n_pushed, self._n_segments
            self._ingest(data, stamps)
            if self.source.n_gaps != gaps_before and self._n_segments == segments_before:
                # A bridged gap, somewhere in what this chunk produced (a longer one
                # started a segment, and no window spans that).
                self._gap_span = (pushed_before, self.ring.n_pushed)
            lag = self._clock() - self.source.last_timestamp
            if lag < self._lag_now:
                self._lag_now = lag
        self._update_state()
        end = self.ring.n_pushed - self.ring.n_pushed % self.hop
        first_end = self._first_valid_end()
        if end <= self._last_end or end < first_end:
            return None
        if self.state is RuntimeState.ERROR or not self.source.identity_ok:
            # Never decode the wrong stream, an unconfirmed one or at the wrong rate.
            oldest_due = max(first_end, self._last_end + self.hop)
            self.refused_windows += max(1, (end - oldest_due) // self.hop + 1)
            self._last_end = end
            return None
        if self.decodes:  # the start-up backlog (liblsl's first clock sync) is no overload
            oldest_due = max(first_end, self._last_end + self.hop)
            self.skipped_windows += max(0, (end - oldest_due) // self.hop)
        return end

    @property
    def timings(self) -> np.ndarray:
        """Per-decode stage times (ms), oldest first, shape (n_kept, len(STAGES))."""
        return kept_rows(self._timings, self.decodes)

    @property
    def latencies_ms(self) -> np.ndarray:
        """``latency_ms`` of the kept decodes, oldest first, shape (n_kept,)."""
        return kept_rows(self._latencies, self.decodes)

    def summary(self) -> RunSummary:
        lat = self.latencies_ms
        p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
        src = self.source
        return RunSummary(
            decodes=self.decodes,
            skipped_windows=self.skipped_windows,
            publish_drops=self.publisher.dropped,
            samples_received=src.n_samples,
            dropped_samples=src.n_missing,
            gaps=src.n_gaps,
            stalls=src.n_stalls,
            resets=self.preprocessor.n_resets,
            nonfinite_values=self.preprocessor.n_nonfinite,
            latency_ms_p50=float(p50),
            latency_ms_p99=float(p99),
            duration_s=self._clock() - self._started_s,
            nonfinite_outputs=self.nonfinite_outputs,
            sfreq_mismatch=src.sfreq_mismatch,
            stale_windows=self.stale_windows,
            refused_windows=self.refused_windows,
            reconnects=src.n_reconnects,
            invalid_decodes=self.invalid_decodes,
        )

    def console_line(self) -> str:
        """The live view: state, rates, latest decode and latency (one line)."""
        rate = self.source.effective_sfreq
        last = self.last_decode
        decode = (
            f"{last.label} p={max(last.probabilities):.2f} latency {last.latency_ms:.0f} ms"
            + ("" if last.valid else f" INVALID ({last.invalid_reason})")
            if last
            else "no decode yet"
        )
        extra = f" filled {self.filled_channels}" if self.filled_channels else ""
        if self.plugins.disabled:
            extra += f" disabled plugins {list(self.plugins.disabled)}"
        mismatch = self.source.sfreq_mismatch
        if mismatch is not None:
            extra += f" RATE {mismatch:.2f} Hz != declared {self.source.sfreq:g} Hz"
        if self.state is RuntimeState.ERROR and self.error is StatusError.STREAM_MISMATCH:
            extra += " WRONG STREAM (see status error_detail)"
        if self.stale_windows:
            extra += f" stale {self.stale_windows}"
        if self.refused_windows:
            extra += f" refused {self.refused_windows}"
        if self.invalid_decodes:
            extra += f" invalid {self.invalid_decodes}"
        return (
            f"{self.state.value:8s} {rate:6.1f} Hz in | decodes {self.decodes} skipped "
            f"{self.skipped_windows} gaps {self.source.n_gaps} | {decode}{extra}"
        )

    # -- internals -----------------------------------------------------------------------

    def _ingest(self, data: np.ndarray, stamps: np.ndarray) -> None:
        breaks = continuity_breaks(stamps, self._max_gap_s, self._last_stamp)
        bounds = [0, *breaks.tolist(), stamps.size]
        for lo, hi in itertools.pairwise(bounds):
            if lo == hi:
                continue
            if lo in breaks:
                self._new_segment()
            self._push(data[:, lo:hi], stamps[lo:hi])
        self._last_stamp = float(stamps[-1])

    def _new_segment(self) -> None:
        self._n_segments += 1
        self.preprocessor.reset()
        self._segment_start = self.ring.n_pushed

    def _push(self, data: np.ndarray, stamps: np.ndarray) -> None:
        t0 = time.perf_counter()
        pre = self.preprocessor
        repaired_before = pre.n_nonfinite
        y, newest = pre.process(data)
        t1 = time.perf_counter()
        self._carry[0] += pre.n_nonfinite - repaired_before
        self._carry[1] += data.shape[1] * self._n_present
        m = y.shape[1]
        if m:
            self.ring.push(y)
            keep = min(m, self.capacity)
            pos = (self.ring.n_pushed - keep + np.arange(keep)) % self.capacity
            self._stamps[pos] = stamps[newest[m - keep :]]
            self._repaired[pos] = self._carry[0] / m
            self._read[pos] = self._carry[1] / m
            self._carry = [0.0, 0.0]
        self._pending[1] += (t1 - t0) * 1e3
        self._pending[2] += (time.perf_counter() - t1) * 1e3

    def _first_valid_end(self) -> int:
        earliest = self._segment_start + self.n_times
        return -(-earliest // self.hop) * self.hop

    def _ring_sum(self, values: np.ndarray, end: int) -> float:
        """Sum of ``values`` over the window ending at ``end`` (ring positions)."""
        i, n, cap = (end - self.n_times) % self.capacity, self.n_times, self.capacity
        if i + n <= cap:
            return float(values[i : i + n].sum())
        return float(values[i:].sum() + values[: i + n - cap].sum())

    def _quality(self, end: int, first: float, last: float) -> dict[str, Any]:
        """The window's quality verdict (DecodeMessage's quality fields)."""
        cfg = self.cfg
        x = self._x[0]
        stats = torch.stack((x.abs().amax(dim=1), x.std(dim=1))).cpu().numpy()
        stats *= self._unit_uv
        out_of_range = int(np.count_nonzero(~(stats[0] <= cfg.out_of_range_uv)))
        flat = int(np.count_nonzero(stats[1] < cfg.flat_uv))
        read = self._ring_sum(self._read, end)
        share = min(1.0, self._ring_sum(self._repaired, end) / read) if read > 0 else 0.0
        lo, hi = self._gap_span
        gap = lo < end and hi > end - self.n_times
        reasons = []
        if share > cfg.max_repaired_share:
            reasons.append(f"{share:.0%} of values repaired")
        if out_of_range:
            reasons.append(f"{out_of_range} channels beyond {cfg.out_of_range_uv:g} µV")
        n_chans = stats.shape[1]
        if 2 * flat > n_chans:
            reasons.append(f"{flat} of {n_chans} channels flat")
        if gap:
            reasons.append("samples missing inside the window")
        if reasons:
            self.invalid_decodes += 1
        return {
            "valid": not reasons,
            "repaired_share": share,
            "flat_channels": flat,
            "out_of_range_channels": out_of_range,
            "gap_in_window": gap,
            "invalid_reason": "; ".join(reasons) if reasons else None,
        }

    def _stale(self, age_s: float) -> bool:
        """Whether a window whose newest sample is ``age_s`` old must not be published."""
        jitter_ms = self.source.timestamp_jitter_ms
        ahead_s = max(0.01, 3e-3 * jitter_ms) if math.isfinite(jitter_ms) else 0.01
        return not -ahead_s <= age_s <= self.cfg.max_age_s

    def _window(self, end: int) -> Window | None:
        """The model input of the window ending at ``end``: ``self._x`` and its PSD.

        None (and counted) when the window is already too old to publish.
        """
        if self._stale(self._clock() - float(self._stamps[(end - 1) % self.capacity])):
            self.stale_windows += 1  # a backlog after a stall, a clock that jumped ahead
            self._last_end = end
            return None
        t0 = time.perf_counter()
        psd = self.welch.update(self.ring, end)
        self._x[0].copy_(self.welch.window(self.ring))
        return Window(end, psd, t0, time.perf_counter())

    def _publish(self, window: Window, probs: torch.Tensor, gates: torch.Tensor) -> bool:
        """Check, publish and record the engine's outputs for ``window``; whether published."""
        t2 = time.perf_counter()
        end, t0, t1 = window.end, window.t0, window.t1
        first = float(self._stamps[(end - self.n_times) % self.capacity])
        last = float(self._stamps[(end - 1) % self.capacity])
        values = probs.tolist()
        gate_values = gates.tolist()
        if not all(map(math.isfinite, itertools.chain(values, gate_values))):
            # Never publish NaN/inf; the window is consumed, the next one is tried.
            self.nonfinite_outputs += 1
            self._last_end = end
            return False
        compute_ms = (t2 - t0) * 1e3
        published = self._clock()
        if self._stale(published - last):
            self.stale_windows += 1
            self._last_end = end
            return False
        if self.adaptation is not None:
            values = self.adaptation(values).tolist()
        valid_kw = self._quality(end, first, last)
        msg = DecodeMessage(
            **valid_kw,
            seq=self.decodes,
            model_id=self.model_id,
            subject_id=self.subject_id,
            labels=self.labels,
            probabilities=values,
            label=self.labels[int(np.argmax(values))],
            gates=dict(zip(self.gate_names, gate_values, strict=True)),
            window_first_lsl_s=first,
            window_last_lsl_s=last,
            published_lsl_s=published,
            latency_ms=(published - last) * 1e3,
            compute_ms=compute_ms,
            skipped_windows=self.skipped_windows - self._skipped_published,  # since the last
            stream_id=self.stream_id,
        )
        if len(self.plugins):
            msg = self.plugins.process(msg)
        self.publisher.publish(msg)
        self._skipped_published = self.skipped_windows
        if len(self.plugins):
            self.plugins.send(msg)
        t3 = time.perf_counter()
        row = self.decodes % self._timings.shape[0]
        self._timings[row, :3] = self._pending
        self._timings[row, 3:] = ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        self._latencies[row] = msg.latency_ms
        self._pending[:] = 0.0
        beat = self._beat_latency
        beat[0] += msg.latency_ms
        beat[1] = max(beat[1], msg.latency_ms)
        beat[2] += 1
        if self._preview is not None:  # after the decode is out and its timings taken
            preview = self._preview.message(self._x[0], last, self.model_id, self.stream_id)
            if preview is not None:
                self.publisher.publish(preview)
        self._last_end = end
        self.decodes += 1
        self.last_decode = msg
        return True

    def _update_state(self) -> None:
        src = self.source
        error = detail = None
        if src.identity_error is not None:
            state, error, detail = RuntimeState.ERROR, StatusError.STREAM_MISMATCH, None
        elif src.lost:  # a stream without source_id: being looked for again
            state = RuntimeState.STALLED
        else:
            status = src.status
            if status is not SourceStatus.RUNNING:
                state = RuntimeState(status)  # WAITING, STALLED: the same names, one mapping
            elif self._rate_off(src):
                state, error = RuntimeState.ERROR, StatusError.RATE_MISMATCH
            elif min(self._lag_now, self._lag_prev) > self._lag_budget_s:
                state = RuntimeState.LAGGING
            else:
                state = RuntimeState.RUNNING
        if error is not self.error or state is not self.state:
            detail = self._error_detail(error)
            self.error_detail = detail
        self.state, self.error = state, error

    def _rate_off(self, src: LslSource) -> bool:
        """The sender's clock rate departs from the declared one beyond ``rate_tolerance``."""
        rate = src.clock_sfreq
        return math.isfinite(rate) and abs(rate / src.sfreq - 1.0) > self.cfg.rate_tolerance

    def _error_detail(self, error: StatusError | None) -> str | None:
        src = self.source
        if error is StatusError.STREAM_MISMATCH:
            return src.identity_error
        if error is StatusError.RATE_MISMATCH:
            return (
                f"the stream declares {src.sfreq:g} Hz but its timestamps run at "
                f"{src.clock_sfreq:.2f} Hz (beyond rate_tolerance={self.cfg.rate_tolerance:g});"
                " windows would span the wrong time, so nothing is decoded until the rate is "
                "right: fix the amplifier app's sample rate or its declared (nominal) rate"
            )
        return None

    def _publish_status(self, now: float) -> None:
        src = self.source

        def known(value: float) -> float | None:
            return value if math.isfinite(value) else None

        lag = self._lag_now
        total, peak, count = self._beat_latency
        pre = self.preprocessor
        self.publisher.publish(
            StatusMessage(
                seq=self.status_seq,
                state=self.state,
                model_id=self.model_id,
                subject_id=self.subject_id,
                sfreq=self.sfreq,
                sfreq_effective=known(src.effective_sfreq) if src else None,
                samples_received=src.n_samples if src else 0,
                dropped_samples=src.n_missing if src else 0,
                gaps=src.n_gaps if src else 0,
                skipped_windows=self.skipped_windows,
                decodes=self.decodes,
                publish_drops=self.publisher.dropped,
                uptime_s=max(0.0, now - self._started_s) if math.isfinite(self._started_s) else 0,
                published_lsl_s=now,
                last_sample_lsl_s=known(src.last_timestamp) if src else None,
                latency_ms_mean=total / count if count else None,
                latency_ms_max=peak if count else None,
                disabled_plugins=self.plugins.disabled,
                nonfinite_values=pre.n_nonfinite if pre else 0,
                filled_channels=self.filled_channels,
                sfreq_declared=src.sfreq if src else None,
                sfreq_clock=known(src.clock_sfreq) if src else None,
                timestamp_jitter_ms=known(src.timestamp_jitter_ms) if src else None,
                continuity_resets=pre.n_resets if pre else 0,
                lag_ms=lag * 1e3 if math.isfinite(lag) else None,
                stale_windows=self.stale_windows,
                refused_windows=self.refused_windows,
                error=self.error,
                error_detail=self.error_detail,
                invalid_decodes=self.invalid_decodes,
                stream_id=self.stream_id,
                adaptation_shift=(
                    None if self.adaptation is None else self.adaptation.shift.tolist()
                ),
            )
        )
        self._beat_latency = [0.0, 0.0, 0]
        self._lag_prev = lag if math.isfinite(lag) else -math.inf
        self._lag_now = math.inf
        self.status_seq += 1


def kept_rows(records: np.ndarray, n_written: int) -> np.ndarray:
    """The rows of a ring of per-event records, oldest first, after ``n_written`` writes
    (row ``i % len(records)`` holds event ``i``; the newest ``len(records)`` are kept)."""
    n = records.shape[0]
    if n_written <= n:
        return records[:n_written].copy()
    return np.roll(records, -(n_written % n), axis=0)


def stop_on_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """Call ``stop`` on SIGINT, SIGTERM and SIGHUP (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):  # a closed terminal: stop cleanly, not die
        signals.append(signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in previous:
        signal.signal(sig, lambda *_: stop())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
