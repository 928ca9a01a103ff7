"""Several streams, one runtime: ``rtmoe stream --lsl EEG_A --lsl EEG_B``.

Each stream is a whole `Runtime` of its own (source, watchdog, continuity, preprocessing
state, ring, counters, state and status), so a stream that stalls, errs or recovers
changes nothing for the others. What they share is one ZeroMQ publisher (messages carry
the stream's ``stream_id`` and topic ``rtmoe.decode.<stream_id>``, schema 1.4) and, for
streams decoding with the same model, one engine: the streams due in the same cycle are
stacked and decoded in one forward (batch = number of due streams). The overload policy
stays per stream (each decodes its newest due window; older ones are skipped and counted).

One thread polls every source in turn without blocking; a cycle in which no source had
new samples sleeps ``poll_ms``, so a decode may start up to ``poll_ms`` later than in a
single-stream runtime (which waits on its one inlet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtmoe.command import UserError
from rtmoe.config import RuntimeConfig
from rtmoe.console import StatusLine
from rtmoe.models.shipped import load_model
from rtmoe.profiles import Profile
from rtmoe.runtime.loop import (
    RunSummary,
    Runtime,
    Window,
    kept_rows,
    resolve_device,
    stop_on_signals,
)
from rtmoe.runtime.streams import SHARED
from rtmoe.transport import ZmqPublisher
from rtmoe.transport.messages import STREAM_ID


@dataclass(frozen=True)
class StreamSpec:
    """One stream of a `MultiRuntime`.

    ``source``: as `Runtime`'s ``stream`` (an LSL query such as ``{"name": "EEG_A"}``, a
    resolved ``pylsl.StreamInfo`` or an open `LslSource`). ``model``: checkpoint folder or
    shipped name. Streams with the same ``model`` and ``profile`` share one engine.
    ``cfg``: this stream's settings (hop, watchdog, fill, trust thresholds), default the
    runtime's; the `SHARED` fields must be the runtime's.
    """

    stream_id: str
    source: Any
    model: str | Path = "default"
    profile: Profile | None = None
    plugins: Sequence[str] = ()
    subject_id: str | None = None
    cfg: RuntimeConfig | None = None


@dataclass(eq=False)  # hashed by identity: the key of the windows due in a cycle
class _Group:
    """Runtimes sharing one engine, and the batch buffers their windows are stacked in."""

    runtimes: list[Runtime] = field(default_factory=list)
    x: torch.Tensor | None = None
    psd: torch.Tensor | None = None


class MultiRuntime:
    """Decode several streams in one process, batching the forwards of a shared model.

    Parameters
    ----------
    streams : sequence of StreamSpec
        At least one; the ids must be distinct and topic-safe (`STREAM_ID`).
    cfg : RuntimeConfig
        Shared by every stream (hop, watchdog, trust, engine, publisher address).
    cache_dir : path, optional
        Engine cache.
    publisher : ZmqPublisher, optional
        Default: one bound to ``cfg.zmq_address`` (closed at the end).

    Attributes
    ----------
    runtimes : list of Runtime
        In the order of ``streams``; ``runtimes[i].stream_id == streams[i].stream_id``.
    batches : int
        Forwards run with more than one window.
    cycles : ndarray, shape (n_kept, 2)
        Per cycle that decoded: windows decoded and total engine time (ms, all its
        forwards), oldest first (the newest ``cfg.timing_records`` cycles).
    """

    def __init__(
        self,
        streams: Sequence[StreamSpec],
        cfg: RuntimeConfig | None = None,
        *,
        cache_dir: str | Path | None = None,
        publisher: ZmqPublisher | None = None,
    ) -> None:
        cfg = cfg or RuntimeConfig()
        ids = [spec.stream_id for spec in streams]
        if not ids:
            raise UserError("no stream to decode; give at least one --lsl NAME")
        bad = [i for i in ids if not isinstance(i, str) or not STREAM_ID.fullmatch(i)]
        if bad:
            raise UserError(
                f"stream ids {bad} must be 1-64 letters, digits, '_' or '-' (they end the "
                "ZeroMQ topic)"
            )
        if len(set(ids)) != len(ids):
            raise UserError(f"stream ids {ids} repeat; give each stream once")
        for spec in streams:
            differ = [k for k in SHARED if spec.cfg and getattr(spec.cfg, k) != getattr(cfg, k)]
            if differ:
                raise UserError(
                    f"stream {spec.stream_id!r} sets {differ}, which all streams of one runtime "
                    "share (one publisher, one device and engine); set them once for all"
                )
        self.cfg = cfg
        self._owns_publisher = publisher is None
        self.publisher = publisher or ZmqPublisher(
            cfg.zmq_address, allow_remote=cfg.allow_remote, single_frame=cfg.single_frame
        )
        self.runtimes: list[Runtime] = []
        self._groups: dict[tuple, _Group] = {}
        self._group_of: dict[str, _Group] = {}
        self._stop = threading.Event()
        self._poll_s = cfg.poll_ms * 1e-3
        self.batches = 0
        self._cycles = np.zeros((cfg.timing_records, 2))
        self._n_cycles = 0
        try:
            self._open(streams, cfg, cache_dir)
        except BaseException:
            self.close()
            raise

    def _open(self, streams: Sequence[StreamSpec], cfg: RuntimeConfig, cache_dir) -> None:
        device = resolve_device(cfg.device)
        loaded: dict[str, Any] = {}
        keys = [(str(s.model), None if s.profile is None else str(s.profile.path)) for s in streams]
        sizes = {key: keys.count(key) for key in keys}
        for spec, key in zip(streams, keys, strict=True):
            if key[0] not in loaded:
                loaded[key[0]] = load_model(spec.model, device)
            group = self._groups.setdefault(key, _Group())
            first = group.runtimes[0] if group.runtimes else None
            runtime = Runtime(
                loaded[key[0]],
                spec.source,
                spec.cfg or cfg,
                publisher=self.publisher,
                subject_id=spec.subject_id,
                cache_dir=cache_dir,
                plugins=spec.plugins,
                profile=spec.profile,
                stream_id=spec.stream_id,
                engine=first.engine if first is not None else None,
                max_batch=sizes[key],
            )
            self.runtimes.append(runtime)
            group.runtimes.append(runtime)
            self._group_of[spec.stream_id] = group
        for group in self._groups.values():
            n, lead = len(group.runtimes), group.runtimes[0]
            if n > 1:
                bins = lead.welch.n_bins
                group.x = torch.zeros((n, *lead._x.shape[1:]), device=lead.device)
                group.psd = torch.zeros((n, lead._x.shape[1], bins), device=lead.device)

    # -- running -------------------------------------------------------------------------

    def step(self) -> int:
        """One cycle over every stream: pull, preprocess, then decode the due windows,
        one forward per shared engine. Returns the number of decodes published."""
        due: dict[_Group, list[tuple[Runtime, Window]]] = {}
        arrived = False
        for runtime in self.runtimes:
            before = runtime.source.n_samples
            end = runtime._due(0.0)
            arrived |= runtime.source.n_samples != before
            window = runtime._window(end) if end is not None else None
            if window is not None:
                due.setdefault(self._group_of[runtime.stream_id], []).append((runtime, window))
        published, engine_s = 0, 0.0
        for group, items in due.items():
            t0 = time.perf_counter()
            if len(items) == 1:
                runtime, window = items[0]
                probs, gates = runtime.engine(runtime._x, window.psd.unsqueeze(0))
                engine_s += time.perf_counter() - t0
                published += runtime._publish(window, probs, gates)
                continue
            k = len(items)
            for i, (runtime, window) in enumerate(items):
                group.x[i].copy_(runtime._x[0])
                group.psd[i].copy_(window.psd)
            probs, gates = items[0][0].engine.decode_batch(group.x[:k], group.psd[:k])
            engine_s += time.perf_counter() - t0
            self.batches += 1
            for i, (runtime, window) in enumerate(items):
                published += runtime._publish(window, probs[i], gates[i])
        if due:
            row = self._n_cycles % self._cycles.shape[0]
            self._cycles[row] = (sum(map(len, due.values())), engine_s * 1e3)
            self._n_cycles += 1
        if not arrived:
            time.sleep(self._poll_s)
        return published

    @property
    def cycles(self) -> np.ndarray:
        return kept_rows(self._cycles, self._n_cycles)

    def run(self, duration_s: float | None = None, console: bool = False) -> list[RunSummary]:
        """Decode until `stop`, a signal or ``duration_s``; one summary per stream."""
        restore = stop_on_signals(self.stop)
        line = StatusLine(period_s=0.0) if console else None
        clock = self.runtimes[0]._clock
        start = clock()
        for runtime in self.runtimes:
            runtime._started_s = start
        try:
            while not self._stop.is_set():
                now = clock()
                if duration_s is not None and now - start >= duration_s:
                    break
                self.step()
                beats = [runtime.beat(now) for runtime in self.runtimes]
                if any(beats) and line is not None:
                    line.update(self.console_line())
        finally:
            restore()
            if line is not None:
                line.close()
            summaries = [runtime.finish() for runtime in self.runtimes]
            self.close()
        return summaries

    def stop(self) -> None:
        """Ask `run` to finish after the current cycle (thread- and signal-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Close every stream's runtime and, if created here, the publisher. Idempotent."""
        for runtime in self.runtimes:
            runtime.close()
        if self._owns_publisher:
            self.publisher.close()

    def console_line(self) -> str:
        return " | ".join(f"{rt.stream_id}: {rt.console_line()}" for rt in self.runtimes)

    def describe(self, summaries: Sequence[RunSummary]) -> str:
        """The shutdown report: one line per stream."""
        return "\n".join(
            f"{rt.stream_id}: {summary.describe()}"
            for rt, summary in zip(self.runtimes, summaries, strict=True)
        )
