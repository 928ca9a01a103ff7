"""Recordings: the one in-memory type and the one file reader.

`read_recording` reads any EDF, BDF, FIF, BrainVision or EEGLAB file through MNE (imported
when called) into a `Recording`: EEG channels in µV, annotations as markers. The corpus
builder (``rtmoe prepare``), the player (``rtmoe play``, the demo), calibration from a file
and the benches all read files through it. Numpy only at import, so the trunk and every
satellite can import it without torch, MNE or LSL.

Calibration sessions are not recordings of this kind: they carry an LSL timestamp per
sample and markers at LSL times (`rtmoe.calibration.session.RecordedSession`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rtmoe.errors import MissingFileError, UserError
from rtmoe.signal.channels import ChannelError, map_channels

#: File endings read as recordings. BrainVision is read from its header (.vhdr), which
#: names the .eeg/.vmrk files beside it; EEGLAB's .set may point at a .fdt.
RECORDING_EXTENSIONS: tuple[str, ...] = (".edf", ".bdf", ".fif", ".fif.gz", ".vhdr", ".set")
#: The fix a recording that lacks channels gets (`rtmoe.signal.map_channels`).
FILE_FIX = "use recordings with these electrodes or change corpus.channels"


class InputError(UserError, ValueError):
    """A bad input file or folder; the message names the file and the fix."""


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
        Channel-first. `read_recording` gives float64; the player sends float32 (what
        LSL carries).
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
            raise InputError(f"{self.source}: the recording has no samples")
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


def is_recording(path: Path) -> bool:
    """Whether ``path``'s name ends in one of ``RECORDING_EXTENSIONS`` (not a dotfile)."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(RECORDING_EXTENSIONS)


def find_recordings(root: str | Path) -> list[Path]:
    """Recordings under ``root``, searched recursively, sorted; a file is returned as is.

    Raises
    ------
    InputError
        ``root`` does not exist, is a file of another format, or a folder without
        recordings.
    """
    root = Path(root)
    accepted = ", ".join(RECORDING_EXTENSIONS)
    if root.is_file():
        if not is_recording(root):
            raise InputError(f"{root}: not a recording file; accepted extensions: {accepted}")
        return [root]
    if not root.is_dir():
        raise InputError(f"{root} does not exist; give a recording file or a folder of them")
    found = sorted(p for p in root.rglob("*") if p.is_file() and is_recording(p))
    if not found:
        raise InputError(
            f"{root}: no recordings found (searched recursively for {accepted}); "
            "point at the folder that holds them"
        )
    return found


def read_recording(path: str | Path, channels: Sequence[str] | None = None) -> Recording:
    """Read the EEG channels of one recording (or only ``channels``), in µV.

    Parameters
    ----------
    path : str or Path
        An EDF, BDF, FIF, BrainVision (.vhdr) or EEGLAB (.set) file. EDF/BDF channels
        are all typed EEG by MNE (their labels carry no reliable type), so select the
        electrodes by name (``channels``).
    channels : sequence of str, optional
        Electrodes to keep, in this order and under these names, matched by
        `rtmoe.signal.map_channels`; only they are loaded, which bounds memory.

    Returns
    -------
    Recording
        ``data`` (n_chans, n_times) float64 in µV of the EEG channels only (or of
        ``channels``); one `Marker` per annotation inside the recording (those outside
        are dropped with a warning); ``source`` the file path.

    Raises
    ------
    MissingFileError
        ``path`` does not exist (a ``FileNotFoundError`` too).
    InputError
        Unreadable or non-EEG file, no EEG channels, missing ``channels``, a
        non-positive sampling rate, or non-finite samples; the message names the file
        and the fix.
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; give a recording file MNE can read")
    if not is_recording(path):
        raise InputError(
            f"{path}: unsupported file type; accepted extensions: {', '.join(RECORDING_EXTENSIONS)}"
        )
    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
        picks = mne.pick_types(raw.info, eeg=True, exclude=[])
    except Exception as err:  # MNE raises many types for corrupt or foreign files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{path}: cannot be read as EEG ({type(err).__name__}: {reason}); check that "
            "the file is a complete EDF/BDF/FIF/BrainVision/EEGLAB recording or remove it"
        ) from err
    if not len(picks):
        types = sorted(set(raw.get_channel_types()))
        raise InputError(
            f"{path}: no EEG channels (channel types: {types}); set the EEG channels' "
            "type in the file or remove it from the input"
        )
    sfreq = float(raw.info["sfreq"])
    if not sfreq > 0:
        raise InputError(f"{path}: sampling rate {sfreq} Hz is invalid; repair the header")
    ch_names = tuple(raw.ch_names[i] for i in picks)
    if channels is not None:
        try:
            picks = picks[map_channels(ch_names, channels, fix=FILE_FIX)]
        except ChannelError as err:
            raise InputError(f"{path}: {err}") from None
        ch_names = tuple(channels)
    try:
        data = raw.get_data(picks=picks, units="uV")
    except Exception as err:  # truncated data blocks surface only here
        raise InputError(
            f"{path}: its samples cannot be read ({type(err).__name__}: {err}); the file "
            "is truncated or corrupt: re-export it or remove it from the input"
        ) from err
    bad = ~np.isfinite(data)
    if bad.any():
        chans = [ch_names[i] for i in np.flatnonzero(bad.any(axis=1))]
        raise InputError(
            f"{path}: {int(bad.sum())} non-finite samples (NaN/inf) in channels {chans}; "
            "repair or interpolate them, or remove the recording from the input"
        )
    return Recording(data, sfreq, ch_names, _markers(raw, path), str(path))


def _markers(raw, path: Path) -> tuple[Marker, ...]:
    """One marker per annotation inside the recording, on the sample nearest its onset."""
    annotations = raw.annotations
    # Onsets may count from the measurement date, not from the first sample: MNE's
    # time_as_index resolves that against the raw's own first sample.
    onsets = raw.time_as_index(annotations.onset, use_rounding=True, origin=annotations.orig_time)
    inside = (onsets >= 0) & (onsets < raw.n_times)
    if not inside.all():
        warnings.warn(
            f"{path}: {int((~inside).sum())} annotation(s) outside the recording dropped",
            stacklevel=3,
        )
    sfreq = float(raw.info["sfreq"])
    labels = annotations.description[inside]
    markers = (
        Marker(int(i) / sfreq, str(label)) for i, label in zip(onsets[inside], labels, strict=True)
    )
    return tuple(sorted(markers, key=lambda marker: marker.onset_s))
