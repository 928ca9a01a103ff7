"""STFT/iSTFT of the masking pipeline and the Welch PSD of the spectral gate (SPEC §2, §5).

Torch, device-agnostic, batched over any leading dimensions: the time axis is last.
The Welch PSD is split into ``periodogram_segments`` and their mean so that the real-time
path can keep per-segment periodograms as samples arrive and average the stored ones.
"""

from __future__ import annotations

import torch

from rtmoe.config import SpectralConfig


def _largest_even(n: int) -> int:
    return n - n % 2


def _check_n_times(n_times: int, minimum: int = 2) -> None:
    if n_times < minimum:
        raise ValueError(
            f"n_times={n_times} is too short for a spectrum; give windows of at least "
            f"{minimum} samples"
        )


def stft_params(n_times: int, sfreq: float, cfg: SpectralConfig) -> tuple[int, int]:
    """STFT frame length and hop for a window of ``n_times`` samples.

    Nominally ``n_fft = round(cfg.stft_window_s * sfreq)`` (400 at 200 Hz) and
    ``hop = round(cfg.stft_hop_s * sfreq)`` (200). When ``n_fft`` would exceed the window,
    it shrinks to the largest even number ``<= n_times`` and the hop keeps the configured
    ``hop / n_fft`` ratio (so 100 samples at 200 Hz give ``(100, 50)``); a window shorter
    than one frame would otherwise have no frame at all.

    Parameters
    ----------
    n_times : int
        Window length in samples.
    sfreq : float
        Sampling rate in Hz.
    cfg : SpectralConfig
        ``stft_window_s`` and ``stft_hop_s`` in seconds.

    Returns
    -------
    n_fft, hop : int
        Frame length and hop in samples.
    """
    n_fft = max(2, round(cfg.stft_window_s * sfreq))
    return frame_params(n_times, n_fft, max(1, round(cfg.stft_hop_s * sfreq)))


def frame_params(n_times: int, n_fft: int, hop: int) -> tuple[int, int]:
    """``(n_fft, hop)`` in samples for a window of ``n_times``: as given, or shrunk to the
    largest even ``n_fft <= n_times`` with the same ``hop / n_fft`` ratio (`stft_params`)."""
    _check_n_times(n_times)
    if n_fft > n_times:
        ratio = hop / n_fft
        n_fft = _largest_even(n_times)
        hop = max(1, round(ratio * n_fft))
    return n_fft, hop


def _hann(n: int, like: torch.Tensor) -> torch.Tensor:
    # Periodic Hann = scipy.signal.get_window("hann", n), the DFT-even window.
    real = like.real if like.is_complex() else like
    return torch.hann_window(n, periodic=True, dtype=real.dtype, device=like.device)


def stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Short-time Fourier transform with a Hann window and centred frames.

    Parameters
    ----------
    x : Tensor, shape (..., n_times)
        Real signal; any leading dimensions (batch, channels).
    n_fft, hop : int
        Frame length and hop in samples (see ``stft_params``); ``n_fft // 2 < n_times``.

    Returns
    -------
    Tensor, complex, shape (..., n_fft // 2 + 1, 1 + n_times // hop)
        Bins by frames. Frames are centred on ``t * hop`` (reflect padding at the ends).
    """
    n_times = x.shape[-1]
    if n_fft // 2 >= n_times:
        raise ValueError(
            f"n_fft={n_fft} needs at least {n_fft // 2 + 1} samples but x has "
            f"n_times={n_times}; choose n_fft with stft_params"
        )
    flat = x.reshape(-1, n_times)
    spec = torch.stft(
        flat,
        n_fft,
        hop_length=hop,
        window=_hann(n_fft, x),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def istft(spec: torch.Tensor, n_fft: int, hop: int, n_times: int) -> torch.Tensor:
    """Inverse of ``stft`` (weighted overlap-add), trimmed to ``n_times`` samples.

    Parameters
    ----------
    spec : Tensor, complex, shape (..., n_fft // 2 + 1, n_frames)
    n_fft, hop : int
        The values given to ``stft``.
    n_times : int
        Length of the original signal.

    Returns
    -------
    Tensor, real, shape (..., n_times)
    """
    n_bins, n_frames = spec.shape[-2:]
    if n_bins != n_fft // 2 + 1:
        raise ValueError(
            f"spec has {n_bins} bins but n_fft={n_fft} gives {n_fft // 2 + 1}; pass the "
            "n_fft used by stft"
        )
    flat = spec.reshape(-1, n_bins, n_frames)
    x = torch.istft(
        flat, n_fft, hop_length=hop, window=_hann(n_fft, spec), center=True, length=n_times
    )
    return x.reshape(*spec.shape[:-2], n_times)


def stft_freqs(n_fft: int, sfreq: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Centre frequency of every STFT/periodogram bin, in Hz, shape (n_fft // 2 + 1,)."""
    return torch.fft.rfftfreq(n_fft, d=1.0 / sfreq, device=device)


def welch_nperseg(n_times: int, sfreq: float, cfg: SpectralConfig) -> int:
    """Welch segment length for a window of ``n_times`` samples (SPEC §5).

    ``round(cfg.welch_window_s * sfreq)`` (2·fs, 201 bins at 200 Hz) when the window
    holds one such segment; otherwise one second (fs) when it holds that; otherwise the
    largest even number ``<= n_times`` (a single segment, e.g. 0.5 s trials).
    """
    _check_n_times(n_times)
    nominal = max(2, round(cfg.welch_window_s * sfreq))
    one_second = round(sfreq)
    if nominal <= n_times:
        return nominal
    if one_second <= n_times:
        return one_second
    return _largest_even(n_times)


def periodogram_segments(x: torch.Tensor, sfreq: float, nperseg: int) -> torch.Tensor:
    """One-sided Hann periodograms of the Welch segments (50 % overlap), density scaled.

    Each segment has its mean removed before windowing, as ``scipy.signal.welch`` with
    ``detrend='constant'``; trailing samples that do not fill a segment are ignored.

    Parameters
    ----------
    x : Tensor, shape (..., n_times)
        Real signal, ``n_times >= nperseg``.
    sfreq : float
        Sampling rate in Hz.
    nperseg : int
        Segment length in samples (see ``welch_nperseg``); the step is
        ``nperseg - nperseg // 2``.

    Returns
    -------
    Tensor, shape (..., n_segments, nperseg // 2 + 1)
        Power spectral density of each segment in x-units² / Hz.
    """
    n_times = x.shape[-1]
    if not 0 < nperseg <= n_times:
        raise ValueError(
            f"nperseg={nperseg} must lie in [1, n_times={n_times}]; choose it with welch_nperseg"
        )
    step = nperseg - nperseg // 2
    segments = x.unfold(-1, nperseg, step)
    segments = segments - segments.mean(dim=-1, keepdim=True)
    window = _hann(nperseg, x)
    power = torch.fft.rfft(segments * window, dim=-1).abs().square()
    power = power / (sfreq * window.square().sum())
    # One-sided: every bin but DC (and Nyquist for even nperseg) stands for two.
    last = -1 if nperseg % 2 == 0 else None
    power[..., 1:last] *= 2
    return power


def welch_psd(x: torch.Tensor, sfreq: float, nperseg: int) -> torch.Tensor:
    """Welch PSD: the mean of ``periodogram_segments``.

    Matches ``scipy.signal.welch(x, sfreq, window='hann', nperseg=nperseg,
    noverlap=nperseg // 2, detrend='constant', scaling='density')``.

    Returns
    -------
    Tensor, shape (..., nperseg // 2 + 1)
        In x-units² / Hz; frequencies from ``stft_freqs(nperseg, sfreq)``.
    """
    return periodogram_segments(x, sfreq, nperseg).mean(dim=-2)
