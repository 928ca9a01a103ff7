"""Calibration: cue-locked trials recorded live (or read from a file), checked, and fitted
into a versioned subject profile that ``rtmoe stream --subject`` loads.

- `rtmoe.calibration.session`: the append-only on-disk session (raw samples, timestamps, markers)
- `rtmoe.calibration.record`: filling a session from LSL streams or from an annotated recording
- `rtmoe.calibration.epochs`: trial windows cut by timestamp from the runtime's preprocessing
- `rtmoe.calibration.quality`: flat/noisy channels, line noise, rate, jitter, rejected trials
- `rtmoe.calibration.fit`: alignment and fine-tuning chosen by cross-validation
- profiles live in the trunk (`rtmoe.profiles`), since `rtmoe stream --subject` loads them
- `rtmoe.calibration.cli`: ``rtmoe calibrate`` and ``rtmoe profiles``
"""
