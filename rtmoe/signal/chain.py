"""The live preprocessing chain with its state: map → repair → resample → filter → scale.

Order. Channels are picked by name first (`rtmoe.runtime.channels`), non-finite samples
are repaired, then the stream is resampled to the model's rate (causal polyphase FIR,
`rtmoe.dsp.resample_stream`) and only then filtered with ``design_filter(signal)``, the
model's own causal filter at the model's rate: the filter is then exactly the one the
model was trained with, whatever the stream's rate (a 50 Hz notch designed for 128 Hz
input would not even exist), and it runs on fewer samples. Last, signals are divided by
``signal.unit_uv`` into model units.

Non-finite samples (NaN/inf; amplifiers send them for a lost electrode contact), and
absurd ones (``|x| > max_abs_uv``, default `MAX_ABS_UV`: a corrupt float such as 3e38
would overflow the filters), are replaced by the channel's last good value (zero before
the first one) and counted; a decode never sees them and the run never stops for them.

Continuity. `reset` makes the next sample start a new segment: the resampler's history
and the filter's state are set to their steady state for that sample (no step transient
from a µV offset), exactly as at the very first sample. `preprocess_whole` applies the
same chain to a whole recording in one call; the live chain equals it on every segment.
"""

from __future__ import annotations

import numpy as np

from rtmoe.config import SignalConfig
from rtmoe.dsp.filters import apply_filter, design_filter, filter_state
from rtmoe.dsp.resample_stream import (
    ResampleState,
    apply_resample,
    design_resampler,
    resample_state,
)
from rtmoe.profiles import apply_alignment

#: Largest plausible magnitude of a raw sample, µV (1 V): far beyond EEG and the DC
#: offsets of DC-coupled amplifiers (hundreds of mV), far below float overflow.
MAX_ABS_UV = 1e6


def continuity_breaks(
    times: np.ndarray, max_gap_s: float, previous: float = float("nan")
) -> np.ndarray:
    """Indices of ``times`` where a new continuous segment starts.

    A segment starts where the step from the previous timestamp (``previous`` before
    ``times[0]``; NaN: none) exceeds ``max_gap_s`` or goes backwards. The live loop and
    calibration share this rule, so both restart the preprocessing at the same samples.
    """
    steps = np.diff(times, prepend=previous)
    return np.flatnonzero((steps > max_gap_s) | (steps < 0))


class StreamPreprocessor:
    """Turns raw stream chunks into model-rate, model-unit samples, carrying state.

    Parameters
    ----------
    index : ndarray, shape (n_chans,), int
        Stream row of each model channel, -1 for a channel filled with zeros.
    sfreq_in : float
        The stream's nominal rate, Hz.
    signal : SignalConfig
        The model's preprocessing (``sfreq`` is the output rate).
    alignment : ndarray, shape (n_chans, n_chans), optional
        A subject's channel alignment (``rtmoe.profiles``), applied last.
    max_abs_uv : float
        Raw samples beyond this magnitude (µV) are repaired like non-finite ones.

    Attributes
    ----------
    n_nonfinite : int
        Non-finite or implausible (``|x| > max_abs_uv``) values replaced so far (over all
        model channels).
    n_resets : int
        Segments started after the first.
    """

    def __init__(
        self,
        index: np.ndarray,
        sfreq_in: float,
        signal: SignalConfig,
        alignment: np.ndarray | None = None,
        max_abs_uv: float = MAX_ABS_UV,
    ) -> None:
        self.index = np.asarray(index, dtype=np.int64)
        self.max_abs_uv = float(max_abs_uv)
        self.alignment = alignment
        self.n_chans = self.index.size
        self.signal = signal
        self.sos = design_filter(signal)
        self.resampler = design_resampler(sfreq_in, signal.sfreq)
        self._present = np.flatnonzero(self.index >= 0)
        self._rows = self.index[self._present]
        self._last_finite = np.zeros(self.n_chans)
        self._rs_state: ResampleState | None = None
        self._filter_state: np.ndarray | None = None
        self.n_nonfinite = 0
        self.n_resets = 0

    def reset(self) -> None:
        """Start a new segment with the next sample (after a gap or a stall)."""
        if self._rs_state is not None:
            self.n_resets += 1
        self._rs_state = None
        self._filter_state = None

    def process(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocess one chunk.

        Parameters
        ----------
        data : ndarray, shape (n_stream_chans, k), float32
            Raw stream samples (µV), channel-first.

        Returns
        -------
        y : ndarray, shape (n_chans, m), float32
            Model-rate samples in model units (``m`` may be 0).
        newest : ndarray, shape (m,), int64
            For each output sample, the index in ``data`` of the newest input it reads
            (its timestamp is that input's).
        """
        mapped = np.zeros((self.n_chans, data.shape[1]))
        mapped[self._present] = data[self._rows]
        # |NaN| <= bound is False: one test catches non-finite and absurd values alike.
        finite = np.abs(mapped) <= self.max_abs_uv
        if not finite.all():
            self.n_nonfinite += int(finite.size - np.count_nonzero(finite))
            mapped = _hold_last_finite(mapped, finite, self._last_finite)
        self._last_finite = mapped[:, -1].copy()
        if self._rs_state is None:
            self._rs_state = resample_state(self.resampler, self.n_chans, mapped[:, 0])
        resampled, newest, self._rs_state = apply_resample(mapped, self.resampler, self._rs_state)
        if resampled.shape[1] and self._filter_state is None:
            self._filter_state = filter_state(self.sos, self.n_chans, resampled[:, 0])
        if resampled.shape[1]:
            resampled, self._filter_state = apply_filter(resampled, self.sos, self._filter_state)
        # A subject's alignment mixes channels the same way at every sample, so applying
        # it per chunk equals applying it to every window (rtmoe.profiles).
        resampled = apply_alignment(resampled, self.alignment)
        return (resampled / self.signal.unit_uv).astype(np.float32), newest


def _hold_last_finite(x: np.ndarray, finite: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``x`` with every value not ``finite`` replaced by its channel's last good value."""
    positions = np.where(finite, np.arange(x.shape[1])[None, :], -1)
    last = np.maximum.accumulate(positions, axis=1)
    held = np.take_along_axis(x, np.maximum(last, 0), axis=1)
    return np.where(last >= 0, held, previous[:, None])


def preprocess_whole(
    data: np.ndarray, index: np.ndarray, sfreq_in: float, signal: SignalConfig
) -> np.ndarray:
    """The live chain applied to a whole recording at once (one segment).

    Parameters
    ----------
    data : ndarray, shape (n_stream_chans, n_times), µV
    index, sfreq_in, signal
        As in `StreamPreprocessor`.

    Returns
    -------
    ndarray, shape (n_chans, n_out), float32
        Equal to concatenating `StreamPreprocessor.process` over any chunking of ``data``.
    """
    return StreamPreprocessor(index, sfreq_in, signal).process(data)[0]
