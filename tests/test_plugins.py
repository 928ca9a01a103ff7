"""Runtime plugins: spec parsing and loading, the built-in stages' formulas, failure
isolation, and the LSL re-publisher end to end (real LSL outlet and inlet, real ZeroMQ
subscriber on 127.0.0.1; unique stream names; every wait bounded).

``test_builtin_plugins_load_by_entry_point_name`` needs the ``rtmoe.plugins`` entry points
of pyproject.toml installed (``pip install -e .``).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import time

import numpy as np
import pytest
import torch

pylsl = pytest.importorskip("pylsl")
zmq = pytest.importorskip("zmq")

from test_runtime import MODEL_CHANS, Pusher, _cfg, _drain, _save_model, _subscriber  # noqa: E402

from rtmoe.cli import main  # noqa: E402
from rtmoe.plugins.lsl_out import LslOut  # noqa: E402
from rtmoe.plugins.stages import Accumulate, Smooth  # noqa: E402
from rtmoe.runtime.loop import Runtime  # noqa: E402
from rtmoe.runtime.plugins import (  # noqa: E402
    PluginContext,
    PluginError,
    PluginRunner,
    available_plugins,
    load_plugin,
    parse_spec,
)
from rtmoe.transport import DecodeMessage, StatusMessage, ZmqPublisher  # noqa: E402

LABELS = ("a", "b")
CONTEXT = PluginContext("m-0", "S01", LABELS, ("expert_0",), 200.0, 0.1)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model") / "ckpt", MODEL_CHANS)


def _msg(seq: int, probabilities, labels=LABELS) -> DecodeMessage:
    return DecodeMessage(
        seq=seq,
        model_id="m-0",
        subject_id="S01",
        labels=labels,
        probabilities=probabilities,
        label=labels[int(np.argmax(probabilities))],
        gates={"expert_0": 0.5},
        window_first_lsl_s=10.0 + seq * 0.1,
        window_last_lsl_s=10.5 + seq * 0.1,
        published_lsl_s=10.52 + seq * 0.1,
        latency_ms=20.0,
        compute_ms=3.0,
    )


class Recorder:
    """A stage that keeps what it sees and passes it on unchanged."""

    def __init__(self) -> None:
        self.seen: list[DecodeMessage] = []

    def process(self, msg: DecodeMessage) -> DecodeMessage:
        self.seen.append(msg)
        return msg


class RaiseOnThird:
    """A stage that fails on its third decode."""

    def __init__(self) -> None:
        self.calls = 0

    def process(self, msg: DecodeMessage) -> DecodeMessage:
        self.calls += 1
        if self.calls == 3:
            raise ZeroDivisionError("boom on purpose")
        return msg


class WrongReturn:
    def process(self, msg: DecodeMessage):
        return msg.probabilities


class BrokenSink:
    def send(self, msg: DecodeMessage) -> None:
        raise OSError("disk full")


# -- specs and loading --------------------------------------------------------------------


def test_spec_syntax():
    assert parse_spec("lsl-out") == ("lsl-out", {})
    assert parse_spec("smooth:alpha=0.3") == ("smooth", {"alpha": "0.3"})
    assert parse_spec(" accumulate:threshold=2, leak=0.1 ") == (
        "accumulate",
        {"threshold": "2", "leak": "0.1"},
    )
    assert parse_spec("rtmoe.plugins.stages:Smooth") == ("rtmoe.plugins.stages:Smooth", {})
    assert parse_spec("rtmoe.plugins.stages:Smooth:alpha=1") == (
        "rtmoe.plugins.stages:Smooth",
        {"alpha": "1"},
    )
    with pytest.raises(PluginError, match=r"'alpha' is not key=value"):
        parse_spec("smooth:beta=1,alpha")
    with pytest.raises(PluginError, match="gives argument 'alpha' twice"):
        parse_spec("smooth:alpha=0.1,alpha=0.2")
    with pytest.raises(PluginError, match="no plugin name"):
        parse_spec(":alpha=0.1")


def test_typed_arguments_and_clear_errors_for_bad_ones():
    smooth = load_plugin("rtmoe.plugins.stages:Smooth:alpha=0.25")
    assert isinstance(smooth, Smooth) and smooth.alpha == 0.25
    acc = load_plugin("rtmoe.plugins.stages:Accumulate:threshold=2,leak=0")
    assert (acc.threshold, acc.leak) == (2.0, 0.0) and isinstance(acc.threshold, float)
    out = load_plugin("rtmoe.plugins.lsl_out:LslOut:name=x,type=Y")
    assert (out.name, out.type, out.source_id) == ("x", "Y", "")
    with pytest.raises(PluginError, match=r"alpha='abc' is not a float.*alpha: float = 0\.3"):
        load_plugin("rtmoe.plugins.stages:Smooth:alpha=abc")
    with pytest.raises(PluginError, match=r"no argument 'beta'; it accepts: alpha: float = 0\.3"):
        load_plugin("rtmoe.plugins.stages:Smooth:beta=1")
    with pytest.raises(PluginError, match=r"alpha=2\.0 is outside \(0, 1\]"):
        load_plugin("rtmoe.plugins.stages:Smooth:alpha=2")
    with pytest.raises(PluginError, match=r"cannot load 'rtmoe\.plugins\.stages:Nope'"):
        load_plugin("rtmoe.plugins.stages:Nope")
    with pytest.raises(PluginError, match="neither process"):
        load_plugin("collections:OrderedDict")
    with pytest.raises(PluginError, match="neither process"):
        PluginRunner([object()])


def test_third_party_plugin_found_by_entry_point_and_unknown_names_listed(tmp_path, monkeypatch):
    # A real installed distribution: a module plus a dist-info with entry_points.txt.
    (tmp_path / "rtmoe_thirdparty_demo.py").write_text(
        "class Flag:\n"
        "    def __init__(self, key: str = 'flag', on: bool = False):\n"
        "        self.key, self.on = key, on\n"
        "    def process(self, msg):\n"
        "        import dataclasses\n"
        "        return dataclasses.replace(msg, extras={self.key: float(self.on)})\n"
    )
    info = tmp_path / "rtmoe_thirdparty_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rtmoe-thirdparty-demo\n")
    (info / "entry_points.txt").write_text(
        "[rtmoe.plugins]\nflag-demo = rtmoe_thirdparty_demo:Flag\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert "flag-demo" in available_plugins()
    flag = load_plugin("flag-demo:key=eyes_closed,on=yes")
    assert flag.process(_msg(0, [0.5, 0.5])).extras == {"eyes_closed": 1.0}
    with pytest.raises(PluginError, match=r"on='maybe' is not a bool"):
        load_plugin("flag-demo:on=maybe")
    with pytest.raises(PluginError, match=r"no plugin named 'smoth'; installed: \[.*'flag-demo'"):
        load_plugin("smoth:alpha=0.3")


def test_builtin_plugins_load_by_entry_point_name():
    assert {"smooth", "accumulate", "lsl-out"} <= set(available_plugins())
    assert isinstance(load_plugin("smooth:alpha=0.3"), Smooth)
    assert isinstance(load_plugin("accumulate:threshold=1.5"), Accumulate)
    assert isinstance(load_plugin("lsl-out"), LslOut)


def test_cli_reports_unknown_plugins_and_bad_arguments(capsys):
    assert main(["stream", "--lsl", "none", "--plugin", "no-such-plugin"]) == 2
    err = capsys.readouterr().err
    assert "rtmoe stream: error:" in err and "no plugin named 'no-such-plugin'; installed:" in err
    assert main(["stream", "--lsl", "none", "--plugin", "rtmoe.plugins.stages:Smooth:alpha=x"]) == 2
    assert "alpha='x' is not a float" in capsys.readouterr().err


# -- built-in stages ----------------------------------------------------------------------


def test_smooth_is_an_exponential_average_and_relabels():
    smooth = Smooth(alpha=0.5)
    smooth.open(CONTEXT)
    out = [smooth.process(_msg(i, p)) for i, p in enumerate([[0.8, 0.2], [0.2, 0.8], [0.2, 0.8]])]
    # p̄0 = p0; p̄1 = 0.5·[0.2, 0.8] + 0.5·[0.8, 0.2]; p̄2 = 0.5·[0.2, 0.8] + 0.5·p̄1.
    expected = [[0.8, 0.2], [0.5, 0.5], [0.35, 0.65]]
    np.testing.assert_allclose([m.probabilities for m in out], expected)
    assert [m.label for m in out] == ["a", "a", "b"]  # the raw argmax was b at the second
    assert [m.seq for m in out] == [0, 1, 2] and out[2].window_last_lsl_s == 10.7
    one = Smooth(alpha=1.0)
    assert one.process(_msg(0, [0.3, 0.7])).probabilities == (0.3, 0.7)


def test_accumulate_decides_when_evidence_crosses_the_threshold():
    acc = Accumulate(threshold=1.0)
    acc.open(CONTEXT)
    probs = [[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]
    out = [acc.process(_msg(i, p)) for i, p in enumerate(probs)]
    # e_a: 0.4, 0.8, 0.5 (0.8 - 0.3), 0.9, 1.3 → decision "a" at seq 4, reset, then 0.4.
    # e_b: 0, 0, 0.3, 0 (0.3 - 0.4 clipped), 0, 0.
    np.testing.assert_allclose([m.extras["evidence"] for m in out], [0.4, 0.8, 0.5, 0.9, 1.3, 0.4])
    assert [m.extras["evidence_label"] for m in out] == ["a"] * 6
    assert [m.extras.get("decision") for m in out] == [None] * 4 + ["a", None]
    leaky = Accumulate(threshold=10.0, leak=0.5)
    leaky.open(CONTEXT)
    e = [leaky.process(_msg(i, [1.0, 0.0])).extras["evidence"] for i in range(4)]
    np.testing.assert_allclose(e, [0.5, 0.75, 0.875, 0.9375])  # → 1.0 = 0.5 / leak
    with pytest.raises(ValueError, match=r"leak=1\.0 is outside"):
        Accumulate(leak=1.0)


# -- failure isolation --------------------------------------------------------------------


def test_a_raising_plugin_is_disabled_once_with_a_message_and_the_rest_goes_on():
    err = io.StringIO()
    recorder, raiser, sink = Recorder(), RaiseOnThird(), BrokenSink()
    runner = PluginRunner(
        [raiser, "rtmoe.plugins.stages:Smooth:alpha=0.5", WrongReturn(), recorder, sink], stderr=err
    )
    runner.open(CONTEXT)
    outs = []
    for i in range(5):
        msg = runner.process(_msg(i, [0.8, 0.2] if i % 2 == 0 else [0.2, 0.8]))
        runner.send(msg)
        outs.append(msg)
    assert raiser.calls == 3  # never called after it raised
    assert runner.disabled == ("WrongReturn", "BrokenSink", "RaiseOnThird")
    assert runner.n_errors == 3
    lines = err.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[2] == (
        "rtmoe: plugin 'RaiseOnThird' raised ZeroDivisionError: boom on purpose "
        "(decode seq 2); disabled, the stream goes on without it"
    )
    assert "returned a tuple, not a DecodeMessage" in lines[0] and "OSError: disk full" in lines[1]
    # The smoothing stage kept running on every decode, before and after the failures.
    assert [m.seq for m in recorder.seen] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(outs[1].probabilities, [0.5, 0.5])
    np.testing.assert_allclose(outs[4].probabilities, [0.6125, 0.3875])  # .8 .5 .65 .425


# -- end to end: runtime, ZeroMQ and the LSL re-publisher ---------------------------------


def test_lsl_out_carries_the_zmq_decodes_and_a_failing_stage_does_not_stop_the_stream(
    model_dir, capsys
):
    pusher = Pusher(MODEL_CHANS, 200.0, duration_s=1.8)
    out_name = f"{pusher.name}-decodes"
    recorder, raiser = Recorder(), RaiseOnThird()
    publisher = ZmqPublisher("tcp://127.0.0.1:0")
    lsl_out = f"rtmoe.plugins.lsl_out:LslOut:name={out_name}"
    # An LSL outlet is visible on the network: refused without the opt-in, before loading.
    with pytest.raises(ValueError, match=r"LslOut.*publishes an LSL stream.*allow_remote=True"):
        Runtime("/no/such/model", {"name": pusher.name}, _cfg(), plugins=[lsl_out])
    runtime = Runtime(
        model_dir,
        {"name": pusher.name},
        dataclasses.replace(_cfg(), allow_remote=True),
        publisher=publisher,
        subject_id="S01",
        plugins=[
            recorder,
            "rtmoe.plugins.stages:Smooth:alpha=0.5",
            raiser,
            lsl_out,
        ],
    )
    found = pylsl.resolve_byprop("name", out_name, timeout=3.0)
    assert len(found) == 1
    info = found[0]
    assert info.type() == "Decodes" and info.channel_count() == 3
    assert info.source_id() == f"rtmoe-decodes-{runtime.model_id}-S01"
    assert info.nominal_srate() == pylsl.IRREGULAR_RATE
    inlet = pylsl.StreamInlet(info, max_buflen=30)
    inlet.open_stream(timeout=3.0)
    assert inlet.info(timeout=3.0).get_channel_labels() == ["a", "b", "label_index"]
    sub = _subscriber(publisher.address)
    time.sleep(0.2)  # subscription and LSL connection up before the first sample
    pusher.start()
    runtime.run(2.2)
    pusher.join()
    messages = _drain(sub)
    sub.close()
    publisher.close()
    samples, stamps = [], []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        chunk, ts = inlet.pull_chunk(timeout=0.3)
        if not ts:
            break
        samples.extend(chunk)
        stamps.extend(ts)
    inlet.close_stream()
    decodes = [m for m in messages if isinstance(m, DecodeMessage)]
    statuses = [m for m in messages if isinstance(m, StatusMessage)]

    assert len(decodes) >= 8 and [m.seq for m in decodes] == list(range(len(decodes)))
    # The LSL stream carries the published decodes, stamped with window_last_lsl_s.
    assert len(samples) == len(decodes)
    np.testing.assert_array_equal(stamps, [m.window_last_lsl_s for m in decodes])
    np.testing.assert_array_equal(
        np.asarray(samples, dtype=np.float32)[:, :2],
        np.asarray([m.probabilities for m in decodes], dtype=np.float32),
    )
    np.testing.assert_array_equal(
        np.asarray(samples)[:, 2], [runtime.labels.index(m.label) for m in decodes]
    )
    # What was published is the smoothed raw decode (the recorder saw the raw ones).
    raw = np.array([m.probabilities for m in recorder.seen])
    assert len(raw) == len(decodes)
    smooth = raw.copy()
    for k in range(1, len(raw)):
        smooth[k] = 0.5 * raw[k] + 0.5 * smooth[k - 1]
    np.testing.assert_allclose([m.probabilities for m in decodes], smooth, atol=1e-12)
    # The failing stage: disabled with one message; named in the status; decodes went on.
    assert raiser.calls == 3
    err = capsys.readouterr().err
    assert err.count("plugin 'RaiseOnThird' raised ZeroDivisionError: boom on purpose") == 1
    assert runtime.plugins.n_errors == 1
    assert statuses[-1].disabled_plugins == ("RaiseOnThird",)
