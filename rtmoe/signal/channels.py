"""The one channel matcher: which stream or file channel feeds each model electrode.

Matching is by name, never by position: first exactly (ignoring case and surrounding
spaces), then by a canonical form that drops an ``EEG`` type prefix, a common-reference
suffix (``-REF``, ``-LE``, ``-AR``, ``-AVG``) and trailing dots, and maps the modern
10-10 temporal names to the older 10-20 ones the pretraining corpus uses (T7→T3, T8→T4,
P7→T5, P8→T6). A bipolar label such as ``A1-Cz`` is kept whole. Live streams, recordings
read for pretraining, trial files for fine-tuning and evaluation all go through
`map_channels`, so a montage that decodes live also trains and evaluates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from rtmoe.errors import UserError

#: Modern 10-10 names and the older 10-20 names of the same electrode sites.
CHANNEL_ALIASES: dict[str, str] = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
#: Policies for model channels the stream lacks.
FILL_POLICIES: tuple[str, ...] = ("error", "zeros")

_PREFIX = re.compile(r"^EEG[\s:_-]+")
_REF_SUFFIX = re.compile(r"[\s_-]+(REF|LE|AR|AVG|AVERAGE)$")


class ChannelError(UserError, ValueError):
    """Channels are missing or ambiguous; the message lists both sides and the fix."""


def canonical_name(name: str) -> str:
    """Canonical upper-case electrode label: ``"EEG T7-REF"`` -> ``"T3"``."""
    canon = name.strip().upper().rstrip(".")
    canon = _REF_SUFFIX.sub("", _PREFIX.sub("", canon)).strip()
    return CHANNEL_ALIASES.get(canon, canon)


def parse_renames(entries: Sequence[str]) -> dict[str, str]:
    """``("EXG1=C3", ...)`` as ``{"EXG1": "C3"}``, keys upper-case; malformed ones refused.

    Raises
    ------
    ConfigError
        An entry is not ``LABEL=ELECTRODE``, or a label is renamed twice.
    """
    from rtmoe.config import ConfigError

    renames: dict[str, str] = {}
    for entry in entries:
        source, sep, target = (part.strip() for part in str(entry).partition("="))
        if not sep or not source or not target:
            raise ConfigError(
                f"runtime.rename entry {entry!r} must read STREAM_LABEL=ELECTRODE, e.g. EXG1=C3"
            )
        if source.upper() in renames:
            raise ConfigError(
                f"runtime.rename renames {source!r} twice; give one electrode per label"
            )
        renames[source.upper()] = target
    return renames


def rename_channels(labels: Sequence[str], entries: Sequence[str]) -> list[str]:
    """``labels`` with the ``LABEL=ELECTRODE`` renames applied (labels compared as in
    `map_channels`' exact step); a rename naming no label is an error (a typo)."""
    renames = parse_renames(entries)
    present = {label.strip().upper() for label in labels}
    unknown = [source for source in renames if source not in present]
    if unknown:
        raise ChannelError(
            f"rename of {unknown}: the stream has no such channel (it has {list(labels)}); "
            "fix the label in --rename / runtime.rename"
        )
    return [renames.get(label.strip().upper(), label) for label in labels]


#: The fix a missing-channel error suggests by default (a live stream).
STREAM_FIX = (
    "rename the channels in the amplifier's LSL app, pick the right stream, or pass "
    "--fill zeros to feed flat channels in their place"
)


def map_channels(
    available: Sequence[str], wanted: Sequence[str], fill: str = "error", fix: str = STREAM_FIX
) -> np.ndarray:
    """Row of ``available`` feeding each of ``wanted``.

    Parameters
    ----------
    available : sequence of str
        The stream's or file's channel labels, in their order.
    wanted : sequence of str
        The model's electrodes (``task.ch_names``, ``corpus.channels``), in input order.
    fill : {"error", "zeros"}
        What to do with wanted channels that are missing: raise, or map them to -1 (fed
        as a flat channel; the runtime reports it in its status).
    fix : str
        How to fix missing channels, ending the error (files: another recording or
        channel list).

    Returns
    -------
    ndarray, shape (len(wanted),), int64
        Row of ``available`` for each wanted channel; -1 where it is filled.

    Raises
    ------
    ChannelError
        Wanted channels are missing (``fill="error"``); a wanted name without an exact
        match matches several channels canonically (``EEG T3-REF`` and ``T7`` for
        ``T3``); or two wanted channels match one available channel.
    """
    if fill not in FILL_POLICIES:
        raise ValueError(f"fill={fill!r} is not a policy; use one of {FILL_POLICIES}")
    exact: dict[str, int] = {}
    canon: dict[str, list[int]] = {}
    for i, name in enumerate(available):
        exact.setdefault(name.strip().upper(), i)
        canon.setdefault(canonical_name(name), []).append(i)
    index = np.full(len(wanted), -1, dtype=np.int64)
    for k, name in enumerate(wanted):
        row = exact.get(name.strip().upper())
        if row is None:
            rows = canon.get(canonical_name(name), [])
            if len(rows) > 1:
                raise ChannelError(
                    f"channel {name!r} matches {[available[i] for i in rows]} (all "
                    f"{canonical_name(name)}); keep one of them or label them distinctly"
                )
            row = rows[0] if rows else None
        if row is not None:
            index[k] = row
    missing = [name for name, row in zip(wanted, index, strict=True) if row < 0]
    if missing and fill == "error":
        raise ChannelError(
            f"missing channel(s) {missing}: the data have {list(available)} and the model "
            f"needs {list(wanted)}; {fix}"
        )
    used = index[index >= 0]
    if used.size != np.unique(used).size:
        raise ChannelError(
            f"model channels {list(wanted)} match the channels "
            f"{[available[i] for i in index if i >= 0]}: one channel would feed two model "
            "inputs; give the channels distinct labels"
        )
    return index
