"""Inference engines: parity with eager, cache hits and keys, repair, failures, auto."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rtmoe.engine import (
    DecodeModule,
    EngineError,
    build_engine,
    cache_key,
    check_parity,
    choose_backend,
    model_hash,
)
from rtmoe.engine.base import cache_dir_name
from rtmoe.models.registry import build_model
from rtmoe.models.specmoe import SpecMoE, gate_input

SFREQ = 200.0
N_CHANS, N_TIMES, N_OUTPUTS = 3, 240, 4

needs_ort = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs the [onnx] extra"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: OpenMP threads only add overhead, and stall on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _moe(seed: int = 0, **head: Any) -> SpecMoE:
    """Tiny SpecMoE with three random experts and realistic gate statistics.

    ``head``: SpecMoE's keyword options (channel_pool, time_segments, ...).
    """
    torch.manual_seed(seed)
    experts = [build_model("tiny", SFREQ) for _ in range(3)]
    model = SpecMoE(experts, N_CHANS, N_TIMES, SFREQ, N_OUTPUTS, **head)
    t = torch.arange(N_TIMES) / SFREQ
    sines = torch.stack([torch.sin(2 * math.pi * f * t) for f in (3, 10, 25, 40)])[None]
    log_psd = gate_input(model.psd(0.2 * sines))
    model.gate_norm.running_mean.copy_(log_psd.mean(dim=(0, 1)))
    model.gate_norm.running_var.copy_(log_psd.var(dim=(0, 1)) + 1e-3)
    return model.eval()


def _window(model: SpecMoE, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = 0.3 * torch.randn(1, N_CHANS, N_TIMES, generator=torch.Generator().manual_seed(seed))
    return x, model.psd(x)


def _eager(model: SpecMoE, x: torch.Tensor, psd: torch.Tensor):
    with torch.inference_mode():
        logits, gates = model.forward_with_gates(x, psd)
    return torch.softmax(logits, dim=-1)[0], gates.mean(dim=(2, 3))[0], logits[0]


@pytest.fixture(scope="module")
def model() -> SpecMoE:
    return _moe()


@pytest.fixture(scope="module")
def onnx_built(model, tmp_path_factory):
    """One ONNX export shared by the tests: (engine, cache root)."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("engines")
    return build_engine(model, _window(model, 0), "onnx", root), root


def test_torch_engine_matches_eager_in_preallocated_buffers(model):
    engine = build_engine(model, _window(model, 0), "torch")
    assert (engine.name, engine.n_outputs, engine.n_experts) == ("torch", N_OUTPUTS, 3)
    # example, flat and 4 random windows
    assert engine.parity.max_abs_diff == 0 and engine.parity.n_inputs == 6
    first = None
    for seed in (1, 2):
        x, psd = _window(model, seed)
        probs, gates = engine(x, psd)
        want_probs, want_gates, _ = _eager(model, x, psd)
        torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-6)
        torch.testing.assert_close(gates, want_gates, rtol=0, atol=0)
        assert probs.shape == (N_OUTPUTS,) and gates.shape == (3,)
        assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-6)
        if first is None:
            first = (probs.data_ptr(), gates.data_ptr(), probs.clone())
    # Same buffers every call (nothing allocated per hop), holding the newest result.
    assert (probs.data_ptr(), gates.data_ptr()) == first[:2]
    assert not torch.equal(probs, first[2])


def test_raw_outputs_without_softmax(model):
    x, psd = _window(model, 3)
    engine = build_engine(model, (x, psd), "torch", softmax=False)
    outputs, _ = engine(x, psd)
    torch.testing.assert_close(outputs, _eager(model, x, psd)[2], rtol=0, atol=0)


def test_model_without_gates_reports_none(model):
    class LogitsOnly(nn.Module):
        def __init__(self, inner: SpecMoE) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x, psd):
            return self.inner(x, psd)

    x, psd = _window(model, 4)
    engine = build_engine(LogitsOnly(model), (x, psd), "torch")
    probs, gates = engine(x, psd)
    assert engine.n_experts == 0 and gates.shape == (0,)
    torch.testing.assert_close(probs, _eager(model, x, psd)[0], rtol=0, atol=1e-6)


def test_calls_are_checked(model):
    x, psd = _window(model, 0)
    engine = build_engine(model, (x, psd), "torch")
    with pytest.raises(ValueError, match=r"x is torch.float32 \(1, 3, 200\)"):
        engine(x[..., :200], psd)
    with pytest.raises(ValueError, match=r"psd is torch\.float64"):
        engine(x, psd.double())
    with pytest.raises(ValueError, match="kind='fast' is not an engine"):
        build_engine(model, (x, psd), "fast")
    with pytest.raises(ValueError, match="fp16=True is only supported by the tensorrt"):
        build_engine(model, (x, psd), "onnx", fp16=True)
    with pytest.raises(ValueError, match=r"engines take one float32 window"):
        build_engine(model, (torch.cat([x, x]), torch.cat([psd, psd])), "torch")


