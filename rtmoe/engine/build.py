"""``build_engine``: choose a backend, build or load its cached artifact, check parity.

Cache layout: ``cache_dir/<backend>-<key hash>/`` holds the artifact (``model.onnx`` or
``engine.ep`` and, for ``max_batch > 1``, ``engine-b<B>.ep``) and ``key.json``, the full
key (model hash, shapes, dtypes, max_batch, device, fp16, library versions). ``torch``,
``compile`` and ``cudagraph`` keep nothing in it. An entry is written in a hidden sibling
folder and renamed into place, so a crash never leaves half an artifact under the key.
A cached artifact that fails to load or disagrees with eager PyTorch is discarded and
rebuilt once; a freshly built one that disagrees is an error.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from rtmoe.engine.base import (
    ENGINE_KINDS,
    DecodeModule,
    Engine,
    EngineError,
    batch_inputs,
    cache_dir_name,
    cache_key,
    check_parity,
    model_hash,
    parity_inputs,
    timed,
)
from rtmoe.engine.cudagraph import CudaGraphEngine
from rtmoe.engine.onnx import OnnxEngine, onnx_versions
from rtmoe.engine.tensorrt import TensorRTEngine, tensorrt_versions
from rtmoe.engine.torch_engine import CompileEngine, TorchEngine

KEY_FILE = "key.json"
#: Backends that keep nothing in the engine cache: built afresh by every build_engine.
_UNCACHED: dict[str, type[Engine]] = {
    "torch": TorchEngine,
    "compile": CompileEngine,
    "cudagraph": CudaGraphEngine,
}


def default_cache_dir() -> Path:
    """``$RTMOE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rtmoe/engines`` (``~/.cache/...``)."""
    if os.environ.get("RTMOE_CACHE_DIR"):
        return Path(os.environ["RTMOE_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "rtmoe" / "engines"


def choose_backend(device: torch.device) -> tuple[list[str], str]:
    """The backends ``auto`` tries for a window on ``device``, best first, and why.

    A CUDA window gets TensorRT when ``torch_tensorrt`` imports, then the CUDA-graph
    engine (always possible on CUDA; also the fallback of a TensorRT build that fails);
    after those (and on a CPU) ONNX Runtime when ``onnxruntime`` imports; eager PyTorch
    is always the last resort. Imports are tried for real: an installed but broken
    package does not count.
    """
    reasons = []
    first: list[str] = []
    if device.type == "cuda":
        found, why = _importable("torch_tensorrt")
        if found:
            first = ["tensorrt", "cudagraph"]
            reasons.append(f"CUDA window and {why}")
        else:
            first = ["cudagraph"]
            reasons.append(f"CUDA window but {why}; CUDA graphs instead")
    else:
        reasons.append("CPU window")
    found, why = _importable("onnxruntime")
    if found:
        return [*first, "onnx", "torch"], f"auto: {', '.join(reasons)}; {why}"
    hint = " (`pip install 'rtmoe[onnx]'` for a faster CPU path)" if not first else ""
    return [*first, "torch"], f"auto: {', '.join(reasons)}; {why}{hint}"


def build_engine(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, torch.Tensor],
    kind: str = "auto",
    cache_dir: str | Path | None = None,
    *,
    fp16: bool = False,
    softmax: bool = True,
    atol: float = 1e-4,
    parity_min_cosine: float = 0.99,
    n_threads: int | None = None,
    parity_windows: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    n_random: int = 4,
    seed: int = 0,
    max_batch: int = 1,
) -> Engine:
    """Build (or load from the cache) an engine for ``model`` and check it against eager.

    Parameters
    ----------
    model : nn.Module
        SpecMoE or any module with ``forward_with_gates(x, psd)`` or ``forward(x, psd)``;
        put in eval mode. Its device must be the window's.
    example_inputs : (x, psd)
        ``x (1, n_chans, n_times)`` and ``psd (1, n_chans, n_bins)``, float32: the
        static shapes and the device (CUDA windows can use TensorRT).
    kind : {"auto", "torch", "compile", "cudagraph", "onnx", "tensorrt"}
        Backend; ``auto`` picks with :func:`choose_backend` and falls back to the next
        candidate when one fails to build or to match eager. ``cudagraph`` needs a CUDA
        window.
    cache_dir : path, optional
        Root of the artifact cache; default :func:`default_cache_dir`.
    fp16 : bool
        float16 kernels (``tensorrt`` only; ignored by ``auto`` on other backends).
    softmax : bool
        Return probabilities (classification) rather than raw outputs (regression).
    atol : float
        Parity threshold of full-precision backends: max absolute difference of logits
        and gate means vs eager.
    parity_min_cosine : float
        Parity threshold of ``tensorrt``: cosine similarity of the logits vs eager.
    n_threads : int, optional
        ONNX Runtime intra-op threads (default ``torch.get_num_threads()``).
    parity_windows : sequence of (x, psd)
        Real windows to add to the parity check (e.g. from the calibration recording).
    n_random, seed : int
        Seeded random windows added to the parity check.
    max_batch : int
        Largest batch :meth:`Engine.decode_batch` takes; every size ``1..max_batch`` is
        built (one static graph per size where the backend needs static shapes:
        compile, cudagraph, tensorrt; one dynamic batch axis for onnx) and checked
        against eager on one stacked batch of each size. Part of the cache key.

    Returns
    -------
    Engine
        Warmed up, with ``parity``, ``reason``, ``cache_path`` and ``from_cache`` set.

    Raises
    ------
    EngineError
        The backend is missing (naming the extra to install), cannot build the model, or
        disagrees with eager PyTorch.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"kind={kind!r} is not an engine; choose one of {ENGINE_KINDS}")
    x, psd = _check_example(model, example_inputs)
    if fp16 and kind not in ("auto", "tensorrt"):
        raise ValueError(
            f"fp16=True is only supported by the tensorrt engine, not {kind!r}; drop fp16 "
            "or use the tensorrt engine"
        )
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r} must be an integer >= 1 (windows per forward)")
    if atol < 0 or not 0 < parity_min_cosine <= 1:
        raise ValueError(
            f"atol={atol} must be >= 0 and parity_min_cosine={parity_min_cosine} in (0, 1]"
        )
    module = DecodeModule(model).eval()
    windows = parity_inputs(module, x, psd, n_random, seed)
    windows += [(wx.to(x.device), wp.to(x.device)) for wx, wp in parity_windows]
    windows += batch_inputs(windows, max_batch)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if kind == "auto":
        candidates, reason = choose_backend(x.device)
    else:
        candidates, reason = [kind], f"{kind} requested"
    failures = []
    for candidate in candidates:
        use_fp16 = fp16 and candidate == "tensorrt"
        note = "; fp16 ignored (tensorrt only)" if fp16 and not use_fp16 else ""
        try:
            engine = _build_checked(
                candidate, module, x, psd, root, windows,
                fp16=use_fp16, softmax=softmax, n_threads=n_threads,
                atol=atol, min_cosine=parity_min_cosine, max_batch=max_batch,
            )  # fmt: skip
        except EngineError as err:
            if kind != "auto" or candidate == candidates[-1]:
                raise
            failures.append(f"{candidate} failed: {err}")
            continue
        engine.reason = "; ".join([reason, *failures]) + note + engine.reason
        engine.warmup()
        return engine
    raise AssertionError("unreachable: the last candidate raises or returns")


