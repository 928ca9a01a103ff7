"""The one LSL marker inlet: cues from experiment software, as rtmoe compares them.

`rtmoe demo` (scoring), `rtmoe calibrate` (recording cues) and the benches read markers
through `MarkerInlet`, so every consumer sees the same labels (`marker_label`) on the
same clock (LSL time, clock-corrected).
"""

from __future__ import annotations

import numpy as np


def marker_label(value: object) -> str:
    """Marker text as rtmoe compares it: numbers lose a ``.0`` (``2.0`` -> ``"2"``)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


class MarkerInlet:
    """An LSL marker inlet (string or numeric, first channel), clock-corrected.

    Parameters
    ----------
    info : pylsl.StreamInfo
        A resolved marker stream (`rtmoe.stream.lsl.resolve_stream`).
    open_timeout_s : float
    """

    def __init__(self, info, open_timeout_s: float = 5.0) -> None:
        import pylsl

        from rtmoe.stream.lsl import LslError, describe_stream

        self._inlet = pylsl.StreamInlet(
            info, max_buflen=360, recover=True, processing_flags=pylsl.proc_clocksync
        )
        try:
            self._inlet.open_stream(timeout=open_timeout_s)
        except Exception as err:
            raise LslError(
                f"could not open marker stream {describe_stream(info)} within "
                f"{open_timeout_s} s: {err}; is the experiment software still running?"
            ) from err
        # The first clock-offset estimate blocks; take it now, not at the first pull.
        self._inlet.time_correction(timeout=open_timeout_s)
        self.name = info.name()
        #: LSL time once open: cues pushed from here on are received (none before).
        self.opened_lsl_s = float(pylsl.local_clock())

    def pull(self) -> list[tuple[float, str]]:
        """Markers received since the last pull: (LSL time, label), oldest first."""
        samples, stamps = self._inlet.pull_chunk(timeout=0.0)
        return [(float(t), marker_label(s[0])) for s, t in zip(samples or [], stamps, strict=True)]

    def close(self) -> None:
        self._inlet.close_stream()
