"""rtmoe: real-time SpecMoE EEG decoding."""

__version__ = "0.1.0"
