"""Signal-quality report of a recorded session, printed before fitting and kept in the profile.

Computed on the raw stream (µV, the stream's rate) of the channels the model uses:

- flat channels: median over 1 s blocks of the block standard deviation below
  ``FLAT_UV``; noisy channels: that median above ``NOISY_FACTOR`` times the median over
  channels, or above ``NOISY_UV``;
- line noise: Welch power within ±1 Hz of 50 and of 60 Hz relative to the power 2-5 Hz
  to either side, in dB, per channel (only for mains frequencies below Nyquist);
- timing: the effective rate (samples per second of LSL time within continuous
  segments), the jitter (standard deviation of the timestamps around a straight line
  fitted per segment, ms), gaps and their total duration;
- trials: accepted per class, rejected per reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import signal as sps

from rtmoe.calibration.epochs import Trials, split_segments
from rtmoe.calibration.session import RecordedSession

FLAT_UV = 0.5
NOISY_UV = 200.0
NOISY_FACTOR = 5.0
#: Line-noise level (dB over the neighbouring bands) reported as a warning.
LINE_NOISE_WARN_DB = 10.0


def block_std(x: np.ndarray, block: int) -> np.ndarray:
    """Median over whole blocks of ``block`` samples of each channel's standard deviation.

    Parameters
    ----------
    x : ndarray, shape (n_chans, n_times)

    Returns
    -------
    ndarray, shape (n_chans,); the whole-signal standard deviation when shorter than a block
    """
    n_blocks = x.shape[1] // block
    if n_blocks == 0:
        return x.std(axis=1)
    blocks = x[:, : n_blocks * block].reshape(x.shape[0], n_blocks, block)
    return np.median(blocks.std(axis=2), axis=1)


def line_noise_db(x: np.ndarray, sfreq: float, mains_hz: float) -> np.ndarray:
    """Power within ±1 Hz of ``mains_hz`` over the power 2-5 Hz either side, dB per channel.

    Parameters
    ----------
    x : ndarray, shape (n_chans, n_times), µV
    sfreq, mains_hz : float, Hz
    """
    nperseg = min(x.shape[1], int(4 * sfreq))
    f, p = sps.welch(x, sfreq, nperseg=nperseg, axis=-1)
    d = np.abs(f - mains_hz)
    peak = p[:, d <= 1.0].mean(axis=1)
    side = p[:, (d >= 2.0) & (d <= 5.0)].mean(axis=1)
    return 10 * np.log10(np.maximum(peak, 1e-30) / np.maximum(side, 1e-30))


def timing(times: np.ndarray, sfreq: float, max_gap_s: float) -> dict[str, Any]:
    """Effective rate, jitter and gaps of a timestamp series.

    Returns
    -------
    dict
        ``nominal_hz``, ``effective_hz``, ``jitter_ms``, ``n_gaps``, ``gap_s`` (total
        time inside gaps), ``duration_s`` (LSL time covered by samples).
    """
    bounds = split_segments(times, max_gap_s)
    n_intervals, span, residuals = 0, 0.0, []
    for a, b in bounds:
        if b - a < 3:
            continue
        t = times[a:b]
        i = np.arange(t.size)
        slope, intercept = np.polyfit(i, t, 1)
        residuals.append(t - (slope * i + intercept))
        n_intervals += t.size - 1
        span += t[-1] - t[0]
    gaps = [times[b] - times[b - 1] for (_, b) in bounds[:-1]]
    return {
        "nominal_hz": sfreq,
        "effective_hz": n_intervals / span if span > 0 else float("nan"),
        "jitter_ms": float(np.concatenate(residuals).std() * 1e3) if residuals else 0.0,
        "n_gaps": len(gaps),
        "gap_s": float(np.sum(gaps)) if gaps else 0.0,
        "duration_s": span,
    }


def quality_report(
    rec: RecordedSession,
    index: np.ndarray,
    model_ch_names: Sequence[str],
    trials: Trials,
    max_gap_s: float,
) -> dict[str, Any]:
    """Everything `format_report` prints; JSON-serialisable, saved in the profile.

    Parameters
    ----------
    rec : RecordedSession
    index : ndarray, shape (n_model_chans,)
        Stream row of each model channel (-1: filled with zeros, skipped here).
    model_ch_names : sequence of str
    trials : Trials
        The epoching result (accepted and rejected trials).
    max_gap_s : float
    """
    rows = [(name, int(i)) for name, i in zip(model_ch_names, index, strict=True) if i >= 0]
    names = [name for name, _ in rows]
    x = np.asarray(rec.data[[i for _, i in rows]], dtype=np.float64)
    std = block_std(x, max(1, int(rec.sfreq)))
    median = float(np.median(std)) if std.size else 0.0
    flat = [n for n, s in zip(names, std, strict=True) if s < FLAT_UV]
    noisy = [
        n
        for n, s in zip(names, std, strict=True)
        if s > NOISY_UV or (median > 0 and s > NOISY_FACTOR * median)
    ]
    line = {}
    for mains in (50.0, 60.0):
        if mains + 5 < rec.sfreq / 2 and x.shape[1] >= 2 * rec.sfreq:
            db = line_noise_db(x, rec.sfreq, mains)
            line[f"{mains:g}"] = {n: round(float(v), 2) for n, v in zip(names, db, strict=True)}
    report = {
        "channels": {n: {"std_uv": round(float(s), 3)} for n, s in zip(names, std, strict=True)},
        "flat": flat,
        "noisy": noisy,
        "line_noise_db": line,
        "timing": timing(rec.times, rec.sfreq, max_gap_s) if rec.n_samples else {},
        "trials": {"accepted": trials.counts(), "rejected": trials.rejected_reasons()},
        "n_markers": int(rec.marker_times.size),
    }
    report["warnings"] = _warnings(report)
    return report


def _warnings(report: dict[str, Any]) -> list[str]:
    out = []
    if report["flat"]:
        out.append(f"flat channels {report['flat']}: check their contact")
    if report["noisy"]:
        out.append(f"noisy channels {report['noisy']}: check their contact")
    for mains, per_ch in report["line_noise_db"].items():
        high = [n for n, v in per_ch.items() if v >= LINE_NOISE_WARN_DB]
        if high:
            out.append(f"{mains} Hz line noise ≥ {LINE_NOISE_WARN_DB:g} dB on {high}")
    t = report["timing"]
    if t and abs(t["effective_hz"] / t["nominal_hz"] - 1) > 0.01:
        out.append(
            f"effective rate {t['effective_hz']:.1f} Hz differs from the nominal "
            f"{t['nominal_hz']:g} Hz (a replay faster than real time, or a clock problem)"
        )
    if t and t["n_gaps"]:
        out.append(f"{t['n_gaps']} gap(s) in the stream, {t['gap_s']:.2f} s in all")
    return out


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    t = report["timing"]
    lines = ["signal quality:"]
    stds = ", ".join(f"{n} {c['std_uv']:.1f}" for n, c in report["channels"].items())
    lines.append(f"  channel sd (µV, median of 1 s blocks): {stds}")
    lines.append(f"  flat: {report['flat'] or 'none'}; noisy: {report['noisy'] or 'none'}")
    for mains, per_ch in report["line_noise_db"].items():
        worst = max(per_ch.values()) if per_ch else float("nan")
        lines.append(f"  {mains} Hz line noise: up to {worst:.1f} dB over neighbouring bands")
    if t:
        lines.append(
            f"  rate {t['effective_hz']:.2f} Hz effective / {t['nominal_hz']:g} Hz nominal, "
            f"jitter {t['jitter_ms']:.3f} ms, {t['n_gaps']} gap(s) ({t['gap_s']:.2f} s), "
            f"{t['duration_s']:.1f} s recorded"
        )
    trials = report["trials"]
    lines.append(
        f"  trials accepted: {trials['accepted']}; rejected: {trials['rejected'] or 'none'}"
    )
    lines += [f"  WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)
