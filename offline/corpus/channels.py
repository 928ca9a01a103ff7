"""Matching electrode labels across files: "EEG FP1-REF", "Fp1." and "FP1" are one name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rtmoe.offline.corpus import InputError
from rtmoe.runtime.channels import canonical_name


def match_channels(ch_names: Sequence[str], channels: Sequence[str], path: Path) -> list[int]:
    """Positions in ``ch_names`` of ``channels``, matched by ``canonical_name``.

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
        canon = canonical_name(name)
        if canon in index:
            raise InputError(
                f"{path}: channels {ch_names[index[canon]]!r} and {name!r} both match "
                f"{canon}; drop one of them from the file"
            )
        index[canon] = i
    wanted = [canonical_name(c) for c in channels]
    missing = [c for c, w in zip(channels, wanted, strict=True) if w not in index]
    if missing:
        raise InputError(
            f"{path}: missing channels {missing}; the file has {list(ch_names)}; "
            "use recordings with these electrodes or change corpus.channels"
        )
    return [index[w] for w in wanted]
