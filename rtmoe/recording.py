"""The one in-memory recording type: EEG samples, their rate and names, and markers.

Every reader returns it: `rtmoe.stream.replay.load_replay` (a file to replay as live
streams, annotations as markers), `rtmoe.offline.corpus.readers.read_recording` (a file
of a pretraining corpus); `rtmoe.stream.player.Player` streams it. Numpy only, so the
trunk and every satellite can import it without torch, MNE or LSL.

Calibration sessions are not recordings of this kind: they carry an LSL timestamp per
sample and markers at LSL times (`rtmoe.calibration.session.RecordedSession`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Marker(NamedTuple):
    """One event: its onset in seconds from the first sample, on a sample, and its label."""

    onset_s: float
    label: str


@dataclass(frozen=True)
class Recording:
    """One continuous recording held in memory.

    Attributes
    ----------
    data : ndarray, shape (n_chans, n_times), float32 or float64, µV
        Channel-first. Readers for replay give float32 (what LSL carries); the corpus
        reader float64 (what its preprocessing computes in).
    sfreq : float, Hz
    ch_names : tuple of str, length n_chans
    markers : tuple of Marker, sorted by onset; every onset is ``index / sfreq`` for a
        sample index inside the recording
    source : str, where it came from (the file path; named in every message about it)
    """

    data: np.ndarray
    sfreq: float
    ch_names: tuple[str, ...]
    markers: tuple[Marker, ...] = ()
    source: str = "<array>"

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.dtype not in (np.float32, np.float64):
            raise ValueError(
                f"data has shape {self.data.shape} and dtype {self.data.dtype}; a Recording "
                "needs float32 or float64 (n_chans, n_times) in µV"
            )
        if self.data.shape[0] != len(self.ch_names):
            raise ValueError(
                f"data has {self.data.shape[0]} channels but ch_names has "
                f"{len(self.ch_names)}; give one name per row of data"
            )
        if not self.sfreq > 0:
            raise ValueError(f"sfreq={self.sfreq} must be a positive rate in Hz")
        if self.n_times == 0:
            raise ValueError(f"{self.source}: the recording has no samples")
        for marker in self.markers:
            if not 0 <= marker_sample(marker, self.sfreq) < self.n_times:
                raise ValueError(
                    f"{self.source}: marker {marker} lies outside the recording "
                    f"(0 to {self.duration_s:g} s); drop it or fix its onset"
                )

    @property
    def n_chans(self) -> int:
        return self.data.shape[0]

    @property
    def n_times(self) -> int:
        return self.data.shape[1]

    @property
    def duration_s(self) -> float:
        return self.n_times / self.sfreq


def marker_sample(marker: Marker, sfreq: float) -> int:
    """Index of the sample a marker sits on."""
    return round(marker.onset_s * sfreq)
