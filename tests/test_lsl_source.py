"""LslSource and resolve_stream against real pylsl outlets on this machine.

Every stream gets a unique random name/type/source_id so parallel runs never collide, and
every wait is bounded by a deadline, so nothing can hang.
"""

from __future__ import annotations

import gc
import time
import uuid

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl")

from rtmoe.stream.lsl import LslError, LslSource, SourceStatus, resolve_stream  # noqa: E402

SFREQ = 1000.0
N_CHANS = 3
RESOLVE_S = 0.5


def _unique(prefix: str) -> str:
    return f"rtmoe-test-{prefix}-{uuid.uuid4().hex[:10]}"


def _outlet(name: str, type_: str, source_id: str, labels=("Cz", "Pz", "Oz")):
    info = pylsl.StreamInfo(name, type_, N_CHANS, SFREQ, "float32", source_id)
    info.set_channel_labels(list(labels))
    return pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)


def _counter_chunk(start: int, k: int) -> np.ndarray:
    """(k, channels) as LSL sends it: counter, -counter, 2 * counter."""
    counter = np.arange(start, start + k, dtype=np.float32)
    return np.stack([counter, -counter, 2 * counter], axis=1)


def _pull_until(source: LslSource, n_wanted: int, deadline_s: float):
    """Pull until n_wanted samples arrived or the deadline passes; returns copies."""
    data, stamps = [], []
    stop = time.monotonic() + deadline_s
    while sum(d.shape[1] for d in data) < n_wanted and time.monotonic() < stop:
        chunk, ts = source.pull()
        if ts.size:
            data.append(chunk.copy())
            stamps.append(ts.copy())
        else:
            time.sleep(0.002)
    if not data:
        return np.empty((N_CHANS, 0), np.float32), np.empty(0)
    return np.concatenate(data, axis=1), np.concatenate(stamps)


@pytest.fixture
def stream_ids():
    return _unique("n"), _unique("t"), _unique("s")


def test_resolve_by_each_property(stream_ids):
    name, type_, source_id = stream_ids
    outlet = _outlet(name, type_, source_id)
    for query in ({"name": name}, {"type": type_}, {"source_id": source_id}):
        info = resolve_stream(**query, timeout_s=RESOLVE_S)
        assert (info.name(), info.type(), info.source_id()) == stream_ids
        assert info.channel_count() == N_CHANS
    del outlet


def test_zero_matches_lists_visible_streams(stream_ids):
    name, type_, source_id = stream_ids
    outlet = _outlet(name, type_, source_id)
    with pytest.raises(LslError, match="no LSL stream matches") as err:
        resolve_stream(name=name + "-absent", timeout_s=RESOLVE_S)
    assert f"name={name!r}" in str(err.value)  # the visible stream is listed
    assert "channels=3 rate=1000 Hz" in str(err.value)
    with pytest.raises(LslError, match="at least one of"):
        resolve_stream()
    del outlet


def test_two_matches_list_both_and_suggest_source_id(stream_ids):
    name, type_, source_id = stream_ids
    outlets = [_outlet(name, type_, source_id + "-a"), _outlet(name, type_, source_id + "-b")]
    with pytest.raises(LslError, match="2 LSL streams match") as err:
        resolve_stream(name=name, timeout_s=5.0)  # fails as soon as both answer
    message = str(err.value)
    assert f"source_id={source_id + '-a'!r}" in message
    assert f"source_id={source_id + '-b'!r}" in message
    assert "add source_id=... to pick one" in message
    del outlets


