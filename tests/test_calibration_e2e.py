"""End to end on real EEG over LSL: SCP1 train trials → `rtmoe calibrate` → a profile; SCP1
test trials (the shipped demo) → the live runtime with that profile, scored against the
marker stream, equal to the profile's offline decisions on the same trials.

Streams are replayed ×20 faster than real time (the player stamps samples on the faster
clock; windows are counted in samples, so they are the same). Every wait is bounded.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")

from test_calibration import build_trials_fif, cli, make_base_model  # noqa: E402

from rtmoe.calibration.cli import calibrate_command  # noqa: E402
from rtmoe.calibration.epochs import epoch_recording  # noqa: E402
from rtmoe.calibration.fit import predict_proba, score_windows  # noqa: E402
from rtmoe.calibration.record import record_replay  # noqa: E402
from rtmoe.calibration.session import Session, read_session  # noqa: E402
from rtmoe.config import RuntimeConfig  # noqa: E402
from rtmoe.models.shipped import load_model  # noqa: E402
from rtmoe.profiles import load_profile  # noqa: E402
from rtmoe.recording import Recording, read_recording  # noqa: E402
from rtmoe.runtime.loop import Runtime  # noqa: E402
from rtmoe.signal import apply_alignment  # noqa: E402
from rtmoe.signal.channels import map_channels  # noqa: E402
from rtmoe.stream.lsl import LslSource, resolve_stream  # noqa: E402
from rtmoe.stream.markers import MarkerInlet  # noqa: E402
from rtmoe.stream.player import Player  # noqa: E402
from rtmoe.stream.replay import demo_recording_path  # noqa: E402

torch.set_num_threads(1)

SPEED = 20.0
N_TRAIN = 80
N_TEST = 60
TRIAL_SAMPLES = 896  # 3.5 s at 256 Hz


def _start_when_connected(player: Player, timeout_s: float = 20.0) -> threading.Thread:
    """Start streaming once both outlets have a consumer, so no trial is missed."""

    def start() -> None:
        player.wait_for_consumers(timeout_s)
        player.start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def test_calibrate_over_lsl_then_live_accuracy_equals_offline(tmp_path, capsys):
    base_dir = make_base_model(tmp_path / "base")
    train_fif, y_train = build_trials_fif(tmp_path / "train_eeg.fif", "train", N_TRAIN)
    profiles = tmp_path / "profiles"

    # 1. Calibration: train trials replayed as EEG + marker streams.
    name = f"cal-{uuid.uuid4().hex[:8]}"
    with Player(read_recording(train_fif), name=name, speed=SPEED, chunk_ms=100) as player:
        starter = _start_when_connected(player)
        argv = ["--subject", "S01", "--lsl", name, "--markers", f"{name}-markers",
                "--model", str(base_dir), "--profiles-dir", str(profiles),
                "--idle-stop-s", "1.5", "--folds", "3", "--epochs", "10",
                "--max-minutes", "0.5", "--quiet"]  # fmt: skip
        assert cli(calibrate_command, argv) == 0, capsys.readouterr().out
        starter.join(1)
    out = capsys.readouterr().out
    assert "signal quality" in out and "profile saved" in out
    profile = load_profile(profiles, "S01")
    rec = read_session(profile.meta["session"])
    # Nothing lost: every sample and marker of the replay, every trial used.
    assert rec.n_samples == N_TRAIN * TRIAL_SAMPLES
    assert rec.marker_labels == tuple(y_train)
    assert profile.meta["metrics"]["n_trials"] == N_TRAIN
    assert profile.meta["metrics"]["balanced_accuracy"] > 0.5

    # 2. Live: the first test trials of the shipped demo through the runtime + profile
    #    (what `rtmoe stream --subject S01` builds).
    demo = read_recording(demo_recording_path())
    live = f"live-{uuid.uuid4().hex[:8]}"
    cfg = RuntimeConfig(
        hop_ms=3500.0, engine="torch", device="cpu", zmq_address="tcp://127.0.0.1:0",
        rate_tolerance=SPEED,  # the replay's clock runs SPEED times the declared rate
    )  # fmt: skip
    decodes, markers = [], []
    with Player(demo, name=live, speed=SPEED, chunk_ms=100, duration_s=N_TEST * 3.5) as player:
        source = LslSource({"name": live, "timeout_s": 2.0}, max_buflen_s=60)
        runtime = Runtime(profile.base_model, source, cfg, profile=profile)
        loaded = runtime.loaded
        assert runtime.subject_id == "S01"
        marker_inlet = MarkerInlet(resolve_stream(name=f"{live}-markers", timeout_s=2.0))
        _start_when_connected(player).join(25)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if runtime.step():
                decodes.append(runtime.last_decode)
            markers += marker_inlet.pull()
            if player.wait(0) and source.n_samples == player.n_samples:
                if runtime.step():
                    decodes.append(runtime.last_decode)
                break
            time.sleep(0.002)
        markers += marker_inlet.pull()
        marker_inlet.close()
        runtime.close()
    assert len(markers) == N_TEST
    # Score each marker with the decode whose window starts on the marker's sample.
    half_period_s = 0.5 / (demo.sfreq * SPEED)
    firsts = np.array([d.window_first_lsl_s for d in decodes])
    online, matched = [], []
    for k, (t, _) in enumerate(markers):
        hit = np.flatnonzero(np.abs(firsts - t) < half_period_s)
        if hit.size:
            online.append((decodes[hit[0]].label, decodes[hit[0]].probabilities))
            matched.append(k)
    # A starved machine falls behind the 20x replay and the runtime then skips to the
    # newest window (counted): every trial's window is decoded or counted as skipped,
    # and what is decoded must equal the offline decode exactly.
    assert len(matched) + runtime.skipped_windows >= N_TEST
    assert len(matched) >= N_TEST // 2, f"{runtime.skipped_windows} windows skipped"

    # 3. Offline: the same trials from the file, epoched by the same preprocessing.
    n = N_TEST * TRIAL_SAMPLES
    subset = Recording(demo.data[:, :n], demo.sfreq, demo.ch_names, demo.markers[:N_TEST])
    with Session.create(tmp_path / "offline", subject="S01", ch_names=demo.ch_names,
                        sfreq=demo.sfreq, source={"kind": "file"}) as session:  # fmt: skip
        record_replay(session, subset)
    labels = profile.labels
    index = map_channels(demo.ch_names, loaded.task.ch_names)
    trials = epoch_recording(
        read_session(tmp_path / "offline"), index, loaded.config.signal, loaded.task.n_times,
        {lab: lab for lab in labels}, labels,
    )  # fmt: skip
    assert len(trials.y) == N_TEST
    offline = score_windows(loaded.model, profile.alignment, trials.X, trials.y)
    offline_pred = [labels[i] for i in offline["predictions"]]
    truth = [label for _, label in markers]
    assert truth == [labels[i] for i in trials.y]
    online_acc = np.mean([online[j][0] == truth[k] for j, k in enumerate(matched)])
    offline_acc = np.mean([offline_pred[k] == truth[k] for k in matched])
    assert [o[0] for o in online] == [offline_pred[k] for k in matched]
    assert online_acc == offline_acc == pytest.approx(offline["accuracy"])
    # The probabilities agree too: the live window is the offline window.
    x = torch.from_numpy(apply_alignment(trials.X[matched], profile.alignment))
    np.testing.assert_allclose([o[1] for o in online], predict_proba(loaded.model, x), atol=2e-4)


def test_calibrate_without_a_marker_stream_says_so(tmp_path, capsys):
    base_dir = make_base_model(tmp_path / "base")
    name = f"nomark-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 6, 256.0, pylsl.cf_float32, name)
    info.set_channel_labels(["A1-Cz", "A2-Cz", "C3f", "C3p", "C4f", "C4p"])
    outlet = pylsl.StreamOutlet(info)
    argv = ["--subject", "S01", "--lsl", name, "--markers", f"{name}-cues",
            "--model", str(base_dir), "--profiles-dir", str(tmp_path / "p")]  # fmt: skip
    assert cli(calibrate_command, argv) == 2
    out = capsys.readouterr().out
    assert f"marker stream: no LSL stream matches name='{name}-cues'" in out
    assert "--markers NAME" in out
    assert not (tmp_path / "p" / "S01" / "sessions").exists()  # nothing half-made
    del outlet


def test_ctrl_c_then_resume_over_lsl_keeps_every_trial(tmp_path, capsys):
    """Ctrl-C mid-session (the cue sender pauses too), then the same command resumes."""
    base_dir = make_base_model(tmp_path / "base")
    fif, y = build_trials_fif(tmp_path / "t_eeg.fif", "train", 24, seed=1)
    whole = read_recording(fif)
    half = 12 * TRIAL_SAMPLES
    parts = [
        Recording(whole.data[:, :half], whole.sfreq, whole.ch_names, whole.markers[:12]),
        Recording(whole.data[:, half:], whole.sfreq, whole.ch_names,
               tuple(m._replace(onset_s=m.onset_s - 42.0) for m in whole.markers[12:])),
    ]  # fmt: skip
    name = f"resume-{uuid.uuid4().hex[:8]}"
    argv = ["--subject", "S01", "--lsl", name, "--markers", f"{name}-markers",
            "--model", str(base_dir), "--profiles-dir", str(tmp_path / "p"), "--no-fit",
            "--quiet"]  # fmt: skip

    def interrupt_when_done(starter: threading.Thread, player: Player) -> None:
        starter.join(30)
        player.wait(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the recorder has every sample on disk
            stamps = list((tmp_path / "p").glob("S01/sessions/*/times.f64"))
            if stamps and stamps[0].stat().st_size == 8 * half:
                break
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with Player(parts[0], name=name, speed=SPEED, chunk_ms=100) as player:
        starter = _start_when_connected(player)
        threading.Thread(target=interrupt_when_done, args=(starter, player), daemon=True).start()
        assert cli(calibrate_command, [*argv, "--idle-stop-s", "30"]) == 130
    session = next((tmp_path / "p" / "S01" / "sessions").iterdir())
    first = read_session(session)
    assert first.n_samples == half and len(first.marker_labels) == 12
    with Player(parts[1], name=name, speed=SPEED, chunk_ms=100) as player:
        _start_when_connected(player)
        assert cli(calibrate_command, [*argv, "--idle-stop-s", "1.5"]) == 0
    assert f"resuming session {session}" in capsys.readouterr().out
    rec = read_session(session)
    assert rec.n_samples == 24 * TRIAL_SAMPLES and rec.marker_labels == tuple(y)
    np.testing.assert_array_equal(rec.data, whole.data.astype(np.float32))  # as LSL sent it
    assert [r["n_markers"] for r in rec.meta["runs"]] == [12, 12]
    assert rec.meta["runs"][0]["stopped_by"] == "Ctrl-C"
    # The same trials as an uninterrupted session: every marker, its own window.
    loaded = load_model(base_dir)
    labels = loaded.task.labels
    args = (np.arange(6), loaded.config.signal, 700, {v: v for v in labels}, labels)
    resumed = epoch_recording(rec, *args)
    with Session.create(tmp_path / "uncut", subject="S01", ch_names=whole.ch_names,
                        sfreq=whole.sfreq, source={"kind": "file"}) as uncut:  # fmt: skip
        record_replay(uncut, whole)
    straight = epoch_recording(read_session(tmp_path / "uncut"), *args)
    assert len(resumed.y) == len(straight.y) == 24
    np.testing.assert_array_equal(resumed.y, straight.y)
    # Before the interruption the windows are identical; after it the causal filter
    # restarts at the resumed stream's first sample, as the live loop does after a gap.
    np.testing.assert_array_equal(resumed.X[:12], straight.X[:12])


@pytest.mark.parametrize("fmt", ["int32", "float32", "string"])
def test_marker_inlet_reads_numeric_and_string_markers(fmt):
    name = f"cues-{fmt}-{uuid.uuid4().hex[:6]}"
    cf = {"int32": pylsl.cf_int32, "float32": pylsl.cf_float32, "string": pylsl.cf_string}[fmt]
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "Markers", 1, 0, cf, name))
    inlet = MarkerInlet(resolve_stream(name=name, timeout_s=1.0))
    assert outlet.wait_for_consumers(5.0)
    now = pylsl.local_clock()
    for k, value in enumerate((1, 2, 1)):
        outlet.push_sample([str(value) if fmt == "string" else value], now + k)
    got, deadline = [], time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        got += inlet.pull()
        time.sleep(0.01)
    inlet.close()
    assert [label for _, label in got] == ["1", "2", "1"]
    np.testing.assert_allclose([t for t, _ in got], now + np.arange(3), atol=1e-3)
