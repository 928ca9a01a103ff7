"""A clock model for real senders: de-jittered, monotone timestamps that keep real gaps.

Why. Many amplifier apps let liblsl stamp each chunk at push time: the chunk's last
sample gets ``local_clock()`` when the app pushes it and the others are back-computed at
the nominal rate. Those stamps jitter by the app's scheduling (5-20 ms) and step
backwards whenever a chunk is pushed earlier than the previous one was late. Taken as
they come, every such step is a "continuity break" and a 3.5 s window never fills.

Approach. The sample *count* is the clock: sample ``i`` of a continuous segment was taken
at ``t0 + i / fs_eff``. `StreamClock` fits that line to the raw stamps by weighted least
squares with exponential forgetting (time constant ``window_s``; a handful of running
sums, updated per chunk in closed form, so the hot path costs a few vector ops), with a
weak prior pulling the slope towards the last known period (nominal at start). Each
sample's output time is the fitted line at its count, each step between output stamps
held to [0.5, 1.4] sample periods, so the output is strictly increasing and a refit moves
it back onto the line smoothly (within about twice the distance) instead of as a step.

Real gaps stay visible. Before a chunk updates the fit, each raw stamp is compared with
the line's prediction for its count. Missing samples push the stamps ahead of the count
by ``M / fs`` for good, a jitter spike by a few ms: a sample whose residual exceeds
``max(gap_floor_periods / fs, jitter_k * jitter)`` (``jitter``: a running RMS of the
residuals, starting at ``initial_jitter_s``) starts a new segment; its output time is its
raw stamp (the jump is kept), and the fit restarts from it with the rate learnt so far.
Stamps far *behind* the count (beyond ``max(backward_floor_s, jitter_k * jitter)``: a
restarted sender's clock) are a break too, and stay backwards, so the runtime's continuity
check (`rtmoe.signal.continuity_breaks`) sees them. Everything else, small
backward steps included, is jitter and is absorbed.

Stalls are not gaps. A sender descheduled for a moment (a loaded machine) pushes late,
then catches up: its stamps jump ahead and come back onto the line within a second,
while after lost samples they stay ahead. The line of the segment before a forward break
is therefore kept for ``window_s``, and the rate stays the one measured before; if the
stamps return to that line, the new segment is dropped and the old fit continues, so a
catch-up's compressed stamps never become the sender's rate (they would be a false rate
mismatch).

Why not liblsl's ``proc_dejitter``: it fits the same kind of line but across everything,
so a run of missing samples becomes a gentle slope the gap detector can no longer see
(and ``proc_monotonize`` clamps backward steps without any model). Limits, by design: a
gap shorter than the detection threshold (about ``jitter_k`` times the jitter; half a
period on a clean stream) is absorbed into the fit like jitter; in the first chunks of a
very jittery stream, before the jitter is learnt, a jitter spike can be taken for a short
gap (a forward jump of tens of ms, far below the runtime's ``max_gap_ms``); a sender
stalled so long that it drops samples shows as the gap it is.
"""

from __future__ import annotations

import math

import numpy as np


