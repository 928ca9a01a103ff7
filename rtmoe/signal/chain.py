"""The preprocessing chain, one implementation for training and live decoding.

map → repair → resample → filter → align → scale. Channels are picked by name
(`rtmoe.signal.channels`); non-finite samples, and absurd ones (``|x| > max_abs_uv``,
default `MAX_ABS_UV`: a corrupt float such as 3e38 would overflow the filters), are
replaced by the channel's last good value (zero before the first one) and counted; then
the signal is resampled to the model's rate (causal polyphase FIR,
`rtmoe.dsp.resample_stream`) and only then filtered with ``design_filter(signal)`` at the
model's rate: the filter is exactly the one the model was trained with whatever the
input's rate, and runs on fewer samples. A subject's alignment (calibration) mixes the
channels, and last the signal is divided by ``signal.unit_uv`` into model units.

Causal everywhere. Resampler and filters only read past samples, offline as live:
`SignalChain` is the streaming form, and `preprocess_recording` / `preprocess_trials`,
what ``rtmoe prepare``, ``finetune``, ``evaluate`` and ``calibrate`` use, are *defined*
as that streaming form run over a whole recording (or each trial as one segment). A
training window is therefore the very samples a live window ending at the same input
sample holds, and each output sample carries the timestamp of the newest input it reads.
The price is a content lag: the resampler's group delay, `resampler_delay_s` (50 ms for
256 → 200 Hz; 0 when the rates are equal), plus the IIR filters' frequency-dependent
delay. Training learned from windows with the same lag, so it costs no accuracy, only
latency, and docs/protocol.md states it.

Continuity. `SignalChain.reset` makes the next sample start a new segment: the
resampler's history and the filters' state are set to their steady state for that sample
(no step transient from a µV offset), exactly as at the very first sample.
"""

from __future__ import annotations

import numpy as np

from rtmoe.config import SignalConfig
from rtmoe.dsp.filters import apply_filter, design_filter, filter_state
from rtmoe.dsp.resample_stream import (
    HALF_LEN_FACTOR,
    ResampleState,
    apply_resample,
    design_resampler,
    resample_state,
)
from rtmoe.signal.alignment import apply_alignment

#: Largest plausible magnitude of a raw sample, µV (1 V): far beyond EEG and the DC
#: offsets of DC-coupled amplifiers (hundreds of mV), far below float overflow.
MAX_ABS_UV = 1e6
#: Input samples per block when a whole recording runs through the streaming form (bounds
#: the resampler's working memory; any block size gives the same samples).
BLOCK_SAMPLES = 16384


def continuity_breaks(
    times: np.ndarray, max_gap_s: float, previous: float = float("nan")
) -> np.ndarray:
    """Indices of ``times`` where a new continuous segment starts.

    A segment starts where the step from the previous timestamp (``previous`` before
    ``times[0]``; NaN: none) exceeds ``max_gap_s`` or goes backwards. The live loop and
    calibration share this rule, so both restart the chain at the same samples.
    """
    steps = np.diff(times, prepend=previous)
    return np.flatnonzero((steps > max_gap_s) | (steps < 0))


def resampler_delay_s(sfreq_in: float, sfreq_out: float) -> float:
    """Group delay of the chain's resampler, s: ``HALF_LEN_FACTOR * max(up, down)``
    upsampled samples (0 when the rates are equal)."""
    design = design_resampler(sfreq_in, sfreq_out)
    if design.up == design.down == 1:
        return 0.0
    return HALF_LEN_FACTOR * max(design.up, design.down) / (design.up * sfreq_in)


