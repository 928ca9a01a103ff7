"""Labelled trials for ``rtmoe finetune`` and ``rtmoe evaluate``: reading and CLI options.

The trials come from a development data set (``--dataset NAME``,
`rtmoe.offline.corpus.devdata`) or an ``.npz`` file (``--data FILE.npz``), in µV at
their own rate, with an optional label file naming the classes in output order.
Preprocessing is not done here: `rtmoe.offline.finetune.finetune` and
`rtmoe.offline.evaluate.evaluate` run the one signal chain (`rtmoe.signal`) on them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtmoe.errors import MissingFileError, UserError

#: What ``--data FILE.npz`` must hold (the fix of every message about it).
_NPZ_CONTENT = "an .npz needs X (n_trials, n_chans, n_times) in µV, y, sfreq and ch_names"


@dataclass(frozen=True)
class TrialData:
    """Labelled trials from a dev data set or an ``.npz`` file (see :func:`load_trials`)."""

    X: np.ndarray  # (n_trials, n_chans, n_times), µV
    y: np.ndarray  # (n_trials,)
    sfreq: float
    ch_names: tuple[str, ...]
    name: str


def load_trials(
    dataset: str | None, data: Path | None, split: str, labels_file: Path | None = None
) -> tuple[TrialData, tuple[str, ...] | None]:
    """Trials from ``--dataset NAME`` (dev data) or ``--data FILE.npz`` and the label file.

    An ``.npz`` holds ``X`` (n_trials, n_chans, n_times) in µV, ``y`` (n_trials,),
    ``sfreq`` and ``ch_names``. A label file lists one class name per line, in output
    order.
    """
    if (dataset is None) == (data is None):
        raise UserError("give either --dataset NAME or --data FILE.npz")
    if dataset is not None:
        from rtmoe.offline.corpus.devdata import load_dev_split

        t = load_dev_split(dataset, split)
        trials = TrialData(t.X, t.y, t.sfreq, t.ch_names, t.name)
    else:
        with _open_npz(data) as f:
            missing = sorted({"X", "y", "sfreq", "ch_names"} - set(f.files))
            if missing:
                raise UserError(f"{data} lacks arrays {missing}; {_NPZ_CONTENT}")
            trials = TrialData(
                f["X"], f["y"], float(f["sfreq"]), tuple(f["ch_names"].astype(str)), data.stem
            )
    labels = None
    if labels_file is not None:
        if not Path(labels_file).is_file():
            raise MissingFileError(
                f"label file {labels_file} is not a file; give a text file naming one class "
                "per line, in output order (or omit it)"
            )
        labels = tuple(
            line.strip() for line in Path(labels_file).read_text().splitlines() if line.strip()
        )
        if len(set(labels)) < 2 or len(set(labels)) != len(labels):
            raise UserError(
                f"label file {labels_file} lists {list(labels)}; it needs at least two "
                "distinct class names, one per line, in output order"
            )
    return trials, labels


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """``np.load`` of ``--data``, whose failures name the file and what it must hold."""
    if not path.is_file():
        raise MissingFileError(f"--data {path} is not a file; give the path of the .npz")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:  # a truncated zip or a file of another format
        raise UserError(f"--data {path} cannot be read as .npz ({err}); {_NPZ_CONTENT}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a single-array .npy
        raise UserError(f"--data {path} holds one array, not an .npz archive; {_NPZ_CONTENT}")
    return npz


class _DataOption(argparse.Action):
    """Stores ``--data``/``--split``; both on one command line is an argparse error."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, "_data_options_given", set()) | {self.dest}
        namespace._data_options_given = given
        if {"data", "split"} <= given:
            parser.error(
                "--split applies to --dataset only; an --data FILE.npz is used whole (save "
                "each split to its own file)"
            )
        setattr(namespace, self.dest, values)


def add_data_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    """``--dataset``/``--data``/``--split``, shared by finetune and evaluate."""
    from rtmoe.offline.corpus.devdata import ALL_DEV_DATASETS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset", help=f"development data set name ({', '.join(ALL_DEV_DATASETS)})"
    )
    source.add_argument(
        "--data", type=Path, action=_DataOption, help=".npz with X (µV), y, sfreq, ch_names"
    )
    parser.add_argument(
        "--split",
        choices=("train", "test"),
        default=default_split,
        action=_DataOption,
        help="split of --dataset (not with --data); default: %(default)s",
    )
