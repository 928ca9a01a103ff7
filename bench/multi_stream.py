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

* **processes** (``--processes``): N separate ``rtmoe stream`` processes, one per
  stream, each with its own copy of the checkpoint, ``OMP_NUM_THREADS`` = ``--threads``,
  and a ZeroMQ subscriber of this process on each: what a lab runs today. Its engine
  time per cycle is the sum over processes of each one's median ``compute_ms`` (its
  window's Welch update and forward, as published in every decode), since each process
  decodes one window per cycle.

Printed per N and mode: engine time per decoding cycle (median, all forwards of the
cycle), windows per cycle, and each stream's latency p50/p99 (the runtime's own
``latency_ms``: newest sample's LSL time to publication) and skipped windows. The ratio
row compares the median engine time per cycle with N streams to one stream's, measured in
the same run. The model is bench/latency.py's: a random ``small`` 3-expert SpecMoE, 4 s
windows, 100 ms hop, eager torch.

``--montage 64`` runs the same with 64 channels (10-10) pushed at 1000 Hz in chunks of
50 samples: the runtime resamples them to the model's 200 Hz live.

``--soak-s S`` instead runs one batched phase of ``--streams`` (one count) streams for S
seconds and reports, per stream, the samples pushed, received and missing (timestamp
gaps), decodes and skipped windows, and the process's resident memory once a minute
(after one minute of warm-up: first, last, largest).

Usage::

    python bench/multi_stream.py [--streams 1,2,4] [--phase-s 20] [--threads 1]
                                 [--processes] [--montage 19|64]
    python bench/multi_stream.py --soak-s 600 --streams 4
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import CHUNK, HOP_MS, SFREQ, WARMUP_S, WINDOW_S, Pusher, bench_model

#: The 64 electrodes of the 10-10 system a 64-channel cap carries (BioSemi's layout).
TEN_TEN_64 = (
    "Fp1", "AF7", "AF3", "F1", "F3", "F5", "F7", "FT7", "FC5", "FC3", "FC1", "C1", "C3",
    "C5", "T7", "TP7", "CP5", "CP3", "CP1", "P1", "P3", "P5", "P7", "P9", "PO7", "PO3",
    "O1", "Iz", "Oz", "POz", "Pz", "CPz", "Fpz", "Fp2", "AF8", "AF4", "AFz", "Fz", "F2",
    "F4", "F6", "F8", "FT8", "FC6", "FC4", "FC2", "FCz", "Cz", "C2", "C4", "C6", "T8",
    "TP8", "CP6", "CP4", "CP2", "P2", "P4", "P6", "P8", "P10", "PO8", "PO4", "O2",
)  # fmt: skip


@dataclass(frozen=True)
class Montage:
    """What the pushers send: channel labels, rate (Hz) and samples per push."""

    ch_names: tuple[str, ...]
    sfreq: float
    chunk: int

    @classmethod
    def named(cls, channels: int) -> Montage:
        from rtmoe.config import TEN_TWENTY_19

        if channels == 19:
            return cls(TEN_TWENTY_19, SFREQ, CHUNK)
        return cls(TEN_TEN_64, 1000.0, 50)  # 50 ms chunks, as at 200 Hz

    def pushers(self, n: int, max_s: float) -> list[Pusher]:
        return [Pusher.start(self.ch_names, self.sfreq, max_s, self.chunk) for _ in range(n)]


def run_phase(models: Sequence[Path], phase_s: float, engine: str, montage: Montage) -> dict:
    """One MultiRuntime over ``len(models)`` fresh pushers; stream i decodes models[i]."""
    from rtmoe.config import RuntimeConfig
    from rtmoe.runtime.multi import MultiRuntime, StreamSpec
    from rtmoe.transport import ZmqPublisher

    pushers = montage.pushers(len(models), phase_s + WINDOW_S + 30)
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


