"""SlidingWelch: at every hop the streamed PSD equals welch_psd and scipy of the window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from rtmoe.config import SpectralConfig
from rtmoe.dsp.spectral import welch_nperseg, welch_psd
from rtmoe.stream.ring import RingBuffer
from rtmoe.stream.sliding import SlidingWelch

SFREQ = 200.0


def _eeg_like(n_chans: int, n_times: int, seed: int) -> np.ndarray:
    """Pink (1/f) noise plus alpha/beta sinusoids and a DC offset, in µV, float32."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal((n_chans, n_times)), axis=-1)
    freqs = np.fft.rfftfreq(n_times, 1 / SFREQ)
    spectrum[:, 1:] /= np.sqrt(freqs[1:])
    pink = np.fft.irfft(spectrum, n=n_times, axis=-1)
    pink *= 20 / pink.std(axis=-1, keepdims=True)
    t = np.arange(n_times) / SFREQ
    phases = rng.uniform(0, 2 * np.pi, (n_chans, 1))
    tones = 15 * np.sin(2 * np.pi * 10.0 * t + phases) + 4 * np.sin(2 * np.pi * 22.5 * t)
    offsets = rng.uniform(-50, 50, (n_chans, 1))
    return (pink + tones + offsets).astype(np.float32)


def _stream_and_check(device, n_times, hop, nperseg, n_chans=19, duration_s=20.0, seed=0):
    rng = np.random.default_rng(seed)
    signal = _eeg_like(n_chans, int(duration_s * SFREQ), seed)
    max_chunk = 3 * hop
    ring = RingBuffer(n_chans, n_times + max_chunk, device)
    sliding = SlidingWelch(n_chans, n_times, hop, SFREQ, nperseg, device)
    pos, checked, per_update = 0, 0, []
    while pos < signal.shape[1]:
        k = int(rng.integers(1, max_chunk + 1))
        ring.push(signal[:, pos : pos + k])
        pos = ring.n_pushed
        # Every hop-grid end crossed by this chunk, oldest first.
        first = max(sliding.end + hop, math.ceil(n_times / hop) * hop)
        for end in range(first, pos + 1, hop):
            before = sliding.n_frames_computed
            psd = sliding.update(ring, end)
            per_update.append(sliding.n_frames_computed - before)
            window = sliding.window(ring)
            assert window.shape == (n_chans, n_times)
            np.testing.assert_array_equal(window.cpu().numpy(), signal[:, end - n_times : end])
            offline = welch_psd(window, SFREQ, nperseg)
            torch.testing.assert_close(psd, offline, rtol=1e-5, atol=0)
            _, reference = scipy.signal.welch(
                signal[:, end - n_times : end].astype(np.float64),
                SFREQ,
                window="hann",
                nperseg=nperseg,
                noverlap=nperseg // 2,
                detrend="constant",
                scaling="density",
            )
            np.testing.assert_allclose(
                psd.cpu().double().numpy(), reference, rtol=1e-5, atol=1e-7 * reference.max()
            )
            checked += 1
    assert checked >= (signal.shape[1] - n_times) // hop
    return sliding, per_update


def test_default_4s_window_100ms_hop_one_frame_per_hop(device):
    n_times, hop = 800, 20
    nperseg = welch_nperseg(n_times, SFREQ, SpectralConfig())
    assert nperseg == 400
    sliding, per_update = _stream_and_check(device, n_times, hop, nperseg)
    assert per_update[0] == sliding.n_segments == 3
    # Until the first window's frames have slid out (2 * step / hop = 20 hops) the older
    # frames of a window were never needed before; from then on, as step % hop == 0, every
    # hop computes exactly one new frame.
    warm_up = (sliding.n_segments - 1) * sliding.step // hop
    assert max(per_update[:warm_up]) <= 3
    assert set(per_update[warm_up:]) == {1}