class SignalChain:
    """Turns raw chunks into model-rate, model-unit samples, carrying state between them.

    Parameters
    ----------
    index : ndarray, shape (n_chans,), int
        Input row of each model channel (`map_channels`), -1 for a channel fed zeros.
    sfreq_in : float
        The input's nominal rate, Hz.
    signal : SignalConfig
        The model's preprocessing (``sfreq`` is the output rate).
    alignment : ndarray, shape (n_chans, n_chans), optional
        A subject's channel alignment (``rtmoe.profiles``).
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
        data : ndarray, shape (n_input_chans, k)
            Raw samples (µV), channel-first.

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
        if data.shape[1]:
            self._last_finite = mapped[:, -1].copy()
        if self._rs_state is None:
            if not data.shape[1]:
                return np.zeros((self.n_chans, 0), np.float32), np.zeros(0, np.int64)
            self._rs_state = resample_state(self.resampler, self.n_chans, mapped[:, 0])
        resampled, newest, self._rs_state = apply_resample(mapped, self.resampler, self._rs_state)
        if resampled.shape[1] and self._filter_state is None:
            self._filter_state = filter_state(self.sos, self.n_chans, resampled[:, 0])
        if resampled.shape[1]:
            resampled, self._filter_state = apply_filter(resampled, self.sos, self._filter_state)
        resampled = apply_alignment(resampled, self.alignment)
        return (resampled / self.signal.unit_uv).astype(np.float32), newest


def _hold_last_finite(x: np.ndarray, finite: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``x`` with every value not ``finite`` replaced by its channel's last good value."""
    positions = np.where(finite, np.arange(x.shape[1])[None, :], -1)
    last = np.maximum.accumulate(positions, axis=1)
    held = np.take_along_axis(x, np.maximum(last, 0), axis=1)
    return np.where(last >= 0, held, previous[:, None])


def run_chain(chain: SignalChain, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``chain.process`` over ``data`` in blocks of `BLOCK_SAMPLES`, concatenated.

    Returns
    -------
    y : ndarray, shape (n_chans, n_out), float32
    newest : ndarray, shape (n_out,), int64
        Index in ``data`` of the newest input each output sample reads.
    """
    data = np.asarray(data)
    ys, newest = [], []
    for start in range(0, max(data.shape[1], 1), BLOCK_SAMPLES):
        y, idx = chain.process(data[:, start : start + BLOCK_SAMPLES])
        ys.append(y)
        newest.append(idx + start)
    return np.concatenate(ys, axis=1), np.concatenate(newest)


def preprocess_recording(
    data: np.ndarray,
    sfreq: float,
    signal: SignalConfig,
    index: np.ndarray | None = None,
    alignment: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole recording through the chain as one continuous segment.

    Parameters
    ----------
    data : ndarray, shape (n_input_chans, n_times), µV
    sfreq : float
        Rate of ``data``, Hz.
    signal : SignalConfig
    index : ndarray, shape (n_chans,), optional
        As in `SignalChain`; default every row in order.
    alignment : ndarray, optional
        As in `SignalChain`.

    Returns
    -------
    y : ndarray, shape (n_chans, ceil(n_times * signal.sfreq / sfreq)), float32
        Equal to concatenating `SignalChain.process` over any chunking of ``data``.
    newest : ndarray, shape (n_out,), int64
        Index in ``data`` of the newest input each output sample reads: output ``j``
        has the timestamp of input ``newest[j]``, as live.
    """
    data = np.asarray(data)
    if index is None:
        index = np.arange(data.shape[0])
    return run_chain(SignalChain(index, sfreq, signal, alignment), data)


def preprocess_trials(X: np.ndarray, sfreq: float, signal: SignalConfig) -> np.ndarray:
    """Each trial through the chain as its own segment (fine-tuning and evaluation).

    Every row of the chain is independent of the others (no alignment here), so the
    trials run stacked as ``n_trials * n_chans`` rows in one chain.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times) or (n_rows, n_times), µV
    sfreq : float
        Rate of ``X``, Hz.
    signal : SignalConfig

    Returns
    -------
    ndarray, shape (..., ceil(n_times * signal.sfreq / sfreq)), float32, model units
    """
    X = np.asarray(X)
    if X.ndim not in (2, 3):
        raise ValueError(f"X has shape {X.shape}; give trials as (n_trials, n_chans, n_times)")
    rows = X.reshape(-1, X.shape[-1])
    y, _ = preprocess_recording(rows, sfreq, signal)
    return y.reshape(*X.shape[:-1], -1)
