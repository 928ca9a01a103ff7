"""``onnx`` engine: the decode module exported to ONNX, run by ONNX Runtime on the CPU.

Export uses the torch.export-based exporter (``dynamo=True``, the default since PyTorch
2.9; the TorchScript one is deprecated), which handles the rotary attention and SDPA of
SpecHi-Net. The session runs with all graph optimisations and an explicit intra-op thread
count; inputs and outputs are bound once to preallocated CPU tensors (I/O binding), so a
call copies the window in and runs, with no array allocated on the Python side.
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


def export_onnx(module: DecodeModule, x: torch.Tensor, psd: torch.Tensor, path: Path) -> None:
    """Write ``module`` for the static shapes of ``(x, psd)`` to ``path`` (one file)."""
    import_extra("onnxscript", "onnx")  # the exporter's dependency: fail with the extra's name
    n_out = 2 if module.has_gates else 1
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module,
                (x.detach().cpu(), psd.detach().cpu()),
                str(path),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES[:n_out]),
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
        Example window; fixes the static shapes.
    cache_path : Path
        Folder of the artifact (existing: load; new: export into it).
    n_threads : int, optional
        ONNX Runtime intra-op threads; default ``torch.get_num_threads()``, so both
        libraries use the same share of the machine.
    softmax : bool
        Return probabilities rather than raw outputs.
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
    ) -> None:
        ort = import_extra("onnxruntime", "onnx")
        super().__init__(module, x.cpu(), psd.cpu(), softmax=softmax)
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads={n_threads} must be >= 1 (or None for torch's count)")
        path = cache_path / ONNX_FILE
        self.from_cache = path.exists()
        if not self.from_cache:
            export_onnx(module, x, psd, path)
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
        self._x = torch.empty(self.input_shapes[0])
        self._psd = torch.empty(self.input_shapes[1])
        self._binding = self._session.io_binding()
        for name, buffer in zip(INPUT_NAMES, (self._x, self._psd), strict=True):
            self._bind(self._binding.bind_input, name, buffer)
        for name, buffer in zip(OUTPUT_NAMES, self._raw, strict=False):
            self._bind(self._binding.bind_output, name, buffer)

    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        self._x.copy_(x)
        self._psd.copy_(psd)
        self._session.run_with_iobinding(self._binding)

    @staticmethod
    def _bind(bind, name: str, buffer: torch.Tensor) -> None:
        # ONNX Runtime reads and writes these tensors' memory in place; they live as
        # long as the engine, and their shapes were checked against the graph.
        bind(name, "cpu", 0, np.float32, tuple(buffer.shape), buffer.data_ptr())

    def _check_graph(self, path: Path, module: DecodeModule) -> None:
        n_out = 2 if module.has_gates else 1
        expected = {
            **dict(zip(INPUT_NAMES, self.input_shapes, strict=True)),
            **{n: tuple(b.shape) for n, b in zip(OUTPUT_NAMES[:n_out], self._raw, strict=True)},
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
