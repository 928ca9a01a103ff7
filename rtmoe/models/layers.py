"""Building blocks of SpecHi-Net: per-electrode convolutions and rotary attention.

Convolutions see tensors with electrodes folded into the batch, ``(batch * n_chans,
channels, n_times)``, so no kernel ever spans two electrodes. Attention layers unfold
them into ``(electrode, time)`` tokens, the one place where electrodes interact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """Left and right zero padding that keeps the length of a stride-1 convolution.

    An even kernel needs one more sample on the right (PyTorch's ``padding="same"``
    convention), e.g. ``(1, 2)`` for k = 4.
    """
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


class ConvBlock(nn.Module):
    """Conv1d ('same' length) → BatchNorm → GELU → Dropout on ``(N, in_chans, T)``.

    The convolution has no bias: the BatchNorm shift that follows makes one redundant.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.padding = same_padding(kernel_size, dilation)
        self.conv = nn.Conv1d(in_chans, out_chans, kernel_size, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm1d(out_chans)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, T)`` → ``(N, out_chans, T)``."""
        return self.drop(F.gelu(self.norm(self.conv(F.pad(x, self.padding)))))


class OutputConv(nn.Module):
    """A plain 'same'-length Conv1d with bias: the linear reconstruction heads."""

    def __init__(self, in_chans: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        self.padding = same_padding(kernel_size, dilation)
        self.conv = nn.Conv1d(in_chans, 1, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, T)`` → ``(N, 1, T)``."""
        return self.conv(F.pad(x, self.padding))


class DualPath(nn.Module):
    """Short and long dilated convolution paths in parallel, pooled, then merged.

    Each path is a :class:`ConvBlock` (k = ``short_kernel``; k = ``long_kernel``,
    dilation ``long_dilation``) followed by max-pooling by ``pool``; the two outputs are
    concatenated and mixed by a 1x1 ConvBlock back to ``out_chans``.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        short_kernel: int,
        long_kernel: int,
        long_dilation: int,
        dropout: float,
        pool: int = 1,
    ) -> None:
        super().__init__()
        self.short = ConvBlock(in_chans, out_chans, short_kernel, 1, dropout)
        self.long = ConvBlock(in_chans, out_chans, long_kernel, long_dilation, dropout)
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()
        self.merge = ConvBlock(2 * out_chans, out_chans, 1, 1, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, T)`` → ``(N, out_chans, T // pool)``."""
        short, long = self.pool(self.short(x)), self.pool(self.long(x))
        return self.merge(torch.cat([short, long], dim=1))


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Linear interpolation of ``(N, chans, T)`` to ``(N, chans, T * factor)``."""
    return F.interpolate(x, scale_factor=float(factor), mode="linear", align_corners=False)


def rotary_frequencies(head_dim: int, min_period_s: float, max_period_s: float) -> torch.Tensor:
    """Angular frequencies (rad/s), ``(head_dim // 2,)``, periods geometric min → max."""
    n_freqs = head_dim // 2
    if n_freqs == 1:
        periods = torch.tensor([min_period_s], dtype=torch.float64)
    else:
        periods = torch.logspace(
            math.log10(min_period_s), math.log10(max_period_s), n_freqs, dtype=torch.float64
        )
    return (2 * math.pi / periods).float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs ``(i, i + half)`` of ``x (..., L, head_dim)`` by the angles.

    ``cos``/``sin`` are ``(L, head_dim // 2)``; the rotation makes query·key depend on
    the time difference of the two tokens only.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RotaryEncoderLayer(nn.Module):
    """Post-norm transformer encoder layer over ``(electrode, time)`` tokens.

    Standard multi-head attention (``F.scaled_dot_product_attention``) with rotary
    position encoding on continuous time, then a ReLU feed-forward; each sub-layer is
    ``LayerNorm(x + Dropout(f(x)))``. Token ``(c, t)`` sits at ``t * token_period_s``
    seconds; electrodes carry no position, so the layer is equivariant to permuting them.

    Parameters
    ----------
    d_model, n_heads, dim_ff : int
        Token width, attention heads (``d_model / n_heads`` must be even), FF width.
    dropout : float
        On attention weights and both residual branches.
    token_period_s : float
        Time between consecutive tokens of one electrode, in seconds.
    min_period_s, max_period_s : float
        Range of the rotary periods, in seconds.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dim_ff: int,
        dropout: float,
        token_period_s: float,
        min_period_s: float,
        max_period_s: float,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.token_period_s = token_period_s
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, dim_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim_ff, d_model)
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        omega = rotary_frequencies(d_model // n_heads, min_period_s, max_period_s)
        self.register_buffer("omega", omega, persistent=False)

    def forward(self, x: torch.Tensor, n_chans: int) -> torch.Tensor:
        """``(batch * n_chans, d_model, t)`` → same shape, electrodes mixed by attention."""
        bc, d_model, n_t = x.shape
        batch = bc // n_chans
        tokens = x.reshape(batch, n_chans, d_model, n_t).transpose(2, 3)
        tokens = tokens.reshape(batch, n_chans * n_t, d_model)
        h = self.norm1(tokens + self.drop(self._attention(tokens, n_chans, n_t)))
        h = self.norm2(h + self.drop(self.ff(h)))
        h = h.reshape(batch, n_chans, n_t, d_model).transpose(2, 3)
        return h.reshape(bc, d_model, n_t)

    def _attention(self, tokens: torch.Tensor, n_chans: int, n_t: int) -> torch.Tensor:
        batch, n_tokens, d_model = tokens.shape
        head_dim = d_model // self.n_heads
        qkv = self.qkv(tokens).reshape(batch, n_tokens, 3, self.n_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, tokens, head_dim)
        time_s = torch.arange(n_t, device=tokens.device, dtype=torch.float32)
        angles = (time_s * self.token_period_s)[:, None] * self.omega  # (n_t, head_dim / 2)
        angles = angles.repeat(n_chans, 1)  # token order is electrode-major
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(out.transpose(1, 2).reshape(batch, n_tokens, d_model))
