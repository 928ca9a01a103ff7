"""What every inference engine shares: the decode module, the call, parity, the cache key.

An engine runs a static window: ``x (B, n_chans, n_times)`` float32 in model units and
``psd (B, n_chans, n_bins)`` float32, the Welch PSD computed outside the engine (no FFT
inside compiled engines), for every batch size ``1 <= B <= max_batch`` (a build option;
engines that need static shapes hold one graph per batch size). ``engine(x, psd)``
decodes one window and returns the class probabilities ``(n_outputs,)`` (or raw outputs
for regression) and the mean gate activation of each expert ``(n_experts,)``;
``engine.decode_batch(x, psd)`` decodes B windows in one forward and returns
``(B, n_outputs)`` and ``(B, n_experts)``. All are engine-owned CPU float32 buffers that
the next call overwrites.

Every engine is checked against eager PyTorch when it is built or loaded
(:func:`check_parity`), and every compiled artifact lives in a cache folder named by
:func:`cache_key`: model hash, input shapes and dtypes, backend and library versions.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn

from rtmoe import __version__
from rtmoe.errors import UserError

#: Values of ``build_engine(kind=...)``.
ENGINE_KINDS: tuple[str, ...] = ("auto", "torch", "compile", "cudagraph", "onnx", "tensorrt")
#: Names of the engine's inputs and outputs (ONNX graph names, cache key entries).
INPUT_NAMES: tuple[str, str] = ("x", "psd")
OUTPUT_NAMES: tuple[str, str] = ("logits", "gate_means")
#: Scale of the random parity windows in model units (100 µV each): 0.2 ≈ 20 µV RMS EEG.
PARITY_SCALE = 0.2


class EngineError(UserError, RuntimeError):
    """An engine cannot be built or disagrees with eager PyTorch; the message says why."""


class DecodeModule(nn.Module):
    """What engines compile: the model's logits and its per-expert gate means.

    Parameters
    ----------
    model : nn.Module
        Called as ``model.forward_with_gates(x, psd) -> (logits (B, n_outputs), gates
        (B, n_experts, ...))`` when it has that method (SpecMoE), else as
        ``model(x, psd) -> logits``; then the engine reports no gates.

    Notes
    -----
    The softmax is applied by the engine on the host, not here, so that parity is
    measured on the logits, where a wrong engine is visible; near-uniform probabilities
    of two engines agree even when their logits do not.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.has_gates = callable(getattr(model, "forward_with_gates", None))

    def forward(self, x: torch.Tensor, psd: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(logits (B, n_outputs), gate_means (B, n_experts))``, or ``(logits,)``."""
        if not self.has_gates:
            return (self.model(x, psd),)
        logits, gates = self.model.forward_with_gates(x, psd)
        return logits, gates.flatten(2).mean(dim=-1)


@dataclass(frozen=True)
class Parity:
    """Agreement of an engine with eager PyTorch, measured when it was built or loaded.

    Attributes
    ----------
    max_abs_diff : float
        Largest absolute difference over the logits and gate means of every input.
    cosine : float
        Cosine similarity of the engine's and eager's logits, all inputs flattened.
    n_inputs : int
        Inputs compared (the example, seeded random ones and any real ones passed, one
        window each, and one stacked batch of each batch size above 1).
    criterion : str
        The test that passed, e.g. ``"max_abs_diff <= 0.0001"``.
    batch_sizes : tuple of int
        The distinct batch sizes among the inputs.
    """

    max_abs_diff: float
    cosine: float
    n_inputs: int
    criterion: str
    batch_sizes: tuple[int, ...] = (1,)


class Engine(ABC):
    """One backend running the decode module on a static window, batch 1 to ``max_batch``.

    Subclasses set :attr:`name`, run the module in :meth:`_run` on a batch of ``B``
    windows and write its outputs into ``self._raw_by_batch[B]`` (CPU float32 buffers of
    shapes ``(B, n_outputs)`` and ``(B, n_experts)``, leading views of one buffer per
    output). Nothing in :meth:`__call__` or :meth:`decode_batch` allocates a tensor after
    warm-up except what the backend itself allocates internally.

    Attributes
    ----------
    name : str
        The backend (one of :data:`ENGINE_KINDS` other than ``auto``).
    device : torch.device
        Where the computation runs; ``x`` and ``psd`` must be there except for the
        ``onnx`` engine, which copies them into its own CPU buffers.
    n_outputs, n_experts : int
        Lengths of the two returned vectors (``n_experts`` is 0 for a model without
        gates).
    max_batch : int
        Largest batch :meth:`decode_batch` takes; every size ``1..max_batch`` is built.
    softmax : bool
        Whether :meth:`__call__` returns probabilities (classification) or raw outputs.
    parity : Parity or None
        Set by ``build_engine`` after the check against eager.
    reason : str
        Why this backend was chosen (``auto``) or that it was asked for.
    cache_path : Path or None
        The cache folder holding the compiled artifact, if the backend has one.
    from_cache : bool
        Whether the artifact was loaded from the cache instead of being built.
    build_s : float
        Seconds spent exporting/compiling, or loading from the cache.
    """

    name: ClassVar[str]
    #: True where the engine copies inputs from any device into its own buffers.
    copies_inputs: ClassVar[bool] = False

    def __init__(
        self,
        module: DecodeModule,
        x: torch.Tensor,
        psd: torch.Tensor,
        *,
        softmax: bool = True,
        max_batch: int = 1,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r} must be an integer >= 1")
        self.device = x.device
        self.softmax = softmax
        self.max_batch = max_batch
        #: Shapes of one window (batch 1); a batch of B has B in the first axis.
        self.input_shapes = (tuple(x.shape), tuple(psd.shape))
        with torch.inference_mode():
            outputs = module(x, psd)
        pin = x.device.type == "cuda"
        full = tuple(
            torch.empty((max_batch, *o.shape[1:]), dtype=torch.float32, pin_memory=pin)
            for o in outputs
        )
        self.n_outputs = outputs[0].shape[-1]
        self.n_experts = outputs[1].shape[-1] if len(outputs) > 1 else 0
        sizes = self.batch_sizes
        # Per batch size: leading views of the preallocated outputs, softmax result and
        # scratch, so a call of any size writes into memory that exists already.
        self._raw_by_batch = {b: tuple(f[:b] for f in full) for b in sizes}
        probs, scratch = torch.empty_like(full[0]), torch.empty(max_batch, 1)
        self._probs_by_batch = {b: probs[:b] for b in sizes}
        self._scratch_by_batch = {b: scratch[:b] for b in sizes}
        no_gates = torch.empty(max_batch, 0)
        self._gates_by_batch = {
            b: self._raw_by_batch[b][1] if len(full) > 1 else no_gates[:b] for b in sizes
        }
        self._results_by_batch = {
            b: (self._probs_by_batch[b] if softmax else self._raw_by_batch[b][0]) for b in sizes
        }
        # One stacked copy of the example window per batch size (warm-up, capture).
        x0, psd0 = x.detach().clone(), psd.detach().clone()
        self._examples = {b: (x0.repeat(b, 1, 1), psd0.repeat(b, 1, 1)) for b in sizes}
        self._example = self._examples[1]
        # The batch-1 buffers and the 1-D views that __call__ returns.
        self._raw = self._raw_by_batch[1]
        self._outputs = self._results_by_batch[1][0]
        self._gates = self._gates_by_batch[1][0]
        self.parity: Parity | None = None
        self.reason = f"{self.name} requested"
        self.cache_path: Path | None = None
        self.from_cache = False
        self.build_s = 0.0

    @property
    def batch_sizes(self) -> range:
        """The batch sizes this engine was built for: ``1..max_batch``."""
        return range(1, self.max_batch + 1)

    def __call__(self, x: torch.Tensor, psd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one window.

        Parameters
        ----------
        x : Tensor, shape (1, n_chans, n_times), float32
        psd : Tensor, shape (1, n_chans, n_bins), float32

        Returns
        -------
        outputs : Tensor, shape (n_outputs,)
            Probabilities (softmax of the logits) or raw outputs, on the CPU.
        gate_means : Tensor, shape (n_experts,)
            Mean gate activation of each expert, on the CPU.

        Both are engine-owned buffers overwritten by the next call; copy to keep them.
        """
        if self._check(x, psd) != 1:
            raise ValueError(
                f"x holds {x.shape[0]} windows; engine(x, psd) decodes one: use "
                "engine.decode_batch(x, psd) for a batch"
            )
        self._decode(x, psd, 1)
        return self._outputs, self._gates

    def decode_batch(self, x: torch.Tensor, psd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``B`` windows in one forward, ``1 <= B <= max_batch``.

        Parameters
        ----------
        x : Tensor, shape (B, n_chans, n_times), float32
        psd : Tensor, shape (B, n_chans, n_bins), float32

        Returns
        -------
        outputs : Tensor, shape (B, n_outputs)
            Probabilities or raw outputs of each window, on the CPU.
        gate_means : Tensor, shape (B, n_experts)
            Mean gate activation of each expert for each window, on the CPU.

        Both are engine-owned buffers overwritten by the next call of any batch size;
        copy to keep them. Row ``i`` equals ``engine(x[i:i+1], psd[i:i+1])`` to within
        float32 rounding (about 1e-7).
        """
        b = self._check(x, psd)
        self._decode(x, psd, b)
        return self._results_by_batch[b], self._gates_by_batch[b]

    def raw(self, x: torch.Tensor, psd: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The engine's logits ``(B, n_outputs)`` and gate means ``(B, n_experts)``."""
        b = self._check(x, psd)
        self._run(x, psd)
        return self._raw_by_batch[b]

    def warmup(self, n_runs: int = 3) -> None:
        """Run the example ``n_runs`` times at every batch size (lazy init, caches, graphs)."""
        for _ in range(n_runs):
            for b in self.batch_sizes:
                self._decode(*self._examples[b], b)

    def _decode(self, x: torch.Tensor, psd: torch.Tensor, b: int) -> None:
        self._run(x, psd)
        if self.softmax:
            logits, probs = self._raw_by_batch[b][0], self._probs_by_batch[b]
            scratch = self._scratch_by_batch[b]
            torch.amax(logits, dim=-1, keepdim=True, out=scratch)
            torch.sub(logits, scratch, out=probs).exp_()
            torch.sum(probs, dim=-1, keepdim=True, out=scratch)
            probs.div_(scratch)

    def summary(self) -> str:
        """One line for logs: backend, device, cache, parity and why it was chosen."""
        if self.cache_path is None:
            origin = "built"
        else:
            origin = f"{'loaded from' if self.from_cache else 'built into'} {self.cache_path}"
        parity = (
            "parity unchecked"
            if self.parity is None
            else f"parity max|Δ|={self.parity.max_abs_diff:.2e} cos={self.parity.cosine:.6f} "
            f"over {self.parity.n_inputs} inputs"
            + (f" (batch 1-{self.max_batch})" if self.max_batch > 1 else "")
        )
        return (
            f"engine {self.name} on {self.device}: {origin} in {self.build_s:.1f} s; "
            f"{parity}; {self.reason}"
        )

    @abstractmethod
    def _run(self, x: torch.Tensor, psd: torch.Tensor) -> None:
        """Run the module on a batch ``(x, psd)`` of ``B`` windows and copy its outputs
        into ``self._raw_by_batch[B]``."""

    def _check(self, x: torch.Tensor, psd: torch.Tensor) -> int:
        """Validate a batch; return its size ``B``."""
        b = x.shape[0] if x.ndim == 3 else 0
        for name, tensor, shape in zip(INPUT_NAMES, (x, psd), self.input_shapes, strict=True):
            if (
                tensor.ndim != 3
                or tensor.shape[1:] != shape[1:]
                or tensor.shape[0] != b
                or not 1 <= b <= self.max_batch
                or tensor.dtype != torch.float32
            ):
                built = (
                    f"{shape}"
                    if self.max_batch == 1
                    else f"(B, {shape[1]}, {shape[2]}) with 1 <= B <= {self.max_batch}"
                )
                raise ValueError(
                    f"{name} is {tensor.dtype} {tuple(tensor.shape)}; this {self.name} engine "
                    f"was built for float32 {built}; rebuild it for the new window or batch "
                    "(max_batch) or fix the window"
                )
            if not self.copies_inputs and tensor.device != self.device:
                raise ValueError(
                    f"{name} is on {tensor.device}; this {self.name} engine runs on "
                    f"{self.device}; move the window there or rebuild the engine"
                )
        return b


def import_extra(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or raise an EngineError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EngineError(
            f"the {extra!r} engine needs {module} ({err}); install it with "
            f"`pip install 'rtmoe[{extra}]'`, or use --engine torch"
        ) from err


def model_hash(model: nn.Module) -> str:
    """sha256 (hex) of a model's class, configuration and tensors.

    Covers every parameter and buffer (persistent or not: name, dtype, shape, bytes) and,
    for each submodule, its class and its plain settings (int/float/bool/str attributes
    such as ``n_heads`` or ``sfreq``), which change the computation without changing any
    tensor shape. The training flag is left out: engines always run in eval mode.
    """
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        cls = type(module)
        settings = {
            k: v
            for k, v in sorted(vars(module).items())
            if not k.startswith("_") and k != "training" and _is_plain(v)
        }
        digest.update(json.dumps([name, f"{cls.__module__}.{cls.__qualname__}", settings]).encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(json.dumps([name, str(flat.dtype), list(tensor.shape)]).encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_key(
    model_sha256: str,
    backend: str,
    example_inputs: Sequence[torch.Tensor],
    *,
    fp16: bool = False,
    versions: dict[str, str] | None = None,
    max_batch: int = 1,
) -> dict[str, Any]:
    """The identity of a compiled artifact; a change in any entry means a rebuild.

    Parameters
    ----------
    model_sha256 : str
        :func:`model_hash` of the model.
    backend : str
        Engine kind.
    example_inputs : sequence of Tensor
        ``(x, psd)``; their shapes, dtypes and device type (a CUDA device adds its name
        and compute capability: TensorRT engines are specific to the GPU).
    fp16 : bool
        Reduced precision requested.
    versions : dict of str to str
        Versions of the backend's libraries (``torch`` and ``rtmoe`` are always added).
    max_batch : int
        Largest batch the artifact takes (every size ``1..max_batch``); the example
        inputs are one window.
    """
    device = example_inputs[0].device
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        device_id = f"cuda:{torch.cuda.get_device_name(device)}:sm{major}{minor}"
    else:
        device_id = device.type
    return {
        "backend": backend,
        "model_sha256": model_sha256,
        "inputs": [
            {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(INPUT_NAMES, example_inputs, strict=True)
        ],
        "max_batch": max_batch,
        "fp16": fp16,
        "device": device_id,
        "versions": {"rtmoe": __version__, "torch": torch.__version__, **(versions or {})},
    }


def cache_dir_name(key: dict[str, Any]) -> str:
    """Folder name of a cache entry: ``<backend>-<16 hex digits of the key's sha256>``."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return f"{key['backend']}-{hashlib.sha256(blob).hexdigest()[:16]}"


def parity_inputs(
    module: DecodeModule,
    x: torch.Tensor,
    psd: torch.Tensor,
    n_random: int = 4,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The example window, a flat one and ``n_random`` seeded random ones for parity.

    Random windows are white noise of :data:`PARITY_SCALE` model units with their Welch
    PSD from ``model.psd`` when the model has it (SpecMoE); otherwise the example PSD
    scaled by a seeded log-normal factor per bin, so the gates see varied spectra. The
    flat window (zero signal, zero PSD: a dead or zero-filled channel) catches backends
    that lose the model's guards against log(0).
    """
    generator = torch.Generator().manual_seed(seed)
    psd_of = getattr(module.model, "psd", None)
    pairs = [(x, psd), (torch.zeros_like(x), torch.zeros_like(psd))]
    for _ in range(n_random):
        xr = PARITY_SCALE * torch.randn(tuple(x.shape), generator=generator)
        if callable(psd_of):
            with torch.inference_mode():
                pr = psd_of(xr.to(x.device)).cpu()
        else:
            pr = psd.cpu() * torch.exp(0.5 * torch.randn(tuple(psd.shape), generator=generator))
        pairs.append((xr.to(x.device), pr.to(psd.device)))
    return pairs


def batch_inputs(
    windows: Sequence[tuple[torch.Tensor, torch.Tensor]], max_batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One stacked batch of each size ``2..max_batch`` drawn from ``windows`` (batch 1 each).

    Batch ``b`` holds windows ``b, b+1, …`` (cyclically), so each size mixes different
    windows, the flat one included, and a row that leaks into another shows.
    """
    n = len(windows)
    batches = []
    for b in range(2, max_batch + 1):
        chosen = [windows[(b + i) % n] for i in range(b)]
        batches.append((torch.cat([w[0] for w in chosen]), torch.cat([w[1] for w in chosen])))
    return batches


def check_parity(
    engine: Engine,
    reference: DecodeModule,
    inputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    atol: float | None = None,
    min_cosine: float | None = None,
) -> Parity:
    """Compare an engine with eager PyTorch on ``inputs``; raise if they disagree.

    Parameters
    ----------
    engine : Engine
    reference : DecodeModule
        Run eagerly in inference mode (float32, eval) on each input's device.
    inputs : sequence of (x, psd)
        Windows or batches of windows of the engine's shapes.
    atol : float, optional
        Pass when ``max_abs_diff <= atol`` (full-precision backends).
    min_cosine : float, optional
        Pass when the logits' cosine similarity ``>= min_cosine`` (TensorRT, whose
        fp16/TF32 kernels shift every value a little). Exactly one of ``atol`` and
        ``min_cosine`` is given.

    Raises
    ------
    EngineError
        Naming the backend, the measured values, the threshold and the fixes.
    """
    if (atol is None) == (min_cosine is None):
        raise ValueError(f"pass exactly one of atol={atol} and min_cosine={min_cosine}")
    got, want = [], []
    for x, psd in inputs:
        with torch.inference_mode():
            want.append([o.detach().double().cpu() for o in reference(x, psd)])
        got.append([o.double().clone() for o in engine.raw(x, psd)])
    max_abs = max(
        float((g - w).abs().max())
        for gs, ws in zip(got, want, strict=True)
        for g, w in zip(gs, ws, strict=True)
    )
    g_logits = torch.cat([gs[0].flatten() for gs in got])
    w_logits = torch.cat([ws[0].flatten() for ws in want])
    norm = float(g_logits.norm() * w_logits.norm())
    # Both all-zero is perfect agreement; one all-zero is none.
    same = float(torch.equal(g_logits, w_logits))
    cosine = float(g_logits @ w_logits) / norm if norm > 0 else same
    if math.isnan(max_abs):
        passed = False
    elif atol is not None:
        passed = max_abs <= atol
    else:
        passed = cosine >= min_cosine
    criterion = f"max_abs_diff <= {atol:g}" if atol is not None else f"cosine >= {min_cosine:g}"
    if not passed:
        raise EngineError(
            f"the {engine.name} engine disagrees with eager PyTorch on {len(inputs)} windows: "
            f"max_abs_diff={max_abs:.3g}, cosine={cosine:.6f}; required {criterion}. "
            "Delete its cache folder to rebuild it, relax the threshold if the difference "
            "is expected (fp16), or use --engine torch"
            + (f" (cache: {engine.cache_path})" if engine.cache_path else "")
        )
    sizes = tuple(sorted({int(x.shape[0]) for x, _ in inputs}))
    return Parity(max_abs, cosine, len(inputs), criterion, sizes)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds it took)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _is_plain(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)
