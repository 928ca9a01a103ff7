"""Streaming rational resampler: a causal polyphase FIR with explicit state.

Output sample ``n`` (at ``sfreq_out``) is ``sum_k h[k] * u[n * down - k]`` where ``u`` is
the input upsampled by ``up`` with zeros between samples (times ``up`` to keep the gain),
and ``h`` is the anti-aliasing low-pass of ``scipy.signal.resample_poly`` (Kaiser window,
β = 5, cut-off at the lower Nyquist). Only past inputs are used: output ``n`` is emitted
as soon as input ``floor(n * down / up)`` has arrived, and it reads that input and the
``n_taps_per_phase - 1`` before it. The filter's group delay, ``(len(h) - 1) / 2``
upsampled samples, is not compensated (a causal filter cannot), like the IIR filters'.

Every output is one dot product of fixed length in a fixed order, so resampling a signal
chunk by chunk, passing the state on, gives bit-identical samples to resampling it whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal

#: Half-length of the anti-aliasing filter in units of max(up, down), as resample_poly.
HALF_LEN_FACTOR = 10
#: Kaiser window β of the anti-aliasing filter, as resample_poly.
KAISER_BETA = 5.0


@dataclass(frozen=True)
class ResampleDesign:
    """A rational resampler ``sfreq_out / sfreq_in = up / down``.

    Attributes
    ----------
    up, down : int
        Reduced ratio.
    phases : ndarray, shape (up, n_taps_per_phase), float64
        ``phases[p, j] = up * h[p + j * up]``: the taps applied to input ``i - j`` for an
        output whose upsampled position is ``i * up + p``.
    """

    up: int
    down: int
    phases: np.ndarray

    @property
    def n_taps_per_phase(self) -> int:
        return self.phases.shape[1]


@dataclass(frozen=True)
class ResampleState:
    """What one chunk hands to the next.

    Attributes
    ----------
    history : ndarray, shape (n_chans, n_taps_per_phase - 1), float64
        The newest inputs, oldest first.
    n_in, n_out : int
        Inputs consumed and outputs produced so far.
    """

    history: np.ndarray
    n_in: int
    n_out: int


def design_resampler(sfreq_in: float, sfreq_out: float) -> ResampleDesign:
    """Polyphase taps for ``sfreq_in -> sfreq_out`` (ratio exact from the decimal forms).

    Equal rates give ``up = down = 1`` and a single unit tap (identity).
    """
    for name, value in (("sfreq_in", sfreq_in), ("sfreq_out", sfreq_out)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value} must be a positive sampling rate in Hz")
    ratio = Fraction(str(float(sfreq_out))) / Fraction(str(float(sfreq_in)))
    up, down = ratio.numerator, ratio.denominator
    if up == down == 1:
        return ResampleDesign(1, 1, np.ones((1, 1)))
    max_rate = max(up, down)
    half_len = HALF_LEN_FACTOR * max_rate
    h = signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", KAISER_BETA))
    n_per_phase = -(-h.size // up)
    padded = np.zeros(n_per_phase * up)
    padded[: h.size] = h
    phases = up * padded.reshape(n_per_phase, up).T
    return ResampleDesign(up, down, np.ascontiguousarray(phases))


def resample_state(
    design: ResampleDesign, n_chans: int, initial: np.ndarray | None = None
) -> ResampleState:
    """Initial state: the history holds ``initial`` (one value per channel) or zeros.

    Holding the first sample avoids the step transient a µV offset causes from zeros.
    """
    history = np.zeros((n_chans, design.n_taps_per_phase - 1))
    if initial is not None:
        initial = np.asarray(initial, dtype=np.float64)
        if initial.shape != (n_chans,):
            raise ValueError(
                f"initial has shape {initial.shape}; give one value per channel, ({n_chans},)"
            )
        history[:] = initial[:, None]
    return ResampleState(history, 0, 0)


def n_outputs_for(design: ResampleDesign, state: ResampleState, n_new: int) -> int:
    """How many outputs ``n_new`` more inputs produce."""
    n_in = state.n_in + n_new
    # Output n is ready once input floor(n * down / up) < n_in arrived.
    return -(-n_in * design.up // design.down) - state.n_out


def apply_resample(
    x: np.ndarray, design: ResampleDesign, state: ResampleState
) -> tuple[np.ndarray, np.ndarray, ResampleState]:
    """Resample one chunk causally, carrying the state to the next chunk.

    Pure: neither ``x`` nor ``state`` is modified.

    Parameters
    ----------
    x : ndarray, shape (n_chans, k)
        Input samples at ``sfreq_in``.
    design : ResampleDesign
    state : ResampleState
        From `resample_state` or the previous call.

    Returns
    -------
    y : ndarray, shape (n_chans, m), float64
        Output samples at ``sfreq_out`` (``m = n_outputs_for(design, state, k)``).
    newest : ndarray, shape (m,), int64
        For each output, the index in ``x`` of the newest input it reads (to carry the
        input's timestamp over).
    new_state : ResampleState
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != state.history.shape[0]:
        raise ValueError(
            f"x has shape {x.shape}; expected (n_chans={state.history.shape[0]}, k), the "
            "channel count the state was created for"
        )
    k = x.shape[1]
    n_taps = design.n_taps_per_phase
    m = n_outputs_for(design, state, k)
    n = state.n_out + np.arange(m, dtype=np.int64)
    position = n * design.down
    newest_abs = position // design.up
    phase = position - newest_abs * design.up
    newest = newest_abs - state.n_in  # index in x
    extended = np.concatenate([state.history, x.astype(np.float64, copy=False)], axis=1)
    # Column of input (newest - j) in `extended` is newest + n_taps - 1 - j.
    cols = (newest + n_taps - 1)[:, None] - np.arange(n_taps)[None, :]
    y = np.sum(extended[:, cols] * design.phases[phase][None], axis=-1)
    history = extended[:, extended.shape[1] - (n_taps - 1) :].copy()
    return y, newest, ResampleState(history, state.n_in + k, state.n_out + m)
