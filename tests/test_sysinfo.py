"""``rtmoe sys-info`` reports this machine's real versions, libraries and engine choice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pylsl
import torch
import zmq

import rtmoe


def test_sys_info_reports_what_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "rtmoe", "sys-info"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rows = dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())
    assert rows["rtmoe"].strip() == rtmoe.__version__
    assert rows["torch"].strip() == torch.__version__
    assert f"liblsl {pylsl.library_version()}" in rows["liblsl"]
    assert Path(rows["liblsl"].rsplit(" at ", 1)[1].strip()).is_file()
    assert rows["libzmq"].strip() == f"libzmq {zmq.zmq_version()}"
    assert ("no CUDA device" in rows["cuda"]) is not torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert rows["engine"].startswith(f"device auto → {device}")
