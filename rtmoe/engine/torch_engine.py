"""PyTorch engines: ``torch`` (eager, inference mode) and ``compile`` (torch.compile)."""

from __future__ import annotations

import torch

from rtmoe.engine.base import DecodeModule, Engine, EngineError


class TorchEngine(Engine):
    """Eager PyTorch in inference mode on the example window's device."""

    name = "torch"

    def __init__(
        self, module: DecodeModule, x: torch.Tensor, psd: torch.Tensor, *, softmax: bool = True
    ) -> None:
        super().__init__(module, x, psd, softmax=softmax)
        self._module = module

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        with torch.inference_mode():
            outputs = self._module(x, psd)
        for buffer, output in zip(self._raw, outputs, strict=True):
            buffer.copy_(output)


class CompileEngine(TorchEngine):
    """``torch.compile(fullgraph=True, dynamic=False)`` on the static window.

    On a GPU the mode is ``reduce-overhead`` (CUDA graphs: at batch 1 kernel launches
    dominate); on a CPU the default mode (Inductor C++ kernels). Building compiles, which
    takes tens of seconds on a CPU (35 s for the tiny SpecMoE on a busy 2-core machine).
    Nothing is stored in the engine cache: Inductor keeps its own on-disk cache
    (``TORCHINDUCTOR_CACHE_DIR``), which brought a rebuild down to 8 s, whereas
    ``torch.compiler``'s portable cache artifacts saved nothing on a CPU (the C++ kernels
    were recompiled), so they are not used.
    """

    name = "compile"

    def __init__(
        self, module: DecodeModule, x: torch.Tensor, psd: torch.Tensor, *, softmax: bool = True
    ) -> None:
        super().__init__(module, x, psd, softmax=softmax)
        mode = "reduce-overhead" if x.device.type == "cuda" else None
        self._module = torch.compile(module, mode=mode, fullgraph=True, dynamic=False)
        try:
            self._run(x, psd)  # compiles
        except Exception as err:  # Dynamo/Inductor raise many types; all mean "cannot compile"
            raise EngineError(
                f"torch.compile failed on this model ({type(err).__name__}: {err}); "
                "use --engine torch or onnx"
            ) from err
