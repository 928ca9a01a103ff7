"""``tensorrt`` engine: Torch-TensorRT (dynamo IR) on the static window, fp32 or fp16.

The decode module is exported with ``torch.export`` for the static shapes, compiled by
``torch_tensorrt.dynamo.compile`` and saved with ``torch_tensorrt.save`` as an
ExportedProgram (``engine.ep``); a later build loads it with ``torch_tensorrt.load``
(which registers the TensorRT runtime ops that ``torch.export.load`` needs). The FFT
stays outside: the PSD is an input. Operators TensorRT cannot convert run in PyTorch
between TensorRT subgraphs.

fp16: recent Torch-TensorRT releases lower precision by rule-based autocast
(``enable_autocast``, ``autocast_low_precision_type``), older ones by TensorRT's weak
typing (``enabled_precisions``); :func:`precision_settings` picks what the installed
version accepts. Either way the parity check at load (cosine of the logits) decides
whether the result is usable.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from rtmoe.engine.base import DecodeModule, EngineError, import_extra
from rtmoe.engine.torch_engine import TorchEngine

ENGINE_FILE = "engine.ep"


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
        Example window on a CUDA device; fixes the static shapes.
    cache_path : Path
        Folder of the artifact (existing ``engine.ep``: load; otherwise compile and save).
    fp16 : bool
        Allow float16 kernels.
    softmax : bool
        Return probabilities rather than raw outputs.
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
    ) -> None:
        torch_tensorrt = import_extra("torch_tensorrt", "tensorrt")
        if x.device.type != "cuda":
            raise EngineError(
                f"the tensorrt engine needs the window on a CUDA device, got {x.device}; "
                "run on a GPU machine or use --engine onnx / torch"
            )
        super().__init__(module, x, psd, softmax=softmax)
        path = cache_path / ENGINE_FILE
        self.from_cache = path.exists()
        self.fp16 = fp16
        inputs = [x, psd]
        try:
            if self.from_cache:
                self._module = torch_tensorrt.load(str(path)).module()
            else:
                exported = torch.export.export(module, tuple(inputs))
                compile_fn = torch_tensorrt.dynamo.compile
                settings = precision_settings(compile_fn, fp16)
                compiled = compile_fn(exported, inputs=inputs, **settings)
                torch_tensorrt.save(
                    compiled, str(path), output_format="exported_program", inputs=inputs
                )
                self._module = compiled
        except Exception as err:  # export/conversion/build raise many types
            action = "load" if self.from_cache else "compile"
            raise EngineError(
                f"Torch-TensorRT could not {action} the model ({type(err).__name__}: {err}); "
                "use --engine torch"
            ) from err
