"""Map a stream's channel labels onto the electrodes a model was trained on.

Matching is by name, never by position: first exactly (ignoring case and surrounding
spaces), then by a canonical form that drops an ``EEG`` type prefix, a common-reference
suffix (``-REF``, ``-LE``, ``-AR``, ``-AVG``) and trailing dots, and maps the modern
10-10 temporal names to the older 10-20 ones the pretraining corpus uses (T7→T3, T8→T4,
P7→T5, P8→T6). A bipolar label such as ``A1-Cz`` is kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

#: Modern 10-10 names and the older 10-20 names of the same electrode sites.
CHANNEL_ALIASES: dict[str, str] = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
#: Policies for model channels the stream lacks.
FILL_POLICIES: tuple[str, ...] = ("error", "zeros")

_PREFIX = re.compile(r"^EEG[\s:_-]+")
_REF_SUFFIX = re.compile(r"[\s_-]+(REF|LE|AR|AVG|AVERAGE)$")


class ChannelError(ValueError):
    """The stream lacks channels the model needs; the message lists both sides."""


def canonical_name(name: str) -> str:
    """Canonical upper-case electrode label: ``"EEG T7-REF"`` -> ``"T3"``."""
    canon = name.strip().upper().rstrip(".")
    canon = _REF_SUFFIX.sub("", _PREFIX.sub("", canon)).strip()
    return CHANNEL_ALIASES.get(canon, canon)


def map_channels(
    stream_names: Sequence[str], model_names: Sequence[str], fill: str = "error"
) -> np.ndarray:
    """Row of the stream feeding each model channel.

    Parameters
    ----------
    stream_names : sequence of str
        The stream's channel labels, in stream order.
    model_names : sequence of str
        The model's electrodes (``task.ch_names``), in input order.
    fill : {"error", "zeros"}
        What to do with model channels the stream lacks: raise, or feed zeros (in
        model units, i.e. a flat channel; reported in the runtime's status).

    Returns
    -------
    ndarray, shape (len(model_names),), int64
        Stream row of each model channel; -1 where it is filled with zeros.

    Raises
    ------
    ChannelError
        Some model channels are missing (``fill="error"``), or two model channels match
        one stream channel; the message lists missing and available names.
    """
    if fill not in FILL_POLICIES:
        raise ValueError(f"fill={fill!r} is not a policy; use one of {FILL_POLICIES}")
    exact = {name.strip().upper(): i for i, name in reversed(list(enumerate(stream_names)))}
    canon = {canonical_name(name): i for i, name in reversed(list(enumerate(stream_names)))}
    index = np.full(len(model_names), -1, dtype=np.int64)
    for k, name in enumerate(model_names):
        row = exact.get(name.strip().upper(), canon.get(canonical_name(name)))
        if row is not None:
            index[k] = row
    missing = [name for name, row in zip(model_names, index, strict=True) if row < 0]
    if missing and fill == "error":
        raise ChannelError(
            f"the stream lacks model channel(s) {missing}; the stream has "
            f"{list(stream_names)} and the model needs {list(model_names)}. Rename the "
            "channels in the amplifier's LSL app, pick the right stream, or pass "
            "--fill zeros to feed flat channels in their place"
        )
    used = index[index >= 0]
    if used.size != np.unique(used).size:
        raise ChannelError(
            f"model channels {list(model_names)} match the stream channels "
            f"{[stream_names[i] for i in index if i >= 0]}: one stream channel would feed "
            "two model inputs; give the stream distinct labels"
        )
    return index
