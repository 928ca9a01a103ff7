"""Built-in post-processing stages of ``rtmoe stream --plugin`` (entry points ``smooth``,
``accumulate``); the protocol is in docs/plugins.md and `rtmoe.runtime.plugins`.

Both keep their state in plain lists of ``n_outputs`` floats created in ``open``; per
decode they build one new message (``dataclasses.replace``) and nothing else.
"""

from __future__ import annotations

import dataclasses

from rtmoe.runtime.plugins import PluginContext
from rtmoe.transport import DecodeMessage


class Smooth:
    """Exponential smoothing of the class probabilities across hops.

    ``p̄_t = alpha · p_t + (1 − alpha) · p̄_{t−1}`` with ``p̄_0 = p_0``; the published
    ``probabilities`` become ``p̄_t`` (still a distribution: a convex combination of
    distributions) and ``label`` its argmax. With hop ``h`` the time constant is about
    ``h / alpha``; ``alpha=1`` leaves decodes unchanged.

    Parameters
    ----------
    alpha : float
        Weight of the newest decode, in (0, 1].
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha={alpha} is outside (0, 1]; e.g. alpha=0.3")
        self.alpha = alpha
        self._state: list[float] = []

    def open(self, context: PluginContext) -> None:
        self._state = []

    def process(self, msg: DecodeMessage) -> DecodeMessage:
        a, state = self.alpha, self._state
        if not state:
            state.extend(msg.probabilities)
        else:
            for k, p in enumerate(msg.probabilities):
                # min(): a convex combination of values <= 1 may round to 1 + 1 ulp.
                state[k] = min(1.0, a * p + (1.0 - a) * state[k])
        best = max(range(len(state)), key=state.__getitem__)
        return dataclasses.replace(msg, probabilities=state, label=msg.labels[best])


class Accumulate:
    """Evidence accumulation with a decision threshold (a leaky race between classes).

    Each class's evidence grows by its probability above chance and never goes below 0::

        e_k ← max(0, (1 − leak) · e_k + p_k − 1 / n_outputs)

    When the largest ``e_k`` reaches ``threshold`` the decode carries a decision for that
    class and all evidence restarts from 0. Every decode gets ``extras["evidence"]``
    (largest ``e_k`` before any reset) and ``extras["evidence_label"]`` (its class); the
    deciding decode also ``extras["decision"]`` (the class name).

    Parameters
    ----------
    threshold : float
        Evidence needed for a decision, > 0 (1.0 ≈ two hops at p = 1 with two classes).
    leak : float
        Fraction of the evidence forgotten per hop, in [0, 1).
    """

    def __init__(self, threshold: float = 1.0, leak: float = 0.0) -> None:
        if not threshold > 0.0:
            raise ValueError(f"threshold={threshold} must be > 0; e.g. threshold=1.0")
        if not 0.0 <= leak < 1.0:
            raise ValueError(f"leak={leak} is outside [0, 1); e.g. leak=0.1")
        self.threshold = threshold
        self.leak = leak
        self._evidence: list[float] = []

    def open(self, context: PluginContext) -> None:
        self._evidence = [0.0] * len(context.labels)

    def process(self, msg: DecodeMessage) -> DecodeMessage:
        e = self._evidence
        if len(e) != len(msg.probabilities):  # open() not called (used outside a runtime)
            e[:] = [0.0] * len(msg.probabilities)
        keep, chance = 1.0 - self.leak, 1.0 / len(e)
        for k, p in enumerate(msg.probabilities):
            e[k] = max(0.0, keep * e[k] + p - chance)
        best = max(range(len(e)), key=e.__getitem__)
        extras = {**msg.extras, "evidence": e[best], "evidence_label": msg.labels[best]}
        if e[best] >= self.threshold:
            extras["decision"] = msg.labels[best]
            e[:] = [0.0] * len(e)
        return dataclasses.replace(msg, extras=extras)
