"""Calibration: cue-locked trials recorded live (or read from a file), checked, and fitted
into a versioned subject profile that ``rtmoe stream --subject`` loads.

- `calibration.session`: the append-only on-disk session (raw samples, timestamps, markers)
- `calibration.record`: filling a session from LSL streams or from an annotated recording
- `calibration.epochs`: trial windows cut by timestamp from the runtime's preprocessing
- `calibration.quality`: flat/noisy channels, line noise, rate, jitter, rejected trials
- `calibration.fit`: alignment and fine-tuning chosen by cross-validation
- profiles live in the trunk (`rtmoe.profiles`), since `rtmoe stream --subject` loads them
- `calibration.cli`: ``rtmoe calibrate`` and ``rtmoe profiles``
"""
