"""Markers ``cuda``/``tensorrt`` skip with a reason when the hardware or extra is absent."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_trt = has_cuda and importlib.util.find_spec("torch_tensorrt") is not None
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU on this machine")
    skip_trt = pytest.mark.skip(reason="needs a CUDA GPU and the [tensorrt] extra")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> torch.device:
    """Run a test on the CPU and, where there is one, on the GPU."""
    return torch.device(request.param)
