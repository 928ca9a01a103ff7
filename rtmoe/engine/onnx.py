"""``onnx`` engine: the decode module exported to ONNX, run by ONNX Runtime on the CPU.

Export uses the torch.export-based exporter (``dynamo=True``, the default since PyTorch
2.9; the TorchScript one is deprecated), which handles the rotary attention and SDPA of
SpecHi-Net. With ``max_batch > 1`` the graph has a dynamic batch axis ``batch`` (bounded
by ``max_batch``; exported from a batch of two so that the axis is not specialised to 1);
with ``max_batch == 1`` it is fully static, as before. The session runs with all graph
optimisations and an explicit intra-op thread count; inputs and outputs of each batch size
are bound once to preallocated CPU tensors (one I/O binding per size), so a call copies
the windows in and runs, with no array allocated on the Python side.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rtmoe.engine.base import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    DecodeModule,
    Engine,
    EngineError,
    import_extra,
)

ONNX_FILE = "model.onnx"


def onnx_versions() -> dict[str, str]:
    """Versions that enter the cache key of an ONNX artifact."""
    ort = import_extra("onnxruntime", "onnx")
    onnx = import_extra("onnx", "onnx")
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__}


def export_onnx(
    module: DecodeModule, x: torch.Tensor, psd: torch.Tensor, path: Path, max_batch: int = 1
) -> None:
    """Write ``module`` for the shapes of ``(x, psd)`` to ``path`` (one file).

    ``x`` and ``psd`` are one window (batch 1). ``max_batch > 1`` makes the batch axis
    dynamic (``batch``, 1 to ``max_batch``); otherwise every shape is static.
    """
    import_extra("onnxscript", "onnx")  # the exporter's dependency: fail with the extra's name
    n_out = 2 if module.has_gates else 1
    args = (x.detach().cpu(), psd.detach().cpu())
    dynamic: dict | None = None
    if max_batch > 1:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        dynamic = {"x": {0: batch}, "psd": {0: batch}}
        args = tuple(a.repeat(2, 1, 1) for a in args)  # batch 1 would specialise the axis
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES[:n_out]),
                dynamic_shapes=dynamic,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; all mean "cannot export"
        raise EngineError(
            f"ONNX export of {type(module.model).__name__} failed ({type(err).__name__}: "
            f"{err}); use --engine torch"
        ) from err


class OnnxEngine(Engine):
    """ONNX Runtime, CPUExecutionProvider, with I/O bound to preallocated buffers.

    Parameters
    ----------
    module : DecodeModule
        Exported to ``cache_path / model.onnx`` unless that file exists already.
    x, psd : Tensor
        Example window (batch 1); fixes the static shapes.
    cache_path : Path
        Folder of the artifact (existing: load; new: export into it).
    n_threads : int, optional
        ONNX Runtime intra-op threads; default ``torch.get_num_threads()``, so both
        libraries use the same share of the machine.
    softmax : bool
        Return probabilities rather than raw outputs.
    max_batch : int
        Largest batch; above 1 the graph's batch axis is dynamic.
    """

    name = "onnx"
    copies_inputs = True

    def __init__(
        self,
        module: DecodeModule,
        x: torch.Tensor,
        psd: torch.Tensor,
        *,
        cache_path: Path,
        n_threads: int | None = None,
        softmax: bool = True,
        max_batch: int = 1,
    ) -> None:
        ort = import_extra("onnxruntime", "onnx")
        super().__init__(module, x.cpu(), psd.cpu(), softmax=softmax, max_batch=max_batch)
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads={n_threads} must be >= 1 (or None for torch's count)")
        path = cache_path / ONNX_FILE
        self.from_cache = path.exists()
        if not self.from_cache:
            export_onnx(module, x, psd, path, max_batch)
        self.n_threads = n_threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.n_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no per-session warnings in the log
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own Fail/InvalidGraph/... types
            raise EngineError(f"ONNX Runtime cannot load {path}: {err}") from err
        self._check_graph(path, module)
        (_, n_chans, n_times), (_, _, n_bins) = self.input_shapes
        x_full = torch.empty(max_batch, n_chans, n_times)
        psd_full = torch.empty(max_batch, n_chans, n_bins)
        self._inputs = {b: (x_full[:b], psd_full[:b]) for b in self.batch_sizes}
        self._bindings = {}
        for b in self.batch_sizes:
            binding = self._session.io_binding()
            for name, buffer in zip(INPUT_NAMES, self._inputs[b], strict=True):
                self._bind(binding.bind_input, name, buffer)
            for name, buffer in zip(OUTPUT_NAMES, self._raw_by_batch[b], strict=False):
                self._bind(binding.bind_output, name, buffer)
            self._bindings[b] = binding

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        b = x.shape[0]
        x_in, psd_in = self._inputs[b]
        x_in.copy_(x)
        psd_in.copy_(psd)
        self._session.run_with_iobinding(self._bindings[b])

    @staticmethod
    def _bind(bind, name: str, buffer: torch.Tensor) -> None:
        # ONNX Runtime reads and writes these tensors' memory in place; they live as
        # long as the engine, and their shapes were checked against the graph.
        bind(name, "cpu", 0, np.float32, tuple(buffer.shape), buffer.data_ptr())

    def _check_graph(self, path: Path, module: DecodeModule) -> None:
        n_out = 2 if module.has_gates else 1
        batch = 1 if self.max_batch == 1 else "batch"
        shapes = [*self.input_shapes, *(tuple(r.shape) for r in self._raw[:n_out])]
        expected = {
            name: (batch, *shape[1:])
            for name, shape in zip(INPUT_NAMES + OUTPUT_NAMES[:n_out], shapes, strict=True)
        }
        found = {
            a.name: tuple(a.shape)
            for a in (*self._session.get_inputs(), *self._session.get_outputs())
        }
        if found != expected or any(
            a.type != "tensor(float)"
            for a in (*self._session.get_inputs(), *self._session.get_outputs())
        ):
            raise EngineError(
                f"{path} has inputs/outputs {found}, expected float32 {expected}; it was "
                "written for another model or window: delete it to re-export"
            )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices (e.g. torchvision ops it skips) and warnings."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
