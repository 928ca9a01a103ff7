"""Live vs offline: a labelled test split through real LSL and ``rtmoe stream``, trial by trial.

    python bench/live_parity.py [--model default] [--speed 4] [--trials N]

The SCP1 test split (the shipped demo recording: its 293 trials back to back, 256 Hz)
is pushed by a `Player` as LSL EEG + marker outlets at ``--speed`` × real time (the
stamps follow the faster clock). ``rtmoe stream`` runs as its own process with a hop of
one trial (3.5 s), so that one window ends on every trial's end; this script subscribes
to its decodes over ZeroMQ and reads the markers from LSL. Each trial is scored with the
decode whose window ends on the trial's last sample (within 1.5 input periods). The same
checkpoint scores the same trials offline twice:

* *per trial*, as `rtmoe evaluate` does (`rtmoe.offline.evaluate.evaluate`: each trial
  through the signal chain as its own segment). These windows differ from the live ones
  by what precedes each trial: the previous trial's samples in the filters' and
  resampler's memory, instead of a held first sample;
* *the recording*, as `rtmoe prepare` cuts training windows from a recording: the whole
  recording (as the float32 samples LSL carries) through the chain's whole-recording
  form (`rtmoe.signal.preprocess_recording`), each window ending on a trial's last
  sample. This is the reference the live path must equal.

Printed: live and offline accuracies, per-trial agreement of the decided labels with
each reference, and the probability differences.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

import numpy as np

#: Samples per SCP1 trial at 256 Hz.
TRIAL_SAMPLES = 896


def _reader(proc: subprocess.Popen, lines: list[str], address: list[str], ready: threading.Event):
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"publishing on (tcp://\S+?)[;\s]", line)
        if found:
            address.append(found.group(1))
            ready.set()
    ready.set()


def run_live(model: str, n_trials: int, speed: float, chunk_ms: float) -> tuple[list, list, str]:
    """(markers, decodes, stream summary) of one live run over the first ``n_trials``."""
    import zmq

    from rtmoe.recording import read_recording
    from rtmoe.stream.lsl import resolve_stream
    from rtmoe.stream.markers import MarkerInlet
    from rtmoe.stream.player import Player
    from rtmoe.stream.replay import demo_recording_path
    from rtmoe.transport import TOPIC_DECODE, TOPIC_STATUS, DecodeMessage, decode

    replay = read_recording(demo_recording_path())
    name = f"parity-{secrets.token_hex(4)}"
    duration_s = n_trials * TRIAL_SAMPLES / replay.sfreq
    with Player(replay, name=name, speed=speed, chunk_ms=chunk_ms, duration_s=duration_s) as player:
        argv = [
            sys.executable, "-m", "rtmoe", "stream", "--lsl", name, "--model", model,
            "--engine", "torch", "--device", "cpu", "--zmq", "tcp://127.0.0.1:0",
            "--hop-ms", "3500", "--wait-s", "60",
            # The replay's clock runs `speed` times the declared rate, by design.
            "--set", f"runtime.rate_tolerance={speed}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)  # fmt: skip
        lines: list[str] = []
        address: list[str] = []
        ready = threading.Event()
        threading.Thread(target=_reader, args=(proc, lines, address, ready), daemon=True).start()
        ready.wait(300)
        if not address:
            proc.kill()
            raise SystemExit("rtmoe stream did not start:\n" + "".join(lines))
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for topic in (TOPIC_DECODE, TOPIC_STATUS):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(address[0])
        if not sub.poll(10_000):  # the first status heartbeat: connected, nothing missed
            raise SystemExit("no status heartbeat from rtmoe stream within 10 s")
        inlet = MarkerInlet(resolve_stream(name=f"{name}-markers", timeout_s=5.0))
        if not player.wait_for_consumers(60):
            raise SystemExit("rtmoe stream never connected to the EEG outlet")
        player.start()
        markers, decodes = [], []
        last_decode = time.monotonic()
        while time.monotonic() - last_decode < 10 or not player.wait(0):
            while sub.poll(100):
                msg = decode(sub.recv_multipart())
                if isinstance(msg, DecodeMessage):
                    decodes.append(msg)
                    last_decode = time.monotonic()
            markers += inlet.pull()
            if len(markers) >= n_trials and len(decodes) >= n_trials:
                break
        time.sleep(0.5)
        markers += inlet.pull()
        inlet.close()
        sub.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    summary = next((ln.strip() for ln in reversed(lines) if "decodes" in ln), "".join(lines[-3:]))
    return markers[:n_trials], decodes, summary


def offline_recording(model: str, n_trials: int) -> np.ndarray:
    """Class probabilities of the windows ending on each trial's last sample, cut from the
    demo recording run through the chain as one segment (see the docstring)."""
    import torch

    from rtmoe.models.shipped import load_model
    from rtmoe.offline.finetune import predict
    from rtmoe.recording import read_recording
    from rtmoe.signal import map_channels, preprocess_recording
    from rtmoe.stream.replay import demo_recording_path

    loaded = load_model(model)
    replay = read_recording(demo_recording_path())
    data = replay.data[:, : n_trials * TRIAL_SAMPLES].astype(np.float32)  # what LSL carries
    index = map_channels(replay.ch_names, loaded.task.ch_names)
    y, newest = preprocess_recording(data, replay.sfreq, loaded.config.signal, index)
    n_times = loaded.task.n_times
    windows = []
    for k in range(n_trials):
        end = (k + 1) * TRIAL_SAMPLES - 1
        j = int(np.searchsorted(newest, end, side="right")) - 1  # newest output reading it
        if end - newest[j] >= 1.5 or j + 1 < n_times:
            raise SystemExit(f"trial {k}: no window of the recording ends on its last sample")
        windows.append(y[:, j + 1 - n_times : j + 1])
    outputs, _ = predict(loaded.model.eval(), torch.from_numpy(np.stack(windows)))
    return outputs.softmax(dim=1).numpy()


def _agreement(name: str, live: np.ndarray, p_live: np.ndarray, labels: np.ndarray,
               p_ref: np.ndarray, scored: np.ndarray) -> None:  # fmt: skip
    ref = labels[p_ref.argmax(1)]
    agree = live[scored] == ref[scored]
    dp = np.abs(p_live[scored] - p_ref[scored])
    print(
        f"per-trial agreement with {name}: {float(agree.mean()):.4f} ({int(agree.sum())}/"
        f"{int(scored.sum())}); |Δp| mean {dp.mean():.2e} max {dp.max():.2e}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="checkpoint folder or shipped name")
    parser.add_argument("--speed", type=float, default=4.0, help="× real time (≥ 4)")
    parser.add_argument("--trials", type=int, help="first N test trials (default: all 293)")
    parser.add_argument("--chunk-ms", type=float, default=50.0, help="LSL chunk length")
    args = parser.parse_args(argv)

    from rtmoe.offline.corpus.devdata import load_dev_split
    from rtmoe.offline.evaluate import evaluate

    trials = load_dev_split("SelfRegulationSCP1", "test")
    n = args.trials or len(trials.X)
    ev = evaluate(args.model, trials.X[:n], trials.y[:n], trials.sfreq, trials.ch_names)
    labels = np.asarray(ev.labels)
    offline = labels[ev.outputs.argmax(1)]
    truth = np.asarray(trials.y[:n]).astype(str)
    p_recording = offline_recording(args.model, n)
    from_recording = labels[p_recording.argmax(1)]

    started = time.monotonic()
    markers, decodes, summary = run_live(args.model, n, args.speed, args.chunk_ms)
    wall_s = time.monotonic() - started
    period_s = 1 / (trials.sfreq * args.speed)
    ends = np.array([d.window_last_lsl_s for d in decodes])
    live = np.full(n, None, dtype=object)
    p_live = np.full((n, len(labels)), np.nan)
    for k, (onset, label) in enumerate(markers):
        assert label == truth[k], f"marker {k} is {label}, the test split says {truth[k]}"
        end = onset + (TRIAL_SAMPLES - 1) * period_s
        hit = np.flatnonzero(np.abs(ends - end) < 1.5 * period_s) if ends.size else []
        if len(hit):
            live[k] = decodes[hit[0]].label
            p_live[k] = decodes[hit[0]].probabilities
    scored = live != None  # noqa: E711  (object array)
    n_scored = int(scored.sum())
    live_acc = float(np.mean(live[scored] == truth[scored])) if n_scored else float("nan")
    offline_acc = float(np.mean(offline == truth))
    offline_acc_scored = float(np.mean(offline[scored] == truth[scored])) if n_scored else 0.0
    print(f"model {args.model}; {n} SCP1 test trials at ×{args.speed:g} ({wall_s:.0f} s wall)")
    print(f"rtmoe stream: {summary}")
    print(f"trials scored live: {n_scored}/{n} ({len(decodes)} decodes, {len(markers)} markers)")
    n_live_correct = int(np.sum(live[scored] == truth[scored]))
    print(f"live accuracy     {live_acc:.4f} ({n_live_correct} correct)")
    print(f"offline accuracy, per trial      {offline_acc:.4f} ({int(np.sum(offline == truth))} "
          f"correct); on the scored trials {offline_acc_scored:.4f}")  # fmt: skip
    print(f"offline accuracy, the recording  {float(np.mean(from_recording == truth)):.4f} "
          f"({int(np.sum(from_recording == truth))} correct)")  # fmt: skip
    if not n_scored:
        return 1
    _agreement("the recording", live, p_live, labels, p_recording, scored)
    _agreement("per-trial evaluate", live, p_live, labels, ev.outputs, scored)
    return 0 if n_scored == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
