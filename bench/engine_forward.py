"""Forward latency of each inference engine on the ``small`` SpecMoE, batch 1.

Three randomly initialised ``small`` experts, 19 electrodes at 200 Hz, a 4 s window
(800 samples), four classes; the Welch PSD is computed once outside the engine, as the
runtime does. Engines are timed round-robin (one call each per round) so that every
engine sees the same load on a shared machine; the speed-up is eager ``torch``'s median
over the engine's, measured in the same run.

Usage::

    python bench/engine_forward.py [--engines torch,onnx,compile,tensorrt] [--iters 200]
                                   [--threads 1] [--fp16] [--cache-dir DIR]
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
    if device.type == "cuda" and importlib.util.find_spec("torch_tensorrt") is not None:
        engines.append("tensorrt")
    return engines


def time_round_robin(
    engines: dict[str, Engine], x: torch.Tensor, psd: torch.Tensor, iters: int
) -> dict[str, list[float]]:
    """Milliseconds per call of each engine, ``iters`` calls each, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(iters):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine(x, psd)  # returns host tensors: on a GPU this includes the sync
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", help="comma-separated; default: every available one")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per engine")
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
    model = small_specmoe(device)
    x = 0.2 * torch.randn(1, model.n_chans, model.n_times, device=device)
    psd = model.psd(x)
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
                model, (x, psd), name, cache_dir, fp16=args.fp16 and name == "tensorrt"
            )
        except EngineError as err:
            print(f"{name}: skipped ({err})")
            continue
        print(engines[name].summary())
    for engine in engines.values():
        engine.warmup(10)
    times = time_round_robin(engines, x, psd, args.iters)

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


if __name__ == "__main__":
    main()
