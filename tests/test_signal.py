"""rtmoe.signal: the streaming chain, in any chunking, equals what training feeds the model.

Recordings: the shipped demo (real SCP1 EEG, 256 Hz); the same EEG brought to 128, 250
and 1000 Hz with scipy (real content at other rates, since no recording at those rates
ships); HandMovementDirection's MEG trials back to back (real, 400 Hz). The reference is
built through the training entry points (``rtmoe prepare``'s `preprocess`, fine-tuning's
trial preparation) and, independently of rtmoe, from scipy's ``upfirdn`` and ``sosfilt``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from rtmoe.config import SignalConfig
from rtmoe.dsp.filters import design_filter
from rtmoe.offline.corpus.preprocess import preprocess
from rtmoe.recording import Recording, read_recording
from rtmoe.signal import SignalChain, preprocess_recording, preprocess_trials, resampler_delay_s
from rtmoe.stream.replay import demo_recording_path

#: The shipped model's chain (SCP1: no high-pass, 75 Hz low-pass, 50 Hz notch, 200 Hz).
SHIPPED = SignalConfig(l_freq=None, h_freq=75.0, notch_freq=50.0)
N_SECONDS = 60
RATES = (128.0, 250.0, 256.0, 400.0, 1000.0)


def _recording(sfreq: float) -> np.ndarray:
    """(n_chans, n_times) µV of real data at ``sfreq``."""
    if sfreq == 400.0:
        from rtmoe.offline.corpus.devdata import load_dev_split

        try:
            trials = load_dev_split("HandMovementDirection", "train")
        except Exception as err:  # not installed: the other rates still run
            pytest.skip(str(err))
        x = np.concatenate(list(trials.X[:N_SECONDS]), axis=1)
        return x.astype(np.float64)
    demo = read_recording(demo_recording_path())
    x = np.asarray(demo.data[:, : int(N_SECONDS * demo.sfreq)], dtype=np.float64)
    if sfreq == demo.sfreq:
        return x
    from fractions import Fraction

    ratio = Fraction(str(sfreq)) / Fraction(str(demo.sfreq))
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=1, padtype="line")


def _scipy_reference(x: np.ndarray, sfreq: float, cfg: SignalConfig) -> np.ndarray:
    """The chain as its docstring defines it, from scipy alone: the Kaiser low-pass of
    resample_poly applied causally (upfirdn over the input preceded by its first sample
    held), then sosfilt from the steady state of the first output, then / unit_uv."""
    from fractions import Fraction

    ratio = Fraction(str(cfg.sfreq)) / Fraction(str(sfreq))
    up, down = ratio.numerator, ratio.denominator
    if up == down == 1:
        y = x.copy()
    else:
        half_len = 10 * max(up, down)
        h = sps.firwin(2 * half_len + 1, 1 / max(up, down), window=("kaiser", 5.0))
        n_pad = down * (-(-(h.size // up + 2) // down))  # held samples, a multiple of down
        padded = np.concatenate([np.repeat(x[:, :1], n_pad, axis=1), x], axis=1)
        full = sps.upfirdn(up * h, padded, up, down, axis=1)
        n_out = -(-x.shape[1] * up // down)
        y = full[:, n_pad * up // down :][:, :n_out]
    sos = design_filter(cfg)
    zi = sps.sosfilt_zi(sos)[:, None, :] * y[None, :, 0, None]
    y, _ = sps.sosfilt(sos, y, axis=1, zi=zi)
    return y / cfg.unit_uv


@pytest.mark.parametrize("sfreq", RATES)
def test_streaming_chain_equals_training_form(sfreq):
    x = _recording(sfreq)
    stamps = 1000.0 + np.arange(x.shape[1]) / sfreq
    # Live: the chain over random chunks of 1..512 samples, float32 as LSL delivers.
    rng = np.random.default_rng(int(sfreq))
    chain = SignalChain(np.arange(x.shape[0]), sfreq, SHIPPED)
    live, live_stamps, start = [], [], 0
    x32 = x.astype(np.float32)
    while start < x.shape[1]:
        k = int(rng.integers(1, 513))
        y, newest = chain.process(x32[:, start : start + k])
        live.append(y)
        live_stamps.append(stamps[start + newest])
        start += k
    live = np.concatenate(live, axis=1)
    live_stamps = np.concatenate(live_stamps)
    # Training: what `rtmoe prepare` runs on a recording, and the timestamps it implies.
    rec = Recording(
        x32.astype(np.float64), sfreq, tuple(f"ch{i}" for i in range(len(x))), source="r"
    )
    train = preprocess(rec, SHIPPED)
    _, newest = preprocess_recording(x32, sfreq, SHIPPED)
    assert live.shape == train.shape == (x.shape[0], -(-x.shape[1] * 200 // int(sfreq)))
    np.testing.assert_allclose(live, train, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(live_stamps, stamps[newest])
    # Windows ending on the same timestamp hold the same samples (every 3.5 s).
    n_times = 700
    for end_s in np.arange(5.0, N_SECONDS - 1, 3.5):
        j = int(np.searchsorted(live_stamps, 1000.0 + end_s, side="right")) - 1
        k = int(np.searchsorted(stamps[newest], 1000.0 + end_s, side="right")) - 1
        assert j == k
        np.testing.assert_allclose(
            live[:, j - n_times + 1 : j + 1], train[:, k - n_times + 1 : k + 1], atol=1e-5
        )
    # And both are the chain its documentation defines, computed by scipy alone.
    np.testing.assert_allclose(train, _scipy_reference(x32.astype(np.float64), sfreq, SHIPPED),
                               rtol=0, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("dataset", ["SelfRegulationSCP1", "HandMovementDirection"])
def test_trial_form_is_the_chain_started_at_each_trial(dataset):
    """Fine-tuning's trials (preprocess_trials) = a fresh live chain over each trial."""
    from rtmoe.offline.corpus.devdata import load_dev_split

    try:
        trials = load_dev_split(dataset, "train")
    except Exception as err:
        pytest.skip(str(err))
    X = trials.X[:8]
    batch = preprocess_trials(X, trials.sfreq, SHIPPED)
    for trial, got in zip(X, batch, strict=True):
        chain = SignalChain(np.arange(len(trial)), trials.sfreq, SHIPPED)
        parts = [chain.process(trial[:, a : a + 97])[0] for a in range(0, trial.shape[1], 97)]
        np.testing.assert_allclose(got, np.concatenate(parts, axis=1), rtol=0, atol=1e-5)


