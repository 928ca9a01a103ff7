"""The live decoder: LSL source → preprocessing → device ring → engine → ZeroMQ."""

from rtmoe.runtime.channels import ChannelError, canonical_name, map_channels
from rtmoe.runtime.loop import STAGES, RunSummary, Runtime
from rtmoe.runtime.preprocess import StreamPreprocessor, preprocess_whole

__all__ = [
    "STAGES",
    "ChannelError",
    "RunSummary",
    "Runtime",
    "StreamPreprocessor",
    "canonical_name",
    "map_channels",
    "preprocess_whole",
]
