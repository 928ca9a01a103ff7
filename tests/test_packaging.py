"""The wheel installs one import namespace, ``rtmoe``, with every package and data file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_one_top_level_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("rtmoe-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert zf.read(top_level).decode().split() == ["rtmoe"]
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"rtmoe"}  # no offline/, calibration/ or plugins/ beside it
    for path in (
        "rtmoe/offline/finetune.py",
        "rtmoe/calibration/cli.py",
        "rtmoe/plugins/subscriber.py",
        "rtmoe/signal/chain.py",
        "rtmoe/offline/recipes/default_model.toml",
        "rtmoe/data/demo_scp1_eeg.fif.gz",
        "rtmoe/data/models/default/model.safetensors",
        "rtmoe/view/static/index.html",  # rtmoe view's page: package data, no CDN
        "rtmoe/view/static/view.js",
    ):
        assert path in names, f"{path} missing from the wheel"
