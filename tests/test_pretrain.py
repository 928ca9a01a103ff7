"""Pretraining of one expert: loss maths, data plan, masked input vs original target,
bit-exact resume, non-finite abort, the command, and DDP over gloo with two processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rtmoe.offline.pretrain as pt
import rtmoe.offline.pretrain.loop as pt_loop
from rtmoe.checkpoint import LATEST_FILE, load_checkpoint
from rtmoe.cli import main
from rtmoe.config import Config, PretrainConfig, save_config, to_dict
from rtmoe.dsp.masking import spectral_mask
from rtmoe.models.registry import load_expert, model_config
from rtmoe.models.spechinet import SpecHiNetOutput
from rtmoe.offline.corpus.devdata import DEV_DATASETS, load_dev_split
from rtmoe.offline.corpus.shards import ShardCorpus, ShardWriter
from rtmoe.offline.pretrain.data import TRAIN_STREAM, seeded_generator
from rtmoe.signal import preprocess_trials

N_TRIALS = 8  # per development data set: 16 recordings, two shapes


def _cfg(**pretrain) -> Config:
    settings = {"batch_size": 2, "accum_steps": 2, "epochs": 3, "holdout_fraction": 0.25}
    return Config().replace(
        model=model_config("tiny"),
        corpus={"n_partitions": 2, "reject_uv": None},
        pretrain={**settings, **pretrain},
    )


def _write_corpus(root, cfg: Config, corrupt: bool = False) -> ShardCorpus:
    """The first trials of each development train split, one recording per trial."""
    with ShardWriter(root, to_dict(cfg)) as writer:
        for name in DEV_DATASETS:
            trials = load_dev_split(name, "train")
            x_uv = trials.X[:N_TRIALS]
            x = preprocess_trials(x_uv, trials.sfreq, cfg.signal)
            if corrupt:
                x[:, 0, 5] = np.nan
            for i in range(N_TRIALS):
                writer.add(f"{name}/train/{i}", x[i : i + 1], trials.ch_names, cfg.signal.sfreq)
    return ShardCorpus(root)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "dev"
    _write_corpus(root, _cfg())
    return root


# -- pure maths ----------------------------------------------------------------------------
def test_cosine_lr_endpoints_and_midpoint():
    assert pt.cosine_lr(0, 11, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert pt.cosine_lr(5, 11, 1e-3, 1e-6) == pytest.approx((1e-3 + 1e-6) / 2)
    assert pt.cosine_lr(10, 11, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert pt.cosine_lr(0, 1, 1e-3, 1e-6) == 1e-3


def test_loss_stft_params_shrink_for_short_outputs():
    cfg = PretrainConfig()
    assert pt.loss_stft_params(6000, cfg) == (512, 256)
    assert pt.loss_stft_params(700, cfg) == (512, 256)
    assert pt.loss_stft_params(100, cfg) == (100, 50)


def _reference_stft_power(x: np.ndarray, n_fft: int, hop: int) -> float:
    """Mean |STFT|² with a periodic Hann window and reflect-padded centred frames."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    n_frames = 1 + x.shape[-1] // hop
    frames = np.stack(
        [padded[..., t * hop : t * hop + n_fft] * window for t in range(n_frames)], -2
    )
    return float(np.mean(np.abs(np.fft.rfft(frames, axis=-1)) ** 2))


def test_output_loss_known_answers():
    t = np.arange(700) / 200.0
    x = np.stack([np.sin(2 * np.pi * 10 * t), 0.5 * np.cos(2 * np.pi * 3 * t)])[None]
    target = torch.tensor(x, dtype=torch.float32)
    no_spec = PretrainConfig(spectral_loss_weight=0.0)
    assert float(pt.output_loss(target + 0.1, target, no_spec)) == pytest.approx(0.01)
    assert float(pt.output_loss(target, target, PretrainConfig())) == 0.0
    # Predicting zeros: MSE = mean x², spectral term = mean |STFT(x)|².
    cfg = PretrainConfig(spectral_loss_weight=0.02)
    expected = np.mean(x**2) + 0.02 * _reference_stft_power(x, 512, 256)
    got = float(pt.output_loss(torch.zeros_like(target), target, cfg))
    assert got == pytest.approx(expected, rel=1e-5)


def test_aux_target_is_block_mean_on_the_model_grid():
    x = torch.arange(7.0).reshape(1, 1, 7)
    assert pt.aux_target(x, 3).tolist() == [[[1.0, 4.0, 6.0]]]
    assert pt.aux_target(torch.ones(2, 3, 700), 60).shape == (2, 3, 12)


