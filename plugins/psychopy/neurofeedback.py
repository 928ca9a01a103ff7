"""Neurofeedback example: a bar follows the decoded probability of the cued class.

Each trial cues one class (cycling through the model's labels), sends the class label
as an LSL marker at cue onset (the markers ``rtmoe calibrate`` epochs by), and for
``--trial-s`` seconds draws a bar whose height is the probability of that class in the
newest fresh, valid decode (grey while the decode is stale or flagged invalid by its
quality verdict; invalid decodes never move the bar). Every frame is logged as one
JSON line; a summary follows at the end.

With PsychoPy installed it opens a window (Escape quits); ``--headless`` needs no
PsychoPy and logs what it would draw instead::

    python -m rtmoe.plugins.psychopy.neurofeedback --headless --duration-s 10 --log nf.jsonl

Needs pyzmq; pylsl for the markers (``--no-markers`` without it) and for LSL-time
staleness (without it, the age since receipt is used and logged as such).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from rtmoe.plugins.psychopy import BarView, DecodeFeedback
from rtmoe.plugins.subscriber import DEFAULT_ADDRESS, Subscriber


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurofeedback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="rtmoe publisher endpoint")
    parser.add_argument("--duration-s", type=float, default=60.0, help="run time, seconds")
    parser.add_argument("--trial-s", type=float, default=4.0, help="trial length, seconds")
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated cue order; default: the model's labels from the first decode",
    )
    parser.add_argument("--max-age-s", type=float, default=0.5, help="staleness limit, s")
    parser.add_argument("--smoothing", type=float, default=0.5, help="exponential, in [0, 1)")
    parser.add_argument("--frame-rate", type=float, default=60.0, help="headless frames/s")
    parser.add_argument("--headless", action="store_true", help="no window; log frames")
    parser.add_argument("--log", default=None, help="JSON-lines log file ('-' = stdout)")
    parser.add_argument("--marker-stream", default="rtmoe-cues", help="LSL marker stream name")
    parser.add_argument("--no-markers", action="store_true", help="send no LSL markers")
    parser.add_argument(
        "--first-decode-timeout-s",
        type=float,
        default=10.0,
        help="how long to wait for the first decode when --classes is not given",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("duration_s", "trial_s", "frame_rate"):
        if not getattr(args, name) > 0:
            parser_name = "--" + name.replace("_", "-")
            print(f"{parser_name}={getattr(args, name)} must be > 0", file=sys.stderr)
            return 2
    markers = None
    if not args.no_markers:  # first: a missing pylsl fails before any socket is open
        from rtmoe.plugins.markers import MarkerOutlet

        markers = MarkerOutlet(args.marker_stream)
    subscriber = Subscriber(args.address)
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    else:
        first = subscriber.wait(args.first_decode_timeout_s)
        if first is None:
            subscriber.close()
            if markers is not None:
                markers.close()
            print(
                f"no decode from {args.address} within {args.first_decode_timeout_s} s; "
                "is `rtmoe stream` (or `rtmoe demo`) running? Or pass --classes",
                file=sys.stderr,
            )
            return 1
        classes = list(first.labels)

    log: TextIO | None = None
    if args.log == "-" or (args.log is None and args.headless):
        log = sys.stdout
    elif args.log:
        log = open(args.log, "w", encoding="utf-8")

    feedback = DecodeFeedback(subscriber, max_age_s=args.max_age_s, smoothing=args.smoothing)
    win = view = None
    if not args.headless:
        from psychopy import visual

        win = visual.Window(size=(800, 800), units="height", color="black")
        view = BarView(win)
    try:
        summary = _run(args, classes, feedback, markers, log, win, view)
    finally:
        feedback.close()
        if win is not None:
            win.close()
        if markers is not None:
            markers.close()
        if log is not None and log is not sys.stdout:
            log.close()
    print(json.dumps(summary), file=sys.stderr if log is sys.stdout else sys.stdout)
    return 0


def _run(args, classes, feedback, markers, log, win, view) -> dict:
    """The trial/frame loop; returns the summary."""
    frame_s = 1.0 / args.frame_rate
    start = time.monotonic()
    trial = -1
    frames = stale_frames = invalid_frames = 0
    sent: list[str] = []
    seen_seqs: set[int] = set()
    while (now := time.monotonic()) - start < args.duration_s:
        t_s = now - start
        if int(t_s // args.trial_s) != trial:
            trial = int(t_s // args.trial_s)
            cue = classes[trial % len(classes)]
            feedback.reset()
            if markers is not None:
                if win is not None:
                    win.callOnFlip(_send_marker, markers, cue, log, trial)
                else:
                    _send_marker(markers, cue, log, trial)
            sent.append(cue)
        fb = feedback.update(cue)
        if view is not None:
            view.draw(cue, fb)
            win.flip()
            from psychopy import event

            if event.getKeys(["escape"]):
                break
        frames += 1
        stale_frames += fb.stale
        invalid_frames += not fb.valid
        if fb.seq is not None:
            seen_seqs.add(fb.seq)
        if log is not None:
            bar = None if fb.value is None else round(fb.value, 6)
            record = {
                "event": "frame",
                "frame": frames - 1,
                "t_s": round(t_s, 4),
                "trial": trial,
                "cue": cue,
                "seq": fb.seq,
                "label": fb.label,
                "p": fb.probability,
                "bar": bar,
                "stale": fb.stale,
                "valid": fb.valid,
                "age_ms": None if fb.age_s is None else round(fb.age_s * 1000.0, 2),
                "age_clock": fb.age_clock,
            }
            log.write(json.dumps(record) + "\n")
        if win is None:  # PsychoPy's flip paces the window; headless sleeps to the grid
            time.sleep(max(0.0, start + frames * frame_s - time.monotonic()))
    stats = feedback.subscriber.stats
    return {
        "event": "summary",
        "frames": frames,
        "stale_frames": stale_frames,
        "invalid_frames": invalid_frames,
        "trials": trial + 1,
        "markers_sent": len(sent) if markers is not None else 0,
        "decodes_received": stats.decodes,
        "decodes_shown": len(seen_seqs),
        "dropped": stats.dropped,
        "restarts": stats.restarts,
        "disconnects": stats.disconnects,
        "age_clock": feedback.age_clock,
        "classes": classes,
    }


def _send_marker(markers, cue: str, log: TextIO | None, trial: int) -> None:
    stamp = markers.send(cue)
    if log is not None:
        record = {"event": "marker", "trial": trial, "marker": cue, "lsl_s": stamp}
        log.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
