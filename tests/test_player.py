"""read_recording, Player and ``rtmoe play`` against real LSL inlets on this machine.

Every stream has a unique name, every wait a deadline. A synthetic FIF with a counter
channel and off-sample annotations gives known answers; the shipped demo recording is
checked against the development trials it was built from.
"""

from __future__ import annotations

import argparse
import datetime
import time
import uuid

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl")
mne = pytest.importorskip("mne")

from rtmoe.recording import InputError, Marker, Recording, read_recording  # noqa: E402
from rtmoe.stream.lsl import LslSource, resolve_stream  # noqa: E402
from rtmoe.stream.player import Player, command  # noqa: E402
from rtmoe.stream.replay import demo_recording_path  # noqa: E402

SFREQ = 200.0
N_TIMES = 300  # 1.5 s
RESOLVE_S = 0.5
#: (onset in s from the first sample, label) -> the sample each marker must land on.
ANNOTATIONS = [(0.1, "left"), (0.5012, "right"), (1.2, "left"), (1.4985, "edge")]
EXPECTED_SAMPLES = [20, 100, 240]  # 1.4985 s rounds to sample 300: outside, dropped


def _unique(prefix: str) -> str:
    return f"rtmoe-test-{prefix}-{uuid.uuid4().hex[:10]}"


def _signals(n_times: int) -> np.ndarray:
    """(4, n_times) in µV: a counter, a 7 Hz sine, -counter, and a stim channel row."""
    i = np.arange(n_times)
    return np.stack([i, 50 * np.sin(2 * np.pi * 7 * i / SFREQ), -i, i % 2]).astype(np.float64)