def test_reconstruction_loss_weights_and_target():
    cfg = PretrainConfig(spectral_loss_weight=0.0)
    x = torch.randn(2, 3, 700)
    exact = pt.identity_output(x)
    total, parts = pt.reconstruction_loss(exact, x, cfg)
    assert float(total) == 0.0 and set(parts) == set(SpecHiNetOutput._fields)
    off = exact._replace(recon_long=x + 0.1, aux_up2=exact.aux_up2 - 0.2)
    total, parts = pt.reconstruction_loss(off, x, cfg)
    assert parts["recon_long"] == pytest.approx(0.01)
    assert parts["aux_up2"] == pytest.approx(0.04)
    assert float(total) == pytest.approx(0.01 + 0.2 * 0.04)
    with pytest.raises(ValueError, match="aux_up1 has shape"):
        pt.reconstruction_loss(exact._replace(aux_up1=x), x, cfg)


def test_split_holdout_and_batch_plan():
    recs = [f"r{i}" for i in range(10)]
    train, val = pt.split_holdout(recs, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == recs and not set(train) & set(val)
    assert pt.split_holdout(recs, 0.2, seed=3) == (train, val)
    assert pt.split_holdout(recs, 0.0, seed=3) == (recs, [])
    assert pt.split_holdout(["a"], 0.5, seed=0) == (["a"], [])
    assert len(pt.split_holdout(recs[:3], 0.1, seed=0)[1]) == 1  # at least one held out

    groups = [np.arange(0, 7), np.arange(7, 12)]
    plan = pt.batch_plan(groups, 3, np.random.default_rng(0))
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(12))
    assert all(set(b) <= set(groups[0]) or set(b) <= set(groups[1]) for b in plan)
    again = pt.batch_plan(groups, 3, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))
    other = pt.batch_plan(groups, 3, np.random.default_rng(1))
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other, strict=True))
    assert [b.tolist() for b in pt.batch_plan(groups, 5, None)] == [
        [0, 1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11]
    ]  # fmt: skip


# -- training ------------------------------------------------------------------------------
def test_model_sees_masked_input_and_is_scored_against_original(corpus_root, tmp_path, monkeypatch):
    inputs, targets = [], []
    real_build, real_loss = pt_loop.build_model, pt_loop.reconstruction_loss

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
        return model

    def loss(output, target, cfg):
        targets.append(target.clone())
        return real_loss(output, target, cfg)

    monkeypatch.setattr(pt_loop, "build_model", build)  # the engine's own names
    monkeypatch.setattr(pt_loop, "reconstruction_loss", loss)
    cfg = _cfg()
    pt.pretrain_expert(
        corpus_root, tmp_path / "run", cfg, 0, max_steps=1, device="cpu", progress=False
    )

    x, x_in = targets[0], inputs[0]  # the first micro-batch of step 0
    segments = ShardCorpus(corpus_root)
    rows = [np.asarray(segments.segment(i)) for i in range(len(segments))]
    for row in x.numpy():  # every target row is an original corpus segment
        assert any(r.shape == row.shape and np.array_equal(r, row) for r in rows)
    gen = seeded_generator(cfg.pretrain.seed, 0, TRAIN_STREAM, 0, 0, 0)
    expected, _ = spectral_mask(x, cfg.signal.sfreq, cfg.spectral, cfg.mask, gen)
    assert torch.equal(x_in, expected)
    assert (x_in - x).abs().max() > 1e-3


def test_resume_continues_the_same_loss_curve(corpus_root, tmp_path):
    cfg = _cfg()
    straight = pt.pretrain_expert(
        corpus_root, tmp_path / "a", cfg, 0, max_steps=5, device="cpu", progress=False
    )
    first = pt.pretrain_expert(
        corpus_root, tmp_path / "b", cfg, 0, max_steps=3, device="cpu", progress=False
    )
    assert first.stop_reason == "max_steps" and first.step == 3
    meta = load_checkpoint(tmp_path / "b").meta
    assert meta["position"] == {"step": 3, "epoch": 1, "step_in_epoch": 1}  # mid-epoch
    assert meta["schedule"]["accum_steps"] == 2
    resumed = pt.pretrain_expert(
        corpus_root, tmp_path / "b", cfg, 0, max_steps=5, resume=True, device="cpu", progress=False
    )
    assert len(straight.train_losses) == 5 and all(map(math.isfinite, straight.train_losses))
    assert resumed.train_losses == straight.train_losses  # bit for bit
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)

    # Validation uses the same masks every time: the baseline never changes.
    val = [v for v in straight.val if "model_loss" in v]
    assert len(val) >= 2 and len({v["baseline_loss"] for v in val}) == 1
    assert val[0]["n_windows"] == len(meta["partition"]["val_recordings"])
    history = json.loads((tmp_path / "b" / pt.HISTORY_FILE).read_text())
    assert [h["loss"] for h in history["train"]] == straight.train_losses
    assert (tmp_path / "b" / pt.PLOT_FILE).stat().st_size > 0
    # Only the newest checkpoints are kept.
    assert len(list((tmp_path / "b" / pt.CHECKPOINT_DIR).iterdir())) == pt.KEEP_CHECKPOINTS


