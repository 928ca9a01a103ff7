"""SpecHi-Net: the U-shaped dual-path encoder-decoder of one SpecMoE expert (SPEC §3).

Input ``x`` is ``(batch, n_chans, n_times)`` in model units (100 µV). It is zero-padded
on the right to a multiple of 120 samples (the total down-sampling) and every output is
cropped back. Convolutions run on each electrode's own series with electrodes folded
into the batch, ``(batch * n_chans, channels, time)``; electrodes meet only in the
attention layers, whose tokens are ``(electrode, time)`` positions.

Layout with w = ``cfg.base_width`` (w = 32 is the paper; sizes in brackets for w = 32)::

    Down1   short path: k4  1→w, pool 5, w→2w, pool 3          } skips for Up3
            long path:  k65 d4, same widths and pools           }  (one per path)
            merge: concat(short, long) → 1x1 → 2w [64]                     ÷15
    Down2   DualPath 2w→2w, pool 4 → transformer (d 2w, FF 4w)    skip    ÷60
    Down3   DualPath 2w→4w, pool 2                                skip    ÷120
    Bottleneck  conv k8 4w→4w → transformer (d 4w, FF 8w)  = encoder features
    -------------------------------------------------------------------- decoder
            conv k8 4w→4w
    Up1     concat(·, Down3) 8w→4w→2w (k4), ×2 → transformer (d 2w) → aux_up1 (÷60)
    Up2     concat(·, Down2) DualPath 4w→2w, ×4                    → aux_up2 (÷15)
    Up3     per path p: concat(·, Down1 path p) 4w→2w, ×3, 2w→w, ×5, w→1 → recon_p

A DualPath stage runs a short (k4) and a long dilated (k65, dilation 4) ConvBlock on
the same input, max-pools each, concatenates them and mixes them with a 1x1 ConvBlock.
Every ConvBlock is Conv → BatchNorm → GELU → Dropout(0.2).

How the spec was read where it is ambiguous
-------------------------------------------
- "Every stage has two parallel paths": the paths run side by side inside each stage
  and are merged by concat + 1x1 at the stage's end (Inception-style), so the stage
  widths are the spec's (Down2 64→64, Down3 64→128). Down1 keeps its two paths whole
  (1→32→64 each) because Up3 takes a skip from *each* Down1 path: Up3's path p sees
  concat(Up2 output 64, Down1 path p 64) = 128 channels, 128→64→32→1, giving the two
  full-length reconstructions.
- Up1 (256→128→64) has the short path only: a dense k65 long path at 256→128 alone
  would hold 2.1 M weights, more than the paper's whole decoder, and at ÷120 its span
  (257 tokens = 154 s at 200 Hz) exceeds every window.
- "Between two k = 8 conv pairs": one k8 ConvBlock on each side of the bottleneck
  transformer; the first belongs to the encoder, the second to the decoder (the
  bottleneck transformer's output is what fine-tuning pools).
- Pooling is max-pooling (U-Net convention); up-sampling is linear interpolation
  followed by convolutions. Skips are the stages' pooled outputs at matching scales.
- Rotary angles use the token's time in seconds (``t_index * stride / sfreq``) with
  frequencies fixed in hertz, the same in pretraining and fine-tuning.
With w = 32 these choices give 2.95 M parameters, 1.34 M of them in the encoder
(paper: 2.93 M / 1.36 M).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rtmoe.config import ModelConfig
from rtmoe.models.layers import (
    ConvBlock,
    DualPath,
    OutputConv,
    RotaryEncoderLayer,
    upsample,
)

#: Total down-sampling of the encoder: inputs are padded to a multiple of this.
TIME_DIVISOR = 120
#: Down-sampling factors of the auxiliary outputs (aux_up1, aux_up2).
AUX_FACTORS = (60, 15)


class SpecHiNetOutput(NamedTuple):
    """Reconstructions of SpecHi-Net, each cropped to the input's length.

    recon_short, recon_long : (batch, n_chans, n_times)
        Full-length reconstructions from the short- and long-kernel Up3 paths.
    aux_up1 : (batch, n_chans, ceil(n_times / 60))
        Deep supervision after the Up1 transformer.
    aux_up2 : (batch, n_chans, ceil(n_times / 15))
        Deep supervision after Up2.
    """

    recon_short: torch.Tensor
    recon_long: torch.Tensor
    aux_up1: torch.Tensor
    aux_up2: torch.Tensor


class EncoderState(NamedTuple):
    """Bottleneck features and skips, electrodes folded: ``(batch * n_chans, ch, t)``."""

    features: torch.Tensor  # (B*C, 4w, P/120)
    skip1_short: torch.Tensor  # (B*C, 2w, P/15)
    skip1_long: torch.Tensor  # (B*C, 2w, P/15)
    skip2: torch.Tensor  # (B*C, 2w, P/60)
    skip3: torch.Tensor  # (B*C, 4w, P/120)


def aux_lengths(n_times: int) -> tuple[int, int]:
    """Lengths of ``aux_up1`` and ``aux_up2`` for an input of ``n_times`` samples."""
    return tuple(math.ceil(n_times / f) for f in AUX_FACTORS)


def pad_time(x: torch.Tensor, multiple: int = TIME_DIVISOR) -> torch.Tensor:
    """Zero-pad the last axis of ``x (..., n_times)`` on the right to a multiple."""
    n_pad = -x.shape[-1] % multiple
    return F.pad(x, (0, n_pad)) if n_pad else x


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; SpecHi-Net takes (batch, n_chans, n_times) "
            "with n_chans >= 1 and n_times >= 1 (add a batch axis with x[None])"
        )


def _transformer(cfg: ModelConfig, d_model: int, stride: int, sfreq: float) -> nn.Module:
    return RotaryEncoderLayer(
        d_model,
        cfg.n_heads,
        cfg.ff_mult * d_model,
        cfg.dropout,
        token_period_s=stride / sfreq,
        min_period_s=cfg.rotary_min_period_s,
        max_period_s=cfg.rotary_max_period_s,
    )


def _dual(cfg: ModelConfig, in_chans: int, out_chans: int, pool: int = 1) -> DualPath:
    return DualPath(
        in_chans,
        out_chans,
        cfg.short_kernel,
        cfg.long_kernel,
        cfg.long_dilation,
        cfg.dropout,
        pool,
    )


class Down1Path(nn.Module):
    """One Down1 path: ConvBlock 1→w, pool 5, ConvBlock w→2w, pool 3 (÷15)."""

    def __init__(self, width: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = ConvBlock(1, width, kernel_size, dilation, dropout)
        self.pool1 = nn.MaxPool1d(5)
        self.conv2 = ConvBlock(width, 2 * width, kernel_size, dilation, dropout)
        self.pool2 = nn.MaxPool1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, T)`` → ``(N, 2w, T / 15)``."""
        return self.pool2(self.conv2(self.pool1(self.conv1(x))))


