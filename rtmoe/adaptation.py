"""Unsupervised session adaptation of the decision: causal prior re-centring.

A new session often shifts every decode toward one class (an electrode offset, another
day's impedance): the ranking of trials survives, the threshold does not. SCP1's test
session is such a case (AUROC 0.95, balanced accuracy 0.81). `PriorRecentring` removes
that bias without labels: it keeps an exponential running mean of the centred
log-probabilities of past decodes and subtracts it from each new one, so that over the
last ``time_constant_s`` no class is favoured on average.

It assumes the classes are about equally frequent over that span (interleaved trials, as
in most cued paradigms). A block of one class longer than the time constant is pulled
toward the others, so it is an explicit option, off by default (``runtime.adapt_s``;
``rtmoe evaluate --adapt-s``, on trials in recording order only).

Causal: a decode is corrected with the mean of the decodes before it, then joins that
mean, so nothing decoded later changes an earlier output. The same object runs live (one
update per published decode) and in ``rtmoe evaluate`` (one per trial, in order).
"""

from __future__ import annotations

import numpy as np

#: Probabilities are clipped here before the log (a softmax output can round to 0).
MIN_PROBABILITY = 1e-12


class PriorRecentring:
    """Causal running re-centring of a classifier's log-probabilities.

    Parameters
    ----------
    n_classes : int
    time_constant_s : float
        Time constant of the running mean, s (> 0).
    step_s : float
        Time between two decodes, s (live: the hop; offline: one trial each).

    Attributes
    ----------
    shift : ndarray, shape (n_classes,)
        The log-probability offset subtracted from the next decode (starts at 0).
    n_updates : int
        Decodes seen.
    """

    def __init__(self, n_classes: int, time_constant_s: float, step_s: float) -> None:
        if not (time_constant_s > 0 and step_s > 0):
            raise ValueError(
                f"time_constant_s={time_constant_s} and step_s={step_s} must be > 0 seconds"
            )
        self.alpha = min(1.0, step_s / time_constant_s)
        self.shift = np.zeros(n_classes)
        self.n_updates = 0

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """The corrected probabilities of one decode, then the update with it."""
        log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), MIN_PROBABILITY, 1))
        log_p -= log_p.mean()
        corrected = log_p - self.shift
        self.shift += self.alpha * (log_p - self.shift)
        self.n_updates += 1
        e = np.exp(corrected - corrected.max())
        return e / e.sum()


def recentre_in_order(
    probabilities: np.ndarray, time_constant_s: float, step_s: float
) -> np.ndarray:
    """`PriorRecentring` over decodes in time order: shape (n_decodes, n_classes)."""
    adapt = PriorRecentring(probabilities.shape[1], time_constant_s, step_s)
    return np.stack([adapt(row) for row in probabilities])
