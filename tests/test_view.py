"""``rtmoe view`` (issue 13 items 1-2): the server on loopback, and the page in a real browser.

The server tests publish known messages with a real `ZmqPublisher` on a random 127.0.0.1
port and read the server over HTTP. The browser tests run the shipped demo recording
through a real `Player` (LSL) and `Runtime` (the shipped model, ZeroMQ on a random port),
attach a `ViewServer`, and load its page in headless Chromium (Debian's ``chromium``;
skipped with the reason when it is not installed). The page is opened with two test
hooks: ``?report=1`` (it posts what it shows a few times a second, read back with
`ViewServer.report`) and ``?hold=NAME`` (its load event waits for `ViewServer.release`),
so ``chromium --dump-dom``/``--screenshot`` capture the page after live updates, when
the test has seen them happen. The DOM's values are compared with the decodes an
independent subscriber (plugins/subscriber.py) received. Every wait has a deadline; no
assert depends on timing. The screenshots go to ``$RTMOE_ARTIFACT_DIR`` (CI sets it) or
the test's tmp folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from rtmoe.cli import main  # noqa: E402
from rtmoe.transport import DecodeMessage, StatusMessage, ZmqPublisher  # noqa: E402
from rtmoe.view import ViewServer  # noqa: E402

LABELS = ["left", "right"]


def _decode(seq: int, t: float) -> DecodeMessage:
    p = (seq % 10) / 10.0
    return DecodeMessage(
        seq=seq,
        model_id="m-0123",
        subject_id="S01",
        labels=LABELS,
        probabilities=[p, 1.0 - p],
        label="left" if p > 0.5 else "right",
        gates={"expert_0": 0.5, "expert_1": 0.25},
        window_first_lsl_s=t - 2.0,
        window_last_lsl_s=t,
        published_lsl_s=t + 0.01,
        latency_ms=10.0 + seq,
        compute_ms=3.0,
        skipped_windows=0,
    )


def _status(seq: int, state: str = "RUNNING") -> StatusMessage:
    return StatusMessage(
        seq=seq,
        state=state,
        model_id="m-0123",
        subject_id="S01",
        sfreq=200.0,
        sfreq_effective=200.0,
        samples_received=100 * seq,
        dropped_samples=0,
        gaps=0,
        skipped_windows=0,
        decodes=seq,
        publish_drops=0,
        uptime_s=float(seq),
        published_lsl_s=1000.0 + seq,
        last_sample_lsl_s=1000.0 + seq,
        latency_ms_mean=10.0,
        latency_ms_max=12.0,
    )


def _get(url: str, headers: dict | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _until(predicate, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return predicate()


@pytest.fixture
def pub_view():
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    view = ViewServer(publisher.address, port=0, history_s=5.0, hold_timeout_s=240.0).start()
    # ZeroMQ's slow joiner: publish statuses until the view has one
    assert _until(lambda: (publisher.publish(_status(0)), view.statuses)[1], 10.0)
    yield publisher, view
    view.close()
    publisher.close()


# -- the server, without a browser -------------------------------------------------------


def test_page_and_script_are_served_from_package_data(pub_view):
    _, view = pub_view
    status, page = _get(view.url)
    assert status == 200 and b'<script src="/view.js">' in page
    status, script = _get(view.url + "view.js")
    assert status == 200 and b"EventSource" in script
    assert b"http://" not in page + script and b"https://" not in page + script  # no CDN
    assert _get(view.url + "nothing")[0] == 404


def test_state_holds_the_recent_decodes_and_the_newest_status(pub_view):
    publisher, view = pub_view
    for seq in range(20):
        publisher.publish(_decode(seq, 1000.0 + 0.5 * seq))  # 9.5 s of decodes
    publisher.publish(_status(1, "STALLED"))
    assert _until(lambda: view.decodes == 20 and view.statuses >= 2, 10.0)
    state = json.loads(_get(view.url + "state")[1])
    seqs = [d["seq"] for d in state["decodes"]]
    assert seqs == list(range(9, 20))  # history_s=5: window ends within 5 s of the newest
    assert state["decodes"][-1]["probabilities"] == list(_decode(19, 0).probabilities)
    assert state["status"]["state"] == "STALLED"
    assert state["view"]["decodes"] >= 0 and view.seq_holes == 0


def test_a_multi_stream_runtime_is_shown_one_stream_at_a_time(pub_view):
    """Protocol 1.4: --stream B takes B's topics only; without it, a stream's messages
    are not mixed into the page but counted, so the operator is told to pick one."""
    publisher, plain = pub_view
    only_b = ViewServer(publisher.address, port=0, stream="B").start()
    try:
        status = dataclasses.replace(_status(0), stream_id="B")
        assert _until(lambda: (publisher.publish(status), only_b.statuses)[1], 10.0)
        for seq in range(3):
            for sid in ("A", "B", "BB"):  # "BB" shares the prefix "rtmoe.decode.B"
                publisher.publish(dataclasses.replace(_decode(seq, 1000.0 + seq), stream_id=sid))
        publisher.publish(_decode(0, 1000.0))  # a single-stream message: not B's
        assert _until(lambda: only_b.decodes == 3 and plain.decodes == 1, 10.0)
        state = json.loads(_get(only_b.url + "state")[1])
        assert [d["stream_id"] for d in state["decodes"]] == ["B"] * 3
        assert only_b.seq_holes == 0 and only_b.other_streams == {"BB"}
        assert plain.other_streams == {"A", "B", "BB"}
    finally:
        only_b.close()


def test_event_stream_starts_with_a_snapshot_then_forwards_messages(pub_view):
    publisher, view = pub_view
    publisher.publish(_decode(0, 1000.0))
    assert _until(lambda: view.decodes == 1, 10.0)
    with urllib.request.urlopen(view.url + "events", timeout=10.0) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        events = []

        def read_event():
            lines = []
            while (line := stream.readline().decode()) != "\n":
                lines.append(line.rstrip("\n"))
            return lines

        assert read_event()[0] == "event: snapshot"
        publisher.publish(_decode(5, 1001.0))  # seq 1-4 lost on the way
        while True:
            lines = read_event()
            if lines[0] == "event: decode":
                events.append(json.loads(lines[1].removeprefix("data: ")))
                break
    assert events[0]["seq"] == 5
    assert view.seq_holes == 4


def test_refuses_other_hosts_and_network_addresses(pub_view):
    publisher, view = pub_view
    assert _get(view.url, {"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    assert _get(view.url, {"Host": f"localhost:{view.port}"})[0] == 200
    report = urllib.request.Request(
        view.url + "report", data=b'{"name": "x"}', headers={"Origin": "http://evil.example"}
    )
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(report, timeout=5.0)
    assert view.report("x") is None
    with pytest.raises(ValueError, match="allow_remote"):
        ViewServer(publisher.address, host="0.0.0.0", port=0)


def test_view_command_checks_its_arguments_before_serving(capsys):
    assert main(["view", "--zmq", "udp://x"]) == 2
    assert "--zmq 'udp://x' is not a ZeroMQ endpoint" in capsys.readouterr().err
    assert main(["view", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_view_command_serves_until_its_duration(capsys):
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    try:
        code = main(["view", "--zmq", publisher.address, "--port", "0", "--duration-s", "0.3"])
    finally:
        publisher.close()
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"rtmoe view: http://127\.0\.0\.1:\d+/ \(attached to tcp://", out), out


# -- the page in headless Chromium, against a real runtime --------------------------------


def _chromium() -> str:
    for name in (os.environ.get("RTMOE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    pytest.skip(
        "headless Chromium not found (install Debian's chromium: apt-get install -y "
        "chromium; .ci/run does, or set RTMOE_CHROMIUM)"
    )


def _artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RTMOE_ARTIFACT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Browser:
    """One headless Chromium run on ``url``: its DOM or its screenshot once released."""

    def __init__(self, url: str, profile: Path, screenshot: Path | None = None) -> None:
        args = [
            _chromium(),
            "--headless",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            "--window-size=1280,860",
            "--hide-scrollbars",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root (CI)
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        self.proc = subprocess.Popen(
            [*args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(self, timeout_s: float = 60.0) -> str:
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"chromium did not finish within {timeout_s} s: {err[-2000:]}")
        assert self.proc.returncode == 0, err[-2000:]
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class _LiveAttributes(HTMLParser):
    """The data-* attributes of the page's ``#live`` element."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "live":
            self.data = {k.removeprefix("data-"): v or "" for k, v in attrs.items()}


