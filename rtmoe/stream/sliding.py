"""Incremental Welch PSD of a sliding window, exact against the offline computation.

Alignment. ``scipy.signal.welch`` of a window ``[e - n_times, e)`` uses the segments that
start at ``e - n_times + j * step`` (``step = nperseg - nperseg // 2``) for
``j < n_segments = (n_times - nperseg) // step + 1``: they end at ``e - r_j`` with
``r_j = n_times - nperseg - j * step`` (trailing samples that fill no segment are ignored).
A frame (one segment's periodogram) is therefore identified by the absolute index of its
end sample, and the windows share frames: the frame ending at ``f`` serves every window
``e = f + r_j``.

Rule. Windows end on the hop grid (``e`` a multiple of ``hop`` in absolute samples,
``RingBuffer.n_pushed``). Each update looks up the ``n_segments`` frames of its window in a
ring of frames keyed by end index and computes only the missing ones, so the PSD is always
the mean of exactly scipy's segments, whatever ``hop``, ``nperseg`` and ``n_times`` are.
All frame ends lie on a lattice of spacing ``g = gcd(hop, step)``; slot ``(f // g) %
n_slots`` with ``n_slots = (n_segments - 1) * step // g + 1`` keeps every frame until its
last window has used it.

Cost per hop (steady state). One new frame when ``step % hop == 0`` (e.g. 100 ms hops,
``nperseg = 2 s``); in general at most ``min(n_segments, hop // g)`` frames (missing frames
are computed in one batched call over the range they span, so never more than
``n_segments``). A frame is an ``nperseg``-point real FFT per channel; the PSD is one mean
over a strided view of the frame ring. Warm-up: the first update computes all
``n_segments`` frames, and for ``(n_segments - 1) * step / hop`` updates after it older
frames are still first-time frames (up to ``n_segments`` per update).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rtmoe.dsp.spectral import periodogram_segments
from rtmoe.stream.ring import RingBuffer


class SlidingWelch:
    """Welch PSD of the newest hop-aligned window, from stored per-segment periodograms.

    Parameters
    ----------
    n_chans : int
        Channels of the ring it reads.
    n_times : int
        Window length in samples.
    hop : int
        Samples between consecutive windows; window ends are multiples of it.
    sfreq : float
        Sampling rate in Hz.
    nperseg : int
        Welch segment length in samples (``rtmoe.dsp.spectral.welch_nperseg``).
    device : torch.device or str
        Device of the ring (frames live there too).
    dtype : torch.dtype
        Dtype of frames and PSD (float32 default).

    Attributes
    ----------
    end : int
        Absolute end index (exclusive) of the last window given to `update`; 0 before.
    n_bins : int
        ``nperseg // 2 + 1`` frequency bins.
    n_frames_computed : int
        Periodogram frames computed so far (the cost; see the module docstring).
    """

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        hop: int,
        sfreq: float,
        nperseg: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not 1 <= nperseg <= n_times:
            raise ValueError(
                f"nperseg={nperseg} must lie in [1, n_times={n_times}]; choose it with "
                "rtmoe.dsp.spectral.welch_nperseg"
            )
        if hop < 1:
            raise ValueError(f"hop={hop} must be >= 1 sample")
        self.n_chans = n_chans
        self.n_times = n_times
        self.hop = hop
        self.sfreq = sfreq
        self.nperseg = nperseg
        self.n_bins = nperseg // 2 + 1
        self.step = nperseg - nperseg // 2
        self.n_segments = (n_times - nperseg) // self.step + 1
        self.grid = math.gcd(hop, self.step)
        self._slot_stride = self.step // self.grid
        self.n_slots = (self.n_segments - 1) * self._slot_stride + 1
        # Frames are stored twice (slot and slot + n_slots) so the frames of any window are
        # one strided slice, averaged without a gather.
        self._frames = torch.zeros(
            (2 * self.n_slots, n_chans, self.n_bins), dtype=dtype, device=device
        )
        self._keys = np.full(self.n_slots, -1, dtype=np.int64)
        self._offsets = np.arange(self.n_segments, dtype=np.int64) * self.step
        self._slot_offsets = np.arange(self.n_segments, dtype=np.int64) * self._slot_stride
        self._psd = torch.empty((n_chans, self.n_bins), dtype=dtype, device=device)
        self.end = 0
        self.n_frames_computed = 0

    def update(self, ring: RingBuffer, end: int | None = None) -> torch.Tensor:
        """Welch PSD of the window ``[end - n_times, end)`` of ``ring``.

        Parameters
        ----------
        ring : RingBuffer
            The live signal; it must still hold the whole window.
        end : int, optional
            Absolute end index (exclusive) of the window; default the newest multiple of
            ``hop`` that is ``<= ring.n_pushed``. Off-grid ends stay exact but reuse fewer
            frames.

        Returns
        -------
        Tensor, shape (n_chans, n_bins)
            PSD in signal-units² / Hz, equal to ``welch_psd(ring.span(end - n_times, end),
            sfreq, nperseg)``. The tensor is reused by the next update; clone it to keep it.
        """
        if end is None:
            end = ring.n_pushed - ring.n_pushed % self.hop
        if end < self.n_times:
            raise ValueError(
                f"end={end} leaves no full window of n_times={self.n_times} samples; wait "
                f"until ring.n_pushed >= {self.n_times} (rounded up to a multiple of "
                f"hop={self.hop})"
            )
        first_end = end - self.n_times + self.nperseg
        ends = first_end + self._offsets
        first_slot = (first_end // self.grid) % self.n_slots
        slots = (first_slot + self._slot_offsets) % self.n_slots
        missing = np.flatnonzero(self._keys[slots] != ends)
        if missing.size:
            j0, j1 = int(missing[0]), int(missing[-1])
            segment = ring.span(int(ends[j0]) - self.nperseg, int(ends[j1]))
            new = periodogram_segments(segment, self.sfreq, self.nperseg)
            self.n_frames_computed += j1 - j0 + 1
            for i, j in enumerate(range(j0, j1 + 1)):
                slot = int(slots[j])
                self._frames[slot].copy_(new[:, i])
                self._frames[slot + self.n_slots].copy_(new[:, i])
                self._keys[slot] = ends[j]
        last = first_slot + (self.n_segments - 1) * self._slot_stride
        torch.mean(self._frames[first_slot : last + 1 : self._slot_stride], dim=0, out=self._psd)
        self.end = end
        return self._psd

    def window(self, ring: RingBuffer) -> torch.Tensor:
        """The model's input for the last update: a view, shape (n_chans, n_times)."""
        return ring.span(self.end - self.n_times, self.end)
