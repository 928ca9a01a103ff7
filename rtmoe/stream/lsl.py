"""LSL source: resolve exactly one stream, drain it channel-first, watch its health.

Binding: pylsl, not mne-lsl's ``StreamInlet`` (both bundle liblsl here: pylsl 1.18.6 with
liblsl 1.18, mne-lsl 1.14 with 1.17.7). pylsl's ``pull_chunk(dest_obj=...)`` lets liblsl
write straight into a buffer we own, which is what the allocation-free hot loop needs
(mne-lsl's returns views of its own internal buffers, one more hop); ``import pylsl``
takes ~50 ms where ``import mne_lsl.lsl`` imports mne (~0.7 s); and pylsl's inlet has no
per-pull lock or argument checks. mne-lsl's extra value, ``StreamLSL`` (an acquisition
thread with its own buffer and filters), duplicates rtmoe's ring buffer and causal filters.

Processing flags: ``proc_clocksync`` only, so every timestamp is in this machine's LSL
clock (``pylsl.local_clock``), the runtime's one time base. ``proc_dejitter`` and
``proc_monotonize`` are left off on purpose: liblsl's dejitter fits one line through
everything and smears a run of missing samples into a gentle slope no gap detector can
see. Instead every pulled chunk goes through `rtmoe.stream.clock.StreamClock`, a clock
model for real senders (apps that let liblsl stamp chunks at push time jitter by 5-20 ms
and step backwards): the timestamps `pull` returns lie on a line fitted against the
sample count, strictly increasing, and jump only where samples are really missing or the
sender's clock really jumped (see that module for the approach and its limits). The raw
stamps' jitter, the sender's clock rate and a departure of that rate from the nominal one
are kept (`timestamp_jitter_ms`, `clock_sfreq`, `sfreq_mismatch`).

Recovery: liblsl inlets created with ``recover=True`` re-resolve a lost outlet by its
source_id and reconnect on their own (verified in tests/test_lsl_source.py: a new outlet
with the same source_id feeds the same ``LslSource`` after ~1-2 s). liblsl checks only the
source_id and the channel count when it reconnects, and keeps the stream description it
read first, so the source checks the *identity* itself (`StreamIdentity`: nominal rate,
channel count, channel names, as opened): after every stall, and every
``probe_period_s`` while stalled or lost, a background thread resolves the stream again
(by source_id, else by name and type) and reads each match's full description. Samples
that arrive after a stall are passed on but `identity_ok` is False until that look-up
confirms the stream; a stream that came back different sets `identity_error` (a message
naming what differs) and its samples are discarded, never returned, until the right one
is back. A lost stream without a source_id (liblsl cannot recover those) is not an error
either: the source is `lost`, and the look-up reconnects it when exactly one stream with
the opened identity is visible again.
"""

from __future__ import annotations

import enum
import math
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rtmoe.errors import UserError
from rtmoe.stream.clock import StreamClock

if TYPE_CHECKING:
    import pylsl


class LslError(UserError, RuntimeError):
    """An LSL stream could not be resolved, opened or kept; the message says how to fix it."""


class SourceStatus(enum.StrEnum):
    """Watchdog state of a source, as published on the status topic.

    Each value is also a ``rtmoe.transport.RuntimeState`` of the same name, so the
    runtime reports it as ``RuntimeState(status)``, with no table of its own (the stream
    layer does not import the transport; ``tests/test_transport.py`` checks the names).
    """

    WAITING = "WAITING"  # opened, no sample received yet
    RUNNING = "RUNNING"  # samples arrived within the stall timeout
    STALLED = "STALLED"  # no sample for longer than the stall timeout


def _import_pylsl():
    try:
        import pylsl
    except ImportError as err:  # pragma: no cover - pylsl is a core dependency
        raise LslError("the LSL source needs pylsl; install it with `pip install pylsl`") from err
    return pylsl


