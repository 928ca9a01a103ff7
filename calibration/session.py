"""A calibration session on disk: the raw stream and the markers, append-only.

What is kept is what arrived, not trials: every EEG chunk (samples in µV and their LSL
timestamps) and every marker (LSL timestamp and label) is appended to the session
folder as it is pulled, and flushed to the OS at once (fsync at most every
``FSYNC_PERIOD_S``). Trials are derived later by running the runtime's own
preprocessing over the recorded stream (`rtmoe.calibration.epochs`), so the windows a profile
is fitted on are the windows the live loop would build from the same samples.

Layout of ``<session>/``::

    session.json   subject, stream description (channel names, nominal rate), source,
                   one entry per run (start/stop LSL time, samples), written atomically
    eeg.f32        float32 samples, row-major (n_samples, n_chans): one row per sample
    times.f64      float64 LSL timestamps, one per sample
    markers.jsonl  one JSON object per marker: {"t": LSL time, "label": "..."}

Crash safety: a crash can leave at most the last chunk half-written; `Session.open`
truncates ``eeg.f32`` and ``times.f64`` to the samples both hold whole and ignores an
unterminated last line of ``markers.jsonl``. Resuming appends to the same files; the
time between runs is a timestamp gap, which epoching treats like any other gap.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtmoe.errors import UserError

SESSION_FILE = "session.json"
EEG_FILE = "eeg.f32"
TIMES_FILE = "times.f64"
MARKERS_FILE = "markers.jsonl"
#: At most this long between fsyncs of the appended files (a flush happens every chunk).
FSYNC_PERIOD_S = 1.0


class SessionError(UserError, ValueError):
    """A session folder is missing, corrupt or does not fit the stream it is resumed with."""


@dataclass(frozen=True)
class RecordedSession:
    """Everything a session holds, read back.

    Not a `rtmoe.recording.Recording`: every sample carries its LSL timestamp and the
    markers sit at LSL times, as they arrived, not on sample indices.

    Attributes
    ----------
    data : ndarray, shape (n_chans, n_samples), float32, µV
        Channel-first view of the samples (memory-mapped, read-only).
    times : ndarray, shape (n_samples,), float64
        LSL timestamps in seconds.
    marker_times : ndarray, shape (n_markers,), float64
    marker_labels : tuple of str
    ch_names : tuple of str
    sfreq : float
        Nominal rate of the stream, Hz.
    meta : dict
        The content of ``session.json``.
    """

    data: np.ndarray
    times: np.ndarray
    marker_times: np.ndarray
    marker_labels: tuple[str, ...]
    ch_names: tuple[str, ...]
    sfreq: float
    meta: dict[str, Any]

    @property
    def n_samples(self) -> int:
        return self.times.size


class Session:
    """An open session folder that samples and markers are appended to.

    Use `Session.create` for a new folder and `Session.open` to resume one; close it
    (or use it as a context manager) so the last samples reach the disk.

    Attributes
    ----------
    path : Path
    meta : dict
        ``session.json``: ``subject``, ``ch_names``, ``sfreq``, ``source``, ``runs`` ...
    n_samples, n_markers : int
        What the session holds so far (all runs).
    """

    def __init__(self, path: Path, meta: dict[str, Any], n_samples: int, n_markers: int) -> None:
        self.path = path
        self.meta = meta
        self.n_chans = len(meta["ch_names"])
        self.n_samples = n_samples
        self.n_markers = n_markers
        self._eeg = open(path / EEG_FILE, "ab")
        self._times = open(path / TIMES_FILE, "ab")
        self._markers = open(path / MARKERS_FILE, "a")
        self._last_sync = time.monotonic()
        self._run: dict[str, Any] | None = None

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        subject: str,
        ch_names: Sequence[str],
        sfreq: float,
        source: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> Session:
        """Start a new, empty session folder (it must not exist or be empty).

        Parameters
        ----------
        path : str or Path
        subject : str
        ch_names : sequence of str
            The stream's channel labels, in stream order.
        sfreq : float
            The stream's nominal rate in Hz.
        source : dict
            How the data arrive (``{"kind": "lsl", "name": ...}`` or
            ``{"kind": "file", "path": ..., "size": ...}``); a resume must match it.
        extra : dict, optional
            More JSON-serialisable settings to keep (model, classes, window).
        """
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise SessionError(
                f"session folder {path} exists and is not empty; resume it with "
                "Session.open or choose another folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": 1,
            "subject": subject,
            "ch_names": list(ch_names),
            "sfreq": float(sfreq),
            "source": source,
            "created_utc": _now(),
            "runs": [],
            **(extra or {}),
        }
        _write_json_atomic(path / SESSION_FILE, meta)
        for name in (EEG_FILE, TIMES_FILE, MARKERS_FILE):
            (path / name).touch()
        return cls(path, meta, 0, 0)

    @classmethod
    def open(cls, path: str | Path) -> Session:
        """Reopen a session to append to it, repairing a half-written last chunk."""
        path = Path(path)
        meta = read_meta(path)
        n_chans = len(meta["ch_names"])
        n_samples = min(
            (path / EEG_FILE).stat().st_size // (4 * n_chans),
            (path / TIMES_FILE).stat().st_size // 8,
        )
        # Truncate to whole samples that both files hold (a crash mid-append).
        os.truncate(path / EEG_FILE, n_samples * 4 * n_chans)
        os.truncate(path / TIMES_FILE, n_samples * 8)
        n_markers = _repair_markers(path / MARKERS_FILE)
        return cls(path, meta, n_samples, n_markers)

    def check_stream(self, ch_names: Sequence[str], sfreq: float) -> None:
        """Refuse to resume with a stream whose channels or rate differ from the session's."""
        ours = list(self.meta["ch_names"])
        if list(ch_names) != ours or not math.isclose(sfreq, self.meta["sfreq"]):
            raise SessionError(
                f"session {self.path} was recorded from channels {ours} at "
                f"{self.meta['sfreq']:g} Hz, but the stream has {list(ch_names)} at {sfreq:g} "
                "Hz; resume with the same stream, or start a new session (--new-session)"
            )

    def begin_run(self, description: dict[str, Any]) -> None:
        """Note the start of a recording run (the first, or a resume) in ``session.json``."""
        self._run = {
            "started_utc": _now(),
            "first_sample": self.n_samples,
            "first_marker": self.n_markers,
            **description,
        }
        self.meta["runs"].append(self._run)
        _write_json_atomic(self.path / SESSION_FILE, self.meta)

    def append(self, data: np.ndarray, times: np.ndarray) -> None:
        """Append one chunk.

        Parameters
        ----------
        data : ndarray, shape (n_chans, k), µV
            Channel-first, as `rtmoe.stream.lsl.LslSource.pull` returns it.
        times : ndarray, shape (k,), float64
            LSL timestamps.
        """
        if data.shape != (self.n_chans, times.size):
            raise ValueError(
                f"data has shape {data.shape} and times {times.shape}; expected "
                f"({self.n_chans}, k) and (k,) for this session's {self.n_chans} channels"
            )
        if not times.size:
            return
        self._eeg.write(np.ascontiguousarray(data.T, dtype=np.float32).tobytes())
        self._times.write(np.asarray(times, dtype=np.float64).tobytes())
        self._eeg.flush()
        self._times.flush()
        self.n_samples += times.size
        self._maybe_sync()

    def add_marker(self, t: float, label: str) -> None:
        """Append one marker (LSL time in seconds, label text)."""
        self._markers.write(json.dumps({"t": float(t), "label": str(label)}) + "\n")
        self._markers.flush()
        self.n_markers += 1
        self._maybe_sync()

    def close(self, **summary: Any) -> None:
        """Flush and fsync everything; record how the run ended in ``session.json``."""
        for f in (self._eeg, self._times, self._markers):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        if self._run is not None:
            self._run.update(
                stopped_utc=_now(),
                n_samples=self.n_samples - self._run["first_sample"],
                n_markers=self.n_markers - self._run["first_marker"],
                **summary,
            )
            _write_json_atomic(self.path / SESSION_FILE, self.meta)
            self._run = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _maybe_sync(self) -> None:
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_PERIOD_S:
            for f in (self._eeg, self._times, self._markers):
                os.fsync(f.fileno())
            self._last_sync = now


