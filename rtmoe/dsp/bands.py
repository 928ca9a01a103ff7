"""EEG frequency bands and band power."""

from __future__ import annotations

import torch

#: Classical EEG bands, (low, high) in Hz, half-open [low, high).
EEG_BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 12.0),
    "beta": (12.0, 30.0),
    "gamma": (30.0, 45.0),
}

#: The bands spectral masking can move a centre into (SPEC §2), in the order of
#: ``MaskConfig.band_probs``.
MASKING_BANDS: tuple[str, ...] = ("delta", "theta", "alpha", "beta")


def band_power(psd: torch.Tensor, freqs: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Power in ``band`` from a power spectral density (rectangle rule over the bins).

    Parameters
    ----------
    psd : Tensor, shape (..., n_bins)
        Density in x-units² / Hz, e.g. from ``welch_psd``.
    freqs : Tensor, shape (n_bins,)
        Equally spaced bin frequencies in Hz, e.g. from ``stft_freqs``.
    band : (float, float)
        ``(low, high)`` in Hz; bins with ``low <= f < high`` are summed.

    Returns
    -------
    Tensor, shape (...,)
        Power in x-units².
    """
    low, high = band
    if not low < high:
        raise ValueError(f"band={band} must be (low, high) with low < high, in Hz")
    if freqs.shape[-1] != psd.shape[-1] or freqs.shape[-1] < 2:
        raise ValueError(
            f"freqs has {freqs.shape[-1]} bins but psd has {psd.shape[-1]}; pass the "
            "frequencies of psd's bins (at least two)"
        )
    selected = (freqs >= low) & (freqs < high)
    return psd[..., selected].sum(dim=-1) * (freqs[1] - freqs[0])
