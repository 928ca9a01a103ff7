"""Markers ``cuda``/``tensorrt`` skip with a reason when the hardware or extra is absent;
``slow`` tests run only with ``RTMOE_RUN_SLOW=1`` (a bench under bench/ covers each)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_trt = has_cuda and importlib.util.find_spec("torch_tensorrt") is not None
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU on this machine")
    skip_trt = pytest.mark.skip(reason="needs a CUDA GPU and the [tensorrt] extra")
    run_slow = os.environ.get("RTMOE_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow; set RTMOE_RUN_SLOW=1 (covered by bench/)")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> torch.device:
    """Run a test on the CPU and, where there is one, on the GPU."""
    return torch.device(request.param)