def describe_stream(info: pylsl.StreamInfo) -> str:
    """One line naming a stream's identifying properties (for errors and logs)."""
    return (
        f"name={info.name()!r} type={info.type()!r} source_id={info.source_id()!r} "
        f"channels={info.channel_count()} rate={info.nominal_srate():g} Hz "
        f"host={info.hostname()!r}"
    )


@dataclass(frozen=True)
class StreamIdentity:
    """What must stay the same for a stream to be "the stream the runtime opened".

    Attributes
    ----------
    sfreq : float
        Nominal sampling rate, Hz.
    n_chans : int
        Channels per sample.
    channel_names : tuple of str
        Channel labels (``ch1``, ``ch2`` … where the description has none).
    """

    sfreq: float
    n_chans: int
    channel_names: tuple[str, ...]

    @classmethod
    def of(cls, info: pylsl.StreamInfo) -> StreamIdentity:
        """The identity of a *full* stream description (``inlet.info()``)."""
        n = info.channel_count()
        labels = info.get_channel_labels() or [None] * n
        names = tuple(label or f"ch{i + 1}" for i, label in enumerate(labels))
        return cls(float(info.nominal_srate()), n, names)

    def differences(self, other: StreamIdentity) -> list[str]:
        """What ``other`` has that ``self`` does not, one phrase per property."""
        out = []
        if other.sfreq != self.sfreq:
            out.append(f"rate {other.sfreq:g} Hz (opened at {self.sfreq:g} Hz)")
        if other.n_chans != self.n_chans:
            out.append(f"{other.n_chans} channels (opened with {self.n_chans})")
        elif other.channel_names != self.channel_names:
            changed = [
                f"{a}->{b}"
                for a, b in zip(self.channel_names, other.channel_names, strict=True)
                if a != b
            ]
            out.append(f"channel names changed ({', '.join(changed[:4])})")
        return out


def stream_query(
    name: str | None = None, type: str | None = None, source_id: str | None = None
) -> str:
    """The XPath predicate matching every given property (at least one is required)."""
    props = {"name": name, "type": type, "source_id": source_id}
    given = {prop: value for prop, value in props.items() if value is not None}
    if not given:
        raise LslError("resolve_stream needs at least one of name, type or source_id")
    return " and ".join(_xpath_literal(prop, value) for prop, value in given.items())


def ambiguity_error(query: str, found: list, given: Mapping[str, object]) -> LslError:
    """The error for several streams matching ``query`` (lists them, says how to pick)."""
    listing = "".join(f"\n  {describe_stream(info)}" for info in found)
    differing = [
        prop
        for prop in ("source_id", "name", "type", "hostname")
        if given.get(prop) is None and len({getattr(info, prop)() for info in found}) > 1
    ]
    hint = (
        f"add {differing[0]}=... to pick one"
        if differing
        else "the matches look identical: give the outlets distinct source_ids"
    )
    return LslError(f"{len(found)} LSL streams match {query}:{listing}\n{hint}.")


