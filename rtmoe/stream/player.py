"""``rtmoe play``: replay a recording as an LSL EEG stream plus a marker stream, in real time.

Timing: sample ``i`` (counted from the first pushed, across loop passes) is stamped
``start + i / (sfreq * speed)`` in LSL time, where ``start`` is ``pylsl.local_clock()``
when streaming began, and a chunk is pushed once its last sample's time has come. The
schedule is absolute, so pushes never drift however late one wake-up is, and the stamps
are deterministic: a test can predict every one. A marker carries the stamp of the sample
its annotation sits on. At ``speed != 1`` the stamps follow the faster clock (they stay
true LSL times of delivery) while the advertised nominal rate stays the recording's own,
which is what a consumer must process the samples at.
"""

from __future__ import annotations

import argparse
import math
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from rtmoe import commands
from rtmoe.command import Command
from rtmoe.errors import BadValueError, UserError
from rtmoe.recording import Recording, marker_sample, read_recording
from rtmoe.stream.replay import demo_recording_path


def _import_pylsl():
    try:
        import pylsl
    except ImportError as err:  # pragma: no cover - pylsl is a core dependency
        raise UserError("rtmoe play needs pylsl; install it with `pip install pylsl`") from err
    return pylsl


class Player:
    """Streams a `Recording` to two LSL outlets: the EEG and a marker stream.

    The outlets exist from construction on, so consumers can subscribe before the first
    sample; streaming starts with `start` (background thread) or `run` (this thread).

    Parameters
    ----------
    replay : Recording
        The recording; its markers go to the marker stream.
    name, type : str
        LSL name and content type of the EEG stream; the marker stream is named
        ``f"{name}-markers"`` with type ``"Markers"``.
    source_id : str, optional
        LSL source_id of the EEG stream (default: ``name``), by which inlets recover
        after a restart; the marker stream gets ``f"{source_id}-markers"``.
    chunk_ms : float
        Recording time per pushed chunk, in ms (at least one sample).
    loop : bool
        Start over at the end, with continuous timestamps, until stopped or
        ``duration_s`` is reached.
    speed : float
        Playback speed; 1 is real time.
    duration_s : float, optional
        Stop after this much recording time, in seconds (longer than the recording
        only with ``loop``); default: the whole recording once, or forever with ``loop``.

    Attributes
    ----------
    start_time : float
        LSL time of the first sample (NaN until streaming starts).
    n_samples, n_markers, n_passes : int
        Samples and markers pushed so far, and complete passes through the recording.
    chunk_size : int
        Samples per pushed chunk.
    """

    def __init__(
        self,
        replay: Recording,
        name: str = "rtmoe-play",
        type: str = "EEG",
        source_id: str | None = None,
        chunk_ms: float = 20.0,
        loop: bool = False,
        speed: float = 1.0,
        duration_s: float | None = None,
    ) -> None:
        pylsl = _import_pylsl()
        if not name:
            raise BadValueError("name='' is empty; give the EEG stream a name")
        if not (math.isfinite(speed) and speed > 0):
            raise BadValueError(f"speed={speed} must be a positive number (1 is real time)")
        if not (math.isfinite(chunk_ms) and chunk_ms > 0):
            raise BadValueError(f"chunk_ms={chunk_ms} must be a positive number of milliseconds")
        if duration_s is not None and not duration_s > 0:
            raise BadValueError(f"duration_s={duration_s} must be positive, or None for no limit")
        self.replay = replay
        self.speed = float(speed)
        self.loop = loop
        self.chunk_size = max(1, round(chunk_ms * 1e-3 * replay.sfreq))
        if duration_s is not None:
            total = round(duration_s * replay.sfreq)
            self._n_total = total if loop else min(total, replay.n_times)
        else:
            self._n_total = math.inf if loop else replay.n_times
        # LSL wants (samples, channels): the one transpose on the producing side.
        self._frames = np.ascontiguousarray(replay.data.T, dtype=np.float32)
        self._marker_samples = [marker_sample(m, replay.sfreq) for m in replay.markers]
        self._marker_labels = [m.label for m in replay.markers]

        self.source_id = source_id or name
        info = pylsl.StreamInfo(
            name, type, replay.n_chans, replay.sfreq, pylsl.cf_float32, self.source_id
        )
        info.set_channel_labels(list(replay.ch_names))
        info.set_channel_types(["EEG"] * replay.n_chans)
        info.set_channel_units(["microvolts"] * replay.n_chans)
        acquisition = info.desc().append_child("acquisition")
        acquisition.append_child_value("manufacturer", "rtmoe")
        acquisition.append_child_value("model", "rtmoe play")
        acquisition.append_child_value("source", replay.source)
        marker_info = pylsl.StreamInfo(
            f"{name}-markers",
            "Markers",
            1,
            pylsl.IRREGULAR_RATE,
            pylsl.cf_string,
            f"{self.source_id}-markers",
        )
        self.info, self.marker_info = info, marker_info
        self._outlet = pylsl.StreamOutlet(info, chunk_size=self.chunk_size)
        self._marker_outlet = pylsl.StreamOutlet(marker_info)
        self._local_clock = pylsl.local_clock

        self.start_time = math.nan
        self.n_samples = self.n_markers = self.n_passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._error: BaseException | None = None

    def sample_time(self, i: int | np.ndarray) -> float | np.ndarray:
        """LSL timestamp in seconds of sample(s) ``i``, counted across loop passes."""
        return self.start_time + i / (self.replay.sfreq * self.speed)

    def describe(self) -> str:
        """What is streamed, on a few lines (printed by ``rtmoe play``)."""
        r = self.replay
        counts = Counter(self._marker_labels)
        labels = ", ".join(f"{label} ×{n}" for label, n in sorted(counts.items())) or "none"
        extent = "looping" if self.loop else "once"
        if math.isfinite(self._n_total):
            extent += f", {self._n_total / r.sfreq:g} s"
        return (
            f"replaying {r.source}\n"
            f"  EEG     {self.info.name()!r} type={self.info.type()!r} "
            f"source_id={self.source_id!r}: {r.n_chans} ch ({', '.join(r.ch_names)}), "
            f"float32 µV, {r.sfreq:g} Hz, {r.duration_s:g} s\n"
            f"  markers {self.marker_info.name()!r} type='Markers': "
            f"{len(self._marker_labels)} ({labels})\n"
            f"  speed ×{self.speed:g}, {self.chunk_size}-sample chunks, {extent}"
        )

    def run(self) -> None:
        """Stream in this thread until done or `stop` is called (from another thread)."""
        self._claim()
        self._stream()

    def wait_for_consumers(self, timeout_s: float, markers: bool = True) -> bool:
        """Block until the EEG outlet (and the marker outlet) each have a consumer, so a
        run started afterwards loses no sample; False if ``timeout_s`` passed first."""
        if not self._outlet.wait_for_consumers(timeout_s):
            return False
        return not markers or bool(self._marker_outlet.wait_for_consumers(timeout_s))

    def start(self) -> Player:
        """Stream in a background thread; returns at once."""
        self._claim()
        self._thread = threading.Thread(target=self._stream_catching, name="rtmoe-play")
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for background streaming to end; True if it has. Re-raises its error."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                return False
        if self._error is not None:
            raise RuntimeError(f"rtmoe play failed: {self._error}") from self._error
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop streaming (between chunks) and wait for the thread to end."""
        self._stop.set()
        if not self.wait(timeout_s):
            raise RuntimeError(f"the player thread did not stop within timeout_s={timeout_s}")

    def close(self) -> None:
        """Stop and destroy both outlets; consumers see the streams disappear."""
        try:
            self.stop()
        finally:
            self._outlet = self._marker_outlet = None

    def __enter__(self) -> Player:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _claim(self) -> None:
        if self._started:
            raise RuntimeError("this Player has already streamed; create a new one to replay")
        if self._outlet is None:
            raise RuntimeError("this Player is closed; create a new one to replay")
        self._started = True

    def _stream_catching(self) -> None:
        try:
            self._stream()
        except BaseException as err:  # surfaced by wait()/stop() in the caller's thread
            self._error = err

    def _stream(self) -> None:
        n_times, rate = self.replay.n_times, self.replay.sfreq * self.speed
        marker_samples, labels = self._marker_samples, self._marker_labels
        next_marker = 0
        self.start_time = start = self._local_clock()
        n = 0
        while n < self._n_total:
            pos = n % n_times
            k = int(min(self.chunk_size, n_times - pos, self._n_total - n))
            # Absolute schedule: the chunk is due when its last sample has "happened".
            wait_s = start + (n + k - 1) / rate - self._local_clock()
            if wait_s > 0 and self._stop.wait(wait_s):
                return
            if self._stop.is_set():
                return
            stamps = start + (n + np.arange(k)) / rate
            self._outlet.push_chunk(self._frames[pos : pos + k], stamps)
            while next_marker < len(marker_samples) and marker_samples[next_marker] < pos + k:
                i = n - pos + marker_samples[next_marker]
                self._marker_outlet.push_sample([labels[next_marker]], self.sample_time(i))
                next_marker += 1
                self.n_markers += 1
            n += k
            self.n_samples = n
            if n % n_times == 0:
                self.n_passes += 1
                next_marker = 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        help="recording MNE reads (FIF, EDF, BDF, BrainVision .vhdr, EEGLAB .set), or "
        "'demo' for the shipped SelfRegulationSCP1 recording",
    )
    parser.add_argument("--name", default="rtmoe-play", help="LSL name of the EEG stream")
    parser.add_argument("--type", default="EEG", help="LSL type of the EEG stream")
    parser.add_argument("--source-id", help="LSL source_id of the EEG stream (default: --name)")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed (1: real time)")
    parser.add_argument(
        "--duration-s", type=float, help="stop after this many seconds of the recording"
    )
    parser.add_argument(
        "--chunk-ms", type=float, default=20.0, help="recording time per pushed chunk (ms)"
    )


def _run(args: argparse.Namespace) -> int:
    path = demo_recording_path() if args.file == "demo" else Path(args.file)
    with Player(
        read_recording(path),
        name=args.name,
        type=args.type,
        source_id=args.source_id,
        chunk_ms=args.chunk_ms,
        loop=args.loop,
        speed=args.speed,
        duration_s=args.duration_s,
    ) as player:
        print(f"{player.describe()}\nCtrl-C stops.", flush=True)
        try:
            player.run()
        finally:
            print(
                f"streamed {player.n_samples} samples "
                f"({player.n_samples / player.replay.sfreq:g} s of recording), "
                f"{player.n_markers} markers, {player.n_passes} complete pass(es)",
                flush=True,
            )
    return 0


command = Command(
    help=commands.play.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
