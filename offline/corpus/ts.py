"""Parser for UEA/sktime ``.ts`` files: multivariate, equal-length, labelled series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtmoe.offline.corpus import InputError


def read_ts(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an equal-length, labelled ``.ts`` file.

    Header lines (``@dimensions``, ``@seriesLength``, ``@classLabel true a b`` ...) precede
    ``@data``; ``#`` lines are comments. Each data line holds ``n_dims`` comma-separated
    series separated by ``:``, then the class label.

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
    n_dims = series_len = None
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
                n_dims, series_len, class_labels = _check_header(header, path)
                in_data = True
            else:
                header[key] = value.strip()
            continue
        *series, label = line.split(":")
        if len(series) != n_dims:
            raise InputError(
                f"{where}: {len(series)} series, but @dimensions says {n_dims}; "
                "each line needs n_dims series separated by ':' and the label last"
            )
        if label not in class_labels:
            raise InputError(
                f"{where}: label {label!r} is not among @classLabel {sorted(class_labels)}"
            )
        try:
            case = np.array([s.split(",") for s in series], dtype=np.float64)
        except ValueError as err:
            raise InputError(
                f"{where}: {err} (missing values '?' and unequal lengths are unsupported)"
            ) from None
        if case.shape != (n_dims, series_len):
            raise InputError(
                f"{where}: series of length {case.shape[-1]}, but @seriesLength says "
                f"{series_len}; only equal-length files are supported"
            )
        cases.append(case)
        labels.append(label)
    if not in_data:
        raise InputError(f"{path}: no @data line; is this a .ts file?")
    if not cases:
        raise InputError(f"{path}: no cases after @data")
    return np.stack(cases).astype(np.float32), np.array(labels, dtype=str)


def _check_header(header: dict[str, str], path: Path) -> tuple[int, int, set[str]]:
    """Validate the keywords this parser relies on; return (n_dims, series_len, labels)."""
    class_label = header.get("classlabel", "").split()
    if not class_label or class_label[0].lower() != "true" or len(class_label) < 2:
        raise InputError(
            f"{path}: header needs '@classLabel true <label> ...' (labelled cases); "
            f"got {header.get('classlabel')!r}"
        )
    if header.get("equallength", "true").lower() != "true":
        raise InputError(f"{path}: @equalLength is not true; only equal-length files work")
    if header.get("timestamps", "false").lower() != "false":
        raise InputError(f"{path}: @timeStamps true is unsupported; export without them")
    values = {}
    if header.get("univariate", "false").lower() == "true":
        header.setdefault("dimensions", "1")
    for key in ("dimensions", "serieslength"):
        try:
            values[key] = int(header[key])
        except (KeyError, ValueError):
            raise InputError(
                f"{path}: header needs an integer @{key} (got {header.get(key)!r})"
            ) from None
    return values["dimensions"], values["serieslength"], set(class_label[1:])