class Up3Path(nn.Module):
    """One Up3 path: ConvBlock 4w→2w, ×3, ConvBlock 2w→w, ×5, linear conv w→1 (×15)."""

    def __init__(self, width: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = ConvBlock(4 * width, 2 * width, kernel_size, dilation, dropout)
        self.conv2 = ConvBlock(2 * width, width, kernel_size, dilation, dropout)
        self.head = OutputConv(width, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 4w, T / 15)`` → ``(N, 1, T)``."""
        return self.head(upsample(self.conv2(upsample(self.conv1(x), 3)), 5))


class SpecHiNetEncoder(nn.Module):
    """Down1-Down3 and the bottleneck: what a fine-tuned SpecMoE expert keeps.

    Parameters
    ----------
    cfg : ModelConfig
        Widths, kernels, heads, dropout and rotary periods.
    sfreq : float
        Sampling rate of the input in Hz; sets the rotary time scale.
    """

    def __init__(self, cfg: ModelConfig, sfreq: float = 200.0) -> None:
        super().__init__()
        w = cfg.base_width
        self.feature_dim = 4 * w
        self.down1_short = Down1Path(w, cfg.short_kernel, 1, cfg.dropout)
        self.down1_long = Down1Path(w, cfg.long_kernel, cfg.long_dilation, cfg.dropout)
        self.down1_merge = ConvBlock(4 * w, 2 * w, 1, 1, cfg.dropout)
        self.down2 = _dual(cfg, 2 * w, 2 * w, pool=4)
        self.attn2 = _transformer(cfg, 2 * w, 60, sfreq)
        self.down3 = _dual(cfg, 2 * w, 4 * w, pool=2)
        self.bottleneck_conv = ConvBlock(4 * w, 4 * w, cfg.bottleneck_kernel, 1, cfg.dropout)
        self.bottleneck_attn = _transformer(cfg, 4 * w, TIME_DIVISOR, sfreq)

    def encode(self, x_padded: torch.Tensor) -> EncoderState:
        """Features and skips of ``x_padded (batch, n_chans, P)``, P a multiple of 120."""
        batch, n_chans, n_padded = x_padded.shape
        x = x_padded.reshape(batch * n_chans, 1, n_padded)
        skip1_short, skip1_long = self.down1_short(x), self.down1_long(x)
        h = self.down1_merge(torch.cat([skip1_short, skip1_long], dim=1))
        skip2 = self.attn2(self.down2(h), n_chans)
        skip3 = self.down3(skip2)
        features = self.bottleneck_attn(self.bottleneck_conv(skip3), n_chans)
        return EncoderState(features, skip1_short, skip1_long, skip2, skip3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features ``(batch, n_chans, feature_dim, ceil(n_times / 120))``."""
        _check_input(x)
        batch, n_chans, _ = x.shape
        features = self.encode(pad_time(x)).features
        return features.reshape(batch, n_chans, self.feature_dim, features.shape[-1])


class SpecHiNetDecoder(nn.Module):
    """Bottleneck output conv, Up1-Up3 and the auxiliary heads; dropped for fine-tuning."""

    def __init__(self, cfg: ModelConfig, sfreq: float = 200.0) -> None:
        super().__init__()
        w, k_short = cfg.base_width, cfg.short_kernel
        self.bottleneck_conv = ConvBlock(4 * w, 4 * w, cfg.bottleneck_kernel, 1, cfg.dropout)
        self.up1 = nn.Sequential(
            ConvBlock(8 * w, 4 * w, k_short, 1, cfg.dropout),
            ConvBlock(4 * w, 2 * w, k_short, 1, cfg.dropout),
        )
        self.attn_up1 = _transformer(cfg, 2 * w, 60, sfreq)
        self.aux_up1 = OutputConv(2 * w, 1)
        self.up2 = _dual(cfg, 4 * w, 2 * w)
        self.aux_up2 = OutputConv(2 * w, 1)
        self.up3_short = Up3Path(w, k_short, 1, cfg.dropout)
        self.up3_long = Up3Path(w, cfg.long_kernel, cfg.long_dilation, cfg.dropout)

    def forward(self, state: EncoderState, n_chans: int) -> tuple[torch.Tensor, ...]:
        """Folded ``(B*C, 1, ·)`` recon_short, recon_long (P), aux_up1 (P/60), aux_up2 (P/15)."""
        h = self.up1(torch.cat([self.bottleneck_conv(state.features), state.skip3], dim=1))
        h = self.attn_up1(upsample(h, 2), n_chans)
        aux1 = self.aux_up1(h)
        h = upsample(self.up2(torch.cat([h, state.skip2], dim=1)), 4)
        aux2 = self.aux_up2(h)
        recon_short = self.up3_short(torch.cat([h, state.skip1_short], dim=1))
        recon_long = self.up3_long(torch.cat([h, state.skip1_long], dim=1))
        return recon_short, recon_long, aux1, aux2


class SpecHiNet(nn.Module):
    """One SpecMoE expert: dual-path U-Net over time with electrode-token attention.

    Parameters
    ----------
    cfg : ModelConfig
        Hyper-parameters; see :mod:`rtmoe.models.registry` for the named sizes.
    sfreq : float
        Sampling rate of the input in Hz (200 in the paper); sets the rotary time scale.

    Attributes
    ----------
    encoder : SpecHiNetEncoder
        What ``forward_features`` runs; keep it alone for fine-tuning.
    decoder : SpecHiNetDecoder
    feature_dim : int
        D of the bottleneck features (``4 * cfg.base_width``; 128 for ``paper``).
    """

    def __init__(self, cfg: ModelConfig, sfreq: float = 200.0) -> None:
        super().__init__()
        if not sfreq > 0:
            raise ValueError(f"sfreq={sfreq} must be > 0 Hz (the input's sampling rate)")
        self.cfg = cfg
        self.sfreq = float(sfreq)
        self.encoder = SpecHiNetEncoder(cfg, sfreq)
        self.decoder = SpecHiNetDecoder(cfg, sfreq)
        self.feature_dim = self.encoder.feature_dim

    def forward(self, x: torch.Tensor) -> SpecHiNetOutput:
        """Reconstruct ``x (batch, n_chans, n_times)``; see :class:`SpecHiNetOutput`."""
        _check_input(x)
        batch, n_chans, n_times = x.shape
        state = self.encoder.encode(pad_time(x))
        outputs = self.decoder(state, n_chans)
        lengths = (n_times, n_times, *aux_lengths(n_times))
        return SpecHiNetOutput(
            *(y.reshape(batch, n_chans, -1)[..., :n] for y, n in zip(outputs, lengths, strict=True))
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(batch, n_chans, feature_dim, ceil(n_times / 120))``."""
        return self.encoder(x)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that ``forward_features`` uses (the fine-tuned part)."""
        return self.encoder.parameters()