@needs_ort
def test_onnx_engine_matches_eager(onnx_built, model):
    engine, root = onnx_built
    assert engine.name == "onnx" and not engine.from_cache
    assert engine.parity.max_abs_diff <= 1e-4 and engine.parity.cosine > 0.999999
    for seed in (5, 6, 7):
        x, psd = _window(model, seed)
        probs, gates = engine(x, psd)
        want_probs, want_gates, want_logits = _eager(model, x, psd)
        torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-4)
        torch.testing.assert_close(gates, want_gates, rtol=0, atol=1e-4)
        torch.testing.assert_close(engine.raw(x, psd)[0][0], want_logits, rtol=0, atol=1e-4)
    # ONNX Runtime writes into the engine's own tensors (I/O binding).
    assert engine(x, psd)[0].data_ptr() == probs.data_ptr()
    key = json.loads((engine.cache_path / "key.json").read_text())
    assert key["model_sha256"] == model_hash(model) and key["backend"] == "onnx"
    assert key["inputs"][1] == {"name": "psd", "shape": [1, N_CHANS, 101], "dtype": "float32"}
    assert set(key["versions"]) >= {"torch", "onnxruntime", "onnx", "rtmoe"}
    assert sorted(p.name for p in root.iterdir()) == [engine.cache_path.name]


@needs_ort
@pytest.mark.parametrize(
    "head",
    [
        {"time_segments": 2},  # 240 samples: two encoder steps, one per segment
        {"erp_segments": 4, "waveform_filters": 2},  # the waveform readouts
    ],
    ids=["time-segments", "waveform"],
)
def test_onnx_engine_matches_eager_with_other_heads(head, tmp_path):
    model = _moe(**head)
    engine = build_engine(model, _window(model, 0), "onnx", tmp_path)
    x, psd = _window(model, 5)
    want_probs, want_gates, _ = _eager(model, x, psd)
    probs, gates = engine(x, psd)
    torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(gates, want_gates, rtol=0, atol=1e-4)


@needs_ort
def test_second_build_loads_from_cache_and_auto_picks_onnx(onnx_built, model, monkeypatch):
    engine, root = onnx_built
    onnx_file = engine.cache_path / "model.onnx"
    mtime = onnx_file.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported although the cache holds the model")

    monkeypatch.setattr("rtmoe.engine.onnx.export_onnx", no_export)
    again = build_engine(model, _window(model, 0), "auto", root)
    assert again.name == "onnx" and again.from_cache and again.cache_path == engine.cache_path
    assert onnx_file.stat().st_mtime_ns == mtime
    assert again.reason.startswith("auto: CPU window; onnxruntime")
    assert "loaded from" in again.summary()
    x, psd = _window(model, 8)
    torch.testing.assert_close(again(x, psd)[0], _eager(model, x, psd)[0], rtol=0, atol=1e-4)


def test_model_hash_and_cache_key_follow_weights_settings_and_shapes(model):
    digest = model_hash(model)
    assert digest == model_hash(_moe()), "same seed, same weights: same hash"
    changed = _moe()
    with torch.no_grad():
        changed.head[-1].bias[0] += 1e-6
    assert model_hash(changed) != digest
    # Max pooling changes the computation but no tensor: the settings are hashed too.
    assert model_hash(_moe(channel_pool="max")) != digest

    x, psd = _window(model, 0)

    def name(digest, backend="onnx", inputs=(x, psd), fp16=False, ort="1"):
        key = cache_key(digest, backend, inputs, fp16=fp16, versions={"onnxruntime": ort})
        return cache_dir_name(key)

    names = {
        name(digest),
        name(model_hash(changed)),
        name(digest, ort="2"),
        name(digest, fp16=True),
        name(digest, inputs=(x[..., :200], psd)),
        name(digest, backend="tensorrt"),
    }
    assert len(names) == 6
    assert name(digest) == name(digest) and name(digest).startswith("onnx-")


