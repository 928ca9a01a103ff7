"""The LSL re-publisher (``rtmoe stream --plugin lsl-out``): decodes as an LSL stream.

LabRecorder then records the decodes in the same XDF file as the EEG and the cue
markers, on one clock. Each decode is one sample of an irregular-rate float32 stream:

- channels ``0 … n_outputs−1``: the class probabilities, labelled with the class names;
- channel ``n_outputs`` (label ``label_index``): index of the published ``label``.

Its timestamp is the decode's ``window_last_lsl_s``: the LSL time of the EEG sample
that completed the window. The decode is thereby aligned with the data it describes
(not with when the computation finished, which ``latency_ms`` already reports), on the
same LSL clock as the EEG, so an offline analysis of the XDF file needs no extra
synchronisation. Needs pylsl only.
"""

from __future__ import annotations

import numpy as np

from rtmoe.runtime.plugins import PluginContext
from rtmoe.transport import DecodeMessage


class LslOut:
    """A sink that pushes every published decode to an LSL outlet.

    Parameters
    ----------
    name : str
        LSL stream name.
    type : str
        LSL stream type.
    source_id : str
        LSL source_id; empty: ``rtmoe-decodes-<model_id>-<subject_id or none>``, stable
        across restarts with the same model and subject so that recorders reconnect.

    Attributes
    ----------
    info : pylsl.StreamInfo or None
        The stream's description once opened.
    """

    def __init__(self, name: str = "rtmoe-decodes", type: str = "Decodes", source_id: str = ""):
        if not name:
            raise ValueError("name='' is empty; pass an LSL stream name, e.g. rtmoe-decodes")
        self.name, self.type, self.source_id = name, type, source_id
        self.info = None
        self._outlet = None
        self._sample = np.zeros(0, dtype=np.float32)

    @property
    def network_visible(self) -> str:
        """What this sink shows other machines (``rtmoe stream`` needs ``--allow-remote``)."""
        return (
            f"an LSL stream {self.name!r} (type {self.type!r}) carrying every decode, "
            "discoverable and readable by any machine on the local network"
        )

    def open(self, context: PluginContext) -> None:
        import pylsl

        labels = context.labels
        subject = context.subject_id or "none"
        source_id = self.source_id or f"rtmoe-decodes-{context.model_id}-{subject}"
        info = pylsl.StreamInfo(
            self.name, self.type, len(labels) + 1, pylsl.IRREGULAR_RATE, "float32", source_id
        )
        info.set_channel_labels([*labels, "label_index"])
        desc = info.desc()
        desc.append_child_value("model_id", context.model_id)
        desc.append_child_value("subject_id", context.subject_id or "")
        desc.append_child_value("timestamps", "window_last_lsl_s")
        self.info = info
        self._outlet = pylsl.StreamOutlet(info)
        self._sample = np.zeros(len(labels) + 1, dtype=np.float32)

    def send(self, msg: DecodeMessage) -> None:
        if self._outlet is None:
            raise RuntimeError("LslOut.send before open(); the runtime calls open() first")
        sample = self._sample
        sample[:-1] = msg.probabilities
        sample[-1] = msg.labels.index(msg.label)
        self._outlet.push_sample(sample, msg.window_last_lsl_s)

    def close(self) -> None:
        self._outlet = None  # liblsl destroys the outlet with its last reference
