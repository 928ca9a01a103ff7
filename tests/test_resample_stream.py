"""Streaming polyphase resampler: exact chunking, scipy reference, known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from rtmoe.dsp.resample_stream import (
    HALF_LEN_FACTOR,
    KAISER_BETA,
    apply_resample,
    design_resampler,
    n_outputs_for,
    resample_state,
)


def _chunked(x, design, sizes, initial=None):
    state = resample_state(design, x.shape[0], initial)
    ys, newest, i = [], [], 0
    for k in sizes:
        y, n, state = apply_resample(x[:, i : i + k], design, state)
        ys.append(y)
        newest.append(n + i)
        i += k
    assert i == x.shape[1]
    return np.concatenate(ys, axis=1), np.concatenate(newest), state


def _random_sizes(rng, total, high=40):
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(min(rng.integers(1, high), total - sum(sizes))))
    return sizes


@pytest.mark.parametrize(("sfreq_in", "sfreq_out"), [(256, 200), (200, 256), (500, 200)])
def test_chunked_equals_whole_exactly(sfreq_in, sfreq_out):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1500)) * 50 + 20
    design = design_resampler(sfreq_in, sfreq_out)
    whole, newest, _ = apply_resample(x, design, resample_state(design, 3, x[:, 0]))
    for sizes in (_random_sizes(rng, 1500), [1] * 1500, [1500]):
        chunked, chunk_newest, state = _chunked(x, design, sizes, x[:, 0])
        np.testing.assert_array_equal(chunked, whole)
        np.testing.assert_array_equal(chunk_newest, newest)
    assert state.n_out == whole.shape[1] == -(-1500 * design.up // design.down)


def test_equals_zero_stuffed_fir_reference():
    """Output n = sum_k h[k] u[n*down - k], u the zero-stuffed input (scipy's filter)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 800))
    design = design_resampler(256, 200)
    assert (design.up, design.down) == (25, 32)
    y, newest, _ = apply_resample(x, design, resample_state(design, 2))
    max_rate = max(design.up, design.down)
    h = signal.firwin(
        2 * HALF_LEN_FACTOR * max_rate + 1, 1 / max_rate, window=("kaiser", KAISER_BETA)
    )
    u = np.zeros((2, x.shape[1] * design.up))
    u[:, :: design.up] = design.up * x
    reference = signal.lfilter(h, 1.0, u, axis=-1)[:, :: design.down]
    np.testing.assert_allclose(y, reference[:, : y.shape[1]], atol=1e-12)
    np.testing.assert_array_equal(newest, (np.arange(y.shape[1]) * 32) // 25)


def test_sinusoid_keeps_amplitude_and_frequency():
    sfreq_in, sfreq_out, f = 256.0, 200.0, 10.0
    t = np.arange(4096) / sfreq_in
    x = np.sin(2 * np.pi * f * t)[None]
    design = design_resampler(sfreq_in, sfreq_out)
    y, _, _ = apply_resample(x, design, resample_state(design, 1))
    steady = y[0, 400:]
    freqs, psd = signal.periodogram(steady, sfreq_out)
    assert freqs[np.argmax(psd)] == pytest.approx(f, abs=0.1)
    assert np.sqrt(2) * steady.std() == pytest.approx(1.0, abs=5e-3)


def test_held_initial_value_removes_the_dc_step():
    x = np.full((1, 600), 1000.0)
    design = design_resampler(256, 200)
    held, _, _ = apply_resample(x, design, resample_state(design, 1, x[:, 0]))
    zero, _, _ = apply_resample(x, design, resample_state(design, 1))
    assert np.abs(held - 1000).max() < 5.0  # per-phase gain ripple of the Kaiser design
    assert np.abs(zero[:, :5] - 1000).min() > 500  # the transient the hold avoids


def test_equal_rates_are_the_identity_and_counts_are_exact():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 50))
    design = design_resampler(200, 200)
    y, newest, _ = apply_resample(x, design, resample_state(design, 2))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(newest, np.arange(50))
    design = design_resampler(256, 200)
    state = resample_state(design, 1)
    assert n_outputs_for(design, state, 1) == 1  # input 0 → output 0
    _, _, state = apply_resample(np.zeros((1, 32)), design, state)
    assert state.n_out == 25  # outputs 0..24 read inputs up to floor(24·32/25) = 30
    assert n_outputs_for(design, state, 1) == 1  # input 32 completes output 25


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sfreq_in=0"):
        design_resampler(0, 200)
    design = design_resampler(256, 200)
    with pytest.raises(ValueError, match="n_chans=2"):
        apply_resample(np.zeros((3, 5)), design, resample_state(design, 2))
    with pytest.raises(ValueError, match="initial has shape"):
        resample_state(design, 2, np.zeros(3))
