"""`rtmoe stream` fails fast: every argument is checked before any model load or LSL
resolve, and what becomes visible on the network needs (and announces) --allow-remote."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Runs `rtmoe` once per argv in a fresh interpreter; records every model file opened (an
#: audit hook sees each open()), whether the runtime module was imported, and refuses any
#: use of LSL. Prints one JSON line per case.
PROBE = r"""
import json, os, sys
opened = []
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if name.endswith((".safetensors", "meta.json", "config.toml")):
            opened.append(name)
sys.addaudithook(hook)
import pylsl
def refuse(*a, **k):
    raise AssertionError("LSL used before the arguments were checked")
for name in ("resolve_byprop", "resolve_streams", "resolve_bypred", "StreamInlet",
             "StreamOutlet"):
    setattr(pylsl, name, refuse)
from rtmoe.cli import main
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    print(json.dumps({"rc": rc, "opened": opened,
                      "runtime": "rtmoe.runtime.loop" in sys.modules}), flush=True)
    print("--end--", file=sys.stderr, flush=True)
"""

BAD = [
    (["--zmq", "tcp://0.0.0.0:5556"], ["'tcp://0.0.0.0:5556' is reachable", "--allow-remote"]),
    (["--zmq", "tcp://*:5556"], ["'tcp://*:5556' is reachable", "tcp://127.0.0.1:PORT"]),
    (["--zmq", "tcp://127.0.0.1"], ["no valid port"]),
    (["--zmq", "localhost:5556"], ["not a ZeroMQ bind endpoint"]),
    (["--plugin", "lsl-out"], ["--plugin lsl-out publishes an LSL stream", "--allow-remote"]),
    (["--plugin", "smooth:alpha=x"], ["alpha='x'"]),
    (["--model", "/no/such/model"], ["--model '/no/such/model' is neither"]),
    (["--duration-s", "0"], ["--duration-s 0 must be > 0"]),
    (["--profile-version", "2"], ["--profile-version needs --subject"]),
    (["--device", "gpu"], ["--device 'gpu'"]),
    (["--device", "mps"], ["--device 'mps'", "'auto', 'cpu', 'cuda' or 'cuda:N'"]),
    (["--hop-ms", "-5"], ["hop_ms=-5"]),
    # --set and --config are resolved and validated first (rtmoe.config.config_from_args)
    (["--set", "runtime.rate_tolerance=fast"], ["runtime.rate_tolerance takes a number"]),
    (["--set", "runtime.max_age_s=-1"], ["--set runtime.max_age_s=-1", "must be > 0"]),
    (["--set", "runtime.hopms=5"], ["[runtime] has no field 'hopms'", "hop_ms"]),
    (["--set", "signal.sfreq=100"], ["rtmoe stream does not read [signal]"]),
    (["--config", "/no/such/settings.toml"], ["/no/such/settings.toml does not exist"]),
]


def test_bad_arguments_fail_before_any_model_load_or_lsl_use():
    cases = [["stream", "--lsl", "EEG", *extra] for extra, _ in BAD]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    errors = done.stderr.split("--end--\n")
    assert len(results) == len(BAD), done.stderr
    for (extra, pieces), result, err in zip(BAD, results, errors, strict=False):
        assert result["rc"] == 2, (extra, err)
        (line,) = err.strip().splitlines()  # one line, no traceback
        assert line.startswith("rtmoe stream: error: "), (extra, line)
        for piece in pieces:
            assert piece in line, (extra, piece, line)
        assert result["opened"] == [], (extra, result)  # no model file was even opened
        assert not result["runtime"], extra  # the runtime (torch, engines) never imported


def _stream_until_runtime(monkeypatch, capsys, argv):
    """Run `rtmoe stream` in-process up to the point where the runtime would start."""
    import types

    from rtmoe.cli import main
    from rtmoe.stream.lsl import LslError

    started = []

    class NoRuntime:
        def __init__(self, *args, **kwargs):
            started.append(kwargs.get("plugins"))
            raise LslError("stopped here by the test")

    fake = types.ModuleType("rtmoe.runtime.loop")
    fake.Runtime = NoRuntime
    monkeypatch.setitem(sys.modules, "rtmoe.runtime.loop", fake)
    rc = main(["stream", "--lsl", "EEG", *argv])
    return rc, started, capsys.readouterr().err


def test_allow_remote_warns_once_saying_what_is_visible(monkeypatch, capsys):
    rc, started, err = _stream_until_runtime(
        monkeypatch, capsys, ["--allow-remote", "--zmq", "tcp://0.0.0.0:0", "--plugin", "lsl-out"]
    )
    assert rc == 2 and started == [["lsl-out"]]
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    (warning,) = warnings
    assert "--allow-remote" in warning and "ZeroMQ on tcp://0.0.0.0:0" in warning
    assert "unauthenticated" in warning and "LSL stream 'rtmoe-decodes'" in warning
    assert "other machines" in warning


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--allow-remote"], "nothing is exposed"),
        (["--allow-remote", "--plugin", "lsl-out"], "LSL stream 'rtmoe-decodes'"),
        ([], None),
    ],
)
def test_allow_remote_warning_cases(monkeypatch, capsys, argv, expected):
    rc, started, err = _stream_until_runtime(monkeypatch, capsys, argv)
    assert rc == 2 and len(started) == 1
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0]


def test_config_file_flags_and_set_reach_the_runtime(monkeypatch, capsys, tmp_path):
    """defaults < --config < flags < --set, as the Runtime receives its RuntimeConfig."""
    import types

    from rtmoe.cli import main
    from rtmoe.stream.lsl import LslError

    received = []

    class NoRuntime:
        def __init__(self, model, query, cfg, **kwargs):
            received.append(cfg)
            raise LslError("stopped here by the test")

    fake = types.ModuleType("rtmoe.runtime.loop")
    fake.Runtime = NoRuntime
    monkeypatch.setitem(sys.modules, "rtmoe.runtime.loop", fake)
    path = tmp_path / "settings.toml"
    path.write_text("[runtime]\nhop_ms = 50.0\nmax_age_s = 3.0\nwait_s = 4.0\n")
    argv = ["stream", "--lsl", "EEG", "--config", str(path), "--max-age-s", "5"]
    argv += ["--set", "runtime.rate_tolerance=5", "--set", "runtime.wait_s=2"]
    assert main(argv) == 2
    (cfg,) = received
    assert cfg.hop_ms == 50.0  # from the file
    assert cfg.max_age_s == 5.0  # the flag beats the file
    assert cfg.rate_tolerance == 5.0 and cfg.wait_s == 2.0  # --set beats both
    assert "waiting up to 2 s" in capsys.readouterr().out
