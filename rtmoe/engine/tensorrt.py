"""``tensorrt`` engine: Torch-TensorRT (dynamo IR) on the static window, fp32 or fp16.

The decode module is exported with ``torch.export`` for the static shapes, compiled by
``torch_tensorrt.dynamo.compile`` and saved with ``torch_tensorrt.save`` as an
ExportedProgram (``engine.ep``); a later build loads it with ``torch_tensorrt.load``
(which registers the TensorRT runtime ops that ``torch.export.load`` needs). The FFT
stays outside: the PSD is an input. Operators TensorRT cannot convert run in PyTorch
between TensorRT subgraphs. With ``max_batch > 1`` every batch size ``B`` gets its own
static engine, ``engine-b<B>.ep`` (``engine.ep`` is batch 1): fully static shapes give
TensorRT's best kernels for each size and keep the save/load path the same as batch 1.

The cache is never trusted as found. ``torch_tensorrt.load`` tries ``torch.export.load``
(whose tensor payloads fall back to ``torch.load(weights_only=False)``, an unrestricted
unpickler, when the restricted one fails) and then ``torch.jit.load``; and a TensorRT plan
is itself executable. So the sha256 and size of ``engine.ep`` are recorded in
``engine.sha256.json`` (``engine-b<B>.ep`` in ``engine-b<B>.sha256.json``) right after
it is built, and :func:`load_cached` loads the file
only when it still matches, is owned by this user and is writable by nobody else;
otherwise the engine builder discards the entry and compiles afresh.

fp16: recent Torch-TensorRT releases lower precision by rule-based autocast
(``enable_autocast``, ``autocast_low_precision_type``), older ones by TensorRT's weak
typing (``enabled_precisions``); :func:`precision_settings` picks what the installed
version accepts. Either way the parity check at load (cosine of the logits) decides
whether the result is usable.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import stat
from pathlib import Path
from typing import Any

import torch

from rtmoe.engine.base import DecodeModule, EngineError, import_extra
from rtmoe.engine.torch_engine import TorchEngine

ENGINE_FILE = "engine.ep"
#: sha256 and size of ``engine.ep``, written when it was built (see :func:`load_cached`).
HASH_FILE = "engine.sha256.json"


def engine_file(batch: int) -> str:
    """File name of the engine for batch size ``batch``: ``engine.ep``, ``engine-b2.ep``…"""
    return ENGINE_FILE if batch == 1 else f"engine-b{batch}.ep"


def hash_file(path: Path) -> Path:
    """The record beside an engine file: ``engine.ep`` → :data:`HASH_FILE`."""
    return path.with_suffix(".sha256.json")


def tensorrt_versions() -> dict[str, str]:
    """Versions that enter the cache key of a TensorRT artifact."""
    torch_tensorrt = import_extra("torch_tensorrt", "tensorrt")
    tensorrt = import_extra("tensorrt", "tensorrt")
    return {"torch_tensorrt": torch_tensorrt.__version__, "tensorrt": tensorrt.__version__}


def precision_settings(compile_fn: Any, fp16: bool) -> dict[str, Any]:
    """Keyword arguments of ``torch_tensorrt.dynamo.compile`` for fp16 or fp32.

    fp32 needs none (the default). For fp16, releases with ``enable_autocast`` get
    rule-based autocast to float16 (layers whose outputs or reductions are too large for
    fp16 stay fp32); older ones get ``enabled_precisions={float16, float32}`` with
    explicit typing off so that TensorRT may choose fp16 kernels.
    """
    if not fp16:
        return {}
    params = inspect.signature(compile_fn).parameters
    if "enable_autocast" in params:
        settings: dict[str, Any] = {
            "enable_autocast": True,
            "autocast_low_precision_type": torch.float16,
        }
        if "use_explicit_typing" in params:
            settings["use_explicit_typing"] = True
        return settings
    settings = {"enabled_precisions": {torch.float16, torch.float32}}
    if "use_explicit_typing" in params:
        settings["use_explicit_typing"] = False
    return settings


class TensorRTEngine(TorchEngine):
    """A Torch-TensorRT compiled module on the CUDA device of the example window.

    Parameters
    ----------
    module : DecodeModule
        On the same CUDA device as ``x``.
    x, psd : Tensor
        Example window (batch 1) on a CUDA device; fixes the static shapes.
    cache_path : Path
        Folder of the artifact (existing engine files: load; otherwise compile and save).
    fp16 : bool
        Allow float16 kernels.
    softmax : bool
        Return probabilities rather than raw outputs.
    max_batch : int
        One static engine per batch size ``1..max_batch``.
    """

    name = "tensorrt"

    def __init__(
        self,
        module: DecodeModule,
        x: torch.Tensor,
        psd: torch.Tensor,
        *,
        cache_path: Path,
        fp16: bool = False,
        softmax: bool = True,
        max_batch: int = 1,
    ) -> None:
        torch_tensorrt = import_extra("torch_tensorrt", "tensorrt")
        if x.device.type != "cuda":
            raise EngineError(
                f"the tensorrt engine needs the window on a CUDA device, got {x.device}; "
                "run on a GPU machine or use --engine onnx / torch"
            )
        super().__init__(module, x, psd, softmax=softmax, max_batch=max_batch)
        paths = {b: cache_path / engine_file(b) for b in self.batch_sizes}
        # The builder publishes a folder only once every size is in it: all or none.
        self.from_cache = all(p.exists() for p in paths.values())
        self.fp16 = fp16
        self._modules: dict[int, torch.nn.Module] = {}
        for b, path in paths.items():
            if self.from_cache:
                self._modules[b] = load_cached(torch_tensorrt, path)
            else:
                self._modules[b] = _compile(torch_tensorrt, module, self._examples[b], path, fp16)

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        b = x.shape[0]
        with torch.inference_mode():
            outputs = self._modules[b](x, psd)
        for buffer, output in zip(self._raw_by_batch[b], outputs, strict=True):
            buffer.copy_(output)


def _compile(
    torch_tensorrt: Any,
    module: DecodeModule,
    inputs: tuple[torch.Tensor, torch.Tensor],
    path: Path,
    fp16: bool,
) -> torch.nn.Module:
    """Export, compile and save one static-shape engine to ``path`` (and its record)."""
    inputs = list(inputs)
    try:
        exported = torch.export.export(module, tuple(inputs))
        compile_fn = torch_tensorrt.dynamo.compile
        settings = precision_settings(compile_fn, fp16)
        compiled = compile_fn(exported, inputs=inputs, **settings)
        torch_tensorrt.save(compiled, str(path), output_format="exported_program", inputs=inputs)
        record_artifact(path)
        return compiled
    except Exception as err:  # export/conversion/build raise many types
        raise EngineError(
            f"Torch-TensorRT could not compile the model for batch {inputs[0].shape[0]} "
            f"({type(err).__name__}: {err}); use --engine torch"
        ) from err


def record_artifact(path: Path) -> None:
    """Record ``path``'s sha256 and size beside it (:func:`hash_file`).

    Both files are made read-only for group and others (mode 0644), which
    :func:`verify_artifact` requires.
    """
    record = {"file": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}
    hash_path = hash_file(path)
    hash_path.write_text(json.dumps(record, indent=2) + "\n")
    for p in (path, hash_path):
        os.chmod(p, 0o644)


def verify_artifact(path: Path) -> None:
    """Refuse a cached artifact that is not byte for byte the one this user built.

    Raises
    ------
    EngineError
        No or unreadable :data:`HASH_FILE`; size or sha256 differ from the record; the
        artifact or its record is owned by another user or writable by group/others.
        The message names the file; the builder then rebuilds the entry.
    """
    hash_path = hash_file(path)
    try:
        record = json.loads(hash_path.read_text())
        want_size, want_sha = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EngineError(
            f"cached engine {path} has no readable {hash_path.name} ({type(err).__name__}), so "
            "it cannot be verified; it is rebuilt (delete the cache folder to silence this)"
        ) from None
    for p in (path, hash_path):
        info = p.stat()
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise EngineError(
                f"cached engine file {p} is owned by uid {info.st_uid}, not by this user; "
                "it is not loaded but rebuilt (use a --cache-dir of your own)"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise EngineError(
                f"cached engine file {p} is writable by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):o}); it is not loaded but rebuilt (use a "
                "--cache-dir of your own)"
            )
    size = path.stat().st_size
    if size != want_size or _sha256(path) != want_sha:
        raise EngineError(
            f"cached engine {path} does not match the sha256 recorded in {hash_path.name} "
            "when it was built (changed or replaced); it is not loaded but rebuilt"
        )


def load_cached(torch_tensorrt: Any, path: Path) -> torch.nn.Module:
    """Verify ``path`` (:func:`verify_artifact`), then ``torch_tensorrt.load`` it.

    Verification comes first, so a tampered file never reaches an unpickler.
    """
    verify_artifact(path)
    try:
        return torch_tensorrt.load(str(path)).module()
    except Exception as err:  # deserialisation raises many types
        raise EngineError(
            f"Torch-TensorRT could not load the cached engine {path} ({type(err).__name__}: "
            f"{err}); it is rebuilt, or use --engine torch"
        ) from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
