"""Calibration: session storage, epoching by the runtime's preprocessing, quality, alignment,
fitting, profiles and `rtmoe calibrate --from` / `rtmoe profiles` on real SCP1 trials."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtmoe.calibration.cli import calibrate_command, profiles_command
from rtmoe.calibration.epochs import epoch_recording, parse_classes, split_segments
from rtmoe.calibration.fit import ea_matrix, fit_subject
from rtmoe.calibration.quality import line_noise_db, quality_report, timing
from rtmoe.calibration.record import record_replay
from rtmoe.calibration.session import Session, read_session
from rtmoe.checkpoint import save_checkpoint
from rtmoe.cli import UserError
from rtmoe.config import Config, SignalConfig
from rtmoe.models.registry import model_config
from rtmoe.models.shipped import load_model
from rtmoe.models.specmoe import SPECMOE_KIND, TaskConfig, build_specmoe, specmoe_meta
from rtmoe.profiles import (
    ProfileError,
    apply_profile,
    list_profiles,
    load_profile,
    remove_profile,
)
from rtmoe.recording import Marker, Recording
from rtmoe.signal import apply_alignment, preprocess_recording
from rtmoe.stream.markers import marker_label

torch.set_num_threads(1)

SCP1_CHANNELS = ("A1-Cz", "A2-Cz", "C3f", "C3p", "C4f", "C4p")
SCP1_SIGNAL = SignalConfig(l_freq=None, h_freq=75.0, notch_freq=50.0)


def make_base_model(path, seed: int = 0):
    """A tiny SCP1-shaped SpecMoE checkpoint (3.5 s windows at 200 Hz, two classes)."""
    cfg = Config().replace(signal=SCP1_SIGNAL, model=model_config("tiny"))
    task = TaskConfig(
        name="scp1", ch_names=SCP1_CHANNELS, n_times=700, labels=("negativity", "positivity")
    )
    torch.manual_seed(seed)
    model = build_specmoe(cfg, task, cfg.moe)
    return save_checkpoint(path, model, cfg, kind=SPECMOE_KIND, meta=specmoe_meta(task))


def build_trials_fif(path, split: str, n: int, seed: int = 0, labels=None, ch_names=None):
    """Like offline/recipes/build_demo_recording.py, from a seeded shuffle of a split."""
    import mne

    from rtmoe.offline.corpus.devdata import load_dev_split

    t = load_dev_split("SelfRegulationSCP1", split)
    idx = np.random.default_rng(seed).permutation(len(t.y))[:n]
    X, y = t.X[idx], t.y[idx]
    n_chans, n_times = X.shape[1:]
    info = mne.create_info(list(ch_names or t.ch_names), t.sfreq, "eeg")
    data = X.transpose(1, 0, 2).reshape(n_chans, -1).astype(np.float64) * 1e-6
    raw = mne.io.RawArray(data, info, verbose="error")
    trial_s = n_times / t.sfreq
    names = [str(v) if labels is None else labels[v] for v in y]
    raw.set_annotations(mne.Annotations(np.arange(n) * trial_s, trial_s, names))
    raw.save(path, fmt="single", overwrite=True, verbose="error")
    return path, y


def cli(command, argv: list[str], capsys=None) -> int:
    """Run a command as `rtmoe.cli.main` does (errors -> one line on stderr, code 2)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except UserError as err:
        print(f"error: {err}")
        return 2


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_base_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def train_fif(tmp_path_factory):
    return build_trials_fif(tmp_path_factory.mktemp("fif") / "train_eeg.fif", "train", 48)


# -- small pure pieces ---------------------------------------------------------------------


def test_parse_classes_and_marker_labels():
    assert parse_classes("left=1,right=2") == ({"1": "left", "2": "right"}, ("left", "right"))
    assert parse_classes("a, b") == ({"a": "a", "b": "b"}, ("a", "b"))
    assert parse_classes("l=1,l=3,r=2")[1] == ("l", "r")
    with pytest.raises(ValueError, match="at least two"):
        parse_classes("left=1")
    with pytest.raises(ValueError, match="twice"):
        parse_classes("left=1,right=1")
    assert marker_label(2.0) == "2" and marker_label(b" x ") == "x" and marker_label(1.5) == "1.5"