@pytest.mark.parametrize(
    ("n_times", "hop", "nperseg"),
    [
        (800, 30, 400),  # step % hop != 0
        (730, 20, 400),  # (n_times - nperseg) % step != 0: scipy drops a 130-sample tail
        (801, 7, 201),  # odd nperseg: step = 101, gcd(hop, step) = 1
        (400, 300, 200),  # hop > step
        (400, 25, 400),  # a single segment
        (200, 20, 200),  # 1 s window, nperseg = fs
    ],
)
def test_parity_for_unaligned_geometries(device, n_times, hop, nperseg):
    sliding, per_update = _stream_and_check(device, n_times, hop, nperseg, n_chans=4)
    warm_up = (sliding.n_segments - 1) * sliding.step // hop
    assert max(per_update) <= sliding.n_segments
    assert max(per_update[warm_up:]) <= min(sliding.n_segments, hop // sliding.grid)


def test_default_end_is_newest_hop_multiple_and_skips_stay_exact(device):
    n_chans, n_times, hop, nperseg = 3, 800, 20, 400
    signal = _eeg_like(n_chans, 4000, seed=3)
    ring = RingBuffer(n_chans, 2000, device)
    sliding = SlidingWelch(n_chans, n_times, hop, SFREQ, nperseg, device)
    ring.push(signal[:, :813])
    sliding.update(ring)
    assert sliding.end == 800
    ring.push(signal[:, 813:1777])  # an overload: dozens of hops skipped at once
    psd = sliding.update(ring)
    assert sliding.end == 1760
    torch.testing.assert_close(
        psd, welch_psd(sliding.window(ring), SFREQ, nperseg), rtol=1e-5, atol=0
    )
    psd = sliding.update(ring, end=1777)  # off the hop grid: still exact
    torch.testing.assert_close(
        psd, welch_psd(ring.window(n_times), SFREQ, nperseg), rtol=1e-5, atol=0
    )


def test_sinusoid_peak_lands_in_its_bin(device):
    n_times, hop, nperseg = 800, 20, 400
    t = np.arange(2000) / SFREQ
    tone = np.stack([np.sin(2 * np.pi * f * t) for f in (6.0, 10.5, 31.0)]).astype(np.float32)
    ring = RingBuffer(3, n_times, device)
    sliding = SlidingWelch(3, n_times, hop, SFREQ, nperseg, device)
    ring.push(tone)
    psd = sliding.update(ring)
    peaks = psd.argmax(dim=-1).cpu().numpy() * SFREQ / nperseg
    np.testing.assert_array_equal(peaks, [6.0, 10.5, 31.0])


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="nperseg=900"):
        SlidingWelch(2, 800, 20, SFREQ, 900, "cpu")
    sliding = SlidingWelch(2, 800, 20, SFREQ, 400, "cpu")
    ring = RingBuffer(2, 800, "cpu")
    ring.push(np.zeros((2, 790), np.float32))
    with pytest.raises(ValueError, match=r"wait until ring\.n_pushed >= 800"):
        sliding.update(ring)


@pytest.mark.cuda
def test_cuda_hot_path_never_waits_for_the_gpu():
    """Pushing chunks and updating the PSD only queue GPU work: under torch's sync debug
    mode every operation that would block the host on the device raises."""
    n_times, hop, n_chans = 800, 20, 19
    signal = _eeg_like(n_chans, 4000, seed=3)
    ring = RingBuffer(n_chans, n_times + hop, "cuda")
    sliding = SlidingWelch(n_chans, n_times, hop, SFREQ, 400, "cuda")
    chunks = np.split(signal, signal.shape[1] // hop, axis=1)
    for chunk in chunks[: n_times // hop]:  # warm-up: allocator, FFT plans, window cache
        ring.push(chunk)
    sliding.update(ring)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for chunk in chunks[n_times // hop :]:
            ring.push(chunk)
            sliding.update(ring)
            sliding.window(ring)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = welch_psd(torch.from_numpy(signal[:, -n_times:]), SFREQ, 400)
    torch.testing.assert_close(sliding.update(ring).cpu(), expected, rtol=1e-4, atol=1e-4)
