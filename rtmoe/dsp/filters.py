"""Causal IIR filters with explicit state (numpy/scipy).

Filtering a recording in any chunking, passing the state on, gives the same samples, so
the one signal chain (`rtmoe.signal`) runs them offline and live alike.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from rtmoe.config import SignalConfig

#: Butterworth order of the band-pass (per edge) and of a lone high- or low-pass.
FILTER_ORDER = 4
#: Quality factor of the notch: -3 dB width = notch_freq / NOTCH_Q (≈ 1.7 Hz at 50 Hz).
NOTCH_Q = 30.0


def design_filter(cfg: SignalConfig) -> np.ndarray:
    """Second-order sections of the preprocessing filter described by ``cfg``.

    A Butterworth band-pass ``[l_freq, h_freq]`` (high-pass or low-pass when one edge is
    ``None``) followed by a notch at ``notch_freq`` (skipped when ``None``).

    Parameters
    ----------
    cfg : SignalConfig
        ``sfreq``, ``l_freq``, ``h_freq`` and ``notch_freq`` in Hz.

    Returns
    -------
    ndarray, shape (n_sections, 6), float64
        ``scipy.signal.sosfilt`` sections; ``(0, 6)`` when every filter is disabled.
    """
    sections = []
    edges = {"highpass": cfg.l_freq, "lowpass": cfg.h_freq}
    if cfg.l_freq is not None and cfg.h_freq is not None:
        sections.append(
            signal.butter(
                FILTER_ORDER, [cfg.l_freq, cfg.h_freq], "bandpass", fs=cfg.sfreq, output="sos"
            )
        )
    else:
        for btype, edge in edges.items():
            if edge is not None:
                sections.append(
                    signal.butter(FILTER_ORDER, edge, btype, fs=cfg.sfreq, output="sos")
                )
    if cfg.notch_freq is not None:
        b, a = signal.iirnotch(cfg.notch_freq, NOTCH_Q, fs=cfg.sfreq)
        sections.append(signal.tf2sos(b, a))
    if not sections:
        return np.zeros((0, 6))
    return np.concatenate(sections, axis=0)


def filter_state(sos: np.ndarray, n_chans: int, initial: np.ndarray | None = None) -> np.ndarray:
    """Initial state of ``apply_filter`` for ``n_chans`` channels.

    Parameters
    ----------
    sos : ndarray, shape (n_sections, 6)
    n_chans : int
    initial : ndarray, shape (n_chans,), optional
        First sample of each channel. When given, the state is the filter's steady state
        for a signal held at that value, which avoids the step transient a large DC
        offset (µV recordings) causes from a zero state; otherwise zeros.

    Returns
    -------
    ndarray, shape (n_sections, n_chans, 2), float64
    """
    state = np.zeros((sos.shape[0], n_chans, 2))
    if initial is None or sos.shape[0] == 0:
        return state
    initial = np.asarray(initial, dtype=np.float64)
    if initial.shape != (n_chans,):
        raise ValueError(
            f"initial has shape {initial.shape}; give one value per channel, ({n_chans},)"
        )
    return signal.sosfilt_zi(sos)[:, None, :] * initial[None, :, None]


def apply_filter(
    x: np.ndarray, sos: np.ndarray, state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Filter one chunk causally, carrying the state to the next chunk.

    Pure: neither ``x`` nor ``state`` is modified. Filtering a signal chunk by chunk,
    passing each returned state on, equals filtering it whole.

    Parameters
    ----------
    x : ndarray, shape (n_chans, n_times)
    sos : ndarray, shape (n_sections, 6)
        From ``design_filter``.
    state : ndarray, shape (n_sections, n_chans, 2)
        From ``filter_state`` or the previous call.

    Returns
    -------
    y : ndarray, shape (n_chans, n_times), dtype of ``x`` (float64 for integer input)
        Computed in float64.
    new_state : ndarray, shape (n_sections, n_chans, 2)
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; give one chunk as (n_chans, n_times)")
    expected = (sos.shape[0], x.shape[0], 2)
    if state.shape != expected:
        raise ValueError(
            f"state has shape {state.shape} but sos and x need {expected}; create it with "
            "filter_state(sos, n_chans)"
        )
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    if sos.shape[0] == 0:
        return x.astype(dtype, copy=True), state.copy()
    y, new_state = signal.sosfilt(sos, x.astype(np.float64), axis=-1, zi=state)
    return y.astype(dtype, copy=False), new_state
