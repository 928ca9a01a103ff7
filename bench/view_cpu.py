"""CPU cost of ``rtmoe view`` at a 10 Hz decode rate, and what it does to the runtime.

``--source stream`` (default): four real processes on this machine, as in a session:
``rtmoe play demo --loop`` (the shipped recording as LSL), ``rtmoe stream`` (``--hop-ms
100``: 10 decodes a second if the machine keeps up; ZeroMQ on a free 127.0.0.1 port; by
default a tiny random-weight model, ``--model default`` runs the shipped one), ``rtmoe
view`` attached to it, and ``--pages`` headless Chromium pages showing it. This process
only subscribes (to count decodes and read their latency) and measures.

``--source synthetic``: this process publishes decode messages shaped as the shipped
model's (2 classes, 3 experts) every ``--hop-ms`` and a status every second, with the
runtime's own `ZmqPublisher`: the view's cost at exactly 10 Hz on a machine too loaded
for the runtime to keep 10 Hz (the view's work depends on the message rate only).

Phases alternate ``--rounds`` times, ``--phase-s`` seconds each:

* ``off``: no view running;
* ``view``: ``rtmoe view`` with the pages open (measured once every page is connected).
  ``--pages 0``: instead of a browser, this process reads the page's event stream
  (``/events``) as a page opened on another machine would, so the phase measures what
  ``rtmoe view`` itself costs the runtime, without a renderer on its cores.

Per phase: decodes per second received, CPU of the view process (% of one core:
user+system CPU seconds over wall seconds, psutil), CPU of the browser (all its
processes), CPU of the runtime process, and the runtime's own ``latency_ms`` (p50/p99)
and ``compute_ms`` (p50) of the phase's decodes. Load from other programs on a shared
machine moves the runtime's figures; alternating the phases spreads it over both.

Usage::

    python bench/view_cpu.py [--source stream|synthetic] [--phase-s 20] [--rounds 2]
                             [--pages 1] [--hop-ms 100] [--preview-hz 50]
                             [--model tiny|default|FOLDER]

With ``--preview-hz`` (default 50) the runtime (or the synthetic source, 6 channels as
the demo recording) also publishes the signal preview topic, which the page draws as
traces; ``--preview-hz 0`` measures decodes and statuses alone.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import psutil
import zmq


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Collector:
    """Every decode's (receive time, latency_ms, compute_ms), from a SUB socket thread."""

    def __init__(self, address: str) -> None:
        self.rows: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"rtmoe.decode")
        self._sock.connect(address)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(200):
                _, payload = self._sock.recv_multipart()
                d = json.loads(payload)
                self.rows.append((time.monotonic(), d["latency_ms"], d["compute_ms"]))

    def between(self, t0: float, t1: float) -> np.ndarray:
        rows = [r for r in list(self.rows) if t0 <= r[0] < t1]
        return np.array(rows).reshape(-1, 3)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sock.close()


def _tiny_model(folder: str) -> str:
    """A tiny 3-expert SpecMoE (random weights) for the demo recording's channels: its
    decodes cost a few ms, so a loaded machine still decodes at 10 Hz."""
    import torch

    from rtmoe.checkpoint import save_checkpoint
    from rtmoe.config import Config
    from rtmoe.models.registry import model_config
    from rtmoe.models.specmoe import SPECMOE_KIND, TaskConfig, build_specmoe, specmoe_meta
    from rtmoe.recording import read_recording
    from rtmoe.stream.replay import demo_recording_path

    chans = tuple(read_recording(demo_recording_path()).ch_names)
    config = Config().replace(model=model_config("tiny"), moe={"n_experts": 3})
    task = TaskConfig(
        name="bench-tiny", ch_names=chans, n_times=400, labels=("negativity", "positivity")
    )
    torch.manual_seed(0)
    model = build_specmoe(config, task, config.moe).eval()
    path = save_checkpoint(
        f"{folder}/tiny", model, config, kind=SPECMOE_KIND, meta=specmoe_meta(task)
    )
    return str(path)


