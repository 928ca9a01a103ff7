"""Reading user recordings (EDF, BDF, FIF, BrainVision, EEGLAB) through MNE, EEG only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rtmoe.offline.corpus import FILE_FIX, InputError

from rtmoe.recording import Recording
from rtmoe.signal import ChannelError, map_channels

#: File endings read as recordings. BrainVision is read from its header (.vhdr), which
#: names the .eeg/.vmrk files beside it; EEGLAB's .set may point at a .fdt.
RECORDING_EXTENSIONS: tuple[str, ...] = (".edf", ".bdf", ".fif", ".fif.gz", ".vhdr", ".set")


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
        Electrodes to keep, in this order and under these names, matched as in
        ``preprocess.select_channels``; only they are loaded, which bounds memory.

    Returns
    -------
    Recording
        The one `rtmoe.recording.Recording` type: ``data`` (n_chans, n_times) float64
        in µV of the EEG channels only (or of ``channels``), ``source`` the file path.

    Raises
    ------
    InputError
        Unreadable or non-EEG file, no EEG channels, missing ``channels``, a
        non-positive sampling rate, or non-finite samples; the message names the file
        and the fix.
    """
    import mne

    path = Path(path)
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
    return Recording(data=data, sfreq=sfreq, ch_names=ch_names, source=str(path))
