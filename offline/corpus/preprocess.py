"""From a recording to pretraining segments: channel selection, resampling, causal
filtering, scaling to model units, trimming, windowing and amplitude rejection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from rtmoe.offline.corpus import InputError
from rtmoe.offline.corpus.channels import match_channels
from rtmoe.offline.corpus.readers import Recording
from rtmoe.config import CorpusConfig, SignalConfig
from rtmoe.dsp.filters import apply_filter, design_filter, filter_state, resample


def select_channels(rec: Recording, channels: Sequence[str]) -> Recording:
    """Keep ``channels``, in that order and under those names.

    Names match case-insensitively after ``rtmoe.runtime.channels.canonical_name`` on both
    sides (so "EEG FP1-REF" is FP1 and T7 is T3).

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
        Channels are missing or two of the file's channels match the same name.
    """
    rows = match_channels(rec.ch_names, channels, rec.path)
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
            f"{rec.path}: sampled at {rec.sfreq:g} Hz, too low for {what} (needs "
            f"{'above' if cfg.h_freq is not None else 'at least'} {needed:g} Hz); lower "
            f"signal.h_freq below {rec.sfreq / 2:g} Hz or drop the recording"
        )


def preprocess_array(x: np.ndarray, sfreq: float, cfg: SignalConfig) -> np.ndarray:
    """Resample to ``cfg.sfreq``, filter causally, divide by ``cfg.unit_uv``.

    Every row is independent, so stacked trials (n_trials * n_chans rows) work too.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_times), µV
    sfreq : float, Hz, the rate of ``x``
    cfg : SignalConfig

    Returns
    -------
    ndarray, shape (n_rows, n_times_out), float32, model units (µV / unit_uv)
    """
    y = resample(np.asarray(x, dtype=np.float64), sfreq, cfg.sfreq)
    sos = design_filter(cfg)
    # Start from the steady state at the first sample: no step transient from the offset.
    y, _ = apply_filter(y, sos, filter_state(sos, y.shape[0], initial=y[:, 0]))
    return (y / cfg.unit_uv).astype(np.float32)


def preprocess(rec: Recording, cfg: SignalConfig) -> np.ndarray:
    """Preprocess a recording into model units (see ``preprocess_array``).

    Returns
    -------
    ndarray, shape (n_chans, n_times_out), float32; n_times_out =
    ceil(n_times * cfg.sfreq / rec.sfreq)
    """
    return preprocess_array(rec.data, rec.sfreq, cfg)


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