def read_meta(path: str | Path) -> dict[str, Any]:
    """``session.json`` of a session folder."""
    path = Path(path)
    try:
        return json.loads((path / SESSION_FILE).read_text())
    except FileNotFoundError:
        raise SessionError(
            f"{path} is not a calibration session (no {SESSION_FILE}); pass a folder "
            "written by `rtmoe calibrate`"
        ) from None


def read_session(path: str | Path) -> RecordedSession:
    """Read a session back (samples memory-mapped), ignoring a half-written last chunk."""
    path = Path(path)
    meta = read_meta(path)
    ch_names = tuple(meta["ch_names"])
    n_chans = len(ch_names)
    n = min(
        (path / EEG_FILE).stat().st_size // (4 * n_chans), (path / TIMES_FILE).stat().st_size // 8
    )
    if n:
        eeg = np.memmap(path / EEG_FILE, np.float32, "r", shape=(n, n_chans))
        times = np.array(np.memmap(path / TIMES_FILE, np.float64, "r", shape=(n,)))
    else:
        eeg, times = np.zeros((0, n_chans), np.float32), np.zeros(0)
    marker_times, labels = [], []
    for line in (path / MARKERS_FILE).read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a marker cut by a crash
        entry = json.loads(line)
        marker_times.append(entry["t"])
        labels.append(entry["label"])
    return RecordedSession(
        data=eeg.T,
        times=times,
        marker_times=np.asarray(marker_times, dtype=np.float64),
        marker_labels=tuple(labels),
        ch_names=ch_names,
        sfreq=float(meta["sfreq"]),
        meta=meta,
    )


def _repair_markers(path: Path) -> int:
    """Drop an unterminated last line; returns the number of whole markers."""
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    return text.count("\n")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