class StreamClock:
    """Turns a stream's raw timestamps into modelled ones, chunk by chunk.

    Parameters
    ----------
    sfreq : float
        Nominal sampling rate, Hz.
    window_s : float
        Time constant of the fit's forgetting (how much history the rate and offset
        are estimated over).
    gap_floor_periods : float
        Smallest residual (in sample periods) that can count as missing samples; the
        threshold actually used is the larger of this and ``jitter_k * jitter_s``.
    jitter_k : float
        Residuals beyond this many jitter RMS are a gap (ahead) or a jump (behind).
    initial_jitter_s : float
        The jitter assumed before any has been measured.
    backward_floor_s : float
        Smallest lag behind the count that is a real backward jump, not jitter.
    rate_tolerance : float
        Relative departure of `effective_sfreq` from ``sfreq`` reported by
        `rate_mismatch`.
    min_rate_span_s : float
        Continuous data a segment needs before its rate estimate replaces the last one.

    Attributes
    ----------
    n_breaks : int
        Gaps and jumps detected (each starts a new segment).
    n_samples : int
        Samples modelled so far.
    last : float
        Modelled time of the newest sample (NaN before the first).
    max_residual_s : float
        Largest absolute raw-minus-model residual absorbed as jitter.
    """

    def __init__(
        self,
        sfreq: float,
        *,
        window_s: float = 10.0,
        gap_floor_periods: float = 0.5,
        jitter_k: float = 6.0,
        initial_jitter_s: float = 1e-3,
        backward_floor_s: float = 0.1,
        rate_tolerance: float = 5e-3,
        min_rate_span_s: float = 2.0,
        rate_prior_rel: float = 1e-2,
    ) -> None:
        if sfreq <= 0:
            raise ValueError(f"sfreq={sfreq} must be > 0")
        self.sfreq = float(sfreq)
        self._p_nom = 1.0 / self.sfreq
        self._lambda = math.exp(-1.0 / (window_s * self.sfreq))
        self._gap_floor_s = gap_floor_periods * self._p_nom
        self.jitter_k = float(jitter_k)
        self._backward_floor_s = float(backward_floor_s)
        self.rate_tolerance = float(rate_tolerance)
        self._min_span = min_rate_span_s * self.sfreq
        self._hold_span = window_s * self.sfreq
        self._prior_var = (rate_prior_rel * self._p_nom) ** 2
        self._ridge_cap = self.sfreq**3 / 12.0  # sum of squared deviations of 1 s of counts
        self._var = initial_jitter_s**2
        self._n_var = 0
        self._p_prior = self._p_nom
        self._rate = math.nan
        self._ramp = np.arange(256, dtype=np.float64)
        self._scratch = np.empty(256)
        self.n_breaks = 0
        self.n_samples = 0
        self.last = math.nan
        self.max_residual_s = 0.0
        self._empty = True
        # (fit state, sample count, gap threshold) of the line before a forward break
        self._held: tuple | None = None
        self._reset_fit(0, 0.0)

    # -- public ----------------------------------------------------------------------

    @property
    def jitter_s(self) -> float:
        """Running RMS of the raw stamps around the model, seconds."""
        return math.sqrt(self._var)

    @property
    def period_s(self) -> float:
        """The fitted sample period of the current segment, seconds."""
        return self._slope()

    @property
    def effective_sfreq(self) -> float:
        """Samples per second of the sender's clock (NaN until ``min_rate_span_s``)."""
        if self._seg_n >= self._min_span and self._held is None:
            return 1.0 / self._slope()
        return self._rate

    @property
    def rate_mismatch(self) -> float | None:
        """`effective_sfreq` where it departs from ``sfreq`` beyond ``rate_tolerance``."""
        rate = self.effective_sfreq
        if math.isnan(rate) or abs(rate / self.sfreq - 1.0) <= self.rate_tolerance:
            return None
        return rate

    def update(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Model one chunk of raw stamps (float64, oldest first); returns ``out``.

        ``out`` (shape of ``raw``; may be ``raw`` itself) receives the modelled stamps;
        default a new array.
        """
        k = raw.size
        if out is None:
            out = np.empty(k)
        if k > self._ramp.size:
            self._ramp = np.arange(2 * k, dtype=np.float64)
            self._scratch = np.empty(2 * k)
        lo = 0
        while lo < k:
            if self._empty:
                self._start_segment(float(raw[lo]))
                out[lo] = self.last
                lo += 1
                continue
            lo = self._batch(raw, out, lo, k)
        return out

    # -- internals --------------------------------------------------------------------

    def _fit_state(self) -> tuple:
        return (self._xo, self._yo, self._w, self._sx, self._sy, self._sxx, self._sxy,
                self._seg_n)  # fmt: skip

    def _set_fit_state(self, state: tuple) -> None:
        (self._xo, self._yo, self._w, self._sx, self._sy, self._sxx, self._sxy,
         self._seg_n) = state  # fmt: skip

    def _return_to_held_line(self, stamp: float) -> None:
        """Continue the line held at a forward break if ``stamp`` (of sample ``n_samples``)
        lies on it, within the gap threshold of then (the catch-up inflates the jitter
        since); the hold ends when it does or after ``window_s`` of samples."""
        current, (held, n_held, ahead) = self._fit_state(), self._held
        self._set_fit_state(held)
        line = self._yo + self._predict0(self._slope(), self.n_samples - self._xo)
        back = abs(stamp - line) <= ahead
        if back:  # the old fit continues; the new segment's samples count towards its span
            self._seg_n += self.n_samples - n_held
            self._shift()
        else:
            self._set_fit_state(current)
        if back or self.n_samples - n_held > self._hold_span:
            self._held = None

    def _keep_rate(self) -> None:
        """The segment's rate becomes the known one (and the prior) once long enough."""
        if self._seg_n >= self._min_span:
            self._p_prior = self._slope()
            self._rate = 1.0 / self._p_prior

    def _reset_fit(self, x0: int, y0: float) -> None:
        # Running sums relative to the origin (x0 samples, y0 seconds).
        self._xo, self._yo = x0, y0
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._seg_n = 0

    def _start_segment(self, stamp: float) -> None:
        if not math.isnan(self.last):
            self.n_breaks += 1
        if self._held is None:
            self._keep_rate()
        x = self.n_samples
        self._reset_fit(x, stamp)
        self._w, self._seg_n = 1.0, 1  # the one point (x, stamp), at the origin
        self._empty = False
        self.n_samples += 1
        self.last = stamp

    def _slope(self) -> float:
        w = self._w
        if w <= 0:
            return self._p_prior
        cxx = self._sxx - self._sx * self._sx / w
        cxy = self._sxy - self._sx * self._sy / w
        # The prior on the slope weighs as much as the jitter makes it worth, but never
        # more than one second of samples does: a sender on another clock (a replay at
        # 20x) must not be held at the nominal rate by the misfit it causes itself.
        # Until a rate has been measured, the nominal one is only a tie-breaker.
        cap = self._ridge_cap if not math.isnan(self._rate) else 1.0
        ridge = min((self._var + (0.25 * self._p_nom) ** 2) / self._prior_var, cap)
        slope = (cxy + ridge * self._p_prior) / (cxx + ridge)
        # Only kept positive: a replay at another speed is a sender with another clock.
        return max(slope, 1e-3 * self._p_nom)

    def _predict0(self, slope: float, x_rel: float) -> float:
        """The line at ``x_rel`` samples from the origin, relative to ``_yo``."""
        w = self._w
        return self._sy / w + slope * (x_rel - self._sx / w)

    def _batch(self, raw: np.ndarray, out: np.ndarray, lo: int, k: int) -> int:
        """Model raw[lo:k] up to (excluding) the first break; returns where it stopped."""
        n = k - lo
        ramp = self._ramp[:n]
        r = self._scratch[:n]
        sigma = math.sqrt(self._var)
        ahead = max(self._gap_floor_s, self.jitter_k * sigma)
        behind = max(self._backward_floor_s, self.jitter_k * sigma)
        if self._held is not None:
            self._return_to_held_line(float(raw[lo]))
        slope = self._slope()
        x_lo = self.n_samples - self._xo
        base = self._predict0(slope, x_lo)
        # Residuals against the fit so far: raw - (yo + base + slope * j).
        np.subtract(raw[lo:k], self._yo + base, out=r)
        r -= slope * ramp
        bad = np.flatnonzero((r > ahead) | (r < -behind))
        m = int(bad[0]) if bad.size else n
        if m:
            acc = r[:m]
            sq = float(np.dot(acc, acc))
            peak = float(np.max(np.abs(acc)))
            self.max_residual_s = max(self.max_residual_s, peak)
        else:
            sq = 0.0
        if m < n:  # the break's capped contribution: jitter is learnt even from spikes
            sq += min(float(r[m]) ** 2, ahead * ahead)
        count = m + (m < n)
        a = max(1.0 / (2 + self._n_var), 0.01)
        self._var = (1 - a) * self._var + a * sq / count
        self._n_var += 1
        if m:
            self._add(raw, lo, m, x_lo, base, slope, ramp, r)
            slope = self._slope()
            dest = out[lo : lo + m]
            if math.isnan(self._rate):
                # No rate measured yet (the first min_rate_span_s): the raw stamps, made
                # strictly increasing; exact for clean senders, at any playback speed.
                q = 1e-3 * self._p_nom
                tmp = r[:m]  # free once the fit is updated; out may alias raw
                np.multiply(ramp[:m], -q, out=tmp)
                tmp += raw[lo : lo + m]
                tmp[0] = max(tmp[0], self.last + q)
                np.maximum.accumulate(tmp, out=tmp)
                np.multiply(ramp[:m], q, out=dest)
                dest += tmp
            else:  # the line, each step held to [0.5, 1.4] periods
                p = slope
                np.multiply(ramp[:m], p, out=dest)
                dest += self._yo + self._predict0(slope, x_lo)
                steps = r[:m]  # free once the fit is updated
                np.add(ramp[:m], 1.0, out=steps)
                steps *= p
                np.maximum(dest, self.last + 0.5 * steps, out=dest)
                np.minimum(dest, self.last + 1.4 * steps, out=dest)
            self.last = float(out[lo + m - 1])
            self.n_samples += m
            self._seg_n += m
            if math.isnan(self._rate) and self._seg_n >= self._min_span:
                self._p_prior = slope  # the first measured rate: the prior from now on
                self._rate = 1.0 / slope
            self._shift()
        if m < n:
            self._empty = True  # the next sample starts a new segment at its raw stamp
            # Ahead of the line: lost samples or a stall; the line is kept until the stamps
            # say which (the first one held: a catch-up can break the new segment again).
            if self._held is None and r[m] > 0 and self._w:
                self._keep_rate()
                self._held = (self._fit_state(), self.n_samples, ahead)
        return lo + m

    def _add(self, raw, lo, m, x_lo, base, slope, ramp, r) -> None:
        # y_j relative to yo: r_j + base + slope * j (r was computed from raw).
        decay = self._lambda**m
        self._w *= decay
        self._sx *= decay
        self._sy *= decay
        self._sxx *= decay
        self._sxy *= decay
        j = ramp[:m]
        sj = m * (m - 1) / 2.0
        sjj = (m - 1) * m * (2 * m - 1) / 6.0
        sr = float(r[:m].sum())
        sjr = float(np.dot(j, r[:m]))
        sy = sr + m * base + slope * sj
        sjy = sjr + base * sj + slope * sjj
        self._w += m
        self._sx += m * x_lo + sj
        self._sy += sy
        self._sxx += m * x_lo * x_lo + 2 * x_lo * sj + sjj
        self._sxy += x_lo * sy + sjy

    def _shift(self) -> None:
        # Move the origin to the newest sample and its modelled time (small numbers).
        d = float(self.n_samples - 1 - self._xo)
        e = self.last - self._yo
        w, sx, sy = self._w, self._sx, self._sy
        self._sxx += -2 * d * sx + d * d * w
        self._sxy += -d * sy - e * sx + d * e * w
        self._sx = sx - d * w
        self._sy = sy - e * w
        self._xo = self.n_samples - 1
        self._yo = self.last