def test_chain_lag_is_the_documented_resampler_delay():
    """A step at input time t appears, half-risen, at output stamp t + resampler_delay_s."""
    bare = SignalConfig(l_freq=None, h_freq=None, notch_freq=None)
    for sfreq, delay_ms in ((256.0, 50.0), (1000.0, 50.0), (200.0, 0.0)):
        assert resampler_delay_s(sfreq, 200.0) * 1e3 == pytest.approx(delay_ms)
        x = np.zeros((1, int(4 * sfreq)))
        x[:, int(2 * sfreq) :] = 100.0
        y, newest = preprocess_recording(x, sfreq, bare)
        stamps = np.arange(x.shape[1])[newest] / sfreq
        half = stamps[np.argmax(y[0] >= 0.5)]
        assert half - 2.0 == pytest.approx(delay_ms * 1e-3, abs=1.5 / sfreq + 1e-9)


def test_empty_and_repaired_chunks():
    chain = SignalChain(np.array([0, 1]), 256.0, SHIPPED)
    y, newest = chain.process(np.zeros((2, 0), np.float32))
    assert y.shape == (2, 0) and newest.size == 0
    x = np.ones((2, 300), np.float32) * 10
    x[0, 100:150] = np.nan
    x[1, 10] = 3e38
    y, _ = chain.process(x)
    assert chain.n_nonfinite == 51 and np.isfinite(y).all()
    np.testing.assert_allclose(y, 0.1, atol=1e-4)  # held values: a flat 10 µV (FIR ripple)
