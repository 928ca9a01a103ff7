"""The live loop end to end: real LSL outlets on this machine, a real ZeroMQ SUB socket.

Each stream has a unique name/source_id; the publisher binds a random 127.0.0.1 port;
every receive and wait is bounded. Decodes are checked against the offline computation:
the pushed raw stream preprocessed whole by the same causal chain, the decoded window
cut out of it by its LSL times, and the model run eagerly.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import uuid

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")
zmq = pytest.importorskip("zmq")

from rtmoe.checkpoint import save_checkpoint  # noqa: E402
from rtmoe.config import Config, RuntimeConfig, SignalConfig  # noqa: E402
from rtmoe.dsp.filters import apply_filter, design_filter, filter_state  # noqa: E402
from rtmoe.dsp.resample_stream import (  # noqa: E402
    apply_resample,
    design_resampler,
    resample_state,
)
from rtmoe.dsp.spectral import welch_psd  # noqa: E402
from rtmoe.models.registry import model_config  # noqa: E402
from rtmoe.models.specmoe import (  # noqa: E402
    SPECMOE_KIND,
    TaskConfig,
    build_specmoe,
    load_specmoe,
    specmoe_meta,
)
from rtmoe.runtime.cli import stream_command  # noqa: E402
from rtmoe.runtime.demo import TrialScorer, run_demo  # noqa: E402
from rtmoe.runtime.loop import Runtime  # noqa: E402
from rtmoe.signal import (  # noqa: E402
    ChannelError,
    SignalChain,
    canonical_name,
    map_channels,
    preprocess_recording,
)
from rtmoe.stream.lsl import LslError  # noqa: E402
from rtmoe.transport import (  # noqa: E402
    DecodeMessage,
    RuntimeState,
    StatusMessage,
    ZmqPublisher,
    decode,
)

MODEL_CHANS = ("C3", "C4", "CZ")
N_TIMES = 100  # 0.5 s at 200 Hz: short windows keep the tests fast
HOP_MS = 100.0
RESOLVE_S = 0.3
DEMO_CHANS = ("A1-Cz", "A2-Cz", "C3f", "C3p", "C4f", "C4p")


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _save_model(directory, ch_names, labels=("a", "b")):
    config = Config().replace(model=model_config("tiny"), moe={"n_experts": 2})
    task = TaskConfig(name="synthetic", ch_names=tuple(ch_names), n_times=N_TIMES, labels=labels)
    torch.manual_seed(0)
    model = build_specmoe(config, task, config.moe).train()
    with torch.no_grad():  # BatchNorm statistics of EEG-scaled input, as training leaves them
        for _ in range(3):
            model(0.3 * torch.randn(8, task.n_chans, N_TIMES))
    return save_checkpoint(
        directory, model.eval(), config, kind=SPECMOE_KIND, meta=specmoe_meta(task)
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model") / "ckpt", MODEL_CHANS)


def _unique(prefix: str) -> str:
    return f"rtmoe-test-{prefix}-{uuid.uuid4().hex[:10]}"


class Pusher:
    """An LSL outlet fed in real time from a thread with regular, known timestamps."""

    def __init__(self, labels, sfreq, duration_s, name=None, source_id=None, seed=0):
        self.name = name or _unique("eeg")
        self.source_id = source_id or self.name
        self.sfreq = sfreq
        rng = np.random.default_rng(seed)
        n = round(duration_s * sfreq)
        t = np.arange(n) / sfreq
        # µV: an offset, a 10 Hz rhythm differing per channel, and noise.
        self.data = (
            80.0
            + 30 * np.sin(2 * np.pi * 10 * t + np.arange(len(labels))[:, None])
            + 10 * rng.normal(size=(len(labels), n))
        ).astype(np.float32)
        info = pylsl.StreamInfo(self.name, "EEG", len(labels), sfreq, "float32", self.source_id)
        info.set_channel_labels(list(labels))
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)
        self.stamps = np.full(n, np.nan)
        self.n_pushed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push)

    def start(self) -> Pusher:
        self._thread.start()
        return self

    def _push(self, chunk=8):
        start = pylsl.local_clock()
        n = self.data.shape[1]
        while self.n_pushed < n:
            k = min(chunk, n - self.n_pushed)
            i = self.n_pushed
            due = start + (i + k - 1) / self.sfreq
            if self._stop.wait(max(0.0, due - pylsl.local_clock())):
                return
            stamps = start + (i + np.arange(k)) / self.sfreq
            self.stamps[i : i + k] = stamps
            self.outlet.push_chunk(np.ascontiguousarray(self.data[:, i : i + k].T), list(stamps))
            self.n_pushed += k

    def join(self, timeout_s=10.0):
        self._thread.join(timeout_s)
        assert not self._thread.is_alive()

    def kill(self):
        self._stop.set()
        self.join()
        self.outlet = None
        gc.collect()


def _subscriber(address: str, topics=(b"rtmoe.",)):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(address)
    return sub


def _drain(sub, quiet_ms=300):
    """Every message queued at the subscriber (stops after quiet_ms without one)."""
    messages = []
    while sub.poll(quiet_ms):
        messages.append(decode(sub.recv_multipart()))
    return messages


def _cfg(**overrides) -> RuntimeConfig:
    base = {"hop_ms": HOP_MS, "engine": "torch", "device": "cpu", "resolve_timeout_s": RESOLVE_S}
    return RuntimeConfig(**{**base, **overrides})


def _run(model_dir, pusher, duration_s, **cfg):
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    runtime = Runtime(
        model_dir, {"name": pusher.name}, _cfg(**cfg), publisher=publisher, subject_id="S01"
    )
    sub = _subscriber(publisher.address)
    time.sleep(0.1)  # the subscription reaches the publisher before the first sample
    pusher.start()
    summary = runtime.run(duration_s)
    pusher.join()
    messages = _drain(sub)
    sub.close()
    publisher.close()
    decodes = [m for m in messages if isinstance(m, DecodeMessage)]
    statuses = [m for m in messages if isinstance(m, StatusMessage)]
    return runtime, summary, decodes, statuses


def _offline_check(runtime, pusher, decodes, index, atol=1e-5):
    """Each decode equals the model on the same window of the whole-stream preprocessing."""
    loaded = runtime.loaded
    n = pusher.n_pushed
    y, newest = SignalChain(index, pusher.sfreq, loaded.config.signal).process(pusher.data[:, :n])
    out_stamps = pusher.stamps[newest]
    model = load_specmoe(loaded.checkpoint.path).model
    for msg in decodes:
        # Received stamps carry liblsl's clock-offset estimate (µs on one machine).
        end = int(np.argmin(np.abs(out_stamps - msg.window_last_lsl_s))) + 1
        assert abs(out_stamps[end - 1] - msg.window_last_lsl_s) < 0.2 / pusher.sfreq
        assert abs(out_stamps[end - N_TIMES] - msg.window_first_lsl_s) < 0.2 / pusher.sfreq
        assert end % runtime.hop == 0
        x = torch.from_numpy(y[:, end - N_TIMES : end])[None]
        with torch.inference_mode():
            logits, gates = model.forward_with_gates(x, welch_psd(x, runtime.sfreq, model.nperseg))
        np.testing.assert_allclose(msg.probabilities, logits.softmax(-1)[0], atol=atol)
        np.testing.assert_allclose(
            list(msg.gates.values()), gates.flatten(2).mean(-1)[0], atol=atol
        )
        assert msg.label == runtime.labels[int(np.argmax(msg.probabilities))]


# -- channels and preprocessing ---------------------------------------------------------


def test_channel_names_match_by_name_case_and_alias():
    assert canonical_name("EEG T7-REF") == "T3" and canonical_name(" fp1. ") == "FP1"
    assert canonical_name("A1-Cz") == "A1-CZ"  # a bipolar label stays whole
    index = map_channels(["Pz", "t7", "EEG C3-REF", "cz"], ["C3", "CZ", "T3"])
    np.testing.assert_array_equal(index, [2, 3, 1])
    with pytest.raises(ChannelError, match=r"missing channel\(s\) \['T4'\].*'Pz'.*--fill"):
        map_channels(["Pz", "Cz"], ["Cz", "T4"])
    np.testing.assert_array_equal(map_channels(["Pz", "Cz"], ["Cz", "T4"], "zeros"), [1, -1])
    with pytest.raises(ChannelError, match="feed two model inputs"):
        map_channels(["T7", "Cz"], ["T7", "T3"])
    with pytest.raises(ValueError, match="fill='nan'"):
        map_channels(["Cz"], ["Cz"], "nan")


def test_preprocessing_chunked_equals_whole_and_the_building_blocks():
    rng = np.random.default_rng(0)
    data = (50 + 20 * rng.normal(size=(4, 2000))).astype(np.float32)
    index = np.array([2, -1, 0])
    signal = SignalConfig()
    whole, _ = preprocess_recording(data, 256.0, signal, index)
    chunked, pre, i = [], SignalChain(index, 256.0, signal), 0
    while i < data.shape[1]:
        k = int(rng.integers(1, 60))
        chunked.append(pre.process(data[:, i : i + k])[0])
        i += k
    np.testing.assert_array_equal(np.concatenate(chunked, axis=1), whole)
    # The chain by hand: pick, resample holding the first sample, filter from its steady
    # state, scale; the filled channel stays exactly zero.
    picked = np.zeros((3, 2000))
    picked[[0, 2]] = data[[2, 0]]
    design = design_resampler(256.0, 200.0)
    r, _, _ = apply_resample(picked, design, resample_state(design, 3, picked[:, 0]))
    sos = design_filter(signal)
    f, _ = apply_filter(r, sos, filter_state(sos, 3, r[:, 0]))
    np.testing.assert_allclose(whole, f / signal.unit_uv, rtol=1e-6, atol=1e-7)
    assert not whole[1].any() and whole.shape[1] == 1563


def test_nonfinite_samples_hold_the_last_finite_value():
    data = np.array([[np.nan, 1.0, np.nan, np.inf, 4.0], [2.0, 2.0, 3.0, np.nan, 5.0]])
    signal = SignalConfig(l_freq=None, h_freq=None, notch_freq=None, unit_uv=1.0)
    pre = SignalChain(np.array([0, 1]), 200.0, signal)
    y, _ = pre.process(data)
    np.testing.assert_array_equal(y, [[0, 1, 1, 1, 4], [2, 2, 3, 3, 5]])
    assert pre.n_nonfinite == 4
    y, _ = pre.process(np.array([[np.nan], [np.nan]]))
    np.testing.assert_array_equal(y, [[4], [5]])  # held across chunks


# -- the live loop ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sfreq_in", "device"),
    [(200.0, "cpu"), (256.0, "cpu"), pytest.param(256.0, "cuda", marks=pytest.mark.cuda)],
)
def test_decodes_every_hop_equal_the_offline_model(model_dir, sfreq_in, device):
    labels = ("c3", "EXTRA", "Cz", "C4")  # other order, other case, an extra channel
    pusher = Pusher(labels, sfreq_in, duration_s=2.2)
    runtime, summary, decodes, statuses = _run(model_dir, pusher, 2.6, device=device)
    assert runtime.ring.device.type == device
    assert len(decodes) >= 12  # (2.2 s - 0.5 s window) / 0.1 s hop, give or take
    assert [m.seq for m in decodes] == list(range(len(decodes)))
    ends = np.array([m.window_last_lsl_s for m in decodes])
    np.testing.assert_allclose(np.diff(ends), HOP_MS * 1e-3, atol=1.5 / sfreq_in)
    # cuDNN may use TF32 convolutions on the GPU: a looser tolerance there.
    atol = 1e-5 if device == "cpu" else 2e-3
    _offline_check(runtime, pusher, decodes, index=np.array([0, 3, 2]), atol=atol)
    assert all(m.subject_id == "S01" and m.model_id.startswith("synthetic-") for m in decodes)
    assert all(0 <= m.latency_ms and m.compute_ms > 0 for m in decodes)
    assert statuses and statuses[-1].state is RuntimeState.STOPPING
    running = [s for s in statuses if s.state is RuntimeState.RUNNING]
    assert running and running[-1].latency_ms_mean is not None
    assert summary.decodes == len(decodes) and summary.gaps == 0 and summary.skipped_windows == 0
    assert summary.samples_received == pusher.n_pushed
    timings = runtime.timings
    assert timings.shape == (len(decodes), 6) and (timings[:, 4] > 0).all()
    np.testing.assert_allclose(runtime.latencies_ms, [m.latency_ms for m in decodes])


def test_slow_decodes_skip_to_the_newest_window_and_count_the_skipped(model_dir):
    pusher = Pusher(MODEL_CHANS, 200.0, duration_s=2.5)
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    runtime = Runtime(model_dir, {"name": pusher.name}, _cfg(), publisher=publisher)
    engine = runtime.engine

    def slow_engine(x, psd):  # 2.5 hops per decode: the loop falls behind
        time.sleep(0.25)
        return engine(x, psd)

    runtime.engine = slow_engine
    sub = _subscriber(publisher.address)
    time.sleep(0.1)
    pusher.start()
    summary = runtime.run(2.9)
    pusher.join()
    decodes = [m for m in _drain(sub) if isinstance(m, DecodeMessage)]
    sub.close()
    publisher.close()
    assert len(decodes) >= 4 and summary.skipped_windows >= 4
    assert [m.seq for m in decodes] == list(range(len(decodes)))
    ends = np.array([m.window_last_lsl_s for m in decodes])
    hops = np.diff(ends) / (HOP_MS * 1e-3)
    np.testing.assert_allclose(hops, np.round(hops), atol=0.05)  # still on the hop grid
    # each decode names the windows skipped since the previous one (the protocol's field),
    # the status topic their total
    assert [m.skipped_windows for m in decodes[1:]] == (np.round(hops) - 1).astype(int).tolist()
    assert sum(m.skipped_windows for m in decodes) <= summary.skipped_windows
    # Windows were skipped, never queued (the last decode may follow the stream's end).
    assert (np.round(hops[:-1]) >= 2).all()


def test_restarted_outlet_stalls_then_recovers_without_restart(model_dir):
    labels = MODEL_CHANS
    first = Pusher(labels, 200.0, duration_s=1.2)
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    runtime = Runtime(
        model_dir,
        {"source_id": first.source_id},
        _cfg(stall_timeout_ms=300.0, status_period_s=0.2),
        publisher=publisher,
    )
    sub = _subscriber(publisher.address)
    time.sleep(0.1)
    thread = threading.Thread(target=runtime.run, kwargs={"duration_s": 12.0})
    thread.start()
    first.start()
    first.join()
    first.kill()
    states, deadline = [], time.monotonic() + 3.0
    while RuntimeState.STALLED not in states and time.monotonic() < deadline:
        states += [m.state for m in _drain(sub, 100) if isinstance(m, StatusMessage)]
    assert RuntimeState.STALLED in states
    # liblsl takes ~1-3 s to re-resolve the outlet; samples pushed before are lost.
    second = Pusher(labels, 200.0, 12.0, name=first.name, source_id=first.source_id, seed=1)
    second.start()
    after, deadline = [], time.monotonic() + 8.0
    while len([m for m in after if isinstance(m, DecodeMessage)]) < 3 and (
        time.monotonic() < deadline
    ):
        after += _drain(sub, 100)
    runtime.stop()
    thread.join(5.0)
    second.kill()
    after += _drain(sub)
    sub.close()
    publisher.close()
    resumed = [m for m in after if isinstance(m, DecodeMessage)]
    assert len(resumed) >= 3, "no decodes after the outlet came back"
    assert RuntimeState.RUNNING in [m.state for m in after if isinstance(m, StatusMessage)]
    # No window spans the hole: every new window lies in the second outlet's samples.
    assert min(m.window_first_lsl_s for m in resumed) >= second.stamps[0]
    spans = [m.window_last_lsl_s - m.window_first_lsl_s for m in resumed]
    np.testing.assert_allclose(spans, (N_TIMES - 1) / 200.0, atol=1e-3)
    # Reconnecting can itself deliver a late burst: at least the downtime is seen.
    assert runtime.source.n_stalls >= 1 and runtime.preprocessor.n_resets >= 1
    seqs = [m.seq for m in resumed]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_nan_samples_are_repaired_counted_and_never_published(model_dir):
    pusher = Pusher(MODEL_CHANS, 200.0, duration_s=1.5)
    pusher.data[1, 150:170] = np.nan
    pusher.data[0, 200] = np.inf
    runtime, summary, decodes, statuses = _run(model_dir, pusher, duration_s=1.9)
    assert decodes and summary.nonfinite_values == 21
    assert statuses[-1].nonfinite_values == 21  # also a number on the status topic
    assert all(np.isfinite(m.probabilities).all() for m in decodes)
    _offline_check(runtime, pusher, decodes, index=np.arange(3))


def test_missing_channels_error_or_zero_fill(model_dir):
    pusher = Pusher(("C3", "Cz", "Pz"), 200.0, duration_s=1.2)
    with pytest.raises(ChannelError, match=r"\['C4'\]"):
        Runtime(model_dir, {"name": pusher.name}, _cfg())
    runtime, _, decodes, statuses = _run(model_dir, pusher, duration_s=1.5, fill="zeros")
    assert runtime.filled_channels == ["C4"] and "filled ['C4']" in runtime.console_line()
    assert statuses[-1].filled_channels == ("C4",)
    assert decodes
    _offline_check(runtime, pusher, decodes, index=np.array([0, -1, 1]))


def test_ambiguous_stream_name_is_the_resolve_error(model_dir):
    name = _unique("dup")
    a = Pusher(MODEL_CHANS, 200.0, 0.1, name=name, source_id=_unique("a"))
    b = Pusher(MODEL_CHANS, 200.0, 0.1, name=name, source_id=_unique("b"))
    with pytest.raises(LslError, match=r"(?s)2 LSL streams match.*source_id"):
        Runtime(model_dir, {"name": name}, _cfg())
    del a, b


def test_irregular_rate_stream_is_refused(model_dir):
    name = _unique("irregular")
    info = pylsl.StreamInfo(name, "EEG", 3, pylsl.IRREGULAR_RATE, "float32", name)
    outlet = pylsl.StreamOutlet(info)
    with pytest.raises(LslError, match="irregular rate"):
        Runtime(model_dir, {"name": name}, _cfg())
    del outlet


def _cli(command, argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_cli_stream_runs_and_reports(model_dir, capsys):
    # Started first: the CLI resolves for the whole default timeout (2 s) before opening.
    pusher = Pusher(("C3", "C4"), 200.0, duration_s=5.0)
    pusher.start()
    argv = ["--lsl", pusher.name, "--model", str(model_dir), "--engine", "torch"]
    argv += ["--zmq", "tcp://127.0.0.1:0", "--device", "cpu", "--duration-s", "1.2"]
    assert _cli(stream_command, [*argv, "--fill", "zeros"]) == 0
    out = capsys.readouterr()
    assert "zero-filled channels ['CZ']" in out.out and "decodes in" in out.out
    assert "RUNNING" in out.err  # the live console line
    pusher.kill()


def test_trial_scorer_matches_the_window_end_nearest_each_trial():
    scorer = TrialScorer(trial_s=1.0, sample_s=0.01, hop_s=0.1)
    scorer.add_marker(10.0, "a")  # last sample at 10.99
    scorer.add_marker(11.0, "b")  # last sample at 11.99
    for end, label in [(10.9, "b"), (11.0, "a"), (11.1, "b"), (12.0, "a")]:
        scorer.add_decode(
            DecodeMessage(0, "m", None, ["a", "b"], [0.5, 0.5], label, {}, end - 1, end, end, 0, 0)
        )
    scorer.score()
    assert (scorer.n_scored, scorer.n_correct) == (1, 1)  # trial b waits for a later decode
    scorer.score(final=True)
    assert (scorer.n_scored, scorer.n_correct) == (2, 1) and scorer.accuracy == 0.5


def test_demo_plays_decodes_and_scores(tmp_path, capsys):
    model = _save_model(tmp_path / "demo", DEMO_CHANS, labels=("negativity", "positivity"))
    summary = run_demo(model, duration_s=4.5, cfg=_cfg(zmq_address="tcp://127.0.0.1:0"))
    assert summary.decodes_received >= 30 and summary.runtime.decodes >= 30
    assert summary.trials >= 2 and summary.trials_scored >= 1
    assert 0 <= summary.accuracy <= 1 and 0 < summary.latency_ms_p50 < 500
    assert "accuracy" in summary.describe()
    assert "#" in capsys.readouterr().err  # the live line showed decodes
