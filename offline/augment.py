"""Fine-tuning augmentations of a batch of trials (``[finetune]`` ``augment_*``).

Each draws per trial from a ``torch.Generator``, so one seed gives the same batches:

- time shift: the trial moved by up to ``augment_shift_s`` either way, the sample at the
  edge repeated into the gap (a cue is never stamped to the sample);
- amplitude scaling: the whole trial times ``exp(N(0, augment_scale))`` (amplifier gain
  and skull thickness vary; the class should not);
- electrode dropout: each electrode zeroed with probability ``augment_channel_drop``
  (a bad electrode repaired to zero, as the live chain does);
- spectral masking: the pretraining's Gaussian-smoothed STFT mask (SPEC §2, the
  ``[mask]`` settings) with ``augment_spectral_mask`` as its masked share, so that no
  single band or stretch of the window can carry the decision.

They apply to training batches only; the PSD the gates read is recomputed from the
augmented trial, so gates and experts see the same input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from rtmoe.config import FinetuneConfig, MaskConfig, SpectralConfig
from rtmoe.dsp.masking import spectral_mask


@dataclass(frozen=True)
class Augmentation:
    """The augmentations ``cfg`` asks for, on trials at ``sfreq`` Hz in model units.

    ``spectral`` and ``mask`` are the model's STFT and masking settings (used by
    ``augment_spectral_mask`` only).
    """

    cfg: FinetuneConfig
    sfreq: float
    spectral: SpectralConfig
    mask: MaskConfig

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        cfg = self.cfg
        return bool(
            cfg.augment_scale
            or cfg.augment_shift_s
            or cfg.augment_channel_drop
            or cfg.augment_spectral_mask
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``x (batch, n_chans, n_times)``; ``x`` itself is not changed."""
        cfg = self.cfg
        batch, n_chans, n_times = x.shape
        draw = {"generator": generator, "device": generator.device}
        if cfg.augment_shift_s:
            max_shift = min(round(cfg.augment_shift_s * self.sfreq), n_times - 1)
            shift = torch.randint(-max_shift, max_shift + 1, (batch, 1), **draw).to(x.device)
            source = (torch.arange(n_times, device=x.device) - shift).clamp(0, n_times - 1)
            x = x.gather(2, source[:, None, :].expand(batch, n_chans, n_times))
        if cfg.augment_scale:
            gain = (cfg.augment_scale * torch.randn(batch, 1, 1, **draw)).exp().to(x.device)
            x = x * gain
        if cfg.augment_channel_drop:
            keep = torch.rand(batch, n_chans, 1, **draw) >= cfg.augment_channel_drop
            x = x * keep.to(x.device, x.dtype)
        if cfg.augment_spectral_mask:
            mask = dataclasses.replace(self.mask, mask_ratio=cfg.augment_spectral_mask)
            x, _ = spectral_mask(x, self.sfreq, self.spectral, mask, generator)
        return x
