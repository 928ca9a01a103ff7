"""Seeded stratified k-fold assignment, the one cross-validation split of `rtmoe finetune`
(``finetune.folds``) and `rtmoe calibrate` (``--folds``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtmoe.errors import BadValueError


def fold_assignment(
    y: np.ndarray,
    n_folds: int,
    seed: int,
    labels: Sequence[str] | None = None,
    fix: str = "use fewer folds or add trials",
) -> np.ndarray:
    """Seeded stratified k-fold assignment: the fold (0..n_folds-1) of every trial.

    Each class's trials are shuffled and dealt round-robin over the folds, continuing
    where the previous class stopped, so every fold holds ``floor`` or ``ceil`` of
    ``n_k / n_folds`` trials of each class k and the fold sizes differ by at most one.

    Parameters
    ----------
    y : ndarray, shape (n_trials,), int class indices
        For regression pass ``np.zeros(n_trials, int)`` (a plain random k-fold).
    n_folds : int, >= 2
    labels : sequence of str, optional
        Class names for the error message.
    fix : str
        What the error tells the user to do (the caller's own setting).

    Returns
    -------
    ndarray of int, shape (n_trials,)

    Raises
    ------
    BadValueError
        A class has fewer than ``n_folds`` trials (some held-out fold would lack it).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds} must be >= 2 (folds = 1 is the single split)")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    offset = 0
    for k in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == k))
        if len(members) < n_folds:
            name = repr(labels[k]) if labels is not None else f"index {k}"
            raise BadValueError(
                f"class {name} has {len(members)} trials but folds={n_folds} needs at least "
                f"{n_folds} per class (every held-out fold holds every class); {fix}"
            )
        fold_of[members] = (offset + np.arange(len(members))) % n_folds
        offset += len(members)
    return fold_of
