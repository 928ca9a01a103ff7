"""Matching electrode labels across files: "EEG FP1-REF", "Fp1." and "FP1" are one name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from offline.corpus import InputError

#: Modern 10-20 names mapped to the older ones used by ``TEN_TWENTY_19``.
CHANNEL_ALIASES: dict[str, str] = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}

# "EEG FP1-REF" (TUH), "Fp1." (PhysioNet EDF padding), "EEG:Cz", "Fz-AVG": the type
# prefix, padding dots and a common-reference suffix are dropped; a bipolar pair
# ("A1-Cz") keeps its second electrode.
_PREFIX = re.compile(r"^EEG[\s:_-]+")
_REF_SUFFIX = re.compile(r"[\s_-]+(REF|LE|AR|AVG|AVERAGE)$")


def normalise_channel_name(name: str) -> str:
    """Canonical upper-case form of an electrode label: "EEG T7-REF" -> "T3"."""
    canon = name.strip().upper().rstrip(".")
    canon = _REF_SUFFIX.sub("", _PREFIX.sub("", canon)).strip()
    return CHANNEL_ALIASES.get(canon, canon)


def match_channels(ch_names: Sequence[str], channels: Sequence[str], path: Path) -> list[int]:
    """Positions in ``ch_names`` of ``channels``, matched by ``normalise_channel_name``.

    Parameters
    ----------
    ch_names : sequence of str
        The file's labels.
    channels : sequence of str
        The wanted electrodes, in output order.
    path : Path
        The file, named in errors.

    Returns
    -------
    list of int, length len(channels)

    Raises
    ------
    InputError
        Channels are missing (listing exactly those, and the file's channels) or two of
        the file's channels match the same name.
    """
    index: dict[str, int] = {}
    for i, name in enumerate(ch_names):
        canon = normalise_channel_name(name)
        if canon in index:
            raise InputError(
                f"{path}: channels {ch_names[index[canon]]!r} and {name!r} both match "
                f"{canon}; drop one of them from the file"
            )
        index[canon] = i
    wanted = [normalise_channel_name(c) for c in channels]
    missing = [c for c, w in zip(channels, wanted, strict=True) if w not in index]
    if missing:
        raise InputError(
            f"{path}: missing channels {missing}; the file has {list(ch_names)}; "
            "use recordings with these electrodes or change corpus.channels"
        )
    return [index[w] for w in wanted]