def run_processes(models: Sequence[Path], phase_s: float, engine: str, threads: int,
                  montage: Montage) -> dict:  # fmt: skip
    """One ``rtmoe stream`` process per model, each on its own pusher (see the docstring)."""
    from rtmoe.plugins.subscriber import Subscriber

    pushers = montage.pushers(len(models), phase_s + WINDOW_S + 60)
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    rtmoe = Path(sys.executable).with_name("rtmoe")
    procs, subs = [], []
    try:
        for p, model in zip(pushers, models, strict=True):
            cmd = [
                str(rtmoe), "stream", "--lsl", p.name, "--model", str(model), "--engine", engine,
                "--device", "cpu", "--hop-ms", f"{HOP_MS:g}", "--zmq", "tcp://127.0.0.1:0",
                "--wait-s", "60",
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
            )
        for proc in procs:  # each prints its bound address once connected and loaded
            for line in proc.stdout:
                if found := re.search(r"publishing on (tcp://\S+)", line):
                    subs.append(Subscriber(found[1].rstrip(";,"), topics=("decode",)))
                    # keep reading its output so that a full pipe never blocks it
                    threading.Thread(target=proc.stdout.read, daemon=True).start()
                    break
            else:
                raise RuntimeError(f"rtmoe stream exited ({proc.wait()}) before publishing")
        for p in pushers:
            p.go.set()
        for p in pushers:
            p.go_now()
        rows: list[list] = [[] for _ in subs]
        end = time.monotonic() + phase_s + WINDOW_S
        while time.monotonic() < end:
            for sub, got in zip(subs, rows, strict=True):
                while (msg := sub.recv(0.0)) is not None:
                    got.append((msg.received_s, msg.latency_ms, msg.compute_ms,
                                msg.skipped_windows))  # fmt: skip
            time.sleep(0.005)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        for sub in subs:
            sub.close()
        for p in pushers:
            p.close()
    kept = []
    for got in rows:  # drop each process's first WARMUP_S of decodes, like the cycles
        a = np.asarray(got, dtype=np.float64).reshape(-1, 4)
        kept.append(a[a[:, 0] >= a[0, 0] + WARMUP_S] if len(a) else a)
    if any(len(a) == 0 for a in kept):
        raise RuntimeError("a stream process published no decode after warm-up")
    return {
        "engine_ms": float(sum(np.median(a[:, 2]) for a in kept)),
        "windows": float(len(kept)),
        "batches": 0,
        "streams": [_latency_row(a) for a in kept],
    }


def _latency_row(decodes: np.ndarray) -> tuple[float, float, int, int]:
    """(latency p50, p99 ms, windows skipped, decodes) of rows (received, latency, compute,
    windows skipped before this decode)."""
    p50, p99 = np.percentile(decodes[:, 1], [50, 99])
    return float(p50), float(p99), int(decodes[:, 3].sum()), len(decodes)


def soak(model: Path, n: int, soak_s: float, engine: str, hop_ms: float, montage: Montage) -> int:
    """``n`` streams for ``soak_s`` seconds: lost samples and memory (see the docstring)."""
    from rtmoe.config import RuntimeConfig
    from rtmoe.runtime.multi import MultiRuntime, StreamSpec
    from rtmoe.transport import ZmqPublisher

    pushers = montage.pushers(n, soak_s + 60)
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
    parser.add_argument(
        "--processes", action="store_true", help="also N separate rtmoe stream processes"
    )
    parser.add_argument(
        "--montage", type=int, choices=(19, 64), default=19,
        help="19: 10-20 at 200 Hz; 64: 10-10 at 1000 Hz (resampled live)",
    )  # fmt: skip
    parser.add_argument("--soak-s", type=float, help="soak mode: one phase of this length")
    parser.add_argument("--hop-ms", type=float, default=HOP_MS, help="decode hop (soak mode)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.streams.split(",")]
    montage = Montage.named(args.montage)
    work = Path(tempfile.mkdtemp(prefix="rtmoe-multi-"))
    try:
        bench_model(montage.ch_names, work / "m0", "cpu")
        if args.soak_s is not None:
            return soak(work / "m0", counts[0], args.soak_s, args.engine, args.hop_ms, montage)
        for i in range(1, max(counts)):
            shutil.copytree(work / "m0", work / f"m{i}")
        print(
            f"# {args.engine} engine, {args.threads} thread(s); {len(montage.ch_names)} ch at "
            f"{montage.sfreq:g} Hz (model {SFREQ:g} Hz), "
            f"{WINDOW_S:g} s windows, hop {HOP_MS:g} ms; {args.phase_s:g} s per phase"
        )
        print("| streams | mode | engine ms/cycle (median) | windows/cycle | batches | "
              "per stream: latency p50 / p99 ms, skipped |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        base = None
        for n in counts:
            modes = [("batched", [work / "m0"] * n)]
            if n > 1:  # one stream: all modes are the same runtime
                modes.append(("per stream", [work / f"m{i}" for i in range(n)]))
            if args.processes:
                modes.append(("processes", [work / f"m{i}" for i in range(n)]))
            for mode, models in modes:
                if mode == "processes":
                    r = run_processes(models, args.phase_s, args.engine, args.threads, montage)
                else:
                    r = run_phase(models, args.phase_s, args.engine, montage)
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
