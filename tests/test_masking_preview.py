"""``rtmoe mask-preview`` end to end on a development trial."""

from __future__ import annotations

from rtmoe.cli import main


def test_mask_preview_writes_a_png(tmp_path, capsys):
    out = tmp_path / "preview" / "fm.png"
    argv = ["--dataset", "FingerMovements", "--index", "2", "--seed", "1", "--out", str(out)]
    assert main(["mask-preview", *argv]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    # 0.5 s at 100 Hz -> 100 samples at 200 Hz -> n_fft 100, hop 50.
    assert "51 bins x 3 frames" in capsys.readouterr().out


def test_mask_preview_rejects_a_missing_trial(tmp_path, capsys):
    argv = ["--dataset", "FingerMovements", "--index", "100000", "--out", str(tmp_path / "x.png")]
    assert main(["mask-preview", *argv]) == 2
    assert "--index=100000 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
