"""Filling a session: from live LSL streams (EEG + markers) or from an annotated file.

Live: the marker inlet is opened before the EEG inlet (LSL delivers to an inlet only what
is pushed after it opened, so the other order loses the cues of a run's first seconds
while keeping their EEG); every pull of the EEG inlet and of the marker inlet is appended
to the session at once (see `rtmoe.calibration.session`), so Ctrl-C, a crash or a lost
stream loses at most the chunk being written. Timestamps are LSL times with clock
correction (``proc_clocksync``) on both inlets, so markers and samples share one clock
whatever their arrival order.

From a file: the recording's samples are appended in chunks with timestamps
``i / sfreq`` (seconds from its first sample) and each annotation as a marker on its
sample. An interrupted import resumes at the first sample not yet in the session, so
it ends with exactly the samples (and trials) of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

# The live monitor flags channels by the same thresholds as the session's quality report.
from rtmoe.calibration.quality import FLAT_UV, NOISY_UV
from rtmoe.calibration.session import Session, SessionError, read_session
from rtmoe.recording import Recording, marker_sample
from rtmoe.stream.markers import marker_label


@dataclass
class Progress:
    """Live counts shown while recording (one line per progress period).

    Attributes
    ----------
    per_class : Counter
        Complete trials (a whole window recorded after the marker) per class name.
    pending : int
        Markers whose window is still arriving.
    unknown : Counter
        Markers whose label is no class, per label.
    n_samples : int
        Samples recorded in this run.
    rate_hz : float
        Samples per second of LSL time over the last period (NaN before two pulls).
    flat, noisy : list of str
        Channels whose standard deviation over the last period is below `FLAT_UV` or
        above `NOISY_UV`.
    """

    per_class: Counter = field(default_factory=Counter)
    pending: int = 0
    unknown: Counter = field(default_factory=Counter)
    n_samples: int = 0
    rate_hz: float = math.nan
    flat: list[str] = field(default_factory=list)
    noisy: list[str] = field(default_factory=list)

    def line(self) -> str:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items())) or "none yet"
        parts = [f"trials: {classes} ({self.pending} arriving)"]
        if self.unknown:
            parts.append(f"unknown markers: {dict(self.unknown)}")
        parts.append(f"{self.rate_hz:.1f} Hz")
        if self.flat:
            parts.append(f"FLAT {self.flat}")
        if self.noisy:
            parts.append(f"NOISY {self.noisy}")
        return " | ".join(parts)


class TrialCounter:
    """Counts complete trials as samples and markers arrive (for progress and stopping).

    Parameters
    ----------
    class_map : mapping of str to str
        Marker label -> class name.
    n_after : int
        Input samples at or after the marker a trial needs to be complete.
    """

    def __init__(self, class_map: Mapping[str, str], n_after: int) -> None:
        self.class_map = dict(class_map)
        self.n_after = n_after
        self.progress = Progress()
        self._pending: list[list] = []  # [marker time, class, samples seen at/after it]

    def add_marker(self, t: float, label: str) -> None:
        cls = self.class_map.get(label)
        if cls is None:
            self.progress.unknown[label] += 1
        else:
            self._pending.append([t, cls, 0])
        self.progress.pending = len(self._pending)

    def add_samples(self, times: np.ndarray) -> None:
        if not times.size:
            return
        still = []
        for entry in self._pending:
            entry[2] += int(np.count_nonzero(times >= entry[0]))
            if entry[2] >= self.n_after:
                self.progress.per_class[entry[1]] += 1
            else:
                still.append(entry)
        self._pending = still
        self.progress.pending = len(still)
        self.progress.n_samples += times.size


def record_lsl(
    session: Session,
    eeg,
    markers,
    counter: TrialCounter,
    *,
    trials_per_class: int | None = None,
    duration_s: float | None = None,
    idle_stop_s: float | None = None,
    progress_period_s: float = 1.0,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = 0.005,
) -> str:
    """Append the live streams to ``session`` until a stop condition; returns why it stopped.

    Parameters
    ----------
    session : Session
        Open session (its ``ch_names`` are the EEG stream's).
    eeg : rtmoe.stream.lsl.LslSource
        The EEG inlet.
    markers : MarkerInlet
        The marker inlet.
    counter : TrialCounter
        Counts complete trials per class.
    trials_per_class : int, optional
        Stop once every class has this many complete trials.
    duration_s : float, optional
        Stop after this many seconds of wall-clock time.
    idle_stop_s : float, optional
        Stop when no EEG sample arrived for this long (the sender finished).
    progress_period_s : float
        How often ``on_progress`` is called.

    Returns
    -------
    str
        ``"trials"``, ``"duration"`` or ``"idle"``. Ctrl-C (KeyboardInterrupt) and a lost
        stream (LslError) propagate; everything pulled before is already on disk.
    """
    started = last_data = last_report = time.monotonic()
    channels = session.meta["ch_names"]
    sums = np.zeros((3, session.n_chans))  # n, Σx, Σx² of the current period
    first_t = last_t = math.nan
    n_period = 0
    while True:
        for t, label in markers.pull():
            session.add_marker(t, label)
            counter.add_marker(t, label)
        data, times = eeg.pull()
        now = time.monotonic()
        if times.size:
            session.append(data, times)
            counter.add_samples(times)
            last_data = now
            x = data.astype(np.float64)
            sums[0] += x.shape[1]
            sums[1] += x.sum(axis=1)
            sums[2] += (x**2).sum(axis=1)
            first_t = times[0] if math.isnan(first_t) else first_t
            last_t = float(times[-1])
            n_period += times.size
        if now - last_report >= progress_period_s:
            p = counter.progress
            if n_period > 1 and last_t > first_t:
                p.rate_hz = (n_period - 1) / (last_t - first_t)
                std = np.sqrt(np.maximum(sums[2] / sums[0] - (sums[1] / sums[0]) ** 2, 0))
                p.flat = [c for c, s in zip(channels, std, strict=True) if s < FLAT_UV]
                p.noisy = [c for c, s in zip(channels, std, strict=True) if s > NOISY_UV]
            if on_progress is not None:
                on_progress(p)
            sums[:] = 0
            first_t, n_period, last_report = math.nan, 0, now
        if trials_per_class is not None and counter.class_map:
            classes = set(counter.class_map.values())
            if all(counter.progress.per_class[c] >= trials_per_class for c in classes):
                return "trials"
        if duration_s is not None and now - started >= duration_s:
            return "duration"
        if idle_stop_s is not None and now - last_data >= idle_stop_s:
            return "idle"
        if not times.size:
            time.sleep(poll_s)


def record_replay(
    session: Session,
    replay: Recording,
    counter: TrialCounter | None = None,
    *,
    chunk_s: float = 1.0,
    on_chunk: Callable[[Session], None] | None = None,
) -> int:
    """Append a recording to ``session`` from its first sample not yet recorded.

    Parameters
    ----------
    session : Session
        Created from (or resumed with) the same recording.
    replay : Recording
        The recording (µV) and its annotations as markers.
    counter : TrialCounter, optional
        Updated as the chunks are appended.
    chunk_s : float
        Recording time per appended chunk, in seconds.
    on_chunk : callable, optional
        Called after every chunk (progress; tests interrupt a session from here).

    Returns
    -------
    int
        Samples appended by this call.
    """
    sfreq = replay.sfreq
    step = max(1, round(chunk_s * sfreq))
    start = session.n_samples
    if start > replay.n_times:
        raise SessionError(
            f"session {session.path} holds {start} samples but {replay.source} has only "
            f"{replay.n_times}; it was recorded from another file: start a new session"
        )
    onsets = np.array([marker_sample(m, sfreq) for m in replay.markers], dtype=np.int64)
    labels = [marker_label(m.label) for m in replay.markers]
    # A chunk's markers are written before its samples: after an interruption between
    # the two, the chunk is appended again but its markers are not.
    recorded = set(np.round(read_session(session.path).marker_times * sfreq).astype(int))
    for lo in range(start, replay.n_times, step):
        hi = min(lo + step, replay.n_times)
        # Markers of this chunk first, as a sender stamps a cue before its samples arrive.
        for i in np.flatnonzero((onsets >= lo) & (onsets < hi)):
            if onsets[i] in recorded:
                continue
            session.add_marker(onsets[i] / sfreq, labels[i])
            if counter is not None:
                counter.add_marker(onsets[i] / sfreq, labels[i])
        times = np.arange(lo, hi) / sfreq
        session.append(replay.data[:, lo:hi], times)
        if counter is not None:
            counter.add_samples(times)
        if on_chunk is not None:
            on_chunk(session)
    return replay.n_times - start
