"""Forward latency of each inference engine on the ``small`` SpecMoE, batch 1 and batched.

Three randomly initialised ``small`` experts, 19 electrodes at 200 Hz, a 4 s window
(800 samples), four classes; the Welch PSD is computed once outside the engine, as the
runtime does. Engines are timed round-robin (one call each per round) so that every
engine sees the same load on a shared machine; the speed-up is eager ``torch``'s median
over the engine's, measured in the same run.

Batched: every engine is built with ``max_batch`` = the largest of ``--batches`` and each
batch size N is timed with ``engine.decode_batch`` on N different windows, in the same
round-robin. The batch table gives the median per call, per window, and the ratio of a
batch-N call to N batch-1 calls (1.0: batching saves nothing; 0.25 at N = 4: four windows
for the price of one).

Usage::

    python bench/engine_forward.py [--engines torch,onnx,compile,cudagraph,tensorrt]
                                   [--iters 200] [--batches 1,2,4,8] [--threads 1]
                                   [--fp16] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time

import numpy as np
import torch

from rtmoe.config import TEN_TWENTY_19, Config, MoEConfig
from rtmoe.engine import Engine, EngineError, build_engine
from rtmoe.models.registry import model_config
from rtmoe.models.specmoe import SpecMoE, TaskConfig, build_specmoe

SFREQ = 200.0
WINDOW_S = 4.0


def small_specmoe(device: torch.device) -> SpecMoE:
    """The benchmark model: three random ``small`` experts on a 19 × 800 window."""
    torch.manual_seed(0)
    config = Config().replace(model=model_config("small"), signal={"sfreq": SFREQ})
    task = TaskConfig(
        name="bench",
        ch_names=TEN_TWENTY_19,
        n_times=round(WINDOW_S * SFREQ),
        labels=("left", "right", "feet", "tongue"),
    )
    return build_specmoe(config, task, MoEConfig(n_experts=3)).to(device).eval()


def available_engines(device: torch.device) -> list[str]:
    """Every backend this machine can run (``compile`` always; the others if installed)."""
    engines = ["torch", "compile"]
    if importlib.util.find_spec("onnxruntime") is not None:
        engines.insert(1, "onnx")
    if device.type == "cuda":
        engines.append("cudagraph")
    if device.type == "cuda" and importlib.util.find_spec("torch_tensorrt") is not None:
        engines.append("tensorrt")
    return engines


def time_round_robin(
    engines: dict[str, Engine],
    x: torch.Tensor,
    psd: torch.Tensor,
    iters: int,
    batches: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[dict[str, list[float]], dict[tuple[str, int], list[float]]]:
    """Milliseconds per call, ``iters`` calls each, interleaved.

    Returns the batch-1 ``engine(x, psd)`` times of each engine and the
    ``engine.decode_batch`` times of each ``(engine, N)`` for the ``batches`` given.
    """
    times: dict[str, list[float]] = {name: [] for name in engines}
    batched: dict[tuple[str, int], list[float]] = {
        (name, n): [] for name in engines for n in batches or {}
    }
    for _ in range(iters):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine(x, psd)  # returns host tensors: on a GPU this includes the sync
            times[name].append((time.perf_counter() - start) * 1e3)
            for n, (xb, psdb) in (batches or {}).items():
                start = time.perf_counter()
                engine.decode_batch(xb, psdb)
                batched[name, n].append((time.perf_counter() - start) * 1e3)
    return times, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", help="comma-separated; default: every available one")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per engine")
    parser.add_argument(
        "--batches", default="1,2,4,8", help="batch sizes to time (1 alone: no batch table)"
    )
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--fp16", action="store_true", help="fp16 TensorRT engine")
    parser.add_argument("--cache-dir", help="engine cache (default: a fresh temporary one)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = args.engines.split(",") if args.engines else available_engines(device)
    if "torch" not in names:
        names.insert(0, "torch")  # the baseline of the speed-up column
    sizes = sorted({int(n) for n in args.batches.split(",")})
    max_batch = max(sizes)
    model = small_specmoe(device)
    x = 0.2 * torch.randn(1, model.n_chans, model.n_times, device=device)
    psd = model.psd(x)
    xs = 0.2 * torch.randn(max_batch, model.n_chans, model.n_times, device=device)
    batches = {n: (xs[:n], model.psd(xs[:n]).contiguous()) for n in sizes} if max_batch > 1 else {}
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"SpecMoE small ×{model.n_experts}: {n_params / 1e6:.3f} M parameters; x "
        f"{tuple(x.shape)}, psd {tuple(psd.shape)}; device {device}; "
        f"torch {torch.__version__}, torch.get_num_threads()={torch.get_num_threads()}"
    )

    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="rtmoe-bench-")
    engines: dict[str, Engine] = {}
    for name in names:
        try:
            engines[name] = build_engine(
                model,
                (x, psd),
                name,
                cache_dir,
                fp16=args.fp16 and name == "tensorrt",
                max_batch=max_batch,
            )
        except EngineError as err:
            print(f"{name}: skipped ({err})")
            continue
        print(engines[name].summary())
    for engine in engines.values():
        engine.warmup(10)
    times, batched = time_round_robin(engines, x, psd, args.iters, batches)

    base = statistics.median(times["torch"])
    header = (
        f"{'engine':<9} {'device':<7} {'threads':>7} {'build s':>8} {'median ms':>10} "
        f"{'p99 ms':>8} {'vs torch':>9} {'parity max|Δ|':>14}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for name, engine in engines.items():
        median = statistics.median(times[name])
        p99 = float(np.percentile(times[name], 99))
        threads = getattr(engine, "n_threads", torch.get_num_threads())
        build = f"{engine.build_s:.1f}" + ("c" if engine.from_cache else "")
        print(
            f"{name:<9} {engine.device.type:<7} {threads:>7} {build:>8} {median:>10.2f} "
            f"{p99:>8.2f} {base / median:>8.2f}× {engine.parity.max_abs_diff:>14.2e}"
        )
    print(f"\n{args.iters} round-robin calls per engine; 'c' = loaded from the cache")
    if not batches:
        return

    header = (
        f"{'engine':<9} {'batch':>5} {'median ms':>10} {'ms/window':>10} "
        f"{'batch-N / N×batch-1':>20}"
    )
    print(f"\nbatched (decode_batch, max_batch={max_batch})\n{header}\n{'-' * len(header)}")
    for name in engines:
        one = statistics.median(batched[name, 1]) if 1 in sizes else statistics.median(times[name])
        for n in sizes:
            median = statistics.median(batched[name, n])
            print(
                f"{name:<9} {n:>5} {median:>10.2f} {median / n:>10.2f} {median / (n * one):>20.2f}"
            )


if __name__ == "__main__":
    main()
