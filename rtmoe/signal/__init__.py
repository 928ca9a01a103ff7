"""The one signal path from raw samples to model input, shared by training and live use.

``channels`` matches channel names, ``chain`` repairs, resamples, filters, aligns and
scales (streaming `SignalChain`; `preprocess_recording` and `preprocess_trials` are that
same chain over whole recordings), ``alignment`` holds a subject's channel map. Imports
numpy and scipy only: no model, stream, engine or transport.
"""

from rtmoe.signal.alignment import apply_alignment
from rtmoe.signal.chain import (
    MAX_ABS_UV,
    SignalChain,
    continuity_breaks,
    preprocess_recording,
    preprocess_trials,
    resampler_delay_s,
)
from rtmoe.signal.channels import FILL_POLICIES, ChannelError, canonical_name, map_channels

__all__ = [
    "FILL_POLICIES",
    "MAX_ABS_UV",
    "ChannelError",
    "SignalChain",
    "apply_alignment",
    "canonical_name",
    "continuity_breaks",
    "map_channels",
    "preprocess_recording",
    "preprocess_trials",
    "resampler_delay_s",
]
