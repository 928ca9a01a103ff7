"""Several streams in one runtime (issue 14): batched vs one engine per stream.

For each stream count N (default 1, 2, 4), N real pylsl outlets in their own processes
(bench/latency.py's pusher: 19 channels of EEG-like µV at 200 Hz, chunks of 10 samples,
real time) feed one `MultiRuntime` for ``--phase-s`` seconds, twice:

* **batched**: every stream uses the same checkpoint, so one engine decodes the windows
  due in a cycle in one forward of batch = number of due streams;
* **per stream**: each stream gets its own copy of the checkpoint, so its own engine and
  one batch-1 forward per stream and cycle, as N separate decoders would run (here in one
  process, which spares them the contention of N processes on the same cores: a lower
  bound on the cost of N `rtmoe stream` processes).

Printed per N and mode: engine time per decoding cycle (median, all forwards of the
cycle), windows per cycle, and each stream's latency p50/p99 (the runtime's own
``latency_ms``: newest sample's LSL time to publication) and skipped windows. The ratio
row compares the median engine time per cycle with N streams to one stream's, measured in
the same run. The model is bench/latency.py's: a random ``small`` 3-expert SpecMoE, 4 s
windows, 100 ms hop, eager torch.

``--soak-s S`` instead runs one batched phase of ``--streams`` (one count) streams for S
seconds and reports, per stream, the samples pushed, received and missing (timestamp
gaps), decodes and skipped windows, and the process's resident memory once a minute
(after one minute of warm-up: first, last, largest).

Usage::

    python bench/multi_stream.py [--streams 1,2,4] [--phase-s 20] [--threads 1]
    python bench/multi_stream.py --soak-s 600 --streams 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import CHUNK, HOP_MS, SFREQ, WARMUP_S, WINDOW_S, Pusher, bench_model


def run_phase(models: Sequence[Path], phase_s: float, engine: str) -> dict:
    """One MultiRuntime over ``len(models)`` fresh pushers; stream i decodes models[i]."""
    from rtmoe.config import TEN_TWENTY_19, RuntimeConfig
    from rtmoe.runtime.multi import MultiRuntime, StreamSpec
    from rtmoe.transport import ZmqPublisher

    pushers = [Pusher.start(TEN_TWENTY_19, SFREQ, phase_s + WINDOW_S + 30, CHUNK) for _ in models]
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    try:
        cfg = RuntimeConfig(hop_ms=HOP_MS, engine=engine, device="cpu", resolve_timeout_s=5.0)
        specs = [
            StreamSpec(f"s{i}", {"name": p.name}, model)
            for i, (p, model) in enumerate(zip(pushers, models, strict=True))
        ]
        multi = MultiRuntime(specs, cfg, publisher=publisher)
        for p in pushers:  # all at once, so that their windows fall due together
            p.go.set()
        for p in pushers:
            p.go_now()
        summaries = multi.run(phase_s + WINDOW_S)
    finally:
        publisher.close()
        for p in pushers:
            p.close()
    cycles = multi.cycles[round(WARMUP_S * 1e3 / HOP_MS) :]  # engine and clock warm-up
    return {
        "engine_ms": float(np.median(cycles[:, 1])),
        "windows": float(np.mean(cycles[:, 0])),
        "batches": multi.batches,
        "streams": [
            (s.latency_ms_p50, s.latency_ms_p99, s.skipped_windows, s.decodes) for s in summaries
        ],
    }


def soak(model: Path, n: int, soak_s: float, engine: str, hop_ms: float) -> int:
    """``n`` streams for ``soak_s`` seconds: lost samples and memory (see the docstring)."""
    import threading

    from rtmoe.config import TEN_TWENTY_19, RuntimeConfig
    from rtmoe.runtime.multi import MultiRuntime, StreamSpec
    from rtmoe.transport import ZmqPublisher

    pushers = [Pusher.start(TEN_TWENTY_19, SFREQ, soak_s + 60, CHUNK) for _ in range(n)]
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    cfg = RuntimeConfig(hop_ms=hop_ms, engine=engine, device="cpu", resolve_timeout_s=5.0)
    specs = [StreamSpec(f"s{i}", {"name": p.name}, model) for i, p in enumerate(pushers)]
    multi = MultiRuntime(specs, cfg, publisher=publisher)
    page = os.sysconf("SC_PAGE_SIZE")
    rss_mb: list[float] = []
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(60.0):
            with open("/proc/self/statm") as f:
                rss_mb.append(int(f.read().split()[1]) * page / 2**20)

    for p in pushers:
        p.go.set()
    for p in pushers:
        p.go_now()
    threading.Thread(target=sample_memory, daemon=True).start()
    runner = threading.Thread(target=lambda: summaries.extend(multi.run()))
    summaries: list = []
    runner.start()
    time.sleep(soak_s)
    # Pushed by now must be received 2 s later (checked while the outlets live: closing
    # one can drop its last chunk in transit, which is teardown, not the runtime).
    pushed = [p.n_pushed.value for p in pushers]
    time.sleep(2.0)
    received = [rt.source.n_samples for rt in multi.runtimes]
    multi.stop()
    runner.join(30)
    done.set()
    for p in pushers:
        p.close()
    publisher.close()
    print(f"# soak: {n} streams, {soak_s:g} s, hop {hop_ms:g} ms, {engine} engine, batched")
    print(
        "| stream | pushed at T | received at T + 2 s | missing (gaps) | decodes | "
        "skipped windows | latency p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for rt, s, k, r in zip(multi.runtimes, summaries, pushed, received, strict=True):
        print(
            f"| {rt.stream_id} | {k} | {r} | {s.dropped_samples} ({s.gaps}) | {s.decodes} | "
            f"{s.skipped_windows} | {s.latency_ms_p50:.1f} / {s.latency_ms_p99:.1f} |"
        )
    if len(rss_mb) > 1:
        print(
            f"resident memory after minute 1: {rss_mb[0]:.1f} MB, at the end {rss_mb[-1]:.1f} "
            f"MB, largest {max(rss_mb):.1f} MB ({len(rss_mb)} samples, one a minute)"
        )
    lost = sum(max(0, k - r) for k, r in zip(pushed, received, strict=True))
    print(f"samples pushed by T but not received 2 s later, all streams: {lost}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,2,4", help="stream counts, comma-separated")
    parser.add_argument("--phase-s", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--engine", default="torch", help="runtime engine (torch, onnx, ...)")
    parser.add_argument("--soak-s", type=float, help="soak mode: one phase of this length")
    parser.add_argument("--hop-ms", type=float, default=HOP_MS, help="decode hop (soak mode)")
    args = parser.parse_args(argv)
    import torch

    from rtmoe.config import TEN_TWENTY_19

    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.streams.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rtmoe-multi-"))
    try:
        bench_model(TEN_TWENTY_19, work / "m0", "cpu")
        if args.soak_s is not None:
            return soak(work / "m0", counts[0], args.soak_s, args.engine, args.hop_ms)
        for i in range(1, max(counts)):
            shutil.copytree(work / "m0", work / f"m{i}")
        print(
            f"# {args.engine} engine, {args.threads} thread(s); 19 ch at {SFREQ:g} Hz, "
            f"{WINDOW_S:g} s windows, hop {HOP_MS:g} ms; {args.phase_s:g} s per phase"
        )
        print("| streams | mode | engine ms/cycle (median) | windows/cycle | batches | "
              "per stream: latency p50 / p99 ms, skipped |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        base = None
        for n in counts:
            for mode, models in (
                ("batched", [work / "m0"] * n),
                ("per stream", [work / f"m{i}" for i in range(n)]),
            ):
                if n == 1 and mode == "per stream":
                    continue  # the same as batched
                r = run_phase(models, args.phase_s, args.engine)
                if n == 1:
                    base = r["engine_ms"]
                streams = "; ".join(
                    f"{p50:.1f} / {p99:.1f}, {skipped}" for p50, p99, skipped, _ in r["streams"]
                )
                ratio = f" ({r['engine_ms'] / base:.2f}x one stream)" if base and n > 1 else ""
                print(
                    f"| {n} | {mode} | {r['engine_ms']:.2f}{ratio} | {r['windows']:.2f} | "
                    f"{r['batches']} | {streams} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
