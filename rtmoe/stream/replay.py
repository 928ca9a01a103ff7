"""Recordings to replay as live streams: any file MNE reads, with its annotations as markers.

The runtime reads files itself (``rtmoe`` never imports ``offline``), so this is a small
reader of its own: EEG channels in µV as float32, plus one marker per annotation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: The shipped demo recording (see rtmoe/data/README.md), named as MNE expects.
DEMO_FILENAME = "demo_scp1_eeg.fif.gz"


class Marker(NamedTuple):
    """One event: its onset in seconds from the first sample, on a sample, and its label."""

    onset_s: float
    label: str


@dataclass(frozen=True)
class Replay:
    """A recording held in memory, ready to stream.

    Attributes
    ----------
    data : ndarray, shape (n_chans, n_times), float32, µV
    sfreq : float, Hz
    ch_names : tuple of str, length n_chans
    markers : tuple of Marker, sorted by onset; every onset is ``index / sfreq`` for a
        sample index inside the recording
    source : str, where it came from (named in messages)
    """

    data: np.ndarray
    sfreq: float
    ch_names: tuple[str, ...]
    markers: tuple[Marker, ...] = ()
    source: str = "<array>"

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.dtype != np.float32:
            raise ValueError(
                f"data has shape {self.data.shape} and dtype {self.data.dtype}; a Replay "
                "needs float32 (n_chans, n_times) in µV"
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


def demo_recording_path() -> Path:
    """Path of the demo recording shipped with the package (SCP1 test trials).

    Raises
    ------
    FileNotFoundError
        The package was installed without its data files.
    """
    path = Path(str(resources.files("rtmoe") / "data" / DEMO_FILENAME))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this rtmoe installation lacks its package data; "
            "reinstall rtmoe (or rebuild it with offline/recipes/build_demo_recording.py)"
        )
    return path


def load_replay(path: str | Path) -> Replay:
    """Read a recording's EEG channels and its annotations.

    Parameters
    ----------
    path : str or Path
        Any file ``mne.io.read_raw`` reads (FIF, EDF, BDF, BrainVision .vhdr, EEGLAB
        .set, ...), e.g. the demo at `demo_recording_path`. EDF/BDF channels are all
        typed EEG by MNE, so every channel of those files is kept.

    Returns
    -------
    Replay
        EEG channels only, in µV as float32; one `Marker` per annotation inside the
        recording, on the sample nearest its onset, labelled with its description.
        Annotations outside the recording are dropped with a warning.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        MNE cannot read the file, it has no EEG channels or holds NaN/inf samples.
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a recording file MNE can read")
    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
        picks = mne.pick_types(raw.info, eeg=True, exclude=[])
        data = raw.get_data(picks=picks, units="uV").astype(np.float32) if len(picks) else None
    except Exception as err:  # MNE raises many types for unknown, corrupt or truncated files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path}: MNE cannot read it ({type(err).__name__}: {reason}); give an "
            "EEG recording in a format mne.io.read_raw supports"
        ) from err
    if data is None:
        types = sorted(set(raw.get_channel_types()))
        raise ValueError(
            f"{path}: no EEG channels (channel types: {types}); set the EEG channels' "
            "type in the file"
        )
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: NaN/inf samples; repair or interpolate them first")
    sfreq = float(raw.info["sfreq"])
    annotations = raw.annotations
    # Onsets may count from the measurement date, not from the first sample: MNE's
    # time_as_index resolves that against the raw's own first sample.
    onsets = raw.time_as_index(annotations.onset, use_rounding=True, origin=annotations.orig_time)
    inside = (onsets >= 0) & (onsets < raw.n_times)
    if not inside.all():
        warnings.warn(
            f"{path}: {int((~inside).sum())} annotation(s) outside the recording dropped",
            stacklevel=2,
        )
    markers = sorted(
        (
            Marker(int(i) / sfreq, str(label))
            for i, label in zip(onsets[inside], annotations.description[inside], strict=True)
        ),
        key=lambda marker: marker.onset_s,
    )
    return Replay(
        data=data,
        sfreq=sfreq,
        ch_names=tuple(raw.ch_names[i] for i in picks),
        markers=tuple(markers),
        source=str(path),
    )