class StreamSearch:
    """Looks for a stream in a background thread, again and again, never blocking the caller.

    Parameters
    ----------
    name, type, source_id : str, optional
        Stream properties to match exactly; at least one is required.
    attempt_s : float
        How long one look-up listens for answers (a second answer makes it ambiguous).

    `poll` returns None while nothing is found, the one matching ``StreamInfo`` once found,
    and raises `LslError` when several streams match.
    """

    def __init__(
        self,
        name: str | None = None,
        type: str | None = None,
        source_id: str | None = None,
        attempt_s: float = 1.0,
    ) -> None:
        self._pylsl = _import_pylsl()
        self.query = stream_query(name, type, source_id)
        self._given = {"name": name, "type": type, "source_id": source_id}
        self.attempt_s = float(attempt_s)
        self.attempts = 0
        self._found: list | None = None
        self._thread: threading.Thread | None = None
        self._start()

    def _start(self) -> None:
        self._found = None
        self._thread = threading.Thread(target=self._run, name="rtmoe-lsl-search", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._found = list(self._pylsl.resolve_bypred(self.query, 2, self.attempt_s))
        except Exception:  # a failed look-up is one that found nothing
            self._found = []

    def poll(self) -> pylsl.StreamInfo | None:
        """The stream once exactly one matches; None meanwhile (a new look-up is started)."""
        if self._thread is not None and self._thread.is_alive():
            return None
        found = self._found or []
        self.attempts += 1
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ambiguity_error(self.query, found, self._given)
        self._start()
        return None


class _Probe:
    """One background look-up of a stream's current identity (and, to reconnect, an inlet).

    ``result`` is None while running, then a list of ``(StreamIdentity, inlet or None)``,
    one per stream matching ``query``; an inlet is opened only for a match of ``wanted``
    when ``open_inlet`` is set (the caller then owns it).
    """

    def __init__(self, pylsl, query, wanted, open_inlet, max_buflen_s, timeout_s) -> None:
        self.result: list | None = None
        self.started = pylsl.local_clock()
        self._args = (pylsl, query, wanted, open_inlet, max_buflen_s, timeout_s)
        self._thread = threading.Thread(target=self._run, name="rtmoe-lsl-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pylsl, query, wanted, open_inlet, max_buflen_s, timeout_s = self._args
        out = []
        try:
            for info in pylsl.resolve_bypred(query, 1, timeout_s)[:4]:
                inlet = pylsl.StreamInlet(
                    info,
                    max_buflen=int(max_buflen_s),
                    recover=True,
                    processing_flags=pylsl.proc_clocksync,
                )
                identity = StreamIdentity.of(inlet.info(timeout=timeout_s))
                if open_inlet and identity == wanted:
                    inlet.open_stream(timeout=timeout_s)
                    inlet.time_correction(timeout=timeout_s)
                    out.append((identity, inlet))
                else:
                    out.append((identity, None))
                    del inlet
        except Exception:  # an outlet vanishing mid-look-up: what was read so far counts
            pass
        self.result = out

    @property
    def done(self) -> bool:
        return self.result is not None


def _xpath_literal(prop: str, value: str) -> str:
    # XPath 1.0 has no escapes: quote with whichever quote the value does not contain.
    if "'" not in value:
        return f"{prop}='{value}'"
    if '"' not in value:
        return f'{prop}="{value}"'
    raise LslError(f"{prop}={value!r} contains both quote kinds; LSL queries cannot match it")


def resolve_stream(
    name: str | None = None,
    type: str | None = None,
    source_id: str | None = None,
    timeout_s: float = 1.0,
) -> pylsl.StreamInfo:
    """Find the one LSL stream matching every given property.

    Waits up to ``timeout_s`` for a second match, so a unique match takes the whole
    timeout while an ambiguous query fails as soon as two streams answer.

    Parameters
    ----------
    name, type, source_id : str, optional
        Stream properties to match exactly; at least one is required.
    timeout_s : float
        How long to listen for answers, in seconds (LSL resolves take up to ~1 s on a
        busy network).

    Returns
    -------
    pylsl.StreamInfo
        The matching stream (its ``desc`` is empty until an inlet is opened).

    Raises
    ------
    LslError
        No stream or several streams match; the message lists what is visible and how
        to disambiguate.
    """
    pylsl = _import_pylsl()
    query = stream_query(name, type, source_id)
    found = pylsl.resolve_bypred(query, 2, timeout_s)
    if len(found) == 1:
        return found[0]
    if not found:
        visible = pylsl.resolve_streams(wait_time=timeout_s)
        listing = "".join(f"\n  {describe_stream(info)}" for info in visible) or " none"
        raise LslError(
            f"no LSL stream matches {query} within timeout_s={timeout_s}. Streams visible "
            f"now:{listing}\nCheck the spelling, that the amplifier software is streaming "
            "on this network, or raise timeout_s."
        )
    raise ambiguity_error(query, found, {"name": name, "type": type, "source_id": source_id})


class LslSource:
    """A clock-synchronised LSL inlet drained into preallocated channel-first buffers.

    Parameters
    ----------
    stream : pylsl.StreamInfo or mapping
        A resolved stream, or keyword arguments for `resolve_stream`
        (e.g. ``{"name": "EEG", "timeout_s": 2.0}``).
    max_buflen_s : int
        Seconds the inlet queues while the caller is busy (liblsl takes whole seconds);
        when the reader falls further behind, the oldest samples are dropped and show up
        as a gap instead of as growing latency.
    chunk_capacity : int, optional
        Most samples one `pull` returns; default the inlet's queue length
        (``max_buflen_s * sfreq``) so that one pull drains it.
    stall_timeout_ms : float
        Time without samples after which `status` is ``STALLED``.
    gap_threshold_periods : float
        A timestamp step longer than this many sample periods counts as a gap.
    dejitter : bool
        Model the timestamps with `StreamClock` (default); False returns the raw stamps.
    rate_window_s : float
        Span of recent samples the effective sample rate is estimated over.
    open_timeout_s : float
        How long to wait for the outlet when opening the inlet.
    rate_tolerance : float
        Relative departure of the sender's clock rate from the nominal one reported by
        `sfreq_mismatch` (default 0.5 %).
    probe_period_s : float
        While stalled, lost, unconfirmed or wrong: seconds between identity look-ups.

    Attributes
    ----------
    channel_names : list of str
        Channel labels from the stream description (``ch1``, ``ch2`` … where absent).
    sfreq : float
        Nominal sampling rate in Hz.
    n_chans : int
        Channels per sample.
    source_id : str
        The stream's source_id (what LSL recovers it by).
    info : pylsl.StreamInfo
        The full stream description, read from the outlet when the inlet opened.
    chunk_capacity : int
        Most samples one `pull` returns.
    last_timestamp : float
        LSL time of the newest sample pulled (NaN before the first).
    n_samples : int
        Samples pulled so far.
    n_gaps, n_missing : int
        Timestamp gaps seen and the estimated number of samples missing in them.
    n_stalls : int
        Silences longer than the stall timeout that ended with samples arriving again.
    clock : StreamClock or None
        The timestamp model (None with ``dejitter=False``).
    last_raw_timestamp : float
        The newest sample's stamp as received, before modelling (NaN before the first).
    identity : StreamIdentity
        Rate, channel count and names as opened; a stream that comes back must match.
    identity_error : str or None
        Why the stream seen now is not the one opened (what differs, and what to do);
        its samples are discarded meanwhile.
    lost : bool
        The inlet was lost for good (a stream without source_id); `pull` returns nothing
        until a look-up finds the stream again and reconnects.
    n_reconnects : int
        Lost streams found again and reconnected.
    n_discarded : int
        Samples discarded because they came from a stream with another identity.
    """

    def __init__(
        self,
        stream: pylsl.StreamInfo | Mapping[str, object],
        *,
        max_buflen_s: int = 1,
        chunk_capacity: int | None = None,
        stall_timeout_ms: float = 500.0,
        gap_threshold_periods: float = 1.5,
        rate_window_s: float = 10.0,
        open_timeout_s: float = 5.0,
        dejitter: bool = True,
        rate_tolerance: float = 5e-3,
        probe_period_s: float = 1.0,
    ) -> None:
        pylsl = _import_pylsl()
        info = resolve_stream(**stream) if isinstance(stream, Mapping) else stream
        if info.channel_format() == pylsl.cf_string:
            raise LslError(f"stream {describe_stream(info)} carries strings; pick a signal stream")
        self.sfreq = float(info.nominal_srate())
        if self.sfreq <= 0:
            raise LslError(
                f"stream {describe_stream(info)} has an irregular rate; rtmoe needs a "
                "regularly sampled signal stream (nominal_srate > 0)"
            )
        if max_buflen_s < 1:
            raise ValueError(f"max_buflen_s={max_buflen_s} must be a whole number >= 1")
        self.source_id = info.source_id()
        if not self.source_id:
            warnings.warn(
                f"stream {describe_stream(info)} has no source_id: LSL cannot reconnect "
                "if its outlet restarts (rtmoe looks for it again by name and type); set a "
                "source_id in the amplifier's LSL app",
                stacklevel=2,
            )
        self._query = (
            stream_query(source_id=self.source_id)
            if self.source_id
            else stream_query(name=info.name(), type=info.type() or None)
        )
        self._pylsl = pylsl
        self._max_buflen_s = int(max_buflen_s)
        self._open_timeout_s = float(open_timeout_s)
        self._inlet = pylsl.StreamInlet(
            info,
            max_buflen=int(max_buflen_s),
            recover=True,
            processing_flags=pylsl.proc_clocksync,
        )
        try:
            full = self._inlet.info(timeout=open_timeout_s)
            # Subscribe now: samples are queued from here on, even before the first pull.
            self._inlet.open_stream(timeout=open_timeout_s)
            # The first clock-offset estimate blocks for ~0.6 s; take it here, not in the
            # first pull, where it would delay (or, at high rates, drop) live samples.
            self._inlet.time_correction(timeout=open_timeout_s)
        except Exception as err:
            raise LslError(
                f"could not open stream {describe_stream(info)} within "
                f"open_timeout_s={open_timeout_s}: {err}; is the outlet still running?"
            ) from err
        self.identity = StreamIdentity.of(full)
        self.n_chans = self.identity.n_chans
        self.channel_names = list(self.identity.channel_names)
        self.info = full
        self.identity_error: str | None = None
        self.lost = False
        self.n_reconnects = 0
        self.n_discarded = 0
        self._confirmed = True  # False from a stall's end until a look-up confirms
        self._inconclusive = 0
        self._probe: _Probe | None = None
        self._next_probe = -math.inf
        self._resumed_at = -math.inf  # when samples last resumed after a stall
        self.probe_period_s = float(probe_period_s)
        self._local_clock = pylsl.local_clock
        self._lost_error = pylsl.util.LostError

        capacity = chunk_capacity or math.ceil(max_buflen_s * self.sfreq)
        if capacity < 1:
            raise ValueError(f"chunk_capacity={chunk_capacity} must be >= 1 sample")
        self.chunk_capacity = capacity
        self._raw = np.empty((capacity, self.n_chans), dtype=self._inlet.np_dtype)
        self._data = np.empty((self.n_chans, capacity), dtype=np.float32)
        self._timestamps = np.empty(capacity, dtype=np.float64)

        self.stall_timeout_ms = float(stall_timeout_ms)
        self._gap_threshold_s = gap_threshold_periods / self.sfreq
        self.rate_window_s = float(rate_window_s)
        self.n_samples = 0
        self.n_gaps = 0
        self.n_missing = 0
        self.n_stalls = 0
        self.last_timestamp = math.nan
        self.last_raw_timestamp = math.nan
        self.clock = (
            StreamClock(
                self.sfreq,
                window_s=self.rate_window_s,
                gap_floor_periods=max(0.0, gap_threshold_periods - 1.0),
                rate_tolerance=rate_tolerance,
            )
            if dejitter
            else None
        )
        self._last_arrival: float | None = None
        # Rate checkpoints (LSL time of a chunk's last sample, samples so far), one every
        # rate_window_s / 16, in a ring holding a little more than one window.
        self._checkpoint_every_s = self.rate_window_s / 16
        self._cp_time = np.full(18, -np.inf)
        self._cp_count = np.zeros(18, dtype=np.int64)
        self._cp_next = 0

    def pull(self, timeout_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Drain everything the inlet holds (up to ``chunk_capacity`` samples).

        With ``timeout_s`` > 0 and nothing buffered, wait up to that long for the first
        sample and return as soon as it arrives (the live loop wakes on data instead of
        sleeping a polling period); otherwise never block.

        Returns
        -------
        data : numpy.ndarray, float32, shape (n_chans, k)
            Channel-first samples (k may be 0); LSL's (samples, channels) is transposed
            here and nowhere else.
        timestamps : numpy.ndarray, float64, shape (k,)
            LSL times of the samples in this machine's clock, in seconds, as modelled by
            `clock` (strictly increasing except across a real backward jump).

        Both are views of buffers the next pull overwrites: consume (push to the ring)
        before pulling again.
        """
        self._service()
        if self.lost:
            if timeout_s > 0:
                time.sleep(timeout_s)
            return self._data[:, :0], self._timestamps[:0]
        n = 0
        try:
            if timeout_s > 0 and not self._inlet.samples_available():
                # pull_chunk with a timeout waits to fill the whole chunk; one sample
                # returns on arrival.
                sample, stamp = self._inlet.pull_sample(timeout=timeout_s)
                if stamp is None:
                    return self._data[:, :0], self._timestamps[:0]
                self._raw[0] = sample
                self._timestamps[0] = stamp
                n = 1
            while n < self.chunk_capacity:
                _, stamps = self._inlet.pull_chunk(
                    timeout=0.0,
                    max_samples=self.chunk_capacity - n,
                    dest_obj=self._raw[n:],
                    as_numpy=True,
                )
                if not len(stamps):
                    break
                self._timestamps[n : n + len(stamps)] = stamps
                n += len(stamps)
        except self._lost_error:
            # Only streams without a source_id are lost for good; look for it by name/type.
            self.lost = True
            self._next_probe = -math.inf
            return self._data[:, :0], self._timestamps[:0]
        data, timestamps = self._data[:, :n], self._timestamps[:n]
        if n and self._after_silence():
            # A stall ended: liblsl may have reconnected to another outlet with the same
            # source_id; confirm its identity before these samples are trusted.
            self._confirmed = False
            self._next_probe = -math.inf
            self._resumed_at = self._local_clock()
            self._service()
        if n and self.identity_error is not None:
            self._last_arrival = self._local_clock()
            self.n_discarded += n
            return self._data[:, :0], self._timestamps[:0]
        if n:
            np.copyto(data, self._raw[:n].T)
            self.last_raw_timestamp = float(timestamps[-1])
            if self.clock is not None:
                self.clock.update(timestamps, timestamps)  # in place, no allocation
            self._track(timestamps)
        return data, timestamps

    @property
    def identity_ok(self) -> bool:
        """Whether the samples come from the stream opened (confirmed since the last stall)."""
        return self._confirmed and self.identity_error is None and not self.lost

    def _after_silence(self) -> bool:
        last = self._last_arrival
        return last is not None and (self._local_clock() - last) * 1e3 > self.stall_timeout_ms

    def _service(self) -> None:
        """Take a finished look-up's result; start the next one where one is needed."""
        probe = self._probe
        if probe is not None:
            if not probe.done:
                return
            self._probe = None
            if probe.started >= self._resumed_at:
                self._take(probe.result)
            else:  # looked before the stream resumed: it may have seen another outlet
                for _, inlet in probe.result:
                    if inlet is not None:
                        inlet.close_stream()
        needed = (
            self.lost
            or not self._confirmed
            or self.identity_error is not None
            or self.status is SourceStatus.STALLED
        )
        now = self._local_clock()
        if needed and now >= self._next_probe:
            self._next_probe = now + self.probe_period_s
            self._probe = _Probe(
                self._pylsl,
                self._query,
                self.identity,
                self.lost,
                self._max_buflen_s,
                self._open_timeout_s,
            )

    def _take(self, found: list) -> None:
        matching = [inlet for identity, inlet in found if identity == self.identity]
        others = [identity for identity, _ in found if identity != self.identity]
        if self.lost:
            inlets = [inlet for inlet in matching if inlet is not None]
            if len(inlets) == 1:
                self._inlet = inlets[0]
                if self._inlet.np_dtype != self._raw.dtype:
                    self._raw = np.empty(self._raw.shape, dtype=self._inlet.np_dtype)
                self.lost = False
                self.n_reconnects += 1
                self.identity_error = None
                self._confirmed = True
                return
            for inlet in inlets:  # several equal streams: none is picked
                inlet.close_stream()
        if matching:
            self.identity_error = None
            if not self.lost:
                self._confirmed = True
            self._inconclusive = 0
        elif others:
            what = "; ".join(self.identity.differences(others[0]))
            self.identity_error = (
                f"the LSL stream matching {self._query} came back with {what}; rtmoe keeps "
                "decoding only the stream it opened and waits for it (restart the amplifier "
                "app with the original settings, or restart rtmoe for the new stream)"
            )
        else:  # nothing visible: no wrong stream to report; liblsl only reconnects to a
            # stream with this source_id and channel count, so after a few empty
            # look-ups the samples are trusted
            self.identity_error = None
            self._inconclusive += 1
            if self._inconclusive >= 3 and not self.lost:
                self._confirmed = True
                self._inconclusive = 0

    def _track(self, timestamps: np.ndarray) -> None:
        now = self._local_clock()
        if (
            self._last_arrival is not None
            and (now - self._last_arrival) * 1e3 > self.stall_timeout_ms
        ):
            self.n_stalls += 1
        self._last_arrival = now
        steps = np.diff(timestamps, prepend=self.last_timestamp)
        gaps = steps[steps > self._gap_threshold_s]  # NaN (first sample ever) never counts
        if gaps.size:
            self.n_gaps += gaps.size
            self.n_missing += int(np.rint(gaps * self.sfreq).sum()) - gaps.size
        self.n_samples += timestamps.size
        self.last_timestamp = float(timestamps[-1])
        latest = (self._cp_next - 1) % self._cp_time.size
        if self.last_timestamp - self._cp_time[latest] >= self._checkpoint_every_s:
            self._cp_time[self._cp_next] = self.last_timestamp
            self._cp_count[self._cp_next] = self.n_samples
            self._cp_next = (self._cp_next + 1) % self._cp_time.size

    @property
    def status(self) -> SourceStatus:
        """``WAITING`` before the first sample, then ``RUNNING`` or ``STALLED``."""
        if self._last_arrival is None:
            return SourceStatus.WAITING
        silent_ms = (self._local_clock() - self._last_arrival) * 1e3
        return SourceStatus.STALLED if silent_ms > self.stall_timeout_ms else SourceStatus.RUNNING

    @property
    def effective_sfreq(self) -> float:
        """Samples per second of LSL time over the last ``rate_window_s`` (NaN until known).

        The median of the rates between checkpoints half the window apart: insensitive to
        a jittered chunk stamp, while missing samples lower it as they should.
        """
        order = np.argsort(self._cp_time)
        times, counts = self._cp_time[order], self._cp_count[order]
        recent = times >= self.last_timestamp - self.rate_window_s
        times, counts = times[recent], counts[recent]
        half = times.size // 2
        if half < 1:
            return math.nan
        rates = (counts[half:] - counts[: times.size - half]) / (
            times[half:] - times[: times.size - half]
        )
        return float(np.median(rates))

    @property
    def clock_sfreq(self) -> float:
        """The sender's sample rate in its timestamps, from the clock model (NaN until known)."""
        return self.clock.effective_sfreq if self.clock is not None else math.nan

    @property
    def sfreq_mismatch(self) -> float | None:
        """`clock_sfreq` where it departs from the nominal ``sfreq`` beyond the clock's
        tolerance (0.5 %), else None: a value here means the amplifier's declared rate is
        wrong, and windows span a different time than the model expects."""
        return self.clock.rate_mismatch if self.clock is not None else None

    @property
    def timestamp_jitter_ms(self) -> float:
        """RMS of the raw stamps around the clock model, ms (NaN without the model)."""
        return self.clock.jitter_s * 1e3 if self.clock is not None else math.nan

    def close(self) -> None:
        """Unsubscribe from the outlet; the source cannot be pulled afterwards."""
        try:
            self._inlet.close_stream()
        except Exception:  # a lost inlet: nothing left to unsubscribe from
            pass
        probe, self._probe = self._probe, None
        if probe is not None and probe.done:
            for _, inlet in probe.result:
                if inlet is not None:
                    inlet.close_stream()

    def __enter__(self) -> LslSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
