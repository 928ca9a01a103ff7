"""Gaussian-smoothed spectral masking, the pretraining input (SPEC §2).

One real mask per sample over the STFT map (bins × frames), shared by the sample's
channels, built from Gaussian components combined multiplicatively until the masked
share ``1 - mean(M)`` reaches the mask ratio. Drawing is vectorised over the batch and
reproducible from a ``torch.Generator``: the random numbers are drawn on the generator's
device, so one seed gives the same masks whether they are built on the CPU or a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtmoe.config import MaskConfig, SpectralConfig
from rtmoe.dsp.bands import EEG_BANDS, MASKING_BANDS
from rtmoe.dsp.spectral import istft, stft, stft_params

#: Component kinds, indexed by ``MaskDraw.kind``: a Gaussian along frequency (the same at
#: every frame), along time (the same in every bin), or their product.
KINDS: tuple[str, ...] = ("freq", "time", "tf")
FREQ, TIME, TF = range(len(KINDS))


@dataclass(frozen=True)
class MaskDraw:
    """Masks of a batch and the components that built them (one entry per component).

    Attributes
    ----------
    masks : Tensor, float32, shape (n_samples, n_bins, n_frames)
        Retained share of every STFT cell, in [0, 1].
    sample : Tensor, int64, shape (n_components,)
        Index of the sample each component belongs to.
    kind : Tensor, int64, shape (n_components,)
        Index into ``KINDS``.
    f0_bins : Tensor, float32, shape (n_components,)
        Frequency centre in bins (not used by time components).
    t0_frames : Tensor, float32, shape (n_components,)
        Time centre in frames (not used by frequency components).
    band : Tensor, int64, shape (n_components,)
        Index into ``MASKING_BANDS`` the centre was moved into, -1 when it was not.
    sigma_f_bins, sigma_t_frames : float
        Gaussian widths in bins and frames.
    """

    masks: torch.Tensor
    sample: torch.Tensor
    kind: torch.Tensor
    f0_bins: torch.Tensor
    t0_frames: torch.Tensor
    band: torch.Tensor
    sigma_f_bins: float
    sigma_t_frames: float

    @property
    def band_biased(self) -> torch.Tensor:
        """Whether each component's centre was moved into an EEG band, bool (n_components,)."""
        return self.band >= 0

    def n_components(self) -> torch.Tensor:
        """Number of components of every sample, int64 (n_samples,)."""
        return torch.bincount(self.sample, minlength=self.masks.shape[0])


