"""Inference engines for the live path: torch, compile, cudagraph, onnx, tensorrt, auto.

``build_engine(model, (x, psd), kind, max_batch=N)`` returns an :class:`Engine` checked
against eager PyTorch; ``engine(x, psd) -> (probabilities, gate_means)`` for one window,
``engine.decode_batch(x, psd)`` for ``1..N`` windows in one forward. ONNX Runtime and
Torch-TensorRT are imported only when their engine is built.
"""

from rtmoe.engine.base import (
    ENGINE_KINDS,
    DecodeModule,
    Engine,
    EngineError,
    Parity,
    cache_key,
    check_parity,
    model_hash,
)
from rtmoe.engine.build import build_engine, choose_backend, default_cache_dir

__all__ = [
    "ENGINE_KINDS",
    "DecodeModule",
    "Engine",
    "EngineError",
    "Parity",
    "build_engine",
    "cache_key",
    "check_parity",
    "choose_backend",
    "default_cache_dir",
    "model_hash",
]
