"""Session adaptation (rtmoe.adaptation.PriorRecentring): causal, removes a class bias,
harmless without one, and the same live (rtmoe stream --adapt-s) as offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")

from test_runtime import (  # noqa: E402
    MODEL_CHANS,
    N_TIMES,
    Pusher,
    _run,
    _save_model,
)

from rtmoe.adaptation import PriorRecentring, recentre_in_order  # noqa: E402
from rtmoe.config import RuntimeConfig  # noqa: E402
from rtmoe.dsp.spectral import welch_psd  # noqa: E402
from rtmoe.models.specmoe import load_specmoe  # noqa: E402
from rtmoe.signal import SignalChain  # noqa: E402


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _session(n: int, bias: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved two-class decodes (logit margin ±1.5 plus noise) shifted by ``bias``
    toward class 0, as a new session's offset does."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    margin = np.where(y == 1, 1.5, -1.5) + rng.normal(0, 0.8, n) - bias
    return _softmax(np.stack([np.zeros(n), margin], axis=1)), y


def test_no_decode_is_changed_by_a_later_one():
    p, _ = _session(200, bias=1.0)
    step = p.copy()
    step[120:] = _softmax(np.array([0.0, 6.0]))  # a step change at decode 120
    before, after = recentre_in_order(p, 10.0, 1.0), recentre_in_order(step, 10.0, 1.0)
    np.testing.assert_array_equal(after[:120], before[:120])  # decode 120 itself included
    assert not np.allclose(after[121:], before[121:])  # ... while later ones do adapt


def test_a_session_bias_is_removed_and_no_bias_is_left_alone():
    biased, y = _session(400, bias=2.5)
    raw_acc = np.mean(biased.argmax(1) == y)
    adapted = recentre_in_order(biased, 20.0, 1.0)
    assert raw_acc < 0.7  # the bias pushes most decodes to class 0 ...
    assert np.mean(adapted[100:].argmax(1) == y[100:]) > 0.9  # ... adapted, it is gone
    unbiased, y = _session(400, bias=0.0, seed=1)
    same = recentre_in_order(unbiased, 20.0, 1.0)
    assert np.mean(same.argmax(1) == unbiased.argmax(1)) > 0.97
    adapt = PriorRecentring(2, 20.0, 1.0)
    for row in biased:
        adapt(row)
    assert adapt.n_updates == 400 and adapt.shift[1] - adapt.shift[0] < -1.5  # the bias


def test_bad_time_constants_are_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        PriorRecentring(2, 0.0, 0.1)
    with pytest.raises(ValueError, match=r"runtime\.adapt_s=-1\.0 must be >= 0"):
        RuntimeConfig(adapt_s=-1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model") / "ckpt", MODEL_CHANS)


def test_live_adaptation_equals_the_offline_one_and_is_reported(model_dir):
    torch.set_num_threads(1)
    pusher = Pusher(MODEL_CHANS, 200.0, duration_s=3.0)
    runtime, _, decodes, statuses = _run(model_dir, pusher, 4.5, adapt_s=2.0, status_period_s=0.5)
    assert len(decodes) >= 10  # skipped or stale windows never update it: still equal
    # The model's un-adapted output on each published window, from the whole recording's
    # chain, then the adaptation over them in order at the hop: the live probabilities.
    y, newest = SignalChain([0, 1, 2], pusher.sfreq, runtime.loaded.config.signal).process(
        pusher.data[:, : pusher.n_pushed]
    )
    stamps = pusher.stamps[newest]
    model = load_specmoe(runtime.loaded.checkpoint.path).model
    raw = []
    for msg in decodes:
        end = int(np.argmin(np.abs(stamps - msg.window_last_lsl_s))) + 1
        x = torch.from_numpy(y[:, end - N_TIMES : end])[None]
        with torch.inference_mode():
            logits = model(x, welch_psd(x, runtime.sfreq, model.nperseg))
        raw.append(logits.softmax(-1)[0].numpy())
    expected = recentre_in_order(np.array(raw), 2.0, runtime.hop / runtime.sfreq)
    np.testing.assert_allclose([m.probabilities for m in decodes], expected, atol=1e-5)
    assert [m.label for m in decodes] == [runtime.labels[int(i)] for i in expected.argmax(1)]
    shifts = [s.adaptation_shift for s in statuses if s.decodes > 0]
    assert shifts and all(len(s) == len(runtime.labels) for s in shifts)
    np.testing.assert_allclose(shifts[-1], runtime.adaptation.shift, atol=1e-9)


def test_evaluate_adapts_the_trials_in_their_order(model_dir):
    from rtmoe.offline.evaluate import evaluate

    rng = np.random.default_rng(0)
    X = 30 * rng.normal(size=(40, 3, N_TIMES)) + 20.0  # µV, trials of the model's length
    y = np.array(["a", "b"] * 20)
    plain = evaluate(model_dir, X, y, 200.0, MODEL_CHANS)
    adapted = evaluate(model_dir, X, y, 200.0, MODEL_CHANS, adapt_s=5.0)
    # One decode per trial, one window (0.5 s) apart; the first trial is left as is.
    expected = recentre_in_order(plain.outputs, 5.0, N_TIMES / 200.0)
    np.testing.assert_allclose(adapted.outputs, expected, atol=1e-6)
    np.testing.assert_allclose(adapted.outputs[0], plain.outputs[0], atol=1e-6)
    assert not np.allclose(adapted.outputs, plain.outputs)