def test_expert_partitions_are_disjoint(corpus_root, tmp_path):
    cfg = _cfg(epochs=1)
    metas = []
    for k in (0, 1):
        pt.pretrain_expert(
            corpus_root, tmp_path / str(k), cfg, k, max_steps=1, device="cpu", progress=False
        )
        metas.append(load_checkpoint(tmp_path / str(k)).meta["partition"])
    seen = [set(m["train_recordings"]) | set(m["val_recordings"]) for m in metas]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 2 * N_TRIALS
    assert all(not set(m["train_recordings"]) & set(m["val_recordings"]) for m in metas)


def test_non_finite_loss_aborts_without_writing(tmp_path):
    cfg = _cfg()
    root = tmp_path / "nan"
    _write_corpus(root, cfg, corrupt=True)
    out = tmp_path / "run"
    with pytest.raises(pt.NonFiniteLossError, match=r"optimiser step 0.*pretrain\.lr"):
        pt.pretrain_expert(root, out, cfg, 0, device="cpu", progress=False)
    assert not (out / LATEST_FILE).exists()
    assert not (out / pt.CHECKPOINT_DIR).exists()


def test_resume_a_run_saved_before_config_fields_were_added(corpus_root, tmp_path):
    """A run saved by an older rtmoe (its config.toml lacks a field added since) resumes:
    the missing field takes its default, so the settings are the same."""
    import tomllib

    import tomli_w

    from rtmoe.checkpoint import file_config_hash

    cfg = _cfg()
    pt.pretrain_expert(corpus_root, tmp_path / "r", cfg, 0, max_steps=2, device="cpu",
                       progress=False)  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "r").path
    tree = tomllib.loads((ckpt / "config.toml").read_text())
    del tree["finetune"]["folds"]  # added after such a run was saved
    (ckpt / "config.toml").write_text(tomli_w.dumps(tree))
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config_hash"] = file_config_hash(ckpt / "config.toml")  # as that version wrote it
    (ckpt / "meta.json").write_text(json.dumps(meta))
    resumed = pt.pretrain_expert(corpus_root, tmp_path / "r", cfg, 0, max_steps=3, resume=True,
                                 device="cpu", progress=False)  # fmt: skip
    assert resumed.step == 3


def test_command_line_run_resume_and_errors(corpus_root, tmp_path, capsys):
    toml = tmp_path / "cfg.toml"
    save_config(_cfg(epochs=2), toml)
    out = tmp_path / "run"
    base = ["pretrain", "--corpus", str(corpus_root), "--device", "cpu", "--expert", "1"]
    base += ["--out", str(out)]
    assert main([*base, "--config", str(toml), "--max-steps", "1", "--no-progress"]) == 0
    assert "max_steps after 1 steps" in capsys.readouterr().out
    assert main([*base, "--config", str(toml), "--no-progress"]) == 2
    assert "already holds a pretraining run" in capsys.readouterr().err
    assert main([*base, "--config", str(toml), "--epochs", "5", "--resume"]) == 2
    assert "pretrain.epochs: 2 -> 5" in capsys.readouterr().err
    assert main([*base, "--expert", "0", "--resume", "--no-progress"]) == 2
    assert "expert" in capsys.readouterr().err
    assert main([*base, "--resume", "--no-progress"]) == 0  # reuses the run's config
    assert "completed" in capsys.readouterr().out
    model = load_expert(out, model_name="tiny")
    assert load_checkpoint(out).meta["expert"] == 1
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 4, 240)).recon_short).all()
    assert main([*base[:-1], str(tmp_path / "x"), "--size", "tiny", "--expert", "3"]) == 2
    assert "expert=3 is out of range" in capsys.readouterr().err


def test_torchrun_two_processes_gloo(corpus_root, tmp_path):
    toml = tmp_path / "cfg.toml"
    save_config(_cfg(epochs=2), toml)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "rtmoe.cli", "pretrain", "--corpus", str(corpus_root), "--expert", "0",
        "--out", str(out), "--config", str(toml), "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out)
    assert ckpt.meta["world_size"] == 2 and ckpt.meta["position"]["epoch"] == 2
    assert {"rank0.rng.torch_cpu", "rank1.rng.torch_cpu"} <= ckpt.state.keys()
    history = json.loads((out / pt.HISTORY_FILE).read_text())
    assert history["train"] and all(math.isfinite(h["loss"]) for h in history["train"])
    assert math.isfinite(history["val"][-1]["model_loss"])
    load_expert(out)


@pytest.mark.cuda
def test_pretrain_on_cuda_with_bf16(corpus_root, tmp_path):
    cfg = _cfg(amp=True)
    result = pt.pretrain_expert(
        corpus_root, tmp_path / "gpu", cfg, 0, max_steps=3, device="cuda", progress=False
    )
    assert all(map(math.isfinite, result.train_losses))
    ckpt = load_checkpoint(tmp_path / "gpu")
    assert "rank0.rng.torch_cuda" in ckpt.state
    resumed = pt.pretrain_expert(
        corpus_root, tmp_path / "gpu", cfg, 0, max_steps=4, device="cuda", resume=True,
        progress=False,
    )  # fmt: skip
    assert resumed.step == 4 and math.isfinite(resumed.train_losses[-1])
