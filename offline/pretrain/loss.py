"""The pretraining loss of SPEC §4: reconstruction of the ORIGINAL signal (pure maths).

SpecHi-Net's four outputs (``recon_short``, ``recon_long``, ``aux_up1``, ``aux_up2``)
are each scored by MSE plus a weighted STFT-magnitude term; the auxiliary heads against
block means of the target. :func:`identity_output` is the baseline "prediction" (the
masked input itself) that validation reports beside the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtmoe.config import PretrainConfig
from rtmoe.dsp.spectral import frame_params, stft
from rtmoe.models.spechinet import AUX_FACTORS, SpecHiNetOutput

OUTPUT_NAMES = SpecHiNetOutput._fields  # recon_short, recon_long, aux_up1, aux_up2


def loss_stft_params(n_times: int, cfg: PretrainConfig) -> tuple[int, int]:
    """Frame length and hop of the spectral loss for an output of ``n_times`` samples.

    ``cfg.loss_n_fft`` / ``cfg.loss_hop`` samples (512 / 256), shrunk for shorter outputs
    by the rule of ``rtmoe.dsp.spectral.frame_params`` (largest even ``n_fft <= n_times``,
    same hop ratio).
    """
    return frame_params(n_times, cfg.loss_n_fft, cfg.loss_hop)


def output_loss(pred: torch.Tensor, target: torch.Tensor, cfg: PretrainConfig) -> torch.Tensor:
    """MSE + ``cfg.spectral_loss_weight`` × mean squared STFT-magnitude difference.

    Parameters
    ----------
    pred, target : Tensor, shape (batch, n_chans, n_times)
        Model units; computed in float32 whatever the input dtype.

    Returns
    -------
    Tensor, scalar
        The spectral term is a mean over batch, channels, bins and frames; it is left out
        for outputs under 4 samples (no meaningful spectrum).
    """
    pred, target = pred.float(), target.float()
    loss = F.mse_loss(pred, target)
    n_times = target.shape[-1]
    if cfg.spectral_loss_weight and n_times >= 4:
        n_fft, hop = loss_stft_params(n_times, cfg)
        diff = stft(pred, n_fft, hop).abs() - stft(target, n_fft, hop).abs()
        loss = loss + cfg.spectral_loss_weight * diff.square().mean()
    return loss


def aux_target(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x (..., n_times)`` resampled to an auxiliary head's grid: block means.

    Sample j of an auxiliary output stands for input samples ``[j·factor, (j+1)·factor)``
    (the model zero-pads on the right and pools by ``factor``), so the target is the mean
    of x over that block; the last, partial block averages only the samples it holds.

    Returns
    -------
    Tensor, shape (..., ceil(n_times / factor))
    """
    lead, n_times = x.shape[:-1], x.shape[-1]
    pooled = F.avg_pool1d(x.reshape(-1, 1, n_times), factor, factor, ceil_mode=True)
    return pooled.reshape(*lead, -1)


def reconstruction_loss(
    output: SpecHiNetOutput, target: torch.Tensor, cfg: PretrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pretraining loss of SpecHi-Net's four outputs against the original signal.

    ``short + long + w1·aux_up1 + w2·aux_up2`` with ``(w1, w2) = cfg.aux_weights``
    (0.3, 0.2), each term :func:`output_loss`; auxiliary targets are :func:`aux_target`.

    Parameters
    ----------
    output : SpecHiNetOutput
        recon_short, recon_long (batch, n_chans, n_times), aux_up1, aux_up2.
    target : Tensor, shape (batch, n_chans, n_times)
        The ORIGINAL (unmasked) signal.
    cfg : PretrainConfig

    Returns
    -------
    total : Tensor, scalar float32
    parts : dict of str to float
        The unweighted loss of every output.
    """
    weights = (1.0, 1.0, *cfg.aux_weights)
    factors = (1, 1, *AUX_FACTORS)
    total = torch.zeros((), device=target.device)
    parts: dict[str, float] = {}
    for name, weight, factor in zip(OUTPUT_NAMES, weights, factors, strict=True):
        pred = getattr(output, name)
        goal = target if factor == 1 else aux_target(target, factor)
        if pred.shape != goal.shape:
            raise ValueError(
                f"output {name} has shape {tuple(pred.shape)} but the target needs "
                f"{tuple(goal.shape)}; the model's output lengths do not follow AUX_FACTORS"
            )
        loss = output_loss(pred, goal, cfg)
        total = total + weight * loss
        parts[name] = float(loss.detach())
    return total, parts


def identity_output(x_masked: torch.Tensor) -> SpecHiNetOutput:
    """The baseline "prediction": the masked input itself, aux heads as block means."""
    aux = (aux_target(x_masked, f) for f in AUX_FACTORS)
    return SpecHiNetOutput(x_masked, x_masked, *aux)
