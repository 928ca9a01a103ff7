"""What `rtmoe` does with an exception: only the project's own error (`UserError` and its
subclasses) becomes one line ``rtmoe COMMAND: error: ...`` with exit code 2; any other
exception is a bug and keeps its traceback, and ``rtmoe --debug`` shows it for ours too."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtmoe import config_show
from rtmoe.cli import main
from rtmoe.errors import UserError

BAD_HOP = ["config", "show", "--set", "runtime.hop_ms=-5"]


def _one_line(capsys, command: str) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"rtmoe {command}: error: "), line
    return line


@pytest.mark.parametrize(
    ("argv", "piece"),
    [
        (BAD_HOP, "runtime.hop_ms=-5"),  # ConfigError
        (["play", "{tmp}/absent_eeg.fif"], "absent_eeg.fif does not exist"),  # MissingFileError
        (["view", "--history-s", "-1"], "history_s=-1.0 must be"),  # BadValueError
        (
            ["finetune", "--data", "{tmp}/absent.npz", "--out", "{tmp}/out"],
            "--data {tmp}/absent.npz is not a file",
        ),
        (
            ["evaluate", "--model", "no_such_model", "--dataset", "SelfRegulationSCP1"],
            "'no_such_model' is neither a shipped model",  # UnknownModelError
        ),
        (
            ["calibrate", "--subject", "S01", "--from", "{tmp}/x.fif", "--folds", "1"],
            "--folds 1: cross-validation needs at least 2 folds",
        ),
        (  # a size's name on another architecture would make the checkpoint lie
            "pretrain --corpus {tmp} --expert 0 --out {tmp}/run --set model.name=tiny".split(),
            "[model] name='tiny' is a size, but this [model] is not its architecture "
            "(base_width=16, n_heads=4); use --size tiny",
        ),
        (  # bad input to `rtmoe finetune`, refused before anything slow
            ["finetune", "--data", "{tmp}/one_class.npz", "--out", "{tmp}/out"],
            "the data hold one class ('a',); classification needs two",
        ),
        (
            ["finetune", "--data", "{tmp}/short.npz", "--out", "{tmp}/out"],
            "trials of 20 samples at 200 Hz (0.1 s) are shorter than the model's minimum window",
        ),
        pytest.param(
            ["stream", "--lsl", "EEG", "--device", "cuda", "--zmq", "tcp://127.0.0.1:0"],
            "no CUDA GPU is visible; use --device cpu",  # BadValueError, before any lookup
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here"),
        ),
    ],
)
def test_a_project_error_is_one_line_and_exit_code_2(argv, piece, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = (20 * rng.normal(size=(20, 3, 200))).astype(np.float32)
    for name, trials, labels in (
        ("one_class", x, ["a"] * 20),
        ("short", x[..., :20], ["a", "b"] * 10),
    ):
        np.savez(
            tmp_path / f"{name}.npz", X=trials, y=labels, sfreq=200.0, ch_names=["C3", "CZ", "C4"]
        )
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    assert piece.format(tmp=tmp_path) in _one_line(capsys, argv[0])


def test_debug_re_raises_a_project_error():
    with pytest.raises(UserError, match=r"runtime\.hop_ms=-5"):
        main(["--debug", *BAD_HOP])  # the subcommand still gets its arguments


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError, KeyError, RuntimeError])
def test_another_exception_is_not_swallowed(monkeypatch, capsys, error):
    """The real `config show` run, failing inside with a builtin error: a bug."""

    def broken(**kwargs):
        raise error("a bug, not the user's")

    monkeypatch.setattr(config_show, "resolve_config", broken)
    with pytest.raises(error, match="a bug"):
        main(["config", "show"])
    assert "error:" not in capsys.readouterr().err


def test_debug_prints_the_traceback_from_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "rtmoe", "--debug", *BAD_HOP],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last):" in done.stderr, done.stderr
    assert "rtmoe.config.ConfigError: " in done.stderr and "runtime.hop_ms=-5" in done.stderr


@pytest.mark.parametrize(
    ("where", "builtin"),
    [
        ("rtmoe.config:ConfigError", ValueError),
        ("rtmoe.signal.channels:ChannelError", ValueError),
        ("rtmoe.recording:InputError", ValueError),
        ("rtmoe.profiles:ProfileError", ValueError),
        ("rtmoe.models.shipped:UnknownModelError", KeyError),
        ("rtmoe.checkpoint:CheckpointError", ValueError),
        ("rtmoe.runtime.plugins:PluginError", ValueError),
        ("rtmoe.calibration.fit:FitError", ValueError),
        ("rtmoe.calibration.session:SessionError", ValueError),
        ("rtmoe.transport.messages:ProtocolError", ValueError),
        ("rtmoe.engine.base:EngineError", RuntimeError),
        ("rtmoe.stream.lsl:LslError", RuntimeError),
        ("rtmoe.transport.publisher:PublisherError", OSError),
        ("rtmoe.errors:BadValueError", ValueError),
        ("rtmoe.errors:MissingFileError", FileNotFoundError),
    ],
)
def test_project_errors_are_user_errors_and_keep_their_builtin_base(where, builtin):
    module, _, name = where.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, UserError) and issubclass(cls, builtin)