class Synthetic:
    """Decode messages every ``hop_ms`` and a status every second, from a thread of this
    process (``pid``: this process; stops on ``send_signal``)."""

    def __init__(self, address: str, hop_ms: float, preview_hz: float = 0.0) -> None:
        from rtmoe.transport import ZmqPublisher

        self.preview_hz = preview_hz
        self.pid = os.getpid()
        self._pub = ZmqPublisher(address)
        self._hop_s = hop_ms * 1e-3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from rtmoe.transport import DecodeMessage, PreviewMessage, StatusMessage

        chans = ["A1-Cz", "A2-Cz", "C3f", "C3p", "C4f", "C4p"]  # the demo recording's
        n_cols = max(1, round(self.preview_hz * self._hop_s))

        start = time.monotonic()
        rng = np.random.default_rng(0)
        n = 0
        while not self._stop.wait(max(0.0, start + n * self._hop_s - time.monotonic())):
            t = 1000.0 + n * self._hop_s
            p = float(rng.uniform())
            self._pub.publish(
                DecodeMessage(
                    seq=n, model_id="SelfRegulationSCP1-843bf9345c99", subject_id=None,
                    labels=["negativity", "positivity"], probabilities=[p, 1.0 - p],
                    label="negativity" if p > 0.5 else "positivity",
                    gates={f"expert_{k}": float(rng.uniform(0.4, 0.6)) for k in range(3)},
                    window_first_lsl_s=t - 3.5, window_last_lsl_s=t, published_lsl_s=t + 0.02,
                    latency_ms=20.0 + 5 * float(rng.uniform()), compute_ms=8.0,
                    skipped_windows=0,
                )
            )  # fmt: skip
            if self.preview_hz:
                data = np.round(rng.normal(0, 15, size=(len(chans), n_cols)), 2)
                self._pub.publish(
                    PreviewMessage(
                        seq=n, model_id="SelfRegulationSCP1-843bf9345c99", ch_names=chans,
                        sfreq=self.preview_hz, last_lsl_s=t, data_uv=data.tolist(),
                        std_uv=[15.0] * len(chans), max_abs_uv=[45.0] * len(chans),
                        flat=[False] * len(chans), out_of_range=[False] * len(chans),
                        filled=[False] * len(chans),
                    )
                )  # fmt: skip
            if n % max(1, round(1.0 / self._hop_s)) == 0:
                k = round(n * self._hop_s)
                self._pub.publish(
                    StatusMessage(
                        seq=k, state="RUNNING", model_id="SelfRegulationSCP1-843bf9345c99",
                        subject_id=None, sfreq=200.0, sfreq_effective=256.0,
                        samples_received=256 * k, dropped_samples=0, gaps=0, skipped_windows=0,
                        decodes=n, publish_drops=0, uptime_s=float(k), published_lsl_s=t,
                        last_sample_lsl_s=t, latency_ms_mean=22.0, latency_ms_max=25.0,
                    )
                )  # fmt: skip
            n += 1

    def send_signal(self, sig: int) -> None:
        self._stop.set()

    def wait(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)
        self._pub.close()

    def poll(self) -> None:
        return None