def draw_masks(
    n_samples: int,
    n_bins: int,
    n_frames: int,
    bin_hz: float,
    cfg: MaskConfig,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> MaskDraw:
    """Draw one Gaussian-smoothed mask per sample (SPEC §2).

    Every step draws a component for every sample of the batch and applies it to the
    samples whose masked share is still below ``cfg.mask_ratio``; drawing stops when none
    is, or after ``cfg.max_components`` steps. A component is a frequency (``cfg.p_freq``),
    time (``cfg.p_time``) or time-frequency (``cfg.p_tf``) Gaussian centred uniformly on the
    map; for frequency and time-frequency components, with probability ``cfg.band_bias``
    the frequency centre is instead drawn uniformly inside an EEG band picked with
    ``cfg.band_probs`` (clipped to the last bin if the band lies above Nyquist).
    Widths are ``cfg.sigma_f_frac * n_bins`` bins and ``cfg.sigma_t_frac * n_frames``
    frames; each component multiplies the mask by ``1 - cfg.level * G``.

    Parameters
    ----------
    n_samples, n_bins, n_frames : int
        Batch size and STFT map size.
    bin_hz : float
        Width of one frequency bin in Hz (``sfreq / n_fft``), to place band centres.
    cfg : MaskConfig
    generator : torch.Generator
        Source of every random number; its device is where they are drawn.
    device : torch.device or str, optional
        Where the masks are built; defaults to the generator's device.

    Returns
    -------
    MaskDraw
        Masks on ``device``; component records on the CPU.
    """
    for name, value in (("n_samples", n_samples), ("n_bins", n_bins), ("n_frames", n_frames)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if not bin_hz > 0:
        raise ValueError(f"bin_hz={bin_hz} must be > 0: give sfreq / n_fft in Hz")
    if len(cfg.band_probs) != len(MASKING_BANDS):
        raise ValueError(
            f"mask.band_probs={cfg.band_probs} needs one probability per band of {MASKING_BANDS}"
        )
    device = torch.device(device) if device is not None else generator.device
    rng_device = generator.device

    def uniform(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=rng_device)

    kind_edges = torch.tensor([cfg.p_freq, cfg.p_freq + cfg.p_time], device=rng_device)
    band_probs = torch.tensor(cfg.band_probs, dtype=torch.float32, device=rng_device)
    band_edges = torch.tensor([EEG_BANDS[name] for name in MASKING_BANDS], device=rng_device)

    sigma_f = cfg.sigma_f_frac * n_bins
    sigma_t = cfg.sigma_t_frac * n_frames
    bins = torch.arange(n_bins, dtype=torch.float32, device=device)
    frames = torch.arange(n_frames, dtype=torch.float32, device=device)
    masks = torch.ones(n_samples, n_bins, n_frames, device=device)
    records: list[tuple[torch.Tensor, ...]] = []

    for _ in range(cfg.max_components):
        active = (1 - masks.mean(dim=(1, 2))) < cfg.mask_ratio
        if not bool(active.any()):
            break
        # Draw for the whole batch every step so a sample's draws do not depend on when
        # the others stop.
        kind = torch.bucketize(uniform(n_samples), kind_edges, right=True)
        f0 = uniform(n_samples) * (n_bins - 1)
        t0 = uniform(n_samples) * (n_frames - 1)
        biased = (uniform(n_samples) < cfg.band_bias) & (kind != TIME)
        band = torch.multinomial(band_probs, n_samples, replacement=True, generator=generator)
        low, high = band_edges[band].unbind(-1)
        band_f0 = ((low + uniform(n_samples) * (high - low)) / bin_hz).clamp(max=n_bins - 1)
        f0 = torch.where(biased, band_f0, f0)
        band = torch.where(biased, band, -1)

        kind_d, f0_d, t0_d = kind.to(device), f0.to(device), t0.to(device)
        g_f = torch.exp(-0.5 * ((bins - f0_d[:, None]) / sigma_f) ** 2)
        g_t = torch.exp(-0.5 * ((frames - t0_d[:, None]) / sigma_t) ** 2)
        g_f = torch.where((kind_d == TIME)[:, None], 1.0, g_f)
        g_t = torch.where((kind_d == FREQ)[:, None], 1.0, g_t)
        # A level above 1 would flip signs; a fully masked cell stays at 0.
        component = (1 - cfg.level * g_f[:, :, None] * g_t[:, None, :]).clamp_(min=0)
        active_d = active.to(device)
        masks = torch.where(active_d[:, None, None], masks * component, masks)

        index = torch.nonzero(active.cpu()).squeeze(1)
        records.append(
            (index, kind.cpu()[index], f0.cpu()[index], t0.cpu()[index], band.cpu()[index])
        )

    sample, kind, f0, t0, band = (torch.cat(column) for column in zip(*records, strict=True))
    return MaskDraw(
        masks=masks,
        sample=sample,
        kind=kind,
        f0_bins=f0,
        t0_frames=t0,
        band=band,
        sigma_f_bins=sigma_f,
        sigma_t_frames=sigma_t,
    )


def mask_spectrum(x: torch.Tensor, masks: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Apply one real mask per sample to the STFT of all its channels.

    ``iSTFT(STFT(x) ⊙ M)``: magnitudes are scaled, phases kept.

    Parameters
    ----------
    x : Tensor, shape (batch, n_chans, n_times)
    masks : Tensor, shape (batch, n_bins, n_frames)
        ``n_bins = n_fft // 2 + 1``, ``n_frames = 1 + n_times // hop``.
    n_fft, hop : int
        STFT frame length and hop in samples.

    Returns
    -------
    Tensor, shape (batch, n_chans, n_times)
    """
    if x.ndim != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; give (batch, n_chans, n_times)")
    n_times = x.shape[-1]
    expected = (x.shape[0], n_fft // 2 + 1, 1 + n_times // hop)
    if tuple(masks.shape) != expected:
        raise ValueError(
            f"masks has shape {tuple(masks.shape)} but x, n_fft={n_fft} and hop={hop} need "
            f"{expected}; draw them with draw_masks for this STFT"
        )
    spec = stft(x, n_fft, hop) * masks[:, None].to(x.dtype)
    return istft(spec, n_fft, hop, n_times)


def spectral_mask(
    x: torch.Tensor,
    sfreq: float,
    spectral_cfg: SpectralConfig,
    mask_cfg: MaskConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, MaskDraw]:
    """Mask a batch with STFT parameters from ``stft_params`` (masks built on x's device).

    Parameters
    ----------
    x : Tensor, shape (batch, n_chans, n_times)
        In model units (100 µV) at ``sfreq`` Hz.

    Returns
    -------
    x_masked : Tensor, shape (batch, n_chans, n_times)
    draw : MaskDraw
    """
    if x.ndim != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; give (batch, n_chans, n_times)")
    n_times = x.shape[-1]
    n_fft, hop = stft_params(n_times, sfreq, spectral_cfg)
    draw = draw_masks(
        x.shape[0],
        n_fft // 2 + 1,
        1 + n_times // hop,
        sfreq / n_fft,
        mask_cfg,
        generator,
        device=x.device,
    )
    return mask_spectrum(x, draw.masks, n_fft, hop), draw
