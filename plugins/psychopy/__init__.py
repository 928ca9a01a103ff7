"""PsychoPy integration: read the newest rtmoe decode once per frame.

:class:`DecodeFeedback` is the component: it keeps a :class:`~rtmoe.plugins.subscriber.Subscriber`
receiving on a background thread (so the runtime never sees a slow subscriber, however
long a frame takes) and turns the newest decode into a :class:`FeedbackFrame` each frame.
It needs pyzmq and the standard library only; PsychoPy is needed only to draw
(:class:`BarView`), which imports ``psychopy.visual`` when created.

In a Builder experiment, use a Code component::

    # Begin Experiment
    from rtmoe.plugins.psychopy import DecodeFeedback
    feedback = DecodeFeedback("tcp://127.0.0.1:5556", max_age_s=0.5, smoothing=0.5)
    # Begin Routine
    feedback.reset()
    # Each Frame  (cue_label set by the routine's conditions)
    fb = feedback.update(cue_label)
    bar.size = (0.1, 0.8 * (fb.value or 0.0))
    # End Experiment
    feedback.close()

``plugins/psychopy/neurofeedback.py`` is a complete example experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtmoe.plugins.subscriber import DEFAULT_ADDRESS, Subscriber, lsl_clock


@dataclass(frozen=True)
class FeedbackFrame:
    """What one frame should show.

    Attributes
    ----------
    value : float or None
        Smoothed probability in [0, 1] of the target class; None before the first
        fresh decode since :meth:`DecodeFeedback.reset`.
    probability : float or None
        Raw probability of the target class in the newest decode.
    seq, label : int or None, str or None
        ``seq`` and decided ``label`` of the newest decode.
    stale : bool
        No decode, or the newest is older than ``max_age_s``; show it as such (and
        do not act on ``value``).
    age_s : float or None
        Age of the newest decode on ``age_clock``.
    age_clock : {"lsl", "receive"}
        ``"lsl"``: LSL time since the window's last sample (pylsl present, rtmoe on this
        machine); ``"receive"``: ``time.monotonic`` since it arrived (pylsl absent).
    valid : bool
        The newest decode's quality verdict (schema 1.2): an invalid decode (bad signal,
        repaired or flat channels, missing samples) never moves ``value``; show it as
        such, like a stale one. ``invalid_reason`` says why.
    invalid_reason : str or None
    """

    value: float | None
    probability: float | None
    seq: int | None
    label: str | None
    stale: bool
    age_s: float | None
    age_clock: str
    valid: bool = True
    invalid_reason: str | None = None


class DecodeFeedback:
    """Per-frame access to the newest decode, for a feedback display.

    Parameters
    ----------
    address : str or Subscriber
        The runtime's endpoint, or a Subscriber to use (not yet started).
    max_age_s : float
        A decode older than this (seconds) is stale. Measured in LSL time when pylsl is
        importable, else since receipt (which misses the runtime's own latency);
        :attr:`age_clock` says which.
    smoothing : float in [0, 1)
        Exponential smoothing per new decode: ``value = smoothing * value +
        (1 - smoothing) * p``. 0 shows each decode as it is.
    """

    def __init__(
        self,
        address: str | Subscriber = DEFAULT_ADDRESS,
        *,
        max_age_s: float = 0.5,
        smoothing: float = 0.0,
    ) -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s={max_age_s} must be > 0 seconds, e.g. 0.5")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing={smoothing} must be in [0, 1); 0 means none")
        self.max_age_s = max_age_s
        self.smoothing = smoothing
        self.age_clock = "lsl" if lsl_clock() is not None else "receive"
        self.subscriber = address if isinstance(address, Subscriber) else Subscriber(address)
        self.subscriber.start()
        self._value: float | None = None
        self._seq: int | None = None

    def reset(self) -> None:
        """Forget the smoothed value (call at the start of each trial)."""
        self._value = None
        self._seq = None

    def update(self, target_label: str) -> FeedbackFrame:
        """The frame to draw for class ``target_label``; cheap, never blocks."""
        msg = self.subscriber.latest()
        if msg is None:
            return FeedbackFrame(self._value, None, None, None, True, None, self.age_clock)
        if self.age_clock == "lsl":
            age_s = self.subscriber.lsl_age_s(msg)
        else:
            age_s = self.subscriber.receive_age_s(msg)
        stale = age_s > self.max_age_s
        p = msg.probability(target_label)
        # Smooth once per decode, not per frame; an invalid decode is ignored.
        if not stale and msg.valid and msg.seq != self._seq:
            a = self.smoothing if self._value is not None else 0.0
            self._value = a * self._value + (1.0 - a) * p if a else p
            self._seq = msg.seq
        return FeedbackFrame(
            self._value,
            p,
            msg.seq,
            msg.label,
            stale,
            age_s,
            self.age_clock,
            msg.valid,
            msg.invalid_reason,
        )

    def close(self) -> None:
        """Stop receiving and close the socket."""
        self.subscriber.close()

    def __enter__(self) -> DecodeFeedback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BarView:
    """A vertical bar whose height follows the feedback value, drawn with PsychoPy.

    Parameters
    ----------
    win : psychopy.visual.Window
        Window in ``units="height"``.
    max_height : float
        Bar height at probability 1, in window heights.
    """

    def __init__(self, win, max_height: float = 0.8) -> None:
        try:
            from psychopy import visual
        except ImportError:
            raise ImportError(
                "BarView needs PsychoPy (pip install psychopy); without it run the "
                "example with --headless"
            ) from None
        self.win = win
        self.max_height = max_height
        bottom = -max_height / 2
        self._frame = visual.Rect(
            win, width=0.12, height=max_height, pos=(0, 0), lineColor="white", fillColor=None
        )
        self._bar = visual.Rect(win, width=0.1, height=0.0, pos=(0, bottom), anchor="bottom")
        self._cue = visual.TextStim(win, text="", pos=(0, max_height / 2 + 0.06), height=0.05)

    def draw(self, cue: str, frame: FeedbackFrame) -> None:
        """Draw the cue text, the outline and the bar (grey while stale or invalid); no flip."""
        self._cue.text = cue
        self._bar.height = self.max_height * (frame.value or 0.0)
        self._bar.fillColor = "grey" if frame.stale or not frame.valid else "limegreen"
        self._frame.draw()
        self._bar.draw()
        self._cue.draw()
