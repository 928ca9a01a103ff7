"""Trial windows from a recorded session, built exactly as the live loop builds windows.

The recorded stream is cut into continuous segments wherever consecutive timestamps are
further apart than ``max_gap_s`` (the runtime's ``runtime.max_gap_ms``; the pause
between two runs of a resumed session is such a gap). Each segment runs through the
one signal chain, `rtmoe.signal` (channel map, streaming resampler,
causal filter, model units), started afresh at its first sample as the
runtime does after a gap. Every output sample carries the timestamp of the newest input
it reads. A marker at LSL time ``t`` opens its window at the first output sample whose
timestamp is ``t`` or later (within half an input period, so clock-correction jitter of
a few µs cannot move it by a sample), shifted by ``round(tmin_s * signal.sfreq)``
samples; the window holds ``n_times`` samples. Offsets are counted in samples, not
seconds of LSL time, so a replay faster than real time cuts the same windows.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtmoe.calibration.session import RecordedSession
from rtmoe.config import SignalConfig
from rtmoe.errors import BadValueError
from rtmoe.signal.chain import continuity_breaks, preprocess_recording


@dataclass(frozen=True)
class Trials:
    """Accepted trial windows and the markers that were not used.

    Attributes
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times), float32, model units
        Windows before any alignment, channels in the model's order.
    y : ndarray, shape (n_trials,), int64
        Class index into ``labels``.
    labels : tuple of str
        Class names.
    marker_times : ndarray, shape (n_trials,), float64
        LSL time of each trial's marker.
    window_times : ndarray, shape (n_trials, 2), float64
        Timestamps of each window's first and last sample.
    rejected : list of dict
        ``{"t", "label", "reason"}`` per unused marker.
    """

    X: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    marker_times: np.ndarray
    window_times: np.ndarray
    rejected: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Accepted trials per class name (every class, zero included)."""
        n = np.bincount(self.y, minlength=len(self.labels))
        return {label: int(k) for label, k in zip(self.labels, n, strict=True)}

    def rejected_reasons(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejected))


@dataclass(frozen=True)
class Segment:
    """One continuous stretch of the recording after preprocessing.

    Attributes
    ----------
    x : ndarray, shape (n_chans, m), float32, model units
    times : ndarray, shape (m,), float64
        LSL time of the newest input each output sample reads.
    half_period_s : float
        Half the median timestamp step of the segment's input.
    last : bool
        The recording's last segment (a window running past it is still arriving).
    """

    x: np.ndarray
    times: np.ndarray
    half_period_s: float
    last: bool