def _build_checked(
    kind: str,
    module: DecodeModule,
    x: torch.Tensor,
    psd: torch.Tensor,
    root: Path,
    windows: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    fp16: bool,
    softmax: bool,
    n_threads: int | None,
    atol: float,
    min_cosine: float,
    max_batch: int = 1,
) -> Engine:
    """One backend: load or build, check parity; a bad cache entry is rebuilt once.

    On return ``engine.reason`` holds only a note about a discarded cache entry (or "").
    """
    threshold = {"min_cosine": min_cosine} if kind == "tensorrt" else {"atol": atol}
    if kind in _UNCACHED:
        cls = _UNCACHED[kind]
        engine, build_s = timed(cls, module, x, psd, softmax=softmax, max_batch=max_batch)
        engine.build_s = build_s
        engine.parity = check_parity(engine, module, windows, **threshold)
        engine.reason = ""
        return engine
    factory, versions = _factory(kind, module, x, psd, fp16, softmax, n_threads, max_batch)
    key = cache_key(
        model_hash(module.model), kind, (x, psd), fp16=fp16, versions=versions, max_batch=max_batch
    )
    entry = root / cache_dir_name(key)
    note = ""
    if _entry_matches(entry, key):
        try:
            return _finish(factory, entry, entry, windows, module, threshold, note)
        except EngineError as err:
            note = f"; cached artifact discarded and rebuilt ({err})"
        shutil.rmtree(entry)
    elif entry.exists():
        shutil.rmtree(entry)  # written by an older layout or a crashed writer
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{entry.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        engine = _finish(factory, staging, entry, windows, module, threshold, note, key=key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return engine


def _finish(
    factory: Callable[[Path], Engine],
    folder: Path,
    entry: Path,
    windows: list[tuple[torch.Tensor, torch.Tensor]],
    module: DecodeModule,
    threshold: dict[str, float],
    note: str,
    key: dict | None = None,
) -> Engine:
    """Load/build from ``folder``, check parity, and publish ``folder`` as ``entry``.

    ``key`` given: ``folder`` is a fresh staging folder, renamed to ``entry`` once the
    engine passes; an entry another process published meanwhile is kept.
    """
    engine, build_s = timed(factory, folder)
    engine.build_s = build_s
    engine.cache_path = entry
    engine.parity = check_parity(engine, module, windows, **threshold)
    if key is not None:
        (folder / KEY_FILE).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        try:
            folder.rename(entry)
        except OSError:
            if not _entry_matches(entry, key):
                raise
    engine.reason = note
    return engine


def _factory(
    kind: str,
    module: DecodeModule,
    x: torch.Tensor,
    psd: torch.Tensor,
    fp16: bool,
    softmax: bool,
    n_threads: int | None,
    max_batch: int = 1,
) -> tuple[Callable[[Path], Engine], dict[str, str]]:
    """``(folder -> Engine, versions for the cache key)`` of ``onnx`` or ``tensorrt``."""
    if kind == "onnx":
        versions = onnx_versions()
        cpu_module = module if x.device.type == "cpu" else copy.deepcopy(module).cpu()
        return (
            lambda folder: OnnxEngine(
                cpu_module,
                x,
                psd,
                cache_path=folder,
                n_threads=n_threads,
                softmax=softmax,
                max_batch=max_batch,
            ),
            versions,
        )
    versions = tensorrt_versions()
    return (
        lambda folder: TensorRTEngine(
            module, x, psd, cache_path=folder, fp16=fp16, softmax=softmax, max_batch=max_batch
        ),
        versions,
    )


def _entry_matches(entry: Path, key: dict) -> bool:
    try:
        return json.loads((entry / KEY_FILE).read_text()) == key
    except (OSError, ValueError):
        return False


def _importable(name: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        return False, f"{name} is not importable ({err})"
    return True, f"{name} {getattr(module, '__version__', '?')} installed"


def _check_example(
    model: nn.Module, example_inputs: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(example_inputs) != 2:
        raise ValueError(f"example_inputs has {len(example_inputs)} tensors; pass (x, psd)")
    x, psd = example_inputs
    if x.ndim != 3 or x.shape[0] != 1 or x.dtype != torch.float32:
        raise ValueError(
            f"example x is {x.dtype} {tuple(x.shape)}; engines take one float32 window "
            "(1, n_chans, n_times)"
        )
    if psd.ndim != 3 or tuple(psd.shape[:2]) != tuple(x.shape[:2]) or psd.dtype != torch.float32:
        raise ValueError(
            f"example psd is {psd.dtype} {tuple(psd.shape)}; expected float32 (1, "
            f"{x.shape[1]}, n_bins), the Welch PSD of x"
        )
    if psd.device != x.device:
        raise ValueError(f"x is on {x.device} but psd on {psd.device}; put both on one device")
    device = next((p.device for p in model.parameters()), x.device)
    if device != x.device:
        raise ValueError(
            f"the model is on {device} but the example window on {x.device}; move the "
            "model or the window so that they share a device"
        )
    return x, psd
