"""Batched engines (max_batch) and the CUDA-graph engine: batch == singles, refusals, auto."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest
import torch
from test_engine import N_CHANS, N_OUTPUTS, _eager, _moe, _window

from rtmoe.config import RuntimeConfig
from rtmoe.engine import ENGINE_KINDS, EngineError, build_engine, choose_backend

MAX_BATCH = 4

needs_ort = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs the [onnx] extra"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model():
    return _moe()


def _batch(model, seeds, device="cpu"):
    windows = [_window(model, s) for s in seeds]
    x = torch.cat([w[0] for w in windows]).to(device)
    psd = torch.cat([w[1] for w in windows]).to(device)
    return x, psd


def _check_batch_equals_singles(engine, model, device="cpu", atol_eager=1e-4):
    """A batched forward of N windows equals N single forwards (<= 1e-5), every N."""
    for n in range(1, engine.max_batch + 1):
        x, psd = _batch(model, range(20, 20 + n), device)
        probs, gates = engine.decode_batch(x, psd)
        assert probs.shape == (n, N_OUTPUTS) and gates.shape == (n, 3)
        assert probs.device.type == "cpu" and gates.device.type == "cpu"
        probs, gates = probs.clone(), gates.clone()
        raw = engine.raw(x, psd)[0].clone()
        for i in range(n):
            single_probs, single_gates = engine(x[i : i + 1], psd[i : i + 1])
            torch.testing.assert_close(probs[i], single_probs, rtol=0, atol=1e-5)
            torch.testing.assert_close(gates[i], single_gates, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                raw[i], engine.raw(x[i : i + 1], psd[i : i + 1])[0][0], rtol=0, atol=1e-5
            )
            want_probs, want_gates, _ = _eager(model, x[i : i + 1].cpu(), psd[i : i + 1].cpu())
            torch.testing.assert_close(probs[i], want_probs, rtol=0, atol=atol_eager)
            torch.testing.assert_close(gates[i], want_gates, rtol=0, atol=atol_eager)


def _check_calls(engine, model, device="cpu"):
    x, psd = _batch(model, range(30, 30 + MAX_BATCH), device)
    first = engine.decode_batch(x, psd)
    ptrs = (first[0].data_ptr(), first[1].data_ptr())
    again = engine.decode_batch(x.flip(0).contiguous(), psd.flip(0).contiguous())
    assert (again[0].data_ptr(), again[1].data_ptr()) == ptrs, "same buffers every call"
    with pytest.raises(ValueError, match=rf"1 <= B <= {MAX_BATCH}.*max_batch"):
        engine.decode_batch(*_batch(model, range(MAX_BATCH + 1), device))
    with pytest.raises(ValueError, match=r"decodes one: use engine\.decode_batch"):
        engine(x[:2], psd[:2])
    with pytest.raises(ValueError, match=r"psd is torch\.float32 \(3, 3, 101\)"):
        engine.decode_batch(x[:2], psd[:3])


@pytest.mark.parametrize(
    "kind",
    [
        "torch",
        pytest.param("onnx", marks=needs_ort),
        pytest.param("compile", marks=pytest.mark.slow),
    ],
)
def test_batched_forward_equals_single_forwards(kind, model, tmp_path):
    engine = build_engine(model, _window(model, 0), kind, tmp_path, max_batch=MAX_BATCH)
    assert engine.name == kind and engine.max_batch == MAX_BATCH
    assert list(engine.batch_sizes) == [1, 2, 3, 4]
    # 6 single windows (example, flat, 4 random) and one stacked batch of sizes 2, 3, 4.
    assert engine.parity.n_inputs == 6 + 3 and engine.parity.batch_sizes == (1, 2, 3, 4)
    assert engine.parity.max_abs_diff <= 1e-4 and "(batch 1-4)" in engine.summary()
    _check_batch_equals_singles(engine, model)
    _check_calls(engine, model)


@needs_ort
def test_onnx_batch_axis_is_dynamic_and_part_of_the_cache_key(model, tmp_path):
    import onnxruntime as ort

    engine = build_engine(model, _window(model, 0), "onnx", tmp_path, max_batch=MAX_BATCH)
    session = ort.InferenceSession(str(engine.cache_path / "model.onnx"))
    assert [tuple(a.shape) for a in session.get_inputs()] == [
        ("batch", N_CHANS, 240),
        ("batch", N_CHANS, 101),
    ]
    assert engine.raw(*_window(model, 0))[0].shape == (1, N_OUTPUTS)
    single = build_engine(model, _window(model, 0), "onnx", tmp_path)
    assert single.cache_path != engine.cache_path and single.max_batch == 1
    again = build_engine(model, _window(model, 0), "onnx", tmp_path, max_batch=MAX_BATCH)
    assert again.from_cache and again.cache_path == engine.cache_path
    _check_batch_equals_singles(again, model)


def test_max_batch_is_validated(model):
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"max_batch=.* must be an integer >= 1"):
            build_engine(model, _window(model, 0), "torch", max_batch=bad)


def test_cudagraph_is_an_engine_kind_in_the_config_and_cli():
    from rtmoe.runtime.cli import _add_common

    assert "cudagraph" in ENGINE_KINDS
    assert RuntimeConfig(engine="cudagraph").engine == "cudagraph"
    parser = argparse.ArgumentParser()
    _add_common(parser)
    assert parser.parse_args(["--engine", "cudagraph"]).engine == "cudagraph"


def test_cudagraph_on_a_cpu_is_refused_naming_the_fix(model, tmp_path):
    with pytest.raises(EngineError, match="cudagraph engine needs the window on a CUDA") as info:
        build_engine(model, _window(model, 0), "cudagraph", tmp_path, max_batch=2)
    message = str(info.value)
    assert "got cpu" in message and "--device cuda" in message and "--engine onnx" in message
    assert list(tmp_path.iterdir()) == []
    candidates, _ = choose_backend(torch.device("cpu"))
    assert "cudagraph" not in candidates


def test_auto_on_cuda_takes_cudagraph_when_tensorrt_is_absent(monkeypatch):
    # choose_backend looks at the device type and imports only: no GPU needed.
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    candidates, reason = choose_backend(torch.device("cuda"))
    onnx = ["onnx"] if importlib.util.find_spec("onnxruntime") else []
    assert candidates == ["cudagraph", *onnx, "torch"]
    assert "torch_tensorrt is not importable" in reason and "CUDA graphs" in reason
    assert "rtmoe[onnx]" not in reason


@pytest.mark.cuda
def test_cudagraph_engine_matches_eager_single_and_batched(model):
    cuda_model = _moe().cuda()
    x, psd = (t.cuda() for t in _window(model, 0))
    engine = build_engine(cuda_model, (x, psd), "cudagraph", max_batch=MAX_BATCH)
    assert engine.name == "cudagraph" and engine.parity.max_abs_diff <= 1e-4
    assert engine.parity.batch_sizes == (1, 2, 3, 4) and engine.cache_path is None
    # Replays see new inputs (copied into the static buffers), not the captured example.
    for seed in (1, 2, 3):
        xs, ps = (t.cuda() for t in _window(model, seed))
        probs, gates = engine(xs, ps)
        want_probs, want_gates, _ = _eager(model, *_window(model, seed))
        torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-4)
        torch.testing.assert_close(gates, want_gates, rtol=0, atol=1e-4)
    _check_batch_equals_singles(engine, model, "cuda")
    _check_calls(engine, model, "cuda")


@pytest.mark.cuda
def test_auto_on_cuda_builds_cudagraph_without_tensorrt(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    x, psd = (t.cuda() for t in _window(model, 0))
    engine = build_engine(_moe().cuda(), (x, psd), "auto", max_batch=2)
    assert engine.name == "cudagraph" and "CUDA graphs instead" in engine.reason


@pytest.mark.cuda
def test_torch_engine_batched_on_cuda(model):
    x, psd = (t.cuda() for t in _window(model, 0))
    engine = build_engine(_moe().cuda(), (x, psd), "torch", max_batch=MAX_BATCH)
    _check_batch_equals_singles(engine, model, "cuda")


@pytest.mark.tensorrt
def test_tensorrt_engine_batched_one_static_engine_per_size(model, tmp_path):
    x, psd = (t.cuda() for t in _window(model, 0))
    engine = build_engine(_moe().cuda(), (x, psd), "tensorrt", tmp_path, max_batch=2)
    names = sorted(p.name for p in engine.cache_path.iterdir())
    assert {"engine.ep", "engine-b2.ep", "engine.sha256.json", "engine-b2.sha256.json"} <= set(
        names
    )
    _check_batch_equals_singles(engine, model, "cuda", atol_eager=2e-2)
    again = build_engine(_moe().cuda(), (x, psd), "tensorrt", tmp_path, max_batch=2)
    assert again.from_cache
