"""Recordings to replay as live streams: any file MNE reads, with its annotations as markers.

The runtime reads files itself (``rtmoe`` never imports ``offline``), so this is a small
reader of its own: EEG channels in µV as float32, plus one marker per annotation, as the
one `rtmoe.recording.Recording` type (the corpus reader returns the same type).
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from rtmoe.recording import Marker, Recording

#: The shipped demo recording (see rtmoe/data/README.md), named as MNE expects.
DEMO_FILENAME = "demo_scp1_eeg.fif.gz"


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


def load_replay(path: str | Path) -> Recording:
    """Read a recording's EEG channels and its annotations.

    Parameters
    ----------
    path : str or Path
        Any file ``mne.io.read_raw`` reads (FIF, EDF, BDF, BrainVision .vhdr, EEGLAB
        .set, ...), e.g. the demo at `demo_recording_path`. EDF/BDF channels are all
        typed EEG by MNE, so every channel of those files is kept.

    Returns
    -------
    Recording
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
    return Recording(
        data=data,
        sfreq=sfreq,
        ch_names=tuple(raw.ch_names[i] for i in picks),
        markers=tuple(markers),
        source=str(path),
    )