def test_split_segments_at_gaps_and_backward_steps():
    t = np.array([0.0, 0.01, 0.02, 0.5, 0.51, 0.3, 0.31])
    assert split_segments(t, 0.1) == [(0, 3), (3, 5), (5, 7)]


def test_ea_matrix_whitens_at_the_same_average_power():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(4, 4))
    X = np.einsum("cd,ndt->nct", mix, rng.normal(size=(30, 4, 500)))
    M = ea_matrix(X, shrinkage=0.0)
    A = np.einsum("cd,ndt->nct", M.astype(np.float64), X - X.mean(axis=2, keepdims=True))
    R = np.einsum("nct,ndt->cd", A, A) / (30 * 500)
    level = np.trace(np.einsum("nct,ndt->cd", X - X.mean(2, keepdims=True), X - X.mean(
        2, keepdims=True)) / (30 * 500)) / 4  # fmt: skip
    np.testing.assert_allclose(R, level * np.eye(4), atol=1e-4 * level)


def test_alignment_per_chunk_equals_per_window():
    rng = np.random.default_rng(1)
    stream = rng.normal(size=(3, 1000)).astype(np.float32)
    M = ea_matrix(rng.normal(size=(5, 3, 200)))
    chunks = [apply_alignment(stream[:, a : a + 37], M) for a in range(0, 1000, 37)]
    live = np.concatenate(chunks, axis=1)
    window = apply_alignment(stream[None, :, 300:700], M)[0]
    np.testing.assert_allclose(live[:, 300:700], window, rtol=1e-6, atol=1e-6)
    assert apply_alignment(stream, None) is stream
    t = apply_alignment(torch.from_numpy(stream[None]), M)
    np.testing.assert_allclose(t[0].numpy(), live, rtol=1e-5, atol=1e-5)


# -- session on disk -----------------------------------------------------------------------


def _replay(n_trials: int = 6, sfreq: float = 256.0, n_times: int = 896) -> Recording:
    rng = np.random.default_rng(3)
    data = (20 + 10 * rng.normal(size=(6, n_trials * n_times))).astype(np.float32)
    markers = tuple(Marker(i * n_times / sfreq, ("a", "b")[i % 2]) for i in range(n_trials))
    return Recording(data, sfreq, SCP1_CHANNELS, markers, "synthetic")


def _new_session(path, replay):
    return Session.create(
        path, subject="S", ch_names=replay.ch_names, sfreq=replay.sfreq, source={"kind": "t"}
    )


def test_interrupted_and_resumed_session_equals_uninterrupted(tmp_path):
    replay = _replay()
    with _new_session(tmp_path / "whole", replay) as s:
        record_replay(s, replay, chunk_s=0.3)

    def interrupt_after(n):
        def on_chunk(session):
            if session.n_samples >= n:
                raise KeyboardInterrupt

        return on_chunk

    s = _new_session(tmp_path / "cut", replay)
    with pytest.raises(KeyboardInterrupt):
        record_replay(s, replay, chunk_s=0.3, on_chunk=interrupt_after(2000))
    s.close()
    # A crash mid-append: half a sample row and half a marker line reach the disk.
    with open(tmp_path / "cut" / "eeg.f32", "ab") as f:
        f.write(b"\0" * 10)
    with open(tmp_path / "cut" / "markers.jsonl", "a") as f:
        f.write('{"t": 99.0, "lab')
    s = Session.open(tmp_path / "cut")
    assert s.n_samples == 26 * 77 and s.n_markers == 3  # whole 77-sample chunks only
    with s:
        record_replay(s, replay, chunk_s=0.3)
    a, b = read_session(tmp_path / "whole"), read_session(tmp_path / "cut")
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.marker_times, b.marker_times)
    assert a.marker_labels == b.marker_labels == tuple(m.label for m in replay.markers)
    index = np.arange(6)
    ta, tb = (
        epoch_recording(r, index, SCP1_SIGNAL, 700, {"a": "a", "b": "b"}, ("a", "b"))
        for r in (a, b)
    )
    np.testing.assert_array_equal(ta.X, tb.X)
    assert len(ta.y) == 6