@pytest.fixture
def synthetic_fif(tmp_path):
    """A FIF whose first sample is not sample 0 of the measurement, with annotations."""
    info = mne.create_info(["Cz", "Pz", "Oz", "STI"], SFREQ, ["eeg", "eeg", "eeg", "stim"])
    raw = mne.io.RawArray(_signals(N_TIMES) * 1e-6, info, first_samp=1000, verbose="error")
    raw.set_meas_date(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    onsets, labels = zip(*ANNOTATIONS, strict=True)
    # orig_time=None: onsets count from the first sample; the file stores them from the
    # measurement date, which read_recording must undo.
    raw.set_annotations(mne.Annotations(onsets, [0.1, 0.1, 0.1, 0.0], labels))
    path = tmp_path / "synthetic_eeg.fif"
    raw.save(path, verbose="error")
    return path


def _pull_all(source: LslSource, n_wanted: int, deadline_s: float):
    """Pull until n_wanted samples arrived; returns data, stamps, LSL arrival times."""
    data, stamps, arrivals = [], [], []
    stop = time.monotonic() + deadline_s
    while sum(s.size for s in stamps) < n_wanted and time.monotonic() < stop:
        chunk, ts = source.pull()
        if ts.size:
            data.append(chunk.copy())
            stamps.append(ts.copy())
            arrivals.append(np.full(ts.size, pylsl.local_clock()))
        else:
            time.sleep(0.001)
    assert data, "no samples arrived"
    return np.concatenate(data, axis=1), np.concatenate(stamps), np.concatenate(arrivals)


def _marker_inlet(name: str):
    """A plain inlet (no clock sync): stamps arrive exactly as the player pushed them."""
    inlet = pylsl.StreamInlet(resolve_stream(name=f"{name}-markers", timeout_s=RESOLVE_S))
    inlet.open_stream(timeout=5.0)
    return inlet


def _pull_markers(inlet, n_wanted: int, deadline_s: float = 3.0):
    labels, stamps = [], []
    stop = time.monotonic() + deadline_s
    while len(labels) < n_wanted and time.monotonic() < stop:
        sample, stamp = inlet.pull_sample(timeout=0.05)
        if sample is not None:
            labels.append(sample[0])
            stamps.append(stamp)
    return labels, np.array(stamps)


def _stream(replay: Recording, n_expected: int, n_markers: int, **player_kwargs):
    name = _unique("play")
    with Player(replay, name=name, **player_kwargs) as player:
        # The first pull that finds data blocks ~0.6 s for clock sync; the inlet must
        # queue that long at `speed` × the nominal rate its buffer is sized by.
        query = {"name": name, "timeout_s": RESOLVE_S}
        with LslSource(query, max_buflen_s=int(4 * player.speed) + 2) as source:
            markers = _marker_inlet(name)
            began = time.monotonic()
            player.start()
            data, stamps, arrivals = _pull_all(source, n_expected, 30.0)
            assert player.wait(10.0)
            elapsed_s = time.monotonic() - began
            labels, marker_stamps = _pull_markers(markers, n_markers)
            assert source.channel_names == list(replay.ch_names)
            assert source.sfreq == replay.sfreq  # nominal rate stays the recording's
            markers.close_stream()
    return player, data, stamps, arrivals, labels, marker_stamps, elapsed_s


def test_read_recording_eeg_in_uv_and_markers_on_samples(synthetic_fif):
    with pytest.warns(UserWarning, match="1 annotation"):
        replay = read_recording(synthetic_fif)
    assert replay.ch_names == ("Cz", "Pz", "Oz")  # the stim channel is not EEG
    assert replay.data.dtype == np.float64 and replay.data.shape == (3, N_TIMES)
    assert replay.sfreq == SFREQ
    np.testing.assert_allclose(replay.data, _signals(N_TIMES)[:3], rtol=1e-6, atol=1e-6)
    assert [m.label for m in replay.markers] == ["left", "right", "left"]
    assert [m.onset_s * SFREQ for m in replay.markers] == EXPECTED_SAMPLES


def test_read_recording_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_recording(tmp_path / "absent_eeg.fif")
    junk = tmp_path / "junk_eeg.fif"
    junk.write_bytes(b"not a fif file")
    with pytest.raises(InputError, match="cannot be read as EEG"):
        read_recording(junk)
    misc = tmp_path / "misc_raw.fif"
    info = mne.create_info(["a", "b"], SFREQ, "misc")
    mne.io.RawArray(np.zeros((2, 10)), info, verbose="error").save(misc, verbose="error")
    with pytest.raises(ValueError, match=r"no EEG channels \(channel types: \['misc'\]\)"):
        read_recording(misc)
    with pytest.raises(ValueError, match="outside the recording"):
        Recording(np.zeros((1, 10), np.float32), 10.0, ("Cz",), (Marker(1.0, "x"),))


def test_every_sample_in_order_with_exact_stamps_and_markers(synthetic_fif):
    with pytest.warns(UserWarning):
        replay = read_recording(synthetic_fif)
    player, data, stamps, arrivals, labels, marker_stamps, elapsed_s = _stream(
        replay, N_TIMES, 3, chunk_ms=30.0
    )
    np.testing.assert_array_equal(data, replay.data.astype(np.float32))  # all, in order
    assert player.n_samples == N_TIMES and player.n_markers == 3 and player.n_passes == 1
    # Clock sync shifts the whole stream by one constant (tens of µs on one machine);
    # relative to it, every stamp is exactly start + i / sfreq.
    expected = player.sample_time(np.arange(N_TIMES))
    offset = stamps - expected
    assert abs(offset[0]) < 1e-3
    np.testing.assert_allclose(offset, offset[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.diff(stamps), 1 / SFREQ, rtol=0, atol=1e-6)
    assert labels == ["left", "right", "left"]
    np.testing.assert_allclose(marker_stamps, expected[EXPECTED_SAMPLES], rtol=0, atol=1e-6)
    # Real time: no sample before its time, and 1.5 s of data take about 1.5 s.
    assert np.all(arrivals >= stamps - offset[0] - 1e-4)
    assert 1.4 < elapsed_s < 2.5
    assert np.median(arrivals - stamps) < 0.1


def test_speed_and_loop():
    n_times = 100  # 0.5 s at 200 Hz, two markers
    counter = np.arange(n_times, dtype=np.float32)[None]
    replay = Recording(counter, SFREQ, ("C",), (Marker(0.0, "a"), Marker(0.3, "b")), "counter")
    # 1.3 s of recording: two whole passes and 60 samples (which include marker "a" only).
    player, data, stamps, _, labels, marker_stamps, elapsed_s = _stream(
        replay, 260, 5, loop=True, speed=4.0, duration_s=1.3
    )
    np.testing.assert_array_equal(data[0], np.arange(260) % n_times)
    assert player.n_passes == 2 and player.n_samples == 260
    assert 0.3 < elapsed_s < 1.0  # 1.3 s of recording at ×4 ≈ 0.33 s
    # At ×4 the stamps follow the faster clock and run on across passes.
    np.testing.assert_allclose(np.diff(stamps), 1 / (4 * SFREQ), rtol=0, atol=1e-6)
    assert labels == ["a", "b", "a", "b", "a"]
    onsets = np.array([0, 60, 100, 160, 200])
    np.testing.assert_allclose(marker_stamps, player.sample_time(onsets), rtol=0, atol=1e-6)


def test_stop_interrupts_an_endless_loop():
    replay = Recording(np.zeros((2, 50), np.float32), SFREQ, ("C3", "C4"))
    with Player(replay, name=_unique("stop"), loop=True) as player:
        player.start()
        time.sleep(0.3)
        began = time.monotonic()
        player.stop()
        assert time.monotonic() - began < 0.2
        assert 0 < player.n_samples < 0.6 * SFREQ
        with pytest.raises(RuntimeError, match="already streamed"):
            player.start()


def test_player_argument_errors():
    replay = Recording(np.zeros((1, 10), np.float32), SFREQ, ("Cz",))
    for kwargs, message in [
        ({"speed": 0.0}, "speed=0.0"),
        ({"chunk_ms": -5.0}, "chunk_ms=-5.0"),
        ({"duration_s": 0.0}, "duration_s=0.0"),
        ({"name": ""}, "name=''"),
    ]:
        with pytest.raises(ValueError, match=message):
            Player(replay, **kwargs)


def _dev_test_split():
    devdata = pytest.importorskip("rtmoe.offline.corpus.devdata")
    try:
        return devdata.load_dev_split("SelfRegulationSCP1", "test")
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_demo_recording_is_the_scp1_test_trials():
    trials = _dev_test_split()
    replay = read_recording(demo_recording_path())
    n_trials, n_chans, n_times = trials.X.shape
    assert replay.ch_names == trials.ch_names and replay.sfreq == trials.sfreq
    assert replay.data.shape == (n_chans, n_trials * n_times)
    as_trials = replay.data.reshape(n_chans, n_trials, n_times).transpose(1, 0, 2)
    # Stored as float32 in V: the µV values come back within float32 rounding.
    np.testing.assert_allclose(as_trials, trials.X, rtol=1e-6, atol=1e-5)
    assert [m.label for m in replay.markers] == list(trials.y)
    assert [m.onset_s * trials.sfreq for m in replay.markers] == list(np.arange(n_trials) * n_times)


def test_demo_streams_with_a_marker_per_trial():
    trials = _dev_test_split()
    replay = read_recording(demo_recording_path())
    n_times = trials.X.shape[2]  # 3 trials (3 × 3.5 s) at ×16 ≈ 0.66 s
    _, data, stamps, _, labels, marker_stamps, _ = _stream(
        replay, 3 * n_times, 3, speed=16.0, duration_s=10.5
    )
    np.testing.assert_array_equal(data, replay.data[:, : 3 * n_times].astype(np.float32))
    assert labels == list(trials.y[:3])
    # Each marker has the stamp of its trial's first sample, as received on the EEG inlet
    # (the two inlets' clock-sync offsets agree to well below a sample period).
    np.testing.assert_allclose(marker_stamps, stamps[[0, n_times, 2 * n_times]], atol=1e-3)


def test_build_demo_recording(tmp_path):
    trials = _dev_test_split()
    from rtmoe.offline.recipes.build_demo_recording import build_demo_recording

    path = build_demo_recording(tmp_path / "two_eeg.fif.gz", n_trials=2)
    replay = read_recording(path)
    expected = trials.X[:2].transpose(1, 0, 2).reshape(trials.X.shape[1], -1)
    np.testing.assert_allclose(replay.data, expected, rtol=1e-6, atol=1e-5)
    assert replay.markers == (
        Marker(0.0, str(trials.y[0])),
        Marker(3.5, str(trials.y[1])),
    )
    with pytest.raises(ValueError, match="n_trials=0"):
        build_demo_recording(tmp_path / "none_eeg.fif", n_trials=0)


def test_cli_plays_the_demo(capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    name = _unique("cli")
    args = parser.parse_args(["demo", "--name", name, "--speed", "20", "--duration-s", "4"])
    assert command.run(args) == 0
    out = capsys.readouterr().out
    assert f"EEG     {name!r} type='EEG' source_id={name!r}: 6 ch (A1-Cz," in out
    assert f"markers '{name}-markers' type='Markers': 293 (negativity ×147" in out
    assert "streamed 1024 samples (4 s of recording), 2 markers, 0 complete pass(es)" in out
    with pytest.raises(FileNotFoundError):
        command.run(parser.parse_args([str(_unique("absent")) + ".fif"]))
