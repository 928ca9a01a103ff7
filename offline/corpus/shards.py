"""Sharded, memory-mapped segment storage: written once, read by many workers.

Layout of a corpus folder::

    index.json            written last: shards, groups, recordings, config, counts
    shard-00000.npy       (n, n_chans, n_times) float32, one group's segments
    shard-00001.npy       ...

Segments of the same shape form a *group* (batches are drawn within a group). Memory
stays bounded while writing (one shard buffer per group) and while reading (shards are
memory-mapped, pages are loaded on access).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtmoe import __version__
from rtmoe.config import config_hash
from rtmoe.errors import BadValueError
from rtmoe.recording import InputError

INDEX_NAME = "index.json"
FORMAT = "rtmoe-shards"
FORMAT_VERSION = 1


class _GroupBuffer:
    """Segments of one shape waiting to fill a shard."""

    def __init__(self, group: int, shape: tuple[int, int], capacity: int):
        self.group = group
        self.shape = shape
        # np.empty only reserves address space: pages are committed as rows are filled.
        self.data = np.empty((capacity, *shape), dtype=np.float32)
        self.count = 0
        self.runs: list[list[int]] = []  # [recording index, n consecutive rows]
        self.n_segments = 0  # over all shards of the group

    def put(self, rec: int, segments: np.ndarray) -> int:
        """Copy as many rows as fit; return how many were taken."""
        n = min(len(segments), len(self.data) - self.count)
        self.data[self.count : self.count + n] = segments[:n]
        self.count += n
        self.n_segments += n
        if self.runs and self.runs[-1][0] == rec:
            self.runs[-1][1] += n
        else:
            self.runs.append([rec, n])
        return n


class ShardWriter:
    """Write segments into ``root`` as shards plus an index, all or nothing.

    Use as a context manager. If anything raises inside the ``with`` block (or while
    finishing), every file written so far is removed, so ``root`` never holds a
    half-written shard or an index without its shards; a folder created by the writer
    is removed too.

    Parameters
    ----------
    root : str or Path
        A new or empty folder.
    config : dict
        The resolved config tree (``rtmoe.config.to_dict``), stored in the index.
    shard_size_mb : float
        Target shard size in MiB; a shard holds at least one segment.
    """

    def __init__(self, root: str | Path, config: dict[str, Any], shard_size_mb: float = 256.0):
        if not shard_size_mb > 0:
            raise BadValueError(f"shard_size_mb={shard_size_mb} must be > 0")
        self.root = Path(root)
        self.config = config
        self.shard_bytes = shard_size_mb * 2**20
        self._buffers: dict[tuple[int, int], _GroupBuffer] = {}
        self._shards: list[dict[str, Any]] = []
        self._recordings: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self._ch_sets: dict[tuple[str, ...], int] = {}
        self._skipped: list[dict[str, str]] = []
        self._sfreq: float | None = None
        self._written: list[Path] = []
        self._created_root = False
        self._open = False

    def __enter__(self) -> ShardWriter:
        if self.root.exists():
            if not self.root.is_dir() or any(self.root.iterdir()):
                raise InputError(
                    f"{self.root} exists and is not an empty folder; a corpus is written "
                    "once: choose a new --out folder or delete this one"
                )
        else:
            self.root.mkdir(parents=True)
            self._created_root = True
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._open = False
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise

    def add(
        self,
        recording_id: str,
        segments: np.ndarray,
        ch_names: Sequence[str],
        sfreq: float,
        *,
        n_rejected: int = 0,
    ) -> None:
        """Append one recording's segments (possibly none, e.g. all rejected).

        Parameters
        ----------
        recording_id : str
            Unique within the corpus; partitions and hold-outs are drawn by it.
        segments : ndarray, shape (n_segments, n_chans, n_times), model units
        ch_names : sequence of str, length n_chans
        sfreq : float, Hz; the same for every recording of a corpus
        n_rejected : int
            Segments of this recording dropped by amplitude rejection.
        """
        if not self._open:
            raise RuntimeError("ShardWriter.add called outside its `with` block")
        segments = np.asarray(segments, dtype=np.float32)
        if segments.ndim != 3 or segments.shape[1] != len(ch_names):
            raise ValueError(
                f"segments of {recording_id!r} have shape {segments.shape}; give "
                f"(n_segments, n_chans={len(ch_names)}, n_times)"
            )
        if self._sfreq is None:
            self._sfreq = float(sfreq)
        elif float(sfreq) != self._sfreq:
            raise ValueError(
                f"sfreq={sfreq} for {recording_id!r}, but this corpus holds {self._sfreq} "
                "Hz segments; resample every recording to signal.sfreq"
            )
        self._register(recording_id)
        rec = len(self._recordings)
        ch_set = self._ch_sets.setdefault(tuple(ch_names), len(self._ch_sets))
        self._recordings.append(
            {
                "id": recording_id,
                "n_segments": len(segments),
                "n_rejected": int(n_rejected),
                "ch_set": ch_set,
            }
        )
        shape = (segments.shape[1], segments.shape[2])
        if shape not in self._buffers:
            per_segment = 4 * shape[0] * shape[1]
            capacity = max(1, int(self.shard_bytes // per_segment))
            self._buffers[shape] = _GroupBuffer(len(self._buffers), shape, capacity)
        buf = self._buffers[shape]
        done = 0
        while done < len(segments):
            done += buf.put(rec, segments[done:])
            if buf.count == len(buf.data):
                self._flush(buf)

    def skip(self, recording_id: str, reason: str) -> None:
        """Record that a recording gave no segments at all, and why (kept in the index)."""
        if not self._open:
            raise RuntimeError("ShardWriter.skip called outside its `with` block")
        self._register(recording_id)
        self._skipped.append({"id": recording_id, "reason": reason})

    def _register(self, recording_id: str) -> None:
        if recording_id in self._ids:
            raise ValueError(
                f"recording_id={recording_id!r} was added twice; give each recording once"
            )
        self._ids.add(recording_id)

    def _flush(self, buf: _GroupBuffer) -> None:
        if buf.count == 0:
            return
        name = f"shard-{len(self._shards):05d}.npy"
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        self._written.append(tmp)
        with open(tmp, "wb") as f:
            np.save(f, buf.data[: buf.count])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic: a shard name only ever points at a whole shard
        self._written.append(final)
        self._shards.append(
            {"file": name, "group": buf.group, "n_segments": buf.count, "runs": buf.runs}
        )
        buf.count = 0
        buf.runs = []

    def _finish(self) -> None:
        for buf in self._buffers.values():
            self._flush(buf)
        groups = sorted(self._buffers.values(), key=lambda b: b.group)
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": {
                "rtmoe": __version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "config": self.config,
            "config_hash": config_hash(self.config),
            "sfreq": self._sfreq,
            "n_segments": sum(b.n_segments for b in groups),
            "n_rejected": sum(r["n_rejected"] for r in self._recordings),
            "groups": [
                {"n_chans": b.shape[0], "n_times": b.shape[1], "n_segments": b.n_segments}
                for b in groups
            ],
            "shards": self._shards,
            "channel_sets": [list(names) for names in self._ch_sets],
            "recordings": self._recordings,
            "skipped": self._skipped,
        }
        tmp = self.root / f".{INDEX_NAME}.tmp"
        self._written.append(tmp)
        with open(tmp, "w") as f:
            json.dump(index, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / INDEX_NAME)

    def _abort(self) -> None:
        for path in [*self._written, self.root / INDEX_NAME]:
            path.unlink(missing_ok=True)
        self._buffers.clear()
        if self._created_root and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()


@dataclass(frozen=True)
class ShardGroup:
    """Segments of one shape: ``indices`` are corpus indices, ascending."""

    n_chans: int
    n_times: int
    indices: np.ndarray


class ShardCorpus:
    """Read-only view of a corpus written by ``ShardWriter``.

    Shards are opened lazily with ``np.load(mmap_mode="r")``, once per process (the map
    cache is dropped after a fork and when pickled), so the object can be handed to
    DataLoader workers. Only the pages a segment touches are read from disk.

    Parameters
    ----------
    root : str or Path
        A folder holding ``index.json``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / INDEX_NAME
        try:
            self.index: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(
                f"{self.root}: no {INDEX_NAME}, so not a finished corpus; build it with "
                "`rtmoe prepare ... --out DIR`"
            ) from None
        if self.index.get("format") != FORMAT or self.index.get("format_version") != 1:
            raise InputError(
                f"{path}: not an {FORMAT} v{FORMAT_VERSION} index; rebuild with rtmoe prepare"
            )
        shard_of, row_of, rec_of = [], [], []
        for s, shard in enumerate(self.index["shards"]):
            shard_of.append(np.full(shard["n_segments"], s, dtype=np.int32))
            row_of.append(np.arange(shard["n_segments"], dtype=np.int32))
            rec_of.extend(np.full(n, r, dtype=np.int32) for r, n in shard["runs"])
        empty = [np.empty(0, dtype=np.int32)]
        self._shard_of = np.concatenate(shard_of + empty)
        self._row_of = np.concatenate(row_of + empty)
        self._rec_of = np.concatenate(rec_of + empty)
        self._indices = np.arange(len(self._shard_of))
        self._group_of_shard = np.array([s["group"] for s in self.index["shards"]], dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    # -- description -----------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the corpus was built with."""
        return self.index["config"]

    @property
    def sfreq(self) -> float:
        return self.index["sfreq"]

    @property
    def n_rejected(self) -> int:
        """Segments dropped by amplitude rejection while building (whole corpus)."""
        return self.index["n_rejected"]

    @property
    def hours(self) -> float:
        """Total duration of the segments in this view, in hours."""
        n_times = np.array([g["n_times"] for g in self.index["groups"]], dtype=np.int64)
        samples = n_times[self._segment_groups()].sum()
        return float(samples / self.sfreq / 3600) if len(self) else 0.0

    def summary(self) -> str:
        """One line: recordings, segments, rejected, hours, shards."""
        return (
            f"{self.root}: {len(self.index['recordings'])} recordings, "
            f"{len(self.index['skipped'])} skipped, {len(self)} segments, "
            f"{self.n_rejected} rejected, {self.hours:.2f} h, "
            f"{len(self.index['shards'])} shards"
        )

    # -- segments ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.segment(i)

    def segment(self, i: int) -> np.ndarray:
        """Segment ``i``: a read-only memmap of shape (n_chans, n_times), float32."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"segment index {i} out of range for {len(self)} segments")
        j = self._indices[i]
        return self._shard(int(self._shard_of[j]))[self._row_of[j]]

    def ch_names(self, i: int) -> tuple[str, ...]:
        """Channel names of segment ``i``."""
        rec = self.index["recordings"][self._rec_of[self._indices[i]]]
        return tuple(self.index["channel_sets"][rec["ch_set"]])

    @property
    def groups(self) -> tuple[ShardGroup, ...]:
        """Segments of this view by shape, one entry per non-empty group."""
        seg_group = self._segment_groups()
        out = []
        for g, meta in enumerate(self.index["groups"]):
            idx = np.flatnonzero(seg_group == g)
            if len(idx):
                out.append(ShardGroup(meta["n_chans"], meta["n_times"], idx))
        return tuple(out)

    @property
    def recording_ids(self) -> list[str]:
        """Recording id of every segment of this view, in segment order."""
        names = [r["id"] for r in self.index["recordings"]]
        return [names[r] for r in self._rec_of[self._indices]]

    def indices_for(self, recording_ids: Iterable[str]) -> np.ndarray:
        """Indices (ascending) of this view's segments that belong to ``recording_ids``."""
        wanted = set(recording_ids)
        codes = [i for i, r in enumerate(self.index["recordings"]) if r["id"] in wanted]
        return np.flatnonzero(np.isin(self._rec_of[self._indices], codes))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ShardCorpus:
        """A view of the segments ``indices`` (of this view), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and not (-len(self) <= indices.min() and indices.max() < len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} segments")
        view = object.__new__(ShardCorpus)
        view.__dict__.update(self.__getstate__())
        view._indices = self._indices[indices]
        view._maps, view._pid = {}, os.getpid()
        return view

    def _segment_groups(self) -> np.ndarray:
        """Group of every segment of this view, shape (len(self),)."""
        if not len(self):
            return np.empty(0, dtype=np.int64)
        return self._group_of_shard[self._shard_of[self._indices]]

    def _shard(self, s: int) -> np.ndarray:
        if self._pid != os.getpid():  # forked worker: open its own maps
            self._maps, self._pid = {}, os.getpid()
        if s not in self._maps:
            meta = self.index["shards"][s]
            group = self.index["groups"][meta["group"]]
            path = self.root / meta["file"]
            try:
                mm = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: cannot be mapped ({err}); rebuild the corpus") from None
            expected = (meta["n_segments"], group["n_chans"], group["n_times"])
            if mm.shape != expected or mm.dtype != np.float32:
                raise InputError(
                    f"{path}: holds {mm.shape} {mm.dtype}, the index says {expected} "
                    "float32; the corpus is damaged, rebuild it"
                )
            self._maps[s] = mm
        return self._maps[s]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def partition_recordings(recording_ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """Split recordings into ``k`` disjoint parts that cover them, balanced by segments.

    Recordings are visited in a seeded random order and each goes to the part holding
    the fewest segments so far (ties: fewest recordings, then lowest part). Parts then
    differ by at most one recording's segment count; given unique ids (one segment
    each) their sizes differ by at most one.

    Parameters
    ----------
    recording_ids : sequence of str
        One id per segment (``ShardCorpus.recording_ids``) to balance by segment count,
        or unique ids to balance by number of recordings.
    k : int
        Number of parts (``corpus.n_partitions``, one per expert).
    seed : int

    Returns
    -------
    list of k lists of str, each sorted
    """
    names, counts = np.unique(np.asarray(recording_ids, dtype=str), return_counts=True)
    if not 1 <= k <= len(names):
        raise BadValueError(
            f"k={k} parts for {len(names)} recordings; k must lie in [1, {len(names)}] "
            "(every part needs a recording): lower corpus.n_partitions or add recordings"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    parts: list[list[str]] = [[] for _ in range(k)]
    loads = [0] * k
    for r in order:
        p = min(range(k), key=lambda q: (loads[q], len(parts[q]), q))
        parts[p].append(str(names[r]))
        loads[p] += int(counts[r])
    return [sorted(p) for p in parts]