def test_resume_refuses_another_stream(tmp_path):
    replay = _replay()
    _new_session(tmp_path / "s", replay).close()
    s = Session.open(tmp_path / "s")
    with pytest.raises(ValueError, match="--new-session"):
        s.check_stream(["Cz"], 256.0)
    s.close()


# -- epoching is the runtime's preprocessing, cut by timestamp ----------------------------


def test_windows_are_slices_of_the_live_chain_and_gaps_reject_trials(tmp_path):
    replay = _replay(n_trials=8)
    with _new_session(tmp_path / "s", replay) as s:
        record_replay(s, replay, chunk_s=0.5)
    rec = read_session(tmp_path / "s")
    # Sample 3·896 onwards moved 5 s later: a gap between trials 2 and 3.
    times = rec.times.copy()
    times[3 * 896 + 100 :] += 5.0
    marker_times = rec.marker_times.copy()
    marker_times[4:] += 5.0
    rec = type(rec)(rec.data, times, marker_times, rec.marker_labels, rec.ch_names, 256.0, {})
    index = np.array([5, 4, 3, 2, 1, 0])
    trials = epoch_recording(rec, index, SCP1_SIGNAL, 700, {"a": "A", "b": "B"}, ("A", "B"))
    assert trials.rejected == [{"t": 3 * 3.5, "label": "b", "reason": "window spans a gap"}]
    assert len(trials.y) == 7
    whole, _ = preprocess_recording(rec.data[:, : 3 * 896 + 100], 256.0, SCP1_SIGNAL, index)
    # 256 -> 200 Hz: the output sample reading input 896·k first is 700·k.
    np.testing.assert_array_equal(trials.X[1], whole[:, 700:1400])
    assert trials.window_times[1, 0] == pytest.approx(896 / 256)
    # After the gap the chain restarts: trial 4 is a slice of a fresh run from sample 2788.
    after, _ = preprocess_recording(rec.data[:, 3 * 896 + 100 :], 256.0, SCP1_SIGNAL, index)
    k = np.searchsorted(times[3 * 896 + 100 :][np.arange(after.shape[1]) * 32 // 25], 4 * 3.5 + 5)
    np.testing.assert_allclose(trials.X[3], after[:, k : k + 700], rtol=0, atol=1e-6)


def test_tmin_and_unknown_labels_and_incomplete_windows(tmp_path):
    replay = _replay(n_trials=4)
    with _new_session(tmp_path / "s", replay) as s:
        record_replay(s, replay)
    rec = read_session(tmp_path / "s")
    trials = epoch_recording(
        rec, np.arange(6), SCP1_SIGNAL, 700, {"a": "A"}, ("A", "B"), tmin_s=-0.5
    )
    reasons = [r["reason"] for r in trials.rejected]
    assert reasons == [
        "window starts before the recording (or a gap)",
        "unknown label",
        "unknown label",
    ]
    assert trials.counts() == {"A": 1, "B": 0}
    short = epoch_recording(rec, np.arange(6), SCP1_SIGNAL, 700, {"a": "A", "b": "B"}, ("A", "B"),
                            tmin_s=0.2)  # fmt: skip
    assert short.rejected[-1]["reason"] == "window still arriving"


# -- quality ---------------------------------------------------------------------------------


def test_quality_finds_flat_noisy_line_noise_rate_and_jitter(tmp_path):
    sfreq, n = 256.0, 256 * 20
    rng = np.random.default_rng(0)
    t = np.arange(n) / sfreq
    data = 10 * rng.normal(size=(6, n))
    data[1] = 3.0  # flat (a constant offset)
    data[2] *= 30  # noisy
    data[3] += 40 * np.sin(2 * np.pi * 50 * t)  # mains
    stamps = t + 1e-4 * rng.normal(size=n)  # 0.1 ms jitter
    stamps[n // 2 :] += 2.0  # one 2 s gap
    db = line_noise_db(data, sfreq, 50.0)
    assert db[3] > 20 and abs(db[0]) < 3
    tm = timing(stamps, sfreq, 0.1)
    assert tm["n_gaps"] == 1 and tm["gap_s"] == pytest.approx(2.0, abs=0.01)
    assert tm["effective_hz"] == pytest.approx(256.0, rel=1e-3)
    assert tm["jitter_ms"] == pytest.approx(0.1, rel=0.2)
    session = Session.create(tmp_path / "q", subject="S", ch_names=SCP1_CHANNELS, sfreq=sfreq,
                             source={"kind": "t"})  # fmt: skip
    with session:
        session.append(data.astype(np.float32), stamps)
    rec = read_session(tmp_path / "q")
    trials = epoch_recording(rec, np.arange(6), SCP1_SIGNAL, 700, {}, ("A", "B"))
    report = quality_report(rec, np.arange(6), SCP1_CHANNELS, trials, 0.1)
    assert report["flat"] == ["A2-Cz"] and report["noisy"] == ["C3f"]
    assert report["line_noise_db"]["50"]["C3p"] > 20
    assert any("line noise" in w for w in report["warnings"])
    json.dumps(report)


# -- fitting and profiles ------------------------------------------------------------------


def test_fit_learns_a_separable_task_and_refuses_too_few_trials(base_dir):
    base = load_model(base_dir)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 12)
    X = 0.05 * rng.normal(size=(24, 6, 700)).astype(np.float32)
    X += np.where(y == 1, 0.5, -0.5)[:, None, None].astype(np.float32)  # class = offset
    result = fit_subject(base, X, y, ("up", "down"), alignments=("none",), tunings=("head",),
                         n_folds=3, epochs=40, max_minutes=0.5, lr=3e-3)  # fmt: skip
    assert result.metrics["balanced_accuracy"] >= 0.9
    assert result.model.n_outputs == 2 and result.alignment is None
    with pytest.raises(ValueError, match=r"too few trials per class: \{'down': 3\}"):
        fit_subject(base, X[:15], y[:15], ("up", "down"), min_trials_per_class=5)


def test_profile_round_trip_and_refusals(tmp_path, base_dir):
    from rtmoe.profiles import save_profile

    base = load_model(base_dir)
    model = base.model
    import copy

    fitted = copy.deepcopy(model)
    with torch.no_grad():
        fitted.head[-1].bias += 1.0
    M = np.eye(6, dtype=np.float32) * 2
    kw = dict(
        base=base,
        base_ref=str(base_dir),
        model=fitted,
        labels=("negativity", "positivity"),
        stream_ch_names=list(SCP1_CHANNELS),
        channel_index=np.arange(6),
        settings={"alignment": "ea"},
        metrics={"balanced_accuracy": 0.7},
        quality={},
    )
    p1 = save_profile(tmp_path, "S01", alignment=M, **kw)
    p2 = save_profile(tmp_path, "S01", alignment=None, **kw)
    assert (p1.name, p2.name) == ("v001", "v002")
    prof = load_profile(tmp_path, "S01", version=1)
    assert prof.meta["changed_tensors"] == ["head.4.bias"]
    np.testing.assert_array_equal(prof.alignment, M)
    applied = apply_profile(base, prof, list(SCP1_CHANNELS))
    torch.testing.assert_close(applied.model.head[-1].bias, fitted.head[-1].bias)
    assert load_profile(tmp_path, "S01").version == 2
    # Another base model (other weights) and another montage are refused.
    other = load_model(make_base_model(tmp_path / "other", seed=1))
    with pytest.raises(ProfileError, match="calibrated on model"):
        apply_profile(other, prof)
    with pytest.raises(ProfileError, match="calibrated with stream channels"):
        apply_profile(base, prof, ["A1-Cz", "A2-Cz", "C3f", "C3p", "C4", "C4p"])
    # Channels are matched by name: another order is the same montage.
    apply_profile(base, prof, ["C4p", "A1-Cz", "A2-Cz", "C3f", "C3p", "C4f"])
    assert [r["version"] for r in list_profiles(tmp_path)] == [1, 2]
    remove_profile(tmp_path, "S01", 1)
    assert [r["version"] for r in list_profiles(tmp_path)] == [2]
    with pytest.raises(ProfileError, match="no profile version"):
        remove_profile(tmp_path, "S01", 7)
    with pytest.raises(ProfileError, match="rtmoe calibrate --subject S02"):
        load_profile(tmp_path, "S02")


# -- the command, from a file ----------------------------------------------------------------


def test_calibrate_from_file_writes_a_profile_that_reproduces_its_windows(
    tmp_path, base_dir, train_fif, capsys
):
    path, _ = train_fif
    argv = ["--subject", "S01", "--from", str(path), "--model", str(base_dir),
            "--profiles-dir", str(tmp_path), "--folds", "3", "--epochs", "8",
            "--max-minutes", "0.3", "--tuning", "head"]  # fmt: skip
    assert cli(calibrate_command, argv) == 0
    out = capsys.readouterr().out
    assert "signal quality" in out and "chosen: alignment" in out and "confusion" in out
    prof = load_profile(tmp_path, "S01")
    assert prof.meta["metrics"]["n_trials"] == 48
    assert (prof.path / "confusion.png").stat().st_size > 1000
    assert json.loads((prof.path / "quality.json").read_text())["trials"]["rejected"] == {}
    session = json.loads((Path(prof.meta["session"]) / "session.json").read_text())
    assert session["profile"] == str(prof.path)
    assert cli(profiles_command, ["list", "--profiles-dir", str(tmp_path)]) == 0
    assert "S01 v001" in capsys.readouterr().out
    assert cli(profiles_command, ["remove", "--subject", "S01", "--all",
                                  "--profiles-dir", str(tmp_path)]) == 0  # fmt: skip
    assert list_profiles(tmp_path) == []


def test_calibrate_bad_inputs_give_clear_messages_and_keep_the_recording(
    tmp_path, base_dir, capsys
):
    common = ["--model", str(base_dir), "--profiles-dir", str(tmp_path), "--max-minutes", "0.1"]
    # Markers with labels that are no class (numeric codes, no --classes).
    coded, _ = build_trials_fif(tmp_path / "coded_eeg.fif", "train", 12,
                                labels={"negativity": "1", "positivity": "2"})  # fmt: skip
    assert cli(calibrate_command, ["--subject", "S1", "--from", str(coded), *common]) == 2
    out = capsys.readouterr().out
    assert "no usable trial" in out and "'1'" in out and "--classes" in out
    # ... mapped with --classes they are trials, but too few per class to fit.
    argv = ["--subject", "S1", "--from", str(coded), "--classes",
            "negativity=1,positivity=2", *common]  # fmt: skip
    assert cli(calibrate_command, argv) == 2
    out = capsys.readouterr().out
    assert "too few trials per class" in out and "session is kept" in out
    session = next((tmp_path / "S1" / "sessions").iterdir())
    rec = read_session(session)
    assert rec.n_samples == 12 * 896 and len(rec.marker_labels) == 12
    # A montage that is not the model's.
    other, _ = build_trials_fif(tmp_path / "other_eeg.fif", "train", 4,
                                ch_names=["Fp1", "Fp2", "F3", "F4", "C3", "C4"])  # fmt: skip
    assert cli(calibrate_command, ["--subject", "S2", "--from", str(other), *common]) == 2
    out = capsys.readouterr().out
    assert "missing channel(s)" in out and "Fp1" in out
    # A window that is not the model's.
    argv = ["--subject", "S3", "--from", str(coded), "--tmax", "2.0", *common]
    assert cli(calibrate_command, argv) == 2
    assert "set --tmax 3.5" in capsys.readouterr().out


def test_cached_expert_features_give_the_same_outputs(base_dir):
    from rtmoe.calibration.fit import cached_features, predict_proba, train

    model = load_model(base_dir).model
    x = 0.2 * torch.randn(5, 6, 700, generator=torch.Generator().manual_seed(0))
    psd = model.psd(x)
    with torch.no_grad():
        want = model(x, psd)
        features = cached_features(model, x, batch_size=2)  # batched like a real session
        got = model.forward_head(features.take(torch.tensor([3, 1])))
    torch.testing.assert_close(got, want[[3, 1]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        predict_proba(model, x, features=features), predict_proba(model, x), rtol=0, atol=1e-6
    )
    # Head-only training on the cached features changes the head, never an expert, and
    # the trained model's full forward agrees with its head over the cached features.
    experts = {k: v.clone() for k, v in model.experts.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    y = torch.tensor([0, 1, 0, 1, 1])
    kw = {"epochs": 3, "lr": 1e-2, "batch_size": 2, "seed": 0, "time_limit_s": 60.0}
    assert train(model, x, y, "head", features=features, **kw) == 3
    assert all(torch.equal(v, model.experts.state_dict()[k]) for k, v in experts.items())
    assert not all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.items())
    np.testing.assert_allclose(
        predict_proba(model, x, features=features), predict_proba(model, x), rtol=0, atol=1e-6
    )


# -- profiles are verified at load (issue 12 item 7) ---------------------------------------


def _save_test_profile(profiles_dir, base_dir, subject="S01"):
    import copy

    from rtmoe.profiles import save_profile

    base = load_model(base_dir)
    fitted = copy.deepcopy(base.model)
    with torch.no_grad():
        fitted.head[-1].bias += 1.0
    path = save_profile(
        profiles_dir, subject, base=base, base_ref=str(base_dir), model=fitted,
        labels=("negativity", "positivity"), alignment=np.eye(6, dtype=np.float32),
        stream_ch_names=list(SCP1_CHANNELS), channel_index=np.arange(6),
        settings={"alignment": "ea", "tuning": "head"}, metrics={"balanced_accuracy": 0.7},
        quality={}, session=str(profiles_dir / subject / "sessions" / "20260101T000000"),
    )  # fmt: skip
    return base, path


def _rewrite_meta(path, edit, rehash=True):
    """Edit profile.json; with ``rehash`` its content hash is recomputed (a consistent lie)."""
    from rtmoe.profiles import profile_content_hash

    meta = json.loads((path / "profile.json").read_text())
    edit(meta)
    if rehash:
        meta["content_sha256"] = profile_content_hash(meta)
    (path / "profile.json").write_text(json.dumps(meta, indent=2))


def _one_line_refusal(fn, *pieces):
    with pytest.raises(ProfileError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    for piece in pieces:
        assert piece in message, (piece, message)
    return message


def test_profile_with_flipped_weight_bytes_is_refused(tmp_path, base_dir):
    _, path = _save_test_profile(tmp_path, base_dir)
    weights = path / "weights.safetensors"
    weights.write_bytes(bytes(b ^ 0xFF for b in weights.read_bytes()))
    _one_line_refusal(
        lambda: load_profile(tmp_path, "S01"),
        str(weights),
        "weights_sha256",
        "rtmoe calibrate --subject S01 --from",
        "rtmoe profiles remove --subject S01 --version 1",
    )


def test_profile_with_edited_config_is_refused(tmp_path, base_dir):
    _, path = _save_test_profile(tmp_path, base_dir)
    good = (path / "profile.json").read_text()
    for edit in (
        lambda m: m["settings"].update(alignment="none"),
        lambda m: m.update(sfreq=100.0),
        lambda m: m["labels"].append("neutral"),
    ):
        (path / "profile.json").write_text(good)
        _rewrite_meta(path, edit, rehash=False)
        _one_line_refusal(
            lambda: load_profile(tmp_path, "S01"), str(path / "profile.json"), "content_sha256"
        )
    (path / "profile.json").write_text(good[: len(good) // 2])
    _one_line_refusal(lambda: load_profile(tmp_path, "S01"), "not readable JSON")
    (path / "profile.json").write_text(good)
    assert load_profile(tmp_path, "S01").labels == ("negativity", "positivity")


def test_profile_structure_is_checked_even_when_its_hash_fits(tmp_path, base_dir):
    base, path = _save_test_profile(tmp_path, base_dir)
    good = (path / "profile.json").read_text()
    cases = [
        (lambda m: m["labels"].append("neutral"), "3 labels"),
        (lambda m: m.pop("labels"), "missing key(s) ['labels']"),
        (lambda m: m["base_model"].pop("weights_sha256"), "base_model.weights_sha256"),
        (lambda m: m.update(format=1), "format 1"),
    ]
    for edit, expected in cases:
        (path / "profile.json").write_text(good)
        _rewrite_meta(path, edit)
        _one_line_refusal(lambda: load_profile(tmp_path, "S01"), str(path), expected)
    # 3 labels and 3 outputs agree with each other but not with the 2-output head fitted.
    (path / "profile.json").write_text(good)
    _rewrite_meta(path, lambda m: m.update(labels=[*m["labels"], "neutral"], n_outputs=3))
    profile = load_profile(tmp_path, "S01")
    _one_line_refusal(
        lambda: apply_profile(base, profile, list(SCP1_CHANNELS)),
        str(path / "weights.safetensors"),
        "3 labels",
        "head.4",
    )


def test_bad_profile_is_one_line_at_the_cli(tmp_path, base_dir):
    import subprocess
    import sys

    _, path = _save_test_profile(tmp_path, base_dir)
    _rewrite_meta(path, lambda m: m.pop("channel_index"))
    code = "import sys; from rtmoe.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["stream", "--lsl", "nothing", "--subject", "S01", "--profiles-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "missing key(s) ['channel_index']" in line and str(path) in line


# -- calibration keeps every cue and refits from disk alone (issue 12 item 8) --------------


def test_cues_in_the_first_seconds_of_a_run_are_kept(tmp_path, base_dir, capsys):
    """The sender starts the moment the EEG inlet connects: no cue may be lost."""
    import threading
    import uuid

    pytest.importorskip("pylsl")
    from rtmoe.recording import read_recording
    from rtmoe.stream.player import Player

    fif, y = build_trials_fif(tmp_path / "first_eeg.fif", "train", 24, seed=3)
    name = f"first-{uuid.uuid4().hex[:8]}"
    argv = ["--subject", "S01", "--lsl", name, "--markers", f"{name}-markers",
            "--model", str(base_dir), "--profiles-dir", str(tmp_path / "p"), "--no-fit",
            "--idle-stop-s", "1.5", "--quiet"]  # fmt: skip
    with Player(read_recording(fif), name=name, speed=20.0, chunk_ms=100) as player:

        def start_with_the_eeg_inlet() -> None:
            # As an experiment already running would: cues flow as soon as EEG is read.
            if player.wait_for_consumers(30, markers=False):
                player.start()

        starter = threading.Thread(target=start_with_the_eeg_inlet, daemon=True)
        starter.start()
        assert cli(calibrate_command, argv) == 0, capsys.readouterr().out
        starter.join(5)
    session = next((tmp_path / "p" / "S01" / "sessions").iterdir())
    rec = read_session(session)
    assert rec.n_samples == 24 * 896
    assert rec.marker_labels == tuple(y)  # every cue, the first ones included
    run = rec.meta["runs"][0]
    assert run["markers_open_lsl_s"] <= rec.times[0]  # markers were open before any EEG
    # The streams are gone (as after a fit killed later): the error names the refit.
    assert cli(calibrate_command, argv) == 2
    out = capsys.readouterr().out
    assert "EEG stream: no LSL stream" in out and f"--from {session}" in out


def test_calibrate_from_a_session_folder_refits_from_disk(tmp_path, base_dir, train_fif, capsys):
    path, _ = train_fif
    profiles = tmp_path / "profiles"
    argv = ["--subject", "S01", "--from", str(path), "--model", str(base_dir),
            "--profiles-dir", str(profiles), "--no-fit"]  # fmt: skip
    assert cli(calibrate_command, argv) == 0
    (session,) = (profiles / "S01" / "sessions").iterdir()
    capsys.readouterr()
    # The session alone: model, classes and window come from session.json, the profiles
    # folder from where the session lies; no recording file, no stream.
    refit = ["--subject", "S01", "--from", str(session), "--folds", "3", "--epochs", "4",
             "--max-minutes", "0.2", "--tuning", "head", "--alignment", "none"]  # fmt: skip
    assert cli(calibrate_command, refit) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"refitting session {session}" in out and "profile saved" in out
    prof = load_profile(profiles, "S01")
    assert prof.meta["metrics"]["n_trials"] == 48 and prof.meta["session"] == str(session)
    assert json.loads((session / "session.json").read_text())["profile"] == str(prof.path)
    # Wrong subject, and a folder that is no session: one line each.
    assert cli(calibrate_command, ["--subject", "S02", "--from", str(session)]) == 2
    assert "recorded for subject 'S01'" in capsys.readouterr().out
    assert cli(calibrate_command, ["--subject", "S01", "--from", str(tmp_path)]) == 2
    assert "not a calibration session" in capsys.readouterr().out


def test_a_fit_killed_with_sigkill_is_refitted_from_the_session(tmp_path, base_dir, train_fif):
    import os
    import signal
    import subprocess
    import sys
    import time

    path, _ = train_fif
    profiles = tmp_path / "profiles"
    code = "import sys; from rtmoe.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["calibrate", "--subject", "S01", "--from", str(path), "--model", str(base_dir),
            "--profiles-dir", str(profiles), "--folds", "3", "--epochs", "400",
            "--max-minutes", "5"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        seen = []
        for line in proc.stdout:  # the quality report is printed before the fit starts
            seen.append(line)
            if "chosen" in line or time.monotonic() > deadline:
                break
            if "signal quality" in line:
                time.sleep(1.0)  # well inside the fit
                break
        assert any("signal quality" in line for line in seen), "".join(seen)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert list_profiles(profiles) == []  # the fit never finished
    (session,) = (profiles / "S01" / "sessions").iterdir()
    assert json.loads((session / "session.json").read_text()).get("profile") is None
    refit = ["--subject", "S01", "--from", str(session), "--folds", "3", "--epochs", "4",
             "--max-minutes", "0.2", "--tuning", "head", "--alignment", "none"]  # fmt: skip
    assert cli(calibrate_command, refit) == 0
    assert load_profile(profiles, "S01").meta["metrics"]["n_trials"] == 48


def test_a_damaged_profile_is_listed_as_unusable_without_hiding_the_others(
    tmp_path, base_dir, capsys
):
    _, first = _save_test_profile(tmp_path, base_dir)
    _, second = _save_test_profile(tmp_path, base_dir)
    _rewrite_meta(first, lambda m: m.pop("metrics"))
    rows = list_profiles(tmp_path)
    assert [r["version"] for r in rows] == [1, 2]
    assert "missing key(s) ['metrics']" in rows[0]["error"] and "error" not in rows[1]
    assert cli(profiles_command, ["list", "--profiles-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("S01 v001  UNUSABLE: ") and str(first) in out[0]
    assert out[1].startswith("S01 v002  ") and str(second) in out[1]
