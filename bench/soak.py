"""Soak: 64 channels at 1000 Hz through the live decoder for minutes, nothing lost.

A pusher process sends 64 EEG channels plus a sample-counter channel at 1000 Hz (10
samples per push) into a real pylsl outlet; the rtmoe `Runtime` reads it through an
`LslSource` that checks the counter of every sample (exact drop/duplicate detection),
resamples to the model's 200 Hz, decodes a 64-channel ``small`` 3-expert SpecMoE (random
weights) every 100 ms and publishes over ZeroMQ to a subscriber process. End-to-end
latency is measured as in ``bench/latency.py`` (last sample pushed -> decode received).

Checks: no lost samples (counter gaps, and samples received == samples pushed), p99
latency in the last minute within 10 % of the first (the first ``WARMUP_S`` seconds of
decodes are left out), resident memory flat (RSS of this process, sampled every 5 s).

Usage::

    python bench/soak.py [--soak-minutes 10] [--engine torch] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from latency import (
    COUNTER,
    HOP_MS,
    WARMUP_S,
    Pusher,
    Subscriber,
    bench_model,
    machine_line,
    pct,
    print_table,
)
from pylsl import local_clock

from rtmoe.config import RuntimeConfig
from rtmoe.runtime.loop import STAGES, Runtime
from rtmoe.stream.lsl import LslSource
from rtmoe.transport import ZmqPublisher

SFREQ_IN = 1000.0
N_EEG = 64
CHUNK = 10


class CountingSource(LslSource):
    """An `LslSource` that checks the counter channel of every pulled sample.

    Attributes
    ----------
    n_lost : int
        Counter values skipped (samples lost between the outlet and the decoder).
    n_repeated : int
        Samples whose counter did not increase (duplicated or out of order).
    """

    def __init__(self, stream, **kwargs) -> None:
        super().__init__(stream, **kwargs)
        self._row = self.channel_names.index(COUNTER)
        self._next = 0.0  # the inlet is open before the first push: counting starts at 0
        self.n_lost = 0
        self.n_repeated = 0

    def pull(self) -> tuple[np.ndarray, np.ndarray]:
        data, stamps = super().pull()
        if stamps.size:
            counts = data[self._row].astype(np.float64)
            steps = np.diff(counts, prepend=self._next - 1)
            self.n_lost += int(np.sum(steps[steps > 1] - 1))
            self.n_repeated += int(np.count_nonzero(steps < 1))
            self._next = counts[-1] + 1
        return data, stamps


def rss_mb() -> float:
    """Resident set size of this process (VmRSS), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--engine", default="torch", help="rtmoe engine (default torch)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch/ONNX intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    duration_s = args.soak_minutes * 60

    print(f"Machine: {machine_line(args.device)}")
    work = Path(tempfile.mkdtemp(prefix="rtmoe-soak-"))
    eeg = tuple(f"E{i + 1}" for i in range(N_EEG))
    loaded = bench_model(eeg, work / "model", args.device)
    pusher = Pusher.start((*eeg, COUNTER), SFREQ_IN, duration_s + 60, CHUNK)
    cfg = RuntimeConfig(hop_ms=HOP_MS, engine=args.engine, device=args.device)
    source = CountingSource(
        {"name": pusher.name, "timeout_s": 10.0},
        max_buflen_s=cfg.max_buflen_s,
        stall_timeout_ms=cfg.stall_timeout_ms,
    )
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    runtime = Runtime(loaded, source, cfg, publisher=publisher, cache_dir=work / "engines")
    print(
        f"Stream: {N_EEG} EEG + counter at {SFREQ_IN:g} Hz, {CHUNK} samples per push; model "
        f"{loaded.task.n_chans} ch x {loaded.task.n_times} at {runtime.sfreq:g} Hz, hop "
        f"{HOP_MS:g} ms; {runtime.engine.summary()}"
    )
    sub = Subscriber(publisher.address)

    memory: list[tuple[float, float]] = []
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(5.0):
            memory.append((local_clock(), rss_mb()))

    sampler = threading.Thread(target=sample_memory, daemon=True)
    stopper = threading.Timer(duration_s, pusher.stop.set)
    try:
        pusher.go_now()
        go_s = pusher.t0_s.value
        memory.append((local_clock(), rss_mb()))
        sampler.start()
        stopper.start()
        summary = runtime.run(duration_s + 1.0)  # 1 s after the last push: drained
    finally:
        done.set()
        stopper.cancel()
        pusher.close()
    rows = sub.finish()
    pushed = int(pusher.n_pushed.value)

    e2e = (rows[:, 0] - pusher.push_time(rows[:, 1])) * 1e3
    seq = rows[:, 2].astype(np.int64)
    minute = np.floor((rows[:, 1] - go_s) / 60).astype(np.int64)
    first_decode_s = rows[0, 0] if rows.size else math.nan
    keep = np.isfinite(e2e) & (rows[:, 0] >= first_decode_s + WARMUP_S)
    engine_ms = runtime.timings[:, STAGES.index("engine")]
    mem = np.array(memory)
    table = []
    n_minutes = math.ceil(args.soak_minutes)
    for m in range(n_minutes):
        sel = keep & (minute == m)
        in_min = (mem[:, 0] - go_s) // 60 == m
        table.append(
            (
                m + 1,
                int(sel.sum()),
                pct(e2e[sel], 50),
                pct(e2e[sel], 99),
                pct(engine_ms[seq[sel]], 50) if sel.any() else math.nan,
                float(mem[in_min, 1].max()) if in_min.any() else math.nan,
            )
        )
    print_table(
        ("minute", "decodes", "e2e p50 ms", "e2e p99 ms", "engine p50 ms", "RSS max MiB"),
        table,
        "Per minute (e2e: last sample pushed -> decode received)",
    )
    expected = int(duration_s / (HOP_MS * 1e-3)) - round(4.0 / (HOP_MS * 1e-3))
    print(f"\n{summary.describe()}")
    print(
        f"samples pushed {pushed}, received {source.n_samples}; counter: {source.n_lost} lost, "
        f"{source.n_repeated} repeated; decodes {runtime.decodes} (about {expected} expected), "
        f"received by the subscriber {rows.shape[0]}"
    )
    lost_ok = source.n_lost == 0 and source.n_repeated == 0 and source.n_samples == pushed
    first, last = table[0][3], table[-1][3]
    p99_ok = last <= 1.10 * first
    half = mem[mem[:, 0] - go_s >= duration_s / 2]
    slope = np.polyfit((half[:, 0] - go_s) / 60, half[:, 1], 1)[0] if len(half) > 2 else 0.0
    rss_start = mem[np.argmin(np.abs(mem[:, 0] - go_s - 60)), 1]
    rss_mid = mem[np.argmin(np.abs(mem[:, 0] - go_s - duration_s / 2)), 1]
    rss_end = mem[-1, 1]
    mem_ok = rss_end - rss_start < 5.0 and slope < 0.5
    print("\nTargets")
    print(f"  no lost samples: {'MET' if lost_ok else 'NOT MET'}")
    print(
        f"  p99 last minute {last:.2f} ms within 10 % of first {first:.2f} ms "
        f"({100 * (last / first - 1):+.1f} %): {'MET' if p99_ok else 'NOT MET'}"
    )
    print(
        f"  memory flat: RSS {rss_start:.1f} (1 min) / {rss_mid:.1f} (middle) / {rss_end:.1f} "
        f"(end) MiB, second-half slope {slope:+.2f} MiB/min: {'MET' if mem_ok else 'NOT MET'}"
    )
    print(f"\nAfter: {machine_line(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
