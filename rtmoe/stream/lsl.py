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
with the same source_id feeds the same ``LslSource`` after ~1-2 s); a stream without a
source_id cannot be recovered, and losing it raises ``LslError``.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from rtmoe.stream.clock import StreamClock

if TYPE_CHECKING:
    import pylsl


class LslError(RuntimeError):
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
    props = {"name": name, "type": type, "source_id": source_id}
    given = {prop: value for prop, value in props.items() if value is not None}
    if not given:
        raise LslError("resolve_stream needs at least one of name, type or source_id")
    query = " and ".join(_xpath_literal(prop, value) for prop, value in given.items())
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
    listing = "".join(f"\n  {describe_stream(info)}" for info in found)
    differing = [
        prop
        for prop in ("source_id", "name", "type", "hostname")
        if prop not in given and len({getattr(info, prop)() for info in found}) > 1
    ]
    hint = (
        f"add {differing[0]}=... to pick one"
        if differing
        else "the matches look identical: give the outlets distinct source_ids"
    )
    raise LslError(f"{len(found)} LSL streams match {query}:{listing}\n{hint}.")


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
                "if its outlet restarts; set a source_id in the amplifier's LSL app",
                stacklevel=2,
            )
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
        self.n_chans = full.channel_count()
        labels = full.get_channel_labels() or [None] * self.n_chans
        self.channel_names = [label or f"ch{i + 1}" for i, label in enumerate(labels)]
        self.info = full
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
        except self._lost_error as err:
            raise LslError(
                f"LSL stream source_id={self.source_id!r} was lost and cannot be recovered "
                "(it has no source_id); restart with a stream that sets one"
            ) from err
        data, timestamps = self._data[:, :n], self._timestamps[:n]
        if n:
            np.copyto(data, self._raw[:n].T)
            self.last_raw_timestamp = float(timestamps[-1])
            if self.clock is not None:
                self.clock.update(timestamps, timestamps)  # in place, no allocation
            self._track(timestamps)
        return data, timestamps

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
        self._inlet.close_stream()

    def __enter__(self) -> LslSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