def _rtmoe(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rtmoe", *args], **kwargs)


def _chromium() -> str | None:
    for name in (os.environ.get("RTMOE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _open_pages(url: str, n: int, profile_root: str) -> list[subprocess.Popen]:
    browser = _chromium()
    if n and browser is None:
        raise SystemExit("--pages needs chromium on PATH (apt-get install -y chromium)")
    pages = []
    for i in range(n):
        args = [
            browser,
            "--headless",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile_root}/p{i}",
            "--remote-debugging-port=0",  # keeps the headless browser open on the page
            "--window-size=1280,860",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        pages.append(
            subprocess.Popen([*args, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return pages


class EventReader:
    """Reads a view's ``/events`` stream in a thread, as a remote page would (no drawing)."""

    def __init__(self, url: str) -> None:
        self.events = 0
        self._response = urllib.request.urlopen(url + "events", timeout=30.0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._response:
                self.events += line.startswith(b"data:")
        except (OSError, ValueError):  # closed at the end of the phase
            pass

    def close(self) -> None:
        self._response.close()


def _view_state(url: str) -> dict:
    with urllib.request.urlopen(url + "state", timeout=5.0) as response:
        return json.loads(response.read())["view"] or {}


def _page_draws(url: str) -> tuple[int, float]:
    """(redraws, the page's Date.now() in s) from the page's newest report (1st page)."""
    with urllib.request.urlopen(url + "report?name=bench", timeout=5.0) as response:
        report = json.loads(response.read()) or {}
    return int(report.get("draws") or 0), float(report.get("reportMs") or 0) / 1000.0


def _phase(name, args, stream, collector, zmq_address, profile_root) -> dict:
    view = pages = reader = None
    view_procs: list[psutil.Process] = []
    if name == "view":
        view = _rtmoe(
            "view", "--zmq", zmq_address, "--port", "0", stdout=subprocess.PIPE, text=True
        )
        line = view.stdout.readline()
        url = line.split()[2]
        pages = _open_pages(url + "?report=1&report_ms=2000&name=bench", args.pages, profile_root)
        reader = EventReader(url) if not args.pages else None
        deadline = time.monotonic() + 60.0
        while _view_state(url).get("pages", 0) < max(args.pages, 1):
            if time.monotonic() > deadline:
                raise SystemExit(f"the {args.pages} page(s) did not connect to {url}")
            time.sleep(0.5)
        time.sleep(2.0)  # pages loaded and drawing
        view_procs = [psutil.Process(view.pid)]
    stream_procs = [psutil.Process(stream.pid)] if args.source == "stream" else []
    page_procs = [p for page in pages or [] for p in _tree(page.pid)]
    draws0 = _page_draws(url) if pages else None
    t0, c_view, c_page, c_stream = (
        time.monotonic(),
        _cpu_s(view_procs),
        _cpu_s(page_procs),
        _cpu_s(stream_procs),
    )
    time.sleep(args.phase_s)
    page_procs = [p for page in pages or [] for p in _tree(page.pid)]
    t1 = time.monotonic()
    wall = t1 - t0
    draws1 = _page_draws(url) if pages else None
    row = {
        "phase": name,
        "view_cpu_pct": 100 * (_cpu_s(view_procs) - c_view) / wall if view else None,
        "page_cpu_pct": 100 * (_cpu_s(page_procs) - c_page) / wall if pages else None,
        "stream_cpu_pct": 100 * (_cpu_s(stream_procs) - c_stream) / wall if stream_procs else None,
    }
    if pages:  # the page reports a few times a second: its redraws per second
        row["page_redraws_per_s"] = (draws1[0] - draws0[0]) / (draws1[1] - draws0[1])
    rows = collector.between(t0, t1)
    row["decodes_per_s"] = len(rows) / wall
    if len(rows) and args.source == "stream":
        row["latency_p50"], row["latency_p99"] = np.percentile(rows[:, 1], [50, 99])
        row["compute_p50"] = float(np.median(rows[:, 2]))
    for page in pages or []:
        page.kill()
        page.wait()
    if reader is not None:
        row["events_read"] = reader.events
        reader.close()
    if view is not None:
        view.send_signal(signal.SIGTERM)
        view.wait(10.0)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pages", type=int, default=1,
        help="headless Chromium pages; 0: read the page's event stream, draw nothing",
    )  # fmt: skip
    parser.add_argument("--hop-ms", type=float, default=100.0)
    parser.add_argument("--source", choices=("stream", "synthetic"), default="stream")
    parser.add_argument(
        "--preview-hz",
        type=float,
        default=50.0,
        help="signal preview topic rate (protocol 1.3; the page's traces); 0: none",
    )
    parser.add_argument(
        "--model",
        default="tiny",
        help="model of rtmoe stream: 'tiny' (random weights, a few ms a decode; default), "
        "'default' (the shipped one) or a checkpoint folder",
    )
    args = parser.parse_args(argv)
    workdir = tempfile.TemporaryDirectory()
    name = f"rtmoe-bench-view-{secrets.token_hex(4)}"
    zmq_address = f"tcp://127.0.0.1:{_free_port()}"
    if args.source == "synthetic":
        player = stream = Synthetic(zmq_address, args.hop_ms, args.preview_hz)
    else:
        model = _tiny_model(workdir.name) if args.model == "tiny" else args.model
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        player = _rtmoe("play", "demo", "--loop", "--name", name, **quiet)
        stream = _rtmoe(
            "stream", "--lsl", name, "--zmq", zmq_address, "--engine", "torch", "--device",
            "cpu", "--hop-ms", str(args.hop_ms), "--model", model,
            "--set", f"runtime.preview_hz={args.preview_hz}", **quiet,
        )  # fmt: skip
    collector = Collector(zmq_address)
    results = []
    try:
        deadline = time.monotonic() + 180.0
        while not collector.rows:
            if time.monotonic() > deadline or stream.poll() is not None:
                raise SystemExit("rtmoe stream published no decode within 180 s")
            time.sleep(0.5)
        time.sleep(3.0)
        with tempfile.TemporaryDirectory() as profiles:
            for _ in range(args.rounds):
                for phase in ("off", "view"):
                    row = _phase(phase, args, stream, collector, zmq_address, profiles)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        collector.close()
        for proc in {stream, player}:
            proc.send_signal(signal.SIGTERM)
        for proc in {stream, player}:
            try:
                proc.wait(20.0)
            except subprocess.TimeoutExpired:
                proc.kill()
        workdir.cleanup()

    def fmt(v, spec=".1f"):
        return "–" if v is None else format(v, spec)

    print(
        "\n| phase | decodes/s | view CPU % of a core | browser CPU % | page redraws/s | "
        "runtime CPU % | latency p50 / p99 ms | compute p50 ms |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['phase']} | {r['decodes_per_s']:.1f} | {fmt(r['view_cpu_pct'], '.2f')} | "
            f"{fmt(r['page_cpu_pct'])} | {fmt(r.get('page_redraws_per_s'))} | "
            f"{fmt(r['stream_cpu_pct'])} | "
            f"{fmt(r.get('latency_p50'))} / {fmt(r.get('latency_p99'))} | "
            f"{fmt(r.get('compute_p50'))} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
