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

Usage::

    python bench/multi_stream.py [--streams 1,2,4] [--phase-s 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,2,4", help="stream counts, comma-separated")
    parser.add_argument("--phase-s", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--engine", default="torch", help="runtime engine (torch, onnx, ...)")
    args = parser.parse_args(argv)
    import torch

    from rtmoe.config import TEN_TWENTY_19

    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.streams.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rtmoe-multi-"))
    try:
        bench_model(TEN_TWENTY_19, work / "m0", "cpu")
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
