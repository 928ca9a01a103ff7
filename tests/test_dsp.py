"""rtmoe.dsp: STFT/iSTFT, Welch PSD vs scipy, bands, causal filters."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import signal

from rtmoe.config import SignalConfig, SpectralConfig
from rtmoe.dsp.bands import EEG_BANDS, band_power
from rtmoe.dsp.filters import apply_filter, design_filter, filter_state
from rtmoe.dsp.spectral import (
    istft,
    periodogram_segments,
    stft,
    stft_freqs,
    stft_params,
    welch_nperseg,
    welch_psd,
)

SFREQ = 200.0


@pytest.mark.parametrize(
    ("n_times", "expected"),
    [(6000, (400, 200)), (700, (400, 200)), (400, (400, 200)), (100, (100, 50)), (101, (100, 50))],
)
def test_stft_params(n_times, expected):
    assert stft_params(n_times, SFREQ, SpectralConfig()) == expected


def test_stft_params_rejects_too_short():
    with pytest.raises(ValueError, match="n_times=1"):
        stft_params(1, SFREQ, SpectralConfig())


@pytest.mark.parametrize("n_times", [100, 101, 700, 6000])
def test_stft_istft_round_trip(device, n_times):
    x = torch.randn(2, 3, n_times, generator=torch.Generator().manual_seed(n_times)).to(device)
    n_fft, hop = stft_params(n_times, SFREQ, SpectralConfig())
    spec = stft(x, n_fft, hop)
    assert spec.shape == (2, 3, n_fft // 2 + 1, 1 + n_times // hop)
    assert spec.is_complex() and spec.device == x.device
    y = istft(spec, n_fft, hop, n_times)
    assert y.shape == x.shape
    assert (y - x).abs().max().item() <= 1e-5


def test_stft_freqs():
    freqs = stft_freqs(400, SFREQ)
    assert freqs.shape == (201,)
    assert freqs[1].item() == pytest.approx(0.5)
    assert freqs[-1].item() == pytest.approx(100.0)


def test_sinusoid_lands_in_its_bin(device):
    n_fft, hop = 400, 200
    k = 21  # 10.5 Hz
    freq = stft_freqs(n_fft, SFREQ)[k].item()
    t = torch.arange(6000, dtype=torch.float32) / SFREQ
    x = torch.sin(2 * math.pi * freq * t).to(device)
    magnitude = stft(x, n_fft, hop).abs()
    assert magnitude.shape == (201, 31)
    # The two edge frames are half reflect padding, which bends the sinusoid.
    assert (magnitude[:, 1:-1].argmax(dim=0) == k).all()


@pytest.mark.parametrize(
    ("n_times", "expected"), [(6000, 400), (700, 400), (399, 200), (200, 200), (101, 100)]
)
def test_welch_nperseg(n_times, expected):
    assert welch_nperseg(n_times, SFREQ, SpectralConfig()) == expected


@pytest.mark.parametrize(
    ("shape", "nperseg"),
    [((6000,), 400), ((2, 3, 700), 400), ((4, 200), 200), ((1, 2, 3, 101), 100), ((3, 130), 51)],
)
def test_welch_matches_scipy(device, shape, nperseg):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 3 + 5  # an offset, as in µV recordings
    _, expected = signal.welch(
        x,
        SFREQ,
        window="hann",
        nperseg=nperseg,
        noverlap=nperseg // 2,
        detrend="constant",
        scaling="density",
    )
    psd64 = welch_psd(torch.from_numpy(x).to(device), SFREQ, nperseg).cpu().numpy()
    np.testing.assert_allclose(psd64, expected, rtol=1e-10)
    psd32 = welch_psd(torch.from_numpy(x).float().to(device), SFREQ, nperseg).cpu().numpy()
    # float32: relative in every bin holding power, absolute (vs the peak) in near-empty ones.
    np.testing.assert_allclose(psd32, expected, rtol=1e-5, atol=1e-5 * expected.max())


def test_periodogram_segments_count_and_mean():
    x = torch.randn(2, 1000, dtype=torch.float64)
    segments = periodogram_segments(x, SFREQ, 400)
    assert segments.shape == (2, (1000 - 400) // 200 + 1, 201)
    torch.testing.assert_close(segments.mean(dim=-2), welch_psd(x, SFREQ, 400))


def test_periodogram_rejects_long_segment():
    with pytest.raises(ValueError, match="nperseg=400"):
        periodogram_segments(torch.zeros(300), SFREQ, 400)


def test_band_power_of_sinusoid():
    amplitude = 2.0
    t = torch.arange(2000, dtype=torch.float64) / SFREQ
    x = amplitude * torch.sin(2 * math.pi * 10.0 * t)
    psd = welch_psd(x, SFREQ, 400)
    freqs = stft_freqs(400, SFREQ).double()
    # A sinusoid's power is A²/2; the Hann window spreads it over 3 bins around 10 Hz.
    assert band_power(psd, freqs, EEG_BANDS["alpha"]).item() == pytest.approx(
        amplitude**2 / 2, rel=1e-6
    )
    assert band_power(psd, freqs, EEG_BANDS["delta"]).item() < 1e-10


def _gain(sos: np.ndarray, freq_hz: float) -> float:
    _, response = signal.sosfreqz(sos, worN=[freq_hz], fs=SFREQ)
    return float(np.abs(response[0]))


def test_design_filter_response():
    sos = design_filter(SignalConfig(l_freq=0.3, h_freq=75.0, notch_freq=50.0))
    assert sos.ndim == 2 and sos.shape[1] == 6
    assert _gain(sos, 10.0) == pytest.approx(1.0, abs=0.01)
    assert _gain(sos, 50.0) < 1e-3  # notch
    assert _gain(sos, 0.03) < 0.01  # below the high-pass edge
    assert _gain(sos, 95.0) < 0.1  # above the low-pass edge
    lowpass = design_filter(SignalConfig(l_freq=None, h_freq=40.0, notch_freq=None))
    assert _gain(lowpass, 0.0) == pytest.approx(1.0, abs=1e-9)
    assert _gain(lowpass, 80.0) < 0.01
    highpass = design_filter(SignalConfig(l_freq=1.0, h_freq=None, notch_freq=None))
    assert _gain(highpass, 0.0) < 1e-9
    assert _gain(highpass, 30.0) == pytest.approx(1.0, abs=1e-3)


def test_disabled_filter_is_identity():
    sos = design_filter(SignalConfig(l_freq=None, h_freq=None, notch_freq=None))
    assert sos.shape == (0, 6)
    x = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    state0 = filter_state(sos, 3)
    y, state = apply_filter(x, sos, state0)
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.float32 and y is not x
    assert state.shape == (0, 3, 2)


@pytest.mark.parametrize(
    "cfg",
    [SignalConfig(), SignalConfig(l_freq=None), SignalConfig(h_freq=None, notch_freq=None)],
)
def test_chunked_filtering_equals_whole(cfg):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 2000)) * 20 + 30).astype(np.float32)
    sos = design_filter(cfg)
    state0 = filter_state(sos, 4)
    whole, _ = apply_filter(x, sos, state0)
    assert whole.dtype == np.float32
    cuts = np.concatenate([[0, 1, 2], np.sort(rng.choice(np.arange(3, 2000), 30, replace=False))])
    cuts = np.append(cuts, 2000)
    state, chunks = state0, []
    for start, stop in itertools.pairwise(cuts):
        y, state = apply_filter(x[:, start:stop], sos, state)
        chunks.append(y)
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole)
    assert not state0.any()  # the caller's state is never modified


def test_filter_state_initial_removes_offset_transient():
    sos = design_filter(SignalConfig(l_freq=0.3, h_freq=None, notch_freq=None))
    offsets = np.array([26.0, -40.0])
    x = np.repeat(offsets[:, None], 400, axis=1)
    steady, _ = apply_filter(x, sos, filter_state(sos, 2, initial=offsets))
    np.testing.assert_allclose(steady, 0.0, atol=1e-9)  # a high-pass of a constant is 0
    cold, _ = apply_filter(x, sos, filter_state(sos, 2))
    assert np.abs(cold[:, :10]).max() > 10  # from zeros the offset rings through


def test_apply_filter_rejects_wrong_state():
    sos = design_filter(SignalConfig())
    with pytest.raises(ValueError, match="filter_state"):
        apply_filter(np.zeros((3, 10)), sos, filter_state(sos, 2))
