"""The demo recording shipped with the package (read it with `rtmoe.recording.read_recording`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rtmoe.errors import MissingFileError

#: The shipped demo recording (see rtmoe/data/README.md), named as MNE expects.
DEMO_FILENAME = "demo_scp1_eeg.fif.gz"


def demo_recording_path() -> Path:
    """Path of the demo recording shipped with the package (SCP1 test trials).

    Raises
    ------
    MissingFileError
        The package was installed without its data files (a ``FileNotFoundError``).
    """
    path = Path(str(resources.files("rtmoe") / "data" / DEMO_FILENAME))
    if not path.is_file():
        raise MissingFileError(
            f"{path} is missing: this rtmoe installation lacks its package data; "
            "reinstall rtmoe (or rebuild it with offline/recipes/build_demo_recording.py)"
        )
    return path