def _dom_live(html: str) -> dict[str, str]:
    parser = _LiveAttributes()
    parser.feed(html)
    assert parser.data is not None, html[:2000]
    return parser.data


class Live:
    """The demo recording (LSL, looping) → Runtime (shipped model) → ZeroMQ → ViewServer,
    and an independent subscriber recording every decode by seq."""

    def __init__(self) -> None:
        import pylsl  # noqa: F401  (skips below if LSL is missing)

        from rtmoe.config import RuntimeConfig
        from rtmoe.plugins.subscriber import Subscriber
        from rtmoe.recording import read_recording
        from rtmoe.runtime.loop import Runtime
        from rtmoe.stream.player import Player
        from rtmoe.stream.replay import demo_recording_path

        name = f"rtmoe-view-test-{secrets.token_hex(4)}"
        self.player = Player(read_recording(demo_recording_path()), name=name, loop=True)
        cfg = RuntimeConfig(
            engine="torch",
            device="cpu",
            zmq_address="tcp://127.0.0.1:0",
            resolve_timeout_s=2.0,
            preview_hz=50.0,  # the signal preview topic (protocol 1.3): the page's traces
        )
        self.runtime = Runtime("default", {"name": name, "source_id": name}, cfg)
        address = self.runtime.publisher.address
        self.view = ViewServer(
            address,
            port=0,
            history_s=20.0,
            markers=self.player.marker_info.name(),
            hold_timeout_s=240.0,  # a page's load waits for the test, however slow CI is
        ).start()
        self.marker_labels = {m.label for m in self.player.replay.markers}
        self.received: dict[int, object] = {}
        self.states: list[str] = []
        self.sub = Subscriber(address).start(
            on_decode=lambda d: self.received.__setitem__(d.seq, d),
            on_status=lambda s: self.states.append(s.state),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.player.start()
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runtime.run(600.0)
        except BaseException as err:
            self.error = err

    def close(self) -> None:
        self.runtime.stop()
        self.thread.join(20.0)
        self.sub.close()
        self.view.close()
        self.player.close()
        assert self.error is None, f"the runtime raised {self.error!r}"


@pytest.fixture(scope="module")
def live():
    _chromium()  # skip before loading anything
    pytest.importorskip("pylsl")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    setup = Live()
    try:
        yield setup
    finally:
        setup.close()
        torch.set_num_threads(threads)


def _wait_report(view: ViewServer, hold: str, predicate, timeout_s: float, browser: Browser):
    def check():
        report = view.report(hold)
        if browser.proc.poll() is not None:
            pytest.fail(f"chromium exited early: {browser.proc.communicate()[1][-2000:]}")
        return report if report is not None and predicate(report) else None

    report = _until(check, timeout_s, 0.1)
    assert report is not None, f"the page never showed it; last report {view.report(hold)}"
    return report


def test_page_draws_live_decodes_that_match_the_subscriber(live, tmp_path):
    hold = "live-" + secrets.token_hex(3)
    browser = Browser(f"{live.view.url}?hold={hold}&report=1", tmp_path / "profile")
    try:
        # live updates: at least 5 decodes received by the page after its snapshot, 10
        # redraws, and a cue of the marker stream drawn (one every 3.5 s in the demo
        # recording); all waited for, since a loaded machine redraws less often
        _wait_report(
            live.view,
            hold,
            lambda r: (
                int(r.get("liveUpdates") or 0) >= 5
                and int(r.get("draws") or 0) >= 10
                and r.get("state") == "RUNNING"
                and int(r.get("markersDrawn") or 0) >= 1
            ),
            180.0,
            browser,
        )
        live.view.release(hold)
        dom = _dom_live(browser.finish())
    finally:
        browser.kill()
    assert dom["state"] == "RUNNING" and dom["status-state"] == "RUNNING"
    seq, first = int(dom["seq"]), int(dom["first-live-seq"])
    assert int(dom["live-updates"]) >= 5 and seq > first  # it changed over time
    assert _until(lambda: seq in live.received, 5.0), "the subscriber never got that decode"
    expected = live.received[seq]
    assert json.loads(dom["probabilities"]) == list(expected.probabilities)
    assert json.loads(dom["labels"]) == list(expected.labels)
    assert dom["label"] == expected.label
    assert json.loads(dom["gates"]) == expected.gates
    assert int(dom["points"]) >= 2 * len(expected.labels)  # lines drawn on the canvas
    assert int(dom["latency-count"]) >= 5 and float(dom["p99"]) >= float(dom["p50"]) > 0
    assert int(dom["draws"]) >= 10
    # per-channel traces from the preview topic: every model channel, none flat or
    # zero-filled (real EEG; "noisy" and "range" depend on the data, not checked here)
    assert json.loads(dom["trace-channels"]) == list(live.runtime.loaded.task.ch_names)
    assert int(dom["trace-points"]) > 0
    assert not [f for f in json.loads(dom["flagged"]) if "flat" in f or "filled" in f]
    assert int(dom["preview-seq"]) > 0
    assert int(dom["markers-drawn"]) >= 1 and dom["last-marker"] in live.marker_labels

    # the screenshot (CI artifact): a second page, captured once it drew live data
    shot = _artifact_dir(tmp_path) / "rtmoe-view.png"
    shot.unlink(missing_ok=True)
    hold = "shot-" + secrets.token_hex(3)
    browser = Browser(f"{live.view.url}?hold={hold}&report=1", tmp_path / "profile2", shot)
    try:
        _wait_report(live.view, hold, lambda r: int(r.get("liveUpdates") or 0) >= 3, 120.0, browser)
        live.view.release(hold)
        browser.finish()
    finally:
        browser.kill()
    assert shot.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    print(f"screenshot: {shot}")


def test_page_says_stalled_when_the_outlet_stops(live, tmp_path):
    hold = "stall-" + secrets.token_hex(3)
    browser = Browser(f"{live.view.url}?hold={hold}&report=1", tmp_path / "profile")
    try:
        _wait_report(live.view, hold, lambda r: r.get("state") == "RUNNING", 180.0, browser)
        stopped_ms = time.time() * 1000.0
        live.player.stop()  # the outlet stays; no more samples
        report = _wait_report(live.view, hold, lambda r: r.get("state") == "STALLED", 30.0, browser)
        live.view.release(hold)
        dom = _dom_live(browser.finish())
    finally:
        browser.kill()
    assert dom["state"] == "STALLED"
    assert dom["states"].split(",")[-2:] == ["RUNNING", "STALLED"]
    delay_s = (float(report["stateChangedMs"]) - stopped_ms) / 1000.0
    print(f"the page said STALLED {delay_s:.2f} s after the outlet stopped")
    assert "STALLED" in live.states


def test_demo_view_serves_the_page_beside_the_demo(tmp_path):
    import sys

    env = {**os.environ, "BROWSER": "true"}  # webbrowser.open runs `true URL`: no window
    demo = subprocess.Popen(
        [sys.executable, "-m", "rtmoe", "demo", "--view", "--view-port", "0", "--duration-s",
         "120", "--engine", "torch", "--device", "cpu", "--zmq", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 180.0
        while url is None and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            if line.startswith("live page: "):
                url = line.split()[2]
        assert url and url.startswith("http://127.0.0.1:"), "the demo printed no live page"
        assert _get(url)[0] == 200

        def decodes():
            state = json.loads(_get(url + "state")[1])
            return state["decodes"] and state["status"] and state["status"]["state"]

        assert _until(decodes, 120.0, 0.5) == "RUNNING"
    finally:
        demo.terminate()
        demo.communicate(timeout=30)
    assert demo.returncode == 0


def test_page_marks_flat_and_zero_filled_channels_of_the_preview(pub_view, tmp_path):
    from rtmoe.transport import PreviewMessage

    publisher, view = pub_view
    for seq in range(5):
        publisher.publish(_decode(seq, 1000.0 + 0.1 * seq))
        publisher.publish(
            PreviewMessage(
                seq=seq,
                model_id="m-0123",
                ch_names=["C3", "CZ", "C4"],
                sfreq=50.0,
                last_lsl_s=1000.0 + 0.1 * seq,
                data_uv=[[1.0, -2.0, 3.0, -1.0, 0.5], [0.0] * 5, [2000.0, -1900.0, 0, 0, 0]],
                std_uv=[2.0, 0.0, 900.0],
                max_abs_uv=[3.0, 0.0, 2000.0],
                flat=[False, True, False],
                out_of_range=[False, False, True],
                filled=[False, True, False],
            )
        )
    assert _until(lambda: view.previews == 5, 10.0)
    hold = "flags-" + secrets.token_hex(3)
    browser = Browser(f"{view.url}?hold={hold}&report=1", tmp_path / "profile")
    try:
        _wait_report(view, hold, lambda r: r.get("previewSeq") == "4", 120.0, browser)
        view.release(hold)
        dom = _dom_live(browser.finish())
    finally:
        browser.kill()
    assert json.loads(dom["trace-channels"]) == ["C3", "CZ", "C4"]
    assert json.loads(dom["flagged"]) == ["CZ:flat+filled", "C4:noisy+range"]
    assert int(dom["trace-points"]) == 3 * 25  # 5 previews of 5 columns, per channel


def test_single_frame_publisher_is_read_too():
    publisher = ZmqPublisher("tcp://127.0.0.1:0", single_frame=True)
    view = ViewServer(publisher.address, port=0).start()
    try:
        assert _until(lambda: (publisher.publish(_status(0)), view.statuses)[1], 10.0)
        publisher.publish(_decode(0, 1000.0))
        assert _until(lambda: view.decodes == 1, 10.0)
        state = json.loads(_get(view.url + "state")[1])
        assert state["decodes"][0]["seq"] == 0 and state["status"]["state"] == "RUNNING"
    finally:
        view.close()
        publisher.close()
