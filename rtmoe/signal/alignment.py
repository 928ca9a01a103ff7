"""A subject's channel alignment: one fixed linear map of the channels (``rtmoe.profiles``)."""

from __future__ import annotations

import numpy as np


def apply_alignment(x, matrix: np.ndarray | None):
    """Mix channels by ``matrix``: ``matrix @ x`` over the channel axis.

    The map is linear and the same for every sample, so applying it to each streamed
    chunk equals applying it to each window cut from the stream.

    Parameters
    ----------
    x : ndarray or torch.Tensor, shape (..., n_chans, n_times)
    matrix : ndarray, shape (n_chans, n_chans), or None (identity: ``x`` returned as is)

    Returns
    -------
    Same type, shape and dtype as ``x`` (a tensor stays on its device).
    """
    if matrix is None:
        return x
    if x.shape[-2] != matrix.shape[1]:
        raise ValueError(
            f"x has {x.shape[-2]} channels on axis -2 but the alignment matrix is "
            f"{matrix.shape}; pass windows (..., n_chans, n_times) in the profile's channels"
        )
    if isinstance(x, np.ndarray):
        return (matrix.astype(np.float64) @ x).astype(x.dtype, copy=False)
    return x.new_tensor(matrix) @ x  # a torch.Tensor: same dtype and device
