"""Named SpecHi-Net sizes and the weight initialisation of SPEC §3.

| name  | base_width | heads | total params | encoder params | use                        |
|-------|-----------:|------:|-------------:|---------------:|----------------------------|
| tiny  |          4 |     2 |      47.3 k  |       21.6 k   | fast tests                 |
| small |         16 |     4 |     0.741 M  |      0.336 M   | CPU default (real time)    |
| paper |         32 |     8 |     2.952 M  |      1.339 M   | SPEC §3 (paper: 2.93/1.36) |

Every size has the same architecture and kernels (k4; k65 dilation 4; k8 bottleneck);
only the widths and head counts change. ``small`` is sized for the live path: three small
encoders on a 4 s, 19-channel window at 200 Hz take about 20-26 ms on one CPU core
(median, eager PyTorch, batch 1), leaving room for the STFT, gate and head in a hop.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtmoe.checkpoint import EXPERT_KIND, CheckpointError, load_checkpoint, load_weights
from rtmoe.config import ConfigError, ModelConfig
from rtmoe.models.spechinet import SpecHiNet

_SIZES: dict[str, ModelConfig] = {
    "tiny": ModelConfig(name="tiny", base_width=4, n_heads=2),
    "small": ModelConfig(name="small", base_width=16, n_heads=4),
    "paper": ModelConfig(name="paper", base_width=32, n_heads=8),
}

#: Names accepted by :func:`model_config` and :func:`build_model`, smallest first.
MODEL_SIZES: tuple[str, ...] = tuple(_SIZES)


def model_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a named size (one of :data:`MODEL_SIZES`)."""
    try:
        return _SIZES[name]
    except KeyError:
        raise ConfigError(
            f"model name {name!r} is unknown; valid names are {', '.join(MODEL_SIZES)}"
        ) from None


def build_model(
    name_or_cfg: str | ModelConfig, sfreq: float = 200.0, init_std: float = 0.02
) -> SpecHiNet:
    """A freshly initialised SpecHi-Net from a size name or a config.

    Parameters
    ----------
    name_or_cfg : str or ModelConfig
        A name from :data:`MODEL_SIZES` or a full config.
    sfreq : float
        Sampling rate of the input in Hz.
    init_std : float
        Standard deviation of :func:`init_weights`.
    """
    cfg = model_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    if not isinstance(cfg, ModelConfig):
        raise TypeError(
            f"name_or_cfg={name_or_cfg!r} must be a size name ({', '.join(MODEL_SIZES)}) "
            "or a ModelConfig"
        )
    model = SpecHiNet(cfg, sfreq)
    init_weights(model, init_std)
    return model


def init_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """SPEC §3 initialisation, in place: conv and linear weights N(0, std), biases 0.

    BatchNorm scales are drawn from N(1, std) and shifts set to 0 (the DCGAN reading of
    "BN init N(0, 0.02)": a scale near 0 would zero every activation after each BN, so
    the signal could not pass through the deep stack). LayerNorm keeps (1, 0).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            nn.init.normal_(module.weight, 1.0, std)
            nn.init.zeros_(module.bias)
    return model


def load_expert(
    directory: str | Path,
    *,
    kind: str = EXPERT_KIND,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
) -> SpecHiNet:
    """Build a pretrained expert from its checkpoint's saved config; load weights strictly.

    Parameters
    ----------
    directory : str or Path
        A checkpoint written by ``rtmoe pretrain`` (or its run folder with ``LATEST``).
    kind : str
        Expected checkpoint kind; another kind is a ``CheckpointError`` naming both.
    model_name : str, optional
        Expected size (e.g. ``"small"``); another size is an error naming both.
    device : str or torch.device
        Where the returned model lives; it is in eval mode.
    """
    ckpt = load_checkpoint(directory)
    if ckpt.kind != kind:
        raise CheckpointError(
            f"checkpoint {ckpt.path} is a {ckpt.kind!r} checkpoint, not the {kind!r} "
            f"asked for; pass a {kind!r} checkpoint or kind={ckpt.kind!r}"
        )
    if model_name is not None and ckpt.config.model.name != model_name:
        raise CheckpointError(
            f"checkpoint {ckpt.path} holds model size {ckpt.config.model.name!r}, not "
            f"{model_name!r}; pass a {model_name!r} checkpoint or model_name="
            f"{ckpt.config.model.name!r}"
        )
    model = build_model(ckpt.config.model, sfreq=ckpt.config.signal.sfreq)
    load_weights(model, ckpt, model_name=ckpt.config.model.name)
    return model.to(device).eval()
