"""Device ring buffer of the live signal: windows are views, pushes never allocate.

Layout: a preallocated ``(n_chans, 2 * capacity)`` tensor where every sample is written
twice, at ``i % capacity`` and ``i % capacity + capacity`` (absolute sample index ``i``).
Any run of at most ``capacity`` consecutive samples is then stored without wrap-around
somewhere in the storage, so a window is a plain slice: a view with time stride 1 (each
channel row is contiguous in memory), never a copy. The mirror write costs one extra
device-to-device copy per push, which is cheaper than gathering a wrapped window every hop.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


class RingBuffer:
    """The newest ``capacity`` samples of ``n_chans`` channels, on the compute device.

    Parameters
    ----------
    n_chans : int
        Number of channels (rows).
    capacity : int
        Samples kept; must be at least the longest window that will be read.
    device : torch.device or str
        Where the storage lives (``"cuda"`` for the GPU path).
    dtype : torch.dtype
        Storage dtype: float16, float32 (default) or float64.

    Attributes
    ----------
    n_pushed : int
        Samples pushed since creation (including ones already overwritten): the absolute
        index one past the newest sample, for mapping samples to LSL times.
    storage : torch.Tensor, shape (n_chans, 2 * capacity)
        The mirrored storage every window is a view of.
    """

    def __init__(
        self,
        n_chans: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if n_chans < 1:
            raise ValueError(f"n_chans={n_chans} must be >= 1")
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1 (samples to keep)")
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(f"dtype={dtype} is not supported; use one of {list(_NUMPY_DTYPES)}")
        if torch.device(device).type not in ("cpu", "cuda"):
            raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
        self.n_chans = n_chans
        self.capacity = capacity
        self.device = torch.device(device)
        self.n_pushed = 0
        self.storage = torch.zeros((n_chans, 2 * capacity), dtype=dtype, device=self.device)
        # numpy chunks land in host memory first: the storage itself on the CPU, a pinned
        # staging buffer on CUDA (so the host-to-device copy is a true async DMA).
        self._staging: torch.Tensor | None = None
        self._staged: torch.cuda.Event | None = None
        if self.device.type == "cuda":
            self._staging = torch.empty((n_chans, capacity), dtype=dtype, pin_memory=True)
            self._host = self._staging.numpy()
            self._staged = torch.cuda.Event()
        else:
            self._host = self.storage.numpy()

    def push(self, chunk: np.ndarray | torch.Tensor) -> None:
        """Append ``k >= 1`` samples; with ``k > capacity`` only the newest are kept.

        Parameters
        ----------
        chunk : numpy.ndarray or torch.Tensor, shape (n_chans, k)
            Channel-first samples, any real dtype, any strides, any device (tensors).
        """
        if chunk.ndim != 2 or chunk.shape[0] != self.n_chans or chunk.shape[1] < 1:
            raise ValueError(
                f"chunk has shape {tuple(chunk.shape)}; expected (n_chans={self.n_chans}, k)"
                " with k >= 1 samples, channel-first (transpose LSL's (samples, channels))"
            )
        n_new = int(chunk.shape[1])
        k = min(n_new, self.capacity)
        chunk = chunk[:, n_new - k :]
        head = (self.n_pushed + n_new - k) % self.capacity
        primary = self.storage[:, head : head + k]
        if isinstance(chunk, torch.Tensor):
            primary.copy_(chunk)
        elif self._staging is None:
            np.copyto(self._host[:, head : head + k], chunk, casting="same_kind")
        else:
            # The previous async copy must have left the staging buffer before reuse.
            self._staged.synchronize()
            np.copyto(self._host[:, :k], chunk, casting="same_kind")
            primary.copy_(self._staging[:, :k], non_blocking=True)
            self._staged.record()
        self._mirror(head, k)
        self.n_pushed += n_new

    def _mirror(self, head: int, k: int) -> None:
        # Positions [head, head + k) were written; copy them to their twin positions.
        cap = self.capacity
        stop = min(head + k, cap)
        self.storage[:, head + cap : stop + cap].copy_(self.storage[:, head:stop])
        if head + k > cap:
            self.storage[:, : head + k - cap].copy_(self.storage[:, cap : head + k])

    def span(self, start: int, stop: int) -> torch.Tensor:
        """View of the samples with absolute indices ``start <= i < stop``.

        Returns
        -------
        torch.Tensor, shape (n_chans, stop - start)
            A view into ``storage`` (strides ``(2 * capacity, 1)``); it changes when
            later pushes overwrite those samples, so use it before pushing again.
        """
        oldest = max(0, self.n_pushed - self.capacity)
        if not oldest <= start <= stop <= self.n_pushed:
            raise ValueError(
                f"span(start={start}, stop={stop}) is outside the stored samples "
                f"[{oldest}, {self.n_pushed}); push more samples first or raise "
                f"capacity={self.capacity}"
            )
        first = start % self.capacity
        return self.storage[:, first : first + stop - start]

    def window(self, n_times: int) -> torch.Tensor:
        """View of the newest ``n_times`` samples, shape (n_chans, n_times); see `span`."""
        if not 1 <= n_times <= self.capacity:
            raise ValueError(
                f"n_times={n_times} must lie in [1, capacity={self.capacity}]; "
                "create the ring with a larger capacity"
            )
        return self.span(self.n_pushed - n_times, self.n_pushed)