def split_segments(times: np.ndarray, max_gap_s: float) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges between timestamp steps over ``max_gap_s`` (or < 0)."""
    cuts = continuity_breaks(times, max_gap_s)
    edges = np.concatenate([[0], cuts, [times.size]])
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def preprocess_segments(
    rec: RecordedSession, index: np.ndarray, signal: SignalConfig, max_gap_s: float
) -> list[Segment]:
    """Run the signal chain over each continuous segment of a recording, afresh at its
    first sample as the runtime restarts it after a gap."""
    segments = []
    bounds = split_segments(rec.times, max_gap_s)
    for k, (a, b) in enumerate(bounds):
        # float32 as the live inlet delivers it: the segment's samples are the live ones.
        x, newest = preprocess_recording(
            np.asarray(rec.data[:, a:b], dtype=np.float32), rec.sfreq, signal, index
        )
        steps = np.diff(rec.times[a:b])
        half = float(np.median(steps)) / 2 if steps.size else 0.5 / rec.sfreq
        segments.append(Segment(x, rec.times[a + newest], half, k == len(bounds) - 1))
    return segments


def epoch_recording(
    rec: RecordedSession,
    index: np.ndarray,
    signal: SignalConfig,
    n_times: int,
    class_map: Mapping[str, str],
    labels: Sequence[str],
    *,
    tmin_s: float = 0.0,
    max_gap_s: float = 0.1,
    reject_uv: float | None = None,
) -> Trials:
    """Cut one window per marker out of the preprocessed recording.

    Parameters
    ----------
    rec : RecordedSession
        From `rtmoe.calibration.session.read_session`.
    index : ndarray, shape (n_model_chans,), int
        Stream row feeding each model channel (`rtmoe.signal.channels.map_channels`).
    signal : SignalConfig
        The model's preprocessing.
    n_times : int
        Window length in samples at ``signal.sfreq`` (the model's ``task.n_times``).
    class_map : mapping of str to str
        Marker label -> class name; other labels are rejected as unknown.
    labels : sequence of str
        Class names in output order.
    tmin_s : float
        Window start relative to the marker, in seconds.
    max_gap_s : float
        Timestamp step that starts a new segment, in seconds.
    reject_uv : float, optional
        Reject windows whose peak-to-peak amplitude on any channel reaches this (µV).

    Returns
    -------
    Trials
    """
    segments = preprocess_segments(rec, index, signal, max_gap_s)
    offset = round(tmin_s * signal.sfreq)
    label_index = {label: i for i, label in enumerate(labels)}
    X, y, marker_t, window_t, rejected = [], [], [], [], []
    order = np.argsort(rec.marker_times, kind="stable")
    for i in order:
        t, label = float(rec.marker_times[i]), rec.marker_labels[i]

        def reject(reason: str, t: float = t, label: str = label) -> None:
            rejected.append({"t": t, "label": label, "reason": reason})

        cls = class_map.get(label)
        if cls is None:
            reject("unknown label")
            continue
        seg = next(
            (
                s
                for s in segments
                if s.times.size and s.times[0] - s.half_period_s <= t <= s.times[-1]
            ),
            None,
        )
        if seg is None:
            after_end = not segments or t > segments[-1].times[-1]
            reject("no samples yet after the marker" if after_end else "marker in a gap")
            continue
        start = int(np.searchsorted(seg.times, t - seg.half_period_s)) + offset
        if start < 0:
            reject("window starts before the recording (or a gap)")
            continue
        if start + n_times > seg.times.size:
            reject("window still arriving" if seg.last else "window spans a gap")
            continue
        window = seg.x[:, start : start + n_times]
        if reject_uv is not None:
            ptp_uv = np.ptp(window, axis=1).max() * signal.unit_uv
            if ptp_uv >= reject_uv:
                reject(f"amplitude ≥ {reject_uv:g} µV peak-to-peak")
                continue
        X.append(window)
        y.append(label_index[cls])
        marker_t.append(t)
        window_t.append((seg.times[start], seg.times[start + n_times - 1]))
    n_chans = index.size
    return Trials(
        X=np.stack(X) if X else np.zeros((0, n_chans, n_times), np.float32),
        y=np.asarray(y, dtype=np.int64),
        labels=tuple(labels),
        marker_times=np.asarray(marker_t),
        window_times=np.asarray(window_t).reshape(-1, 2),
        rejected=rejected,
    )


def parse_classes(text: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """``"left=1,right=2"`` -> marker map ``{"1": "left", "2": "right"}`` and class order.

    A bare name (``"left,right"``) stands for ``left=left``. Several markers may map to one
    class (``"left=1,left=3,right=2"``).
    """
    class_map: dict[str, str] = {}
    labels: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, marker = item.partition("=")
        name, marker = name.strip(), (marker.strip() or name.strip())
        if not name or marker in class_map:
            raise BadValueError(
                f"classes={text!r}: item {item!r} is empty or maps marker {marker!r} twice; "
                "write NAME=MARKER pairs separated by commas, e.g. left=1,right=2"
            )
        class_map[marker] = name
        if name not in labels:
            labels.append(name)
    if len(labels) < 2:
        raise BadValueError(
            f"classes={text!r} names {len(labels)} class(es); give at least two, e.g. "
            "left=1,right=2"
        )
    return class_map, tuple(labels)
