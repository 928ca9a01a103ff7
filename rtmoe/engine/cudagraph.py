"""``cudagraph`` engine: the eager forward captured once per batch size as a CUDA graph.

At batch 1 the ``small`` SpecMoE is a few hundred small kernels, so eager CUDA is bound
by kernel launches (12.8 ms per forward measured on an H200). A CUDA graph replays the
whole forward with one launch. Capture follows the PyTorch "CUDA Graphs" notes:

* static input buffers, allocated before capture and reused by every replay; a call
  copies the window into them (``copy_``), replays, and copies the static outputs out
  into the engine's pinned host buffers (the clone out, which also waits for the
  replay);
* warm-up iterations on a side stream before capture (lazy cuBLAS/cuDNN handles,
  workspaces, autotuning and any lazily built buffers of the model must exist before
  capture), the side stream ordered after the current stream and back again;
* capture with ``torch.cuda.graph(graph, stream=side)``: the same stream as the
  warm-up, so that per-stream library handles created during warm-up are the ones used
  inside the capture;
* one graph, with its own private memory pool, per static ``(batch, n_chans, n_times)``
  shape, ``batch`` in ``1..max_batch``; graphs are replayed in any order, so they do not
  share a pool.

The model must be capturable: no host syncs (``.item()``, ``.cpu()``, data-dependent
Python control flow) and no new allocations whose address matters outside the graph.
SpecMoE's forward is. A capture failure is an :class:`EngineError` naming the fix. Nothing
is stored on disk: graphs cannot be serialised, and capturing takes well under a second.
"""

from __future__ import annotations

import torch

from rtmoe.engine.base import DecodeModule, Engine, EngineError

#: Eager forwards on the side stream before each capture.
N_WARMUP = 3


class CudaGraphEngine(Engine):
    """CUDA graphs of the decode module on the example window's CUDA device.

    Parameters
    ----------
    module : DecodeModule
        On the same CUDA device as ``x``, in eval mode.
    x, psd : Tensor
        Example window (batch 1) on a CUDA device; fixes the static shapes.
    softmax : bool
        Return probabilities rather than raw outputs.
    max_batch : int
        One graph per batch size ``1..max_batch``.

    Raises
    ------
    EngineError
        The window is not on a CUDA device, or the forward cannot be captured.
    """

    name = "cudagraph"

    def __init__(
        self,
        module: DecodeModule,
        x: torch.Tensor,
        psd: torch.Tensor,
        *,
        softmax: bool = True,
        max_batch: int = 1,
    ) -> None:
        if x.device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError(
                f"the cudagraph engine needs the window on a CUDA device, got {x.device}: "
                "run with --device cuda on a machine with an NVIDIA GPU and a CUDA build "
                "of torch, or use --engine onnx (the fastest CPU path) or --engine torch"
            )
        super().__init__(module, x, psd, softmax=softmax, max_batch=max_batch)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self._static_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.cuda.device(x.device):
            side = torch.cuda.Stream(device=x.device)
            for b in self.batch_sizes:
                try:
                    self._capture(module, b, side)
                except Exception as err:  # capture errors come as RuntimeError/AcceleratorError
                    raise EngineError(
                        f"CUDA graph capture of {type(module.model).__name__} failed at batch "
                        f"{b} ({type(err).__name__}: {err}); the forward must run without "
                        "host syncs (.item(), .cpu(), data-dependent Python branches): fix "
                        "the model or use --engine torch or compile"
                    ) from err

    def _capture(self, module: DecodeModule, b: int, side: torch.cuda.Stream) -> None:
        example_x, example_psd = self._examples[b]
        static_x, static_psd = example_x.clone(), example_psd.clone()
        current = torch.cuda.current_stream(self.device)
        side.wait_stream(current)  # the static inputs are written on the current stream
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(N_WARMUP):
                module(static_x, static_psd)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, stream=side):
            static_outputs = tuple(module(static_x, static_psd))
        self._graphs[b] = (graph, static_outputs)
        self._static_inputs[b] = (static_x, static_psd)

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        b = x.shape[0]
        graph, static_outputs = self._graphs[b]
        static_x, static_psd = self._static_inputs[b]
        static_x.copy_(x)
        static_psd.copy_(psd)
        graph.replay()
        # Device → pinned host copies on the current stream: ordered after the replay,
        # and blocking, so the outputs are complete when this returns.
        for buffer, output in zip(self._raw_by_batch[b], static_outputs, strict=True):
            buffer.copy_(output)
