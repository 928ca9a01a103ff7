"""From a recording to pretraining segments: channel selection and the signal chain
(`rtmoe.signal`), then trimming, windowing and amplitude rejection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from rtmoe.config import CorpusConfig, SignalConfig
from rtmoe.recording import FILE_FIX, InputError, Recording
from rtmoe.signal import ChannelError, map_channels, preprocess_recording


def select_channels(rec: Recording, channels: Sequence[str]) -> Recording:
    """Keep ``channels``, in that order and under those names.

    Names match as everywhere (`rtmoe.signal.map_channels`: "EEG FP1-REF" is FP1, T7 is
    T3).

    Parameters
    ----------
    rec : Recording
    channels : sequence of str, length n_out

    Returns
    -------
    Recording
        ``data`` (n_out, n_times), ``ch_names`` = ``tuple(channels)``.

    Raises
    ------
    InputError
        Channels are missing or ambiguous; the message names the file.
    """
    try:
        rows = map_channels(rec.ch_names, channels, fix=FILE_FIX)
    except ChannelError as err:
        raise InputError(f"{rec.source}: {err}") from None
    return replace(rec, data=rec.data[rows], ch_names=tuple(channels))


def check_sfreq(rec: Recording, cfg: SignalConfig) -> None:
    """Refuse a recording whose native rate cannot carry the band ``cfg`` keeps.

    The native Nyquist frequency must exceed ``cfg.h_freq`` (or, without a low-pass,
    reach ``cfg.sfreq / 2``): upsampling cannot restore content the file never held.

    Raises
    ------
    InputError
        The message names the file, its rate and the two fixes.
    """
    needed = 2 * cfg.h_freq if cfg.h_freq is not None else cfg.sfreq
    ok = rec.sfreq > needed if cfg.h_freq is not None else rec.sfreq >= needed
    if not ok:
        what = f"signal.h_freq={cfg.h_freq} Hz" if cfg.h_freq is not None else "no low-pass"
        raise InputError(
            f"{rec.source}: sampled at {rec.sfreq:g} Hz, too low for {what} (needs "
            f"{'above' if cfg.h_freq is not None else 'at least'} {needed:g} Hz); lower "
            f"signal.h_freq below {rec.sfreq / 2:g} Hz or drop the recording"
        )


def preprocess(rec: Recording, cfg: SignalConfig) -> np.ndarray:
    """A recording through the signal chain (`rtmoe.signal.preprocess_recording`).

    Returns
    -------
    ndarray, shape (n_chans, ceil(n_times * cfg.sfreq / rec.sfreq)), float32, model units
    """
    return preprocess_recording(rec.data, rec.sfreq, cfg)[0]


def keep_mask(segments: np.ndarray, reject_uv: float | None, unit_uv: float) -> np.ndarray:
    """Amplitude rejection: False where a segment's max |x| reaches ``reject_uv``.

    Parameters
    ----------
    segments : ndarray, shape (n_segments, n_chans, n_times), model units
    reject_uv : float or None
        Threshold in µV; ``None`` keeps every segment.
    unit_uv : float
        µV per model unit.

    Returns
    -------
    ndarray, shape (n_segments,), bool
    """
    if reject_uv is None:
        return np.ones(len(segments), dtype=bool)
    return np.abs(segments).max(axis=(1, 2)) < reject_uv / unit_uv


class Segments(NamedTuple):
    """What ``segment`` returns; unpacks as ``segments, n_rejected, skip_reason``."""

    segments: np.ndarray  # (n_segments, n_chans, n_times) float32
    n_rejected: int  # windows dropped by amplitude rejection
    skip_reason: str | None  # why the whole recording gave no windows, else None


def segment(x: np.ndarray, sfreq: float, corpus: CorpusConfig, *, unit_uv: float) -> Segments:
    """Cut a preprocessed recording into non-overlapping pretraining windows.

    ``corpus.trim_s`` is dropped at both ends; recordings shorter than
    ``corpus.min_recording_s`` are skipped; windows whose max |x| reaches
    ``corpus.reject_uv / unit_uv`` are rejected (``reject_uv=None`` keeps all).

    Parameters
    ----------
    x : ndarray, shape (n_chans, n_times), model units
    sfreq : float, Hz
    corpus : CorpusConfig
    unit_uv : float
        µV per model unit (``SignalConfig.unit_uv``), to express ``reject_uv`` in the
        units of ``x``.

    Returns
    -------
    Segments
        ``segments`` (n_segments, n_chans, round(segment_s * sfreq)) float32, a copy.
    """
    n_chans, n_times = x.shape
    n_seg = round(corpus.segment_s * sfreq)
    empty = np.empty((0, n_chans, n_seg), dtype=np.float32)
    duration_s = n_times / sfreq
    if duration_s < corpus.min_recording_s:
        return Segments(
            empty,
            0,
            f"{duration_s:.1f} s, shorter than corpus.min_recording_s={corpus.min_recording_s:g}",
        )
    n_trim = round(corpus.trim_s * sfreq)
    usable = x[:, n_trim : n_times - n_trim]
    n_windows = usable.shape[-1] // n_seg
    if n_windows == 0:
        return Segments(
            empty,
            0,
            f"{duration_s:.1f} s leaves no {corpus.segment_s:g} s window after trimming "
            f"{corpus.trim_s:g} s at both ends",
        )
    windows = usable[:, : n_windows * n_seg].reshape(n_chans, n_windows, n_seg)
    windows = windows.transpose(1, 0, 2)
    keep = keep_mask(windows, corpus.reject_uv, unit_uv)
    kept = np.ascontiguousarray(windows[keep], dtype=np.float32)
    return Segments(kept, int(n_windows - keep.sum()), None)
