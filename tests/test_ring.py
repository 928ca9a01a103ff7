"""RingBuffer: exact windows over random chunk sizes, views not copies, overflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtmoe.stream.ring import RingBuffer


def _is_view_of_storage(view: torch.Tensor, ring: RingBuffer) -> bool:
    storage = ring.storage
    first = storage.data_ptr()
    last = first + storage.numel() * storage.element_size()
    return (
        view.untyped_storage().data_ptr() == storage.untyped_storage().data_ptr()
        and first <= view.data_ptr() < last
        and view.stride() == (2 * ring.capacity, 1)
    )


@pytest.mark.parametrize("as_tensor", [False, True])
def test_windows_equal_tail_of_stream_for_random_chunks(device, as_tensor):
    rng = np.random.default_rng(0)
    n_chans, capacity = 5, 97
    ring = RingBuffer(n_chans, capacity, device)
    stream = rng.standard_normal((n_chans, 6000)).astype(np.float32)
    pos = 0
    while pos < stream.shape[1]:
        k = int(rng.integers(1, capacity + 1))
        chunk = stream[:, pos : pos + k]
        ring.push(torch.from_numpy(chunk).to(device) if as_tensor else chunk)
        pos += chunk.shape[1]
        assert ring.n_pushed == pos
        for n in {1, min(pos, capacity), int(rng.integers(1, min(pos, capacity) + 1))}:
            window = ring.window(n)
            assert _is_view_of_storage(window, ring)
            np.testing.assert_array_equal(window.cpu().numpy(), stream[:, pos - n : pos])


def test_span_by_absolute_index(device):
    ring = RingBuffer(2, 50, device)
    counter = np.arange(130, dtype=np.float32)
    ring.push(np.stack([counter, -counter]))
    span = ring.span(90, 120)
    np.testing.assert_array_equal(span[0].cpu().numpy(), np.arange(90, 120))
    np.testing.assert_array_equal(span[1].cpu().numpy(), -np.arange(90, 120))
    with pytest.raises(ValueError, match="outside the stored samples"):
        ring.span(79, 100)  # overwritten: only [80, 130) are kept
    with pytest.raises(ValueError, match="outside the stored samples"):
        ring.span(120, 131)  # not pushed yet


def test_chunk_longer_than_capacity_keeps_newest(device):
    ring = RingBuffer(3, 40, device)
    ring.push(np.zeros((3, 7), np.float32))
    stream = np.arange(3 * 333, dtype=np.float64).reshape(3, 333)  # float64 is cast
    ring.push(stream)
    assert ring.n_pushed == 340
    np.testing.assert_array_equal(ring.window(40).cpu().numpy(), stream[:, -40:])
    ring.push(stream[:, :5])
    expected = np.concatenate([stream[:, -35:], stream[:, :5]], axis=1)
    np.testing.assert_array_equal(ring.window(40).cpu().numpy(), expected)


def test_transposed_read_only_numpy_chunk(device):
    # What an LSL pull looks like before the transpose: (samples, channels).
    ring = RingBuffer(4, 16, device)
    samples = np.arange(40, dtype=np.float32).reshape(10, 4)
    samples.setflags(write=False)
    ring.push(samples.T)
    np.testing.assert_array_equal(ring.window(10).cpu().numpy(), samples.T)


def test_bad_arguments_name_the_fix():
    ring = RingBuffer(4, 16, "cpu")
    with pytest.raises(ValueError, match=r"expected \(n_chans=4, k\)"):
        ring.push(np.zeros((16, 4), np.float32))
    with pytest.raises(ValueError, match="k >= 1"):
        ring.push(np.zeros((4, 0), np.float32))
    with pytest.raises(ValueError, match="larger capacity"):
        ring.window(17)
    with pytest.raises(ValueError, match="capacity=0"):
        RingBuffer(4, 0, "cpu")


@pytest.mark.cuda
def test_cuda_pushes_allocate_nothing():
    ring = RingBuffer(19, 1000, "cuda")
    rng = np.random.default_rng(1)
    ring.push(rng.standard_normal((19, 10)).astype(np.float32))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    stream = rng.standard_normal((19, 5000)).astype(np.float32)
    pos = 0
    while pos < stream.shape[1]:
        k = int(rng.integers(1, 64))
        ring.push(stream[:, pos : pos + k])
        pos += k
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    np.testing.assert_array_equal(ring.window(1000).cpu().numpy(), stream[:, -1000:])
