"""SpecHi-Net experts and the registry of named sizes."""

from rtmoe.models.registry import (
    MODEL_SIZES,
    build_model,
    init_weights,
    load_expert,
    model_config,
)
from rtmoe.models.spechinet import (
    AUX_FACTORS,
    TIME_DIVISOR,
    SpecHiNet,
    SpecHiNetEncoder,
    SpecHiNetOutput,
    aux_lengths,
)

__all__ = [
    "AUX_FACTORS",
    "MODEL_SIZES",
    "TIME_DIVISOR",
    "SpecHiNet",
    "SpecHiNetEncoder",
    "SpecHiNetOutput",
    "aux_lengths",
    "build_model",
    "init_weights",
    "load_expert",
    "model_config",
]
