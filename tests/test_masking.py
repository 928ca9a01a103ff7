"""Gaussian-smoothed spectral masking (SPEC §2): ratio, seeds, widths, bands, application."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rtmoe.config import MaskConfig, SpectralConfig
from rtmoe.dsp.bands import EEG_BANDS, MASKING_BANDS
from rtmoe.dsp.masking import FREQ, TF, TIME, draw_masks, mask_spectrum, spectral_mask
from rtmoe.dsp.spectral import stft_params

SFREQ = 200.0
N_BINS, N_FRAMES, BIN_HZ = 201, 31, 0.5  # 30 s at 200 Hz, n_fft 400, hop 200


def _draw(n_samples, cfg=None, seed=0, device=None):
    cfg = MaskConfig() if cfg is None else cfg
    generator = torch.Generator().manual_seed(seed)
    return draw_masks(n_samples, N_BINS, N_FRAMES, BIN_HZ, cfg, generator, device=device)


def test_masks_reach_the_ratio(device):
    draw = _draw(64, device=device)
    masks = draw.masks
    assert masks.shape == (64, N_BINS, N_FRAMES)
    assert masks.dtype == torch.float32 and masks.device.type == device.type
    assert masks.min() >= 0 and masks.max() <= 1
    assert (1 - masks.mean(dim=(1, 2)) >= 0.5).all()


def test_masks_are_reproducible_from_the_seed(device):
    first, again, other = _draw(8, seed=3, device=device), _draw(8, seed=3), _draw(8, seed=4)
    # Random numbers come from the (CPU) generator, so the device does not change the masks.
    torch.testing.assert_close(first.masks.cpu(), again.masks, rtol=0, atol=1e-6)
    assert torch.equal(first.kind, again.kind) and torch.equal(first.f0_bins, again.f0_bins)
    assert (first.masks.cpu() - other.masks).abs().max() > 0.1


def test_spec_statistics_on_30_s_maps():
    # SPEC §2: about 8 components, mean retained ≈ 0.46, ≈ 53 % of cells below one half.
    draw = _draw(400, seed=1)
    assert 7.0 <= draw.n_components().float().mean().item() <= 9.0
    assert 0.44 <= draw.masks.mean().item() <= 0.48
    assert 0.50 <= (draw.masks < 0.5).float().mean().item() <= 0.58
    shares = [(draw.kind == k).float().mean().item() for k in (FREQ, TIME, TF)]
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.04)


def test_max_components_bounds_the_loop():
    cfg = MaskConfig(mask_ratio=0.95, max_components=2)
    draw = _draw(16, cfg)
    assert (draw.n_components() == 2).all()
    assert (1 - draw.masks.mean(dim=(1, 2)) < 0.95).all()


def _fit_gaussian(profile: np.ndarray) -> tuple[float, float]:
    """Centre and σ of a (possibly truncated) Gaussian profile: -2 ln G is a parabola."""
    axis = np.arange(profile.size)
    keep = profile > 1e-3
    a, b, _ = np.polyfit(axis[keep], -2 * np.log(profile[keep]), 2)
    return -b / (2 * a), 1 / math.sqrt(a)


@pytest.mark.parametrize("seed", range(4))
def test_lone_components_have_the_configured_widths(seed):
    # A tiny ratio stops after one component, whose shape is then 1 - M.
    only = {"mask_ratio": 0.01, "band_bias": 0.0}
    freq = _draw(1, MaskConfig(p_freq=1.0, p_time=0.0, p_tf=0.0, **only), seed)
    assert freq.n_components().item() == 1 and freq.kind.item() == FREQ
    gaussian = 1 - freq.masks[0].double().numpy()
    np.testing.assert_allclose(gaussian, gaussian[:, :1].repeat(N_FRAMES, 1), atol=1e-7)
    centre, sigma = _fit_gaussian(gaussian[:, 0])
    assert sigma == pytest.approx(0.05 * N_BINS, rel=1e-3)
    assert centre == pytest.approx(freq.f0_bins.item(), abs=0.05)

    time = _draw(1, MaskConfig(p_freq=0.0, p_time=1.0, p_tf=0.0, **only), seed)
    assert time.kind.item() == TIME
    gaussian = 1 - time.masks[0].double().numpy()
    np.testing.assert_allclose(gaussian, gaussian[:1].repeat(N_BINS, 0), atol=1e-7)
    centre, sigma = _fit_gaussian(gaussian[0])
    assert sigma == pytest.approx(0.05 * N_FRAMES, rel=1e-3)
    assert centre == pytest.approx(time.t0_frames.item(), abs=0.05)

    blob = _draw(1, MaskConfig(p_freq=0.0, p_time=0.0, p_tf=1.0, **only), seed)
    assert blob.kind.item() == TF
    f0, t0 = blob.f0_bins.item(), blob.t0_frames.item()
    g_f = np.exp(-0.5 * ((np.arange(N_BINS) - f0) / blob.sigma_f_bins) ** 2)
    g_t = np.exp(-0.5 * ((np.arange(N_FRAMES) - t0) / blob.sigma_t_frames) ** 2)
    np.testing.assert_allclose(1 - blob.masks[0].numpy(), np.outer(g_f, g_t), atol=1e-6)


def test_band_bias_places_half_the_frequency_centres_in_bands():
    draw = _draw(500, seed=2)
    has_f0 = draw.kind != TIME
    assert not draw.band_biased[~has_f0].any()  # time components have no frequency centre
    assert draw.band_biased[has_f0].float().mean().item() == pytest.approx(0.5, abs=0.04)
    biased_hz = draw.f0_bins[draw.band_biased] * BIN_HZ
    edges = torch.tensor([EEG_BANDS[name] for name in MASKING_BANDS])
    low, high = edges[draw.band[draw.band_biased]].unbind(-1)
    assert ((biased_hz >= low) & (biased_hz <= high)).all()
    band_shares = torch.bincount(draw.band[draw.band_biased], minlength=4).float()
    np.testing.assert_allclose(band_shares / band_shares.sum(), [0.3, 0.4, 0.2, 0.1], atol=0.05)
    # Unbiased centres spread over the whole map.
    assert draw.f0_bins[has_f0 & ~draw.band_biased].max() > 0.9 * (N_BINS - 1)


def test_all_ones_mask_returns_the_input(device):
    x = torch.randn(2, 3, 6000, generator=torch.Generator().manual_seed(0)).to(device)
    masks = torch.ones(2, N_BINS, N_FRAMES, device=device)
    assert (mask_spectrum(x, masks, 400, 200) - x).abs().max().item() <= 1e-5


def test_mask_keeps_the_passed_band(device):
    t = torch.arange(6000, dtype=torch.float32) / SFREQ
    alpha = torch.sin(2 * math.pi * 10.0 * t)
    x = (alpha + torch.sin(2 * math.pi * 30.0 * t)).reshape(1, 1, -1).to(device)
    masks = torch.zeros(1, N_BINS, N_FRAMES, device=device)
    masks[:, 16:25] = 1  # 8-12 Hz passes, 30 Hz is removed
    y = mask_spectrum(x, masks, 400, 200)[0, 0].cpu()
    interior = slice(400, -400)  # edge frames are half reflect padding
    assert (y[interior] - alpha[interior]).abs().max().item() < 1e-3


def test_one_mask_is_shared_by_all_channels(device):
    x = torch.randn(4, 3, 700, generator=torch.Generator().manual_seed(5)).to(device)
    generator = torch.Generator().manual_seed(0)
    y, draw = spectral_mask(x, SFREQ, SpectralConfig(), MaskConfig(), generator)
    n_fft, hop = stft_params(700, SFREQ, SpectralConfig())
    for chan in range(3):
        alone = mask_spectrum(x[:, chan : chan + 1], draw.masks, n_fft, hop)[:, 0]
        torch.testing.assert_close(y[:, chan], alone, rtol=0, atol=1e-5)
    same = x[:, :1].expand(-1, 3, -1).contiguous()
    y_same = mask_spectrum(same, draw.masks, n_fft, hop)
    torch.testing.assert_close(y_same, y_same[:, :1].expand_as(y_same), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_times", [100, 700, 6000])
def test_spectral_mask_output(device, n_times):
    x = torch.randn(3, 2, n_times, generator=torch.Generator().manual_seed(n_times)).to(device)
    y, draw = spectral_mask(x, SFREQ, SpectralConfig(), MaskConfig(), torch.Generator())
    n_fft, hop = stft_params(n_times, SFREQ, SpectralConfig())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert draw.masks.shape == (3, n_fft // 2 + 1, 1 + n_times // hop)
    assert draw.masks.device == x.device
    assert (y - x).abs().mean() > 0.1  # half the spectrum is gone


def test_mask_spectrum_rejects_mismatched_masks():
    with pytest.raises(ValueError, match="masks has shape"):
        mask_spectrum(torch.zeros(2, 3, 6000), torch.ones(2, 201, 30), 400, 200)


def test_an_invalid_mask_config_cannot_be_made():
    with pytest.raises(ValueError, match="p_freq"):
        dataclasses.replace(MaskConfig(), p_freq=0.9)