@needs_ort
def test_corrupted_cache_fails_parity_and_is_rebuilt(onnx_built, model, tmp_path):
    import onnx
    from onnx import numpy_helper

    engine, _ = onnx_built
    shutil.copytree(engine.cache_path, tmp_path / engine.cache_path.name)
    path = tmp_path / engine.cache_path.name / "model.onnx"
    graph = onnx.load(str(path))
    (bias,) = [t for t in graph.graph.initializer if t.name == "model.head.4.bias"]
    shifted = numpy_helper.to_array(bias) + np.array([0.5, -0.5, 0.25, 0.0], np.float32)
    bias.CopyFrom(numpy_helper.from_array(shifted, bias.name))
    onnx.save(graph, str(path))
    corrupted = path.read_bytes()

    # The parity check measures the damage.
    from rtmoe.engine.onnx import OnnxEngine

    loaded = OnnxEngine(DecodeModule(model), *_window(model, 0), cache_path=path.parent)
    with pytest.raises(EngineError, match=r"onnx engine disagrees.*max_abs_diff=0\.5"):
        check_parity(loaded, DecodeModule(model), [_window(model, s) for s in (0, 1)], atol=1e-4)

    # build_engine discards the bad entry, re-exports, and the new one passes.
    rebuilt = build_engine(model, _window(model, 0), "onnx", tmp_path)
    assert not rebuilt.from_cache and "cached artifact discarded and rebuilt" in rebuilt.reason
    assert path.read_bytes() != corrupted and rebuilt.parity.max_abs_diff <= 1e-4


class _ExportBranch(nn.Module):
    """A model that computes something else while being exported: a real parity bug."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_TIMES, N_OUTPUTS)

    def forward_with_gates(self, x, psd):
        logits = self.linear(x).mean(dim=1)
        if torch.onnx.is_in_onnx_export():
            logits = logits + 1.0
        return logits, torch.sigmoid(psd)[:, None]


@needs_ort
def test_parity_failure_raises_or_auto_falls_back(tmp_path):
    torch.manual_seed(0)
    model = _ExportBranch().eval()
    x = torch.randn(1, N_CHANS, N_TIMES)
    psd = torch.rand(1, N_CHANS, 5)
    with pytest.raises(EngineError, match=r"onnx engine disagrees.*--engine torch") as info:
        build_engine(model, (x, psd), "onnx", tmp_path)
    assert "max_abs_diff=1," in str(info.value)
    assert list(tmp_path.iterdir()) == [], "an engine that failed parity is not cached"
    engine = build_engine(model, (x, psd), "auto", tmp_path)
    assert engine.name == "torch" and "onnx failed: the onnx engine disagrees" in engine.reason


def test_missing_extras_name_the_extra(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    window = _window(model, 0)
    with pytest.raises(EngineError, match=r"pip install 'rtmoe\[onnx\]'"):
        build_engine(model, window, "onnx")
    with pytest.raises(EngineError, match=r"pip install 'rtmoe\[tensorrt\]'"):
        build_engine(model, window, "tensorrt")
    candidates, reason = choose_backend(torch.device("cpu"))
    assert candidates == ["torch"] and "onnxruntime is not importable" in reason
    assert "rtmoe[onnx]" in reason
    engine = build_engine(model, window, "auto")
    assert engine.name == "torch" and engine.reason == reason


@needs_ort
def test_auto_prefers_onnx_on_a_cpu():
    candidates, reason = choose_backend(torch.device("cpu"))
    assert candidates == ["onnx", "torch"] and "onnxruntime" in reason


@pytest.mark.slow
def test_compile_engine_matches_eager(model):
    x, psd = _window(model, 0)
    engine = build_engine(model, (x, psd), "compile")
    assert engine.name == "compile" and engine.parity.max_abs_diff <= 1e-4
    x, psd = _window(model, 9)
    probs, gates = engine(x, psd)
    want_probs, want_gates, _ = _eager(model, x, psd)
    torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(gates, want_gates, rtol=0, atol=1e-4)


@pytest.mark.cuda
def test_torch_engine_on_cuda_returns_host_tensors():
    x, psd = _window(_moe(), 0)
    want = _eager(_moe(), x, psd)
    x, psd = x.cuda(), psd.cuda()
    engine = build_engine(_moe().cuda(), (x, psd), "torch")
    probs, gates = engine(x, psd)
    assert probs.device.type == "cpu" and gates.device.type == "cpu"
    torch.testing.assert_close(probs, want[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(gates, want[1], rtol=0, atol=1e-4)


@pytest.mark.tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engine_parity_and_cache(fp16, tmp_path):
    x, psd = _window(_moe(), 0)
    want = _eager(_moe(), x, psd)
    model, x, psd = _moe().cuda(), x.cuda(), psd.cuda()
    engine = build_engine(model, (x, psd), "tensorrt", tmp_path, fp16=fp16)
    assert engine.name == "tensorrt" and not engine.from_cache
    assert engine.parity.cosine >= 0.99
    probs, gates = engine(x, psd)
    torch.testing.assert_close(probs, want[0], rtol=0, atol=2e-2)
    torch.testing.assert_close(gates, want[1], rtol=0, atol=2e-2)
    again = build_engine(model, (x, psd), "tensorrt", tmp_path, fp16=fp16)
    assert again.from_cache and (again.cache_path / "engine.ep").exists()
    candidates, reason = choose_backend(x.device)
    assert candidates[0] == "tensorrt" and "torch_tensorrt" in reason
