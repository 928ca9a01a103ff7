"""The two corpus pipelines: user recordings, and the development trials (DATA.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtmoe.config import Config, to_dict
from rtmoe.offline.corpus.devdata import DEV_DATASETS, load_dev_split
from rtmoe.offline.corpus.preprocess import (
    check_sfreq,
    keep_mask,
    preprocess,
    segment,
)
from rtmoe.offline.corpus.shards import ShardCorpus, ShardWriter
from rtmoe.recording import InputError, find_recordings, read_recording
from rtmoe.signal import preprocess_trials


def recording_files(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Every recording under ``inputs`` with its id, checked before anything is written.

    The id is the path relative to its input folder, prefixed by the folder's name
    (``tueg/s001/a.edf``), or the file name for a file given directly.

    Raises
    ------
    InputError
        A missing input, an empty folder, or two recordings with the same id.
    """
    if not inputs:
        raise InputError("no inputs; give recording files or folders of them")
    files: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        for path in find_recordings(item):
            rid = path.name if item.is_file() else f"{item.resolve().name}/"
            if item.is_dir():
                rid += path.relative_to(item).as_posix()
            files.append((path, rid))
    seen: dict[str, Path] = {}
    for path, rid in files:
        if rid in seen:
            raise InputError(
                f"{path} and {seen[rid]} both get recording id {rid!r}; give each "
                "recording once (input folders need distinct names)"
            )
        seen[rid] = path
    return files


def build_corpus(
    inputs: Sequence[str | Path],
    out: str | Path,
    cfg: Config,
    *,
    skip_bad: bool = False,
    shard_size_mb: float = 256.0,
    progress: bool = True,
) -> ShardCorpus:
    """Find, read, select, preprocess, segment and shard user recordings.

    One recording is in memory at a time; segments go to shards as they come.

    Parameters
    ----------
    inputs : sequence of paths
        Recording files and/or folders searched recursively.
    out : path
        New or empty output folder.
    cfg : Config
        ``cfg.signal`` (preprocessing) and ``cfg.corpus`` (channels, segmentation,
        rejection); stored resolved in the index.
    skip_bad : bool
        Record a bad recording (unreadable, wrong rate, missing channels, NaNs) as
        skipped, with its error, instead of stopping. Off by default: the build stops at
        the first bad file and leaves ``out`` as it was.
    shard_size_mb : float
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    ShardCorpus
        The finished corpus (``summary()`` gives the one-line report).
    """
    files = recording_files(inputs)
    n_segments = n_rejected = n_skipped = 0
    with (
        ShardWriter(out, to_dict(cfg), shard_size_mb) as writer,
        tqdm(files, desc="prepare", unit="rec", disable=not progress) as bar,
    ):
        for path, rid in bar:
            try:
                rec = read_recording(path, cfg.corpus.channels)
                check_sfreq(rec, cfg.signal)
            except InputError as err:
                if not skip_bad:
                    raise
                writer.skip(rid, str(err))
                n_skipped += 1
                continue
            x = preprocess(rec, cfg.signal)
            segments, rejected, reason = segment(
                x, cfg.signal.sfreq, cfg.corpus, unit_uv=cfg.signal.unit_uv
            )
            if reason is not None:
                writer.skip(rid, reason)
                n_skipped += 1
            else:
                writer.add(rid, segments, rec.ch_names, cfg.signal.sfreq, n_rejected=rejected)
            n_segments += len(segments)
            n_rejected += rejected
            bar.set_postfix(segments=n_segments, rejected=n_rejected, skipped=n_skipped)
    return ShardCorpus(out)


def build_dev_corpus(
    out: str | Path,
    cfg: Config,
    datasets: Sequence[str] = DEV_DATASETS,
    split: str = "train",
    *,
    shard_size_mb: float = 256.0,
    progress: bool = True,
) -> ShardCorpus:
    """Shard the development trials: each trial is one segment of its own recording.

    Trials are resampled to ``cfg.signal.sfreq``, filtered (each from the steady state
    at its first sample) and scaled; they keep their own channels (no 10-20 selection),
    are not trimmed, and ``cfg.corpus.reject_uv`` still applies (dev recipes may set it
    to none). The rate check of user recordings is not applied: the dev sets are fixed
    (FingerMovements is 100 Hz). Recording ids are ``"<dataset>/<split>/<trial>"``.

    Parameters
    ----------
    out : path
        New or empty output folder.
    cfg : Config
    datasets : sequence of str
        Names from ``DEV_DATASETS``.
    split : {"train", "test"}
    shard_size_mb : float
    progress : bool

    Returns
    -------
    ShardCorpus
    """
    # Load every split first so a missing install fails before the output folder exists.
    all_trials = [load_dev_split(name, split) for name in datasets]
    total = sum(len(t.X) for t in all_trials)
    n_rejected = 0
    with (
        ShardWriter(out, to_dict(cfg), shard_size_mb) as writer,
        tqdm(total=total, desc="prepare --dev", unit="trial", disable=not progress) as bar,
    ):
        for trials in all_trials:
            n_trials = len(trials.X)
            x = preprocess_trials(trials.X, trials.sfreq, cfg.signal)
            keep = keep_mask(x, cfg.corpus.reject_uv, cfg.signal.unit_uv)
            for i in range(n_trials):
                writer.add(
                    f"{trials.name}/{split}/{i}",
                    x[i : i + 1] if keep[i] else np.empty((0, *x.shape[1:]), np.float32),
                    trials.ch_names,
                    cfg.signal.sfreq,
                    n_rejected=int(not keep[i]),
                )
            n_rejected += int((~keep).sum())
            bar.update(n_trials)
            bar.set_postfix(rejected=n_rejected)
    return ShardCorpus(out)
