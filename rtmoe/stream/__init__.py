"""Live signal path: LSL source, device ring buffer, incremental sliding Welch PSD."""

from rtmoe.stream.lsl import LslError, LslSource, SourceStatus, resolve_stream
from rtmoe.stream.ring import RingBuffer
from rtmoe.stream.sliding import SlidingWelch

__all__ = [
    "LslError",
    "LslSource",
    "RingBuffer",
    "SlidingWelch",
    "SourceStatus",
    "resolve_stream",
]
