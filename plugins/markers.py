"""Cue markers for rtmoe: one LSL string stream of type ``Markers``.

Experiment software sends a marker when it presents a cue; ``rtmoe calibrate`` epochs
the EEG around each marker by its LSL timestamp. The marker text is the class label
(e.g. ``"left_hand"``), as in the marker stream of ``rtmoe play``. Needs pylsl only.
"""

from __future__ import annotations

import uuid


class MarkerOutlet:
    """An LSL outlet of string markers (1 channel, irregular rate, type ``Markers``).

    Parameters
    ----------
    name : str
        LSL stream name that ``rtmoe calibrate`` resolves.
    source_id : str, optional
        Stable id so that receivers recover the stream after the experiment restarts;
        defaults to a random one.
    """

    def __init__(self, name: str = "rtmoe-cues", source_id: str | None = None) -> None:
        if not name:
            raise ValueError("name='' is empty; pass an LSL stream name, e.g. 'rtmoe-cues'")
        try:
            import pylsl
        except (ImportError, RuntimeError) as err:
            raise ImportError(
                f"MarkerOutlet needs pylsl and its liblsl library ({err}); "
                "install it with `pip install pylsl`"
            ) from None
        self._local_clock = pylsl.local_clock
        self.name = name
        self.source_id = source_id or f"{name}-{uuid.uuid4().hex[:8]}"
        info = pylsl.StreamInfo(
            name, "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string, self.source_id
        )
        self._outlet = pylsl.StreamOutlet(info)
        self.n_sent = 0

    def send(self, marker: str, timestamp: float | None = None) -> float:
        """Push ``marker`` stamped ``timestamp`` (LSL seconds; default now); returns the stamp.

        Call it right after the cue appears (e.g. after PsychoPy's ``win.flip()``, or
        pass the flip time converted to LSL time) so the stamp is the cue onset.
        """
        if not isinstance(marker, str) or not marker:
            raise ValueError(f"marker={marker!r} must be a non-empty string, e.g. a class label")
        if self._outlet is None:
            raise RuntimeError("send() after close(); create a new MarkerOutlet")
        stamp = self._local_clock() if timestamp is None else float(timestamp)
        self._outlet.push_sample([marker], stamp)
        self.n_sent += 1
        return stamp

    def have_consumers(self) -> bool:
        """Whether any inlet (e.g. ``rtmoe calibrate`` or LabRecorder) is connected."""
        return self._outlet is not None and self._outlet.have_consumers()

    def close(self) -> None:
        """Remove the stream from the network; safe to call twice."""
        self._outlet = None

    def __enter__(self) -> MarkerOutlet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