def test_every_sample_once_in_order_channel_first(stream_ids):
    name, type_, source_id = stream_ids
    outlet = _outlet(name, type_, source_id)
    with LslSource({"name": name, "timeout_s": RESOLVE_S}, stall_timeout_ms=2000) as source:
        assert source.channel_names == ["Cz", "Pz", "Oz"]
        assert source.sfreq == SFREQ and source.n_chans == N_CHANS
        assert source.status is SourceStatus.WAITING
        rng = np.random.default_rng(0)
        sent, t0 = 0, pylsl.local_clock()
        received = []
        while sent < 3000:
            k = int(rng.integers(1, 60))
            stamps = list(t0 + (sent + np.arange(k)) / SFREQ)
            outlet.push_chunk(_counter_chunk(sent, k), stamps)
            sent += k
            data, ts = source.pull()
            assert data.dtype == np.float32 and data.shape == (N_CHANS, ts.size)
            received.append((data.copy(), ts.copy()))
            time.sleep(0.001)
        rest = _pull_until(source, sent - sum(d.shape[1] for d, _ in received), 5.0)
        data = np.concatenate([d for d, _ in received] + [rest[0]], axis=1)
        stamps = np.concatenate([t for _, t in received] + [rest[1]])
        np.testing.assert_array_equal(data[0], np.arange(sent))  # no drop, no duplicate
        np.testing.assert_array_equal(data[1], -data[0])
        np.testing.assert_array_equal(data[2], 2 * data[0])
        assert np.all(np.diff(stamps) > 0)
        assert abs(stamps[0] - t0) < 0.01  # clock sync to the local LSL clock
        assert source.status is SourceStatus.RUNNING
        assert source.n_samples == sent and source.n_gaps == 0 and source.n_missing == 0
        assert source.effective_sfreq == pytest.approx(SFREQ, rel=1e-3)
    del outlet


def test_deliberate_gap_is_counted(stream_ids):
    name, type_, source_id = stream_ids
    outlet = _outlet(name, type_, source_id)
    info = resolve_stream(source_id=source_id, timeout_s=RESOLVE_S)
    with LslSource(info) as source:
        t0 = pylsl.local_clock()
        outlet.push_chunk(_counter_chunk(0, 100), list(t0 + np.arange(100) / SFREQ))
        # Samples 100..109 never sent: the stamps jump by 11 periods.
        later = t0 + (np.arange(100, 200) + 10) / SFREQ
        outlet.push_chunk(_counter_chunk(100, 100), list(later))
        outlet.push_chunk(_counter_chunk(200, 1), [t0 + 250 / SFREQ])  # 40 more missing
        data, _ = _pull_until(source, 201, 5.0)
        assert data.shape[1] == 201
        assert source.n_gaps == 2
        assert source.n_missing == 50
    del outlet


def test_stall_then_recovery_with_same_source_id(stream_ids):
    name, type_, source_id = stream_ids
    outlet = _outlet(name, type_, source_id)
    query = {"source_id": source_id, "timeout_s": RESOLVE_S}
    with LslSource(query, stall_timeout_ms=200) as source:
        t0 = pylsl.local_clock()
        outlet.push_chunk(_counter_chunk(0, 50), list(t0 + np.arange(50) / SFREQ))
        data, _ = _pull_until(source, 50, 5.0)
        assert data.shape[1] == 50 and source.status is SourceStatus.RUNNING

        killed = time.monotonic()
        del outlet  # the amplifier app dies (destroying an outlet takes ~0.1 s)
        gc.collect()
        while source.status is not SourceStatus.STALLED and time.monotonic() - killed < 3.0:
            assert source.pull()[1].size == 0
            time.sleep(0.01)
        assert source.status is SourceStatus.STALLED
        assert 0.15 < time.monotonic() - killed < 3.0

        outlet = _outlet(name, type_, source_id)  # ...and comes back
        restarted, sent, received = time.monotonic(), 1000, []
        t1 = pylsl.local_clock()
        while time.monotonic() - restarted < 15.0:
            # Regular stamps, so the downtime is the only gap in the timestamps.
            stamps = list(t1 + (sent - 1000 + np.arange(10)) / SFREQ)
            outlet.push_chunk(_counter_chunk(sent, 10), stamps)
            sent += 10
            data, _ = source.pull()
            if data.shape[1]:
                received.append(data[0].copy())
                if sum(r.size for r in received) >= 100:
                    break
            time.sleep(0.01)
        assert received, "the inlet did not recover within 15 s"
        counter = np.concatenate(received)
        assert counter[0] >= 1000 and np.all(np.diff(counter) == 1)
        assert source.status is SourceStatus.RUNNING
        assert source.n_stalls == 1
        assert source.n_gaps == 1  # the downtime, seen in the timestamps
    del outlet
