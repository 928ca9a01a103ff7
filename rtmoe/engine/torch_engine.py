"""PyTorch engines: ``torch`` (eager, inference mode) and ``compile`` (torch.compile)."""

from __future__ import annotations

import torch

from rtmoe.engine.base import DecodeModule, Engine, EngineError


class TorchEngine(Engine):
    """Eager PyTorch in inference mode on the example window's device, any batch size."""

    name = "torch"

    def __init__(
        self,
        module: DecodeModule,
        x: torch.Tensor,
        psd: torch.Tensor,
        *,
        softmax: bool = True,
        max_batch: int = 1,
    ) -> None:
        super().__init__(module, x, psd, softmax=softmax, max_batch=max_batch)
        self._module = module

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        with torch.inference_mode():
            outputs = self._module(x, psd)
        for buffer, output in zip(self._raw_by_batch[x.shape[0]], outputs, strict=True):
            buffer.copy_(output)


class CompileEngine(TorchEngine):
    """``torch.compile(fullgraph=True, dynamic=False)``: one static graph per batch size.

    On a GPU the mode is ``reduce-overhead`` (CUDA graphs: at batch 1 kernel launches
    dominate); on a CPU the default mode (Inductor C++ kernels). Building compiles every
    batch size ``1..max_batch`` (Dynamo keeps one guarded graph per input shape; its
    recompile limit is raised for the build so that none falls back to eager), which
    takes tens of seconds per size on a CPU (35 s for the tiny SpecMoE on a busy 2-core
    machine). Nothing is stored in the engine cache: Inductor keeps its own on-disk cache
    (``TORCHINDUCTOR_CACHE_DIR``), which brought a rebuild down to 8 s, whereas
    ``torch.compiler``'s portable cache artifacts saved nothing on a CPU (the C++ kernels
    were recompiled), so they are not used.
    """

    name = "compile"

    def __init__(
        self,
        module: DecodeModule,
        x: torch.Tensor,
        psd: torch.Tensor,
        *,
        softmax: bool = True,
        max_batch: int = 1,
    ) -> None:
        super().__init__(module, x, psd, softmax=softmax, max_batch=max_batch)
        # Static input buffers per batch size: the compiled graph always sees the same
        # kind of tensor (an inference-mode PSD has other dispatch keys than a normal
        # one, and Dynamo would recompile on the first such call, in the hot loop).
        self._inputs = {b: tuple(t.clone() for t in self._examples[b]) for b in self.batch_sizes}
        mode = "reduce-overhead" if x.device.type == "cuda" else None
        self._module = torch.compile(module, mode=mode, fullgraph=True, dynamic=False)
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        try:
            # Graphs of other engines in this process count against the same limit.
            with config.patch({limit: getattr(config, limit) + max_batch}):
                for b in self.batch_sizes:
                    self._run(*self._examples[b])  # compiles this batch size
        except Exception as err:  # Dynamo/Inductor raise many types; all mean "cannot compile"
            raise EngineError(
                f"torch.compile failed on this model ({type(err).__name__}: {err}); "
                "use --engine torch or onnx"
            ) from err

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        b = x.shape[0]
        x_in, psd_in = self._inputs[b]
        x_in.copy_(x)
        psd_in.copy_(psd)
        with torch.inference_mode():
            outputs = self._module(x_in, psd_in)
        for buffer, output in zip(self._raw_by_batch[b], outputs, strict=True):
            buffer.copy_(output)
