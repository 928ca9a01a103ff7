"""k-fold fine-tuning: disjoint stratified folds, the ensemble checkpoint, folds = 1 as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_finetune import CH_NAMES, SFREQ_IN, SIGNAL, _trials  # the same synthetic task

from rtmoe.checkpoint import EXPERT_KIND, META_FILE, CheckpointError, save_checkpoint
from rtmoe.config import Config, FinetuneConfig, MoEConfig
from rtmoe.dsp.spectral import welch_psd
from rtmoe.engine import build_engine
from rtmoe.engine.base import DecodeModule
from rtmoe.folds import fold_assignment
from rtmoe.models.registry import build_model, model_config
from rtmoe.models.shipped import load_model
from rtmoe.models.specmoe import SpecMoE, SpecMoEEnsemble, load_specmoe
from rtmoe.offline.evaluate import evaluate
from rtmoe.offline.finetune import (
    encode_labels,
    finetune,
    predict,
    stratified_folds,
    stratified_split,
)
from rtmoe.signal import preprocess_trials

MOE = MoEConfig(n_experts=2)
QUICK = dict(epochs=2, freeze_epochs=0, batch_size=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data():
    return _trials(6, seed=3)


@pytest.fixture(scope="module")
def cv_run(data, tmp_path_factory):
    X, y = data
    out = tmp_path_factory.mktemp("cv") / "ckpt"
    cfg = FinetuneConfig(**QUICK, folds=3, seed=4)
    result = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, model_name="tiny", cfg=cfg, moe=MOE,
        task_name="synthetic", out=out, progress=False,
    )  # fmt: skip
    return result


# -- folds -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_folds_partition_the_trials_and_are_stratified(n_folds):
    y = np.array([0] * 13 + [1] * 7 + [2] * 5)
    rng = np.random.default_rng(0)
    y = y[rng.permutation(len(y))]
    folds = stratified_folds(y, n_folds, seed=1)
    assert len(folds) == n_folds
    vals = [set(v.tolist()) for _, v in folds]
    for (train, _), v in zip(folds, vals, strict=True):
        assert set(train.tolist()).isdisjoint(v)  # never a trial in both
        assert set(train.tolist()) | v == set(range(len(y)))
    assert sum(len(v) for v in vals) == len(y)  # held-out folds partition the trials
    assert set().union(*vals) == set(range(len(y)))
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    for k, n_k in enumerate(np.bincount(y)):
        per_fold = [int(np.sum(y[val] == k)) for _, val in folds]
        assert set(per_fold) <= {n_k // n_folds, -(-n_k // n_folds)}, (k, per_fold)
    again = fold_assignment(y, n_folds, seed=1)
    assert np.array_equal(again, fold_assignment(y, n_folds, seed=1))
    assert not np.array_equal(again, fold_assignment(y, n_folds, seed=2))


def test_folds_refuse_a_class_smaller_than_k():
    y = np.array([0] * 10 + [1] * 4)
    with pytest.raises(ValueError, match=r"class 'b' has 4 trials but folds=5 .*finetune.folds"):
        stratified_folds(y, 5, seed=0, labels=("a", "b"))
    with pytest.raises(ValueError, match=r"class index 1 has 4 trials .*; lower --folds"):
        fold_assignment(y, 5, seed=0, fix="lower --folds")
    with pytest.raises(ValueError, match="n_folds=1"):
        fold_assignment(y, 1, seed=0)


def test_cv_run_holds_out_each_trial_exactly_once(cv_run, data):
    X, y = data
    folds = cv_run.folds
    assert len(folds) == 3 and isinstance(cv_run.model, SpecMoEEnsemble)
    strata, _ = encode_labels(y)
    for fold in folds:
        assert set(fold.train_idx.tolist()).isdisjoint(fold.val_idx.tolist())
        assert sorted(np.bincount(strata[fold.val_idx]).tolist()) == [2, 2]
    held_out = np.sort(np.concatenate([f.val_idx for f in folds]))
    assert np.array_equal(held_out, np.arange(len(X)))
    # The out-of-fold outputs are each member's kept weights on the trials it never saw.
    Xp = torch.from_numpy(preprocess_trials(X, SFREQ_IN, cv_run.config.signal))
    for member, fold in zip(cv_run.model.members, folds, strict=True):
        outputs, _ = predict(member, Xp[fold.val_idx])
        torch.testing.assert_close(outputs, fold.val_outputs, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(cv_run.oof_outputs[fold.val_idx], fold.val_outputs.numpy())
    assert {"balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc"} <= set(cv_run.cv)
    meta = json.loads((cv_run.checkpoint / META_FILE).read_text())
    assert meta["ensemble"] == {"version": 1, "n_members": 3, "combine": "mean_probabilities"}
    assert meta["cv"]["folds"] == 3 and meta["cv"]["metrics"] == cv_run.cv
    fold_of = np.array(meta["cv"]["fold_of_trial"])
    for k, fold in enumerate(folds):
        assert np.array_equal(np.flatnonzero(fold_of == k), fold.val_idx)
    assert meta["best_val"]["val_balanced_accuracy"] == cv_run.cv["balanced_accuracy"]


# -- the ensemble checkpoint -----------------------------------------------------------


def test_ensemble_averages_member_probabilities_and_gates(cv_run):
    model = cv_run.model
    x = 0.2 * torch.randn(
        4, model.n_chans, model.n_times, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits, gates = model.forward_with_gates(x)
        parts = [m.forward_with_gates(x) for m in model.members]
    mean_p = torch.stack([lo.softmax(-1) for lo, _ in parts]).mean(0)
    torch.testing.assert_close(logits.softmax(-1), mean_p)
    torch.testing.assert_close(gates, torch.stack([g for _, g in parts]).mean(0))
    torch.testing.assert_close(model(x), logits)


def test_ensemble_checkpoint_decodes_identically_offline_and_through_the_engine(cv_run, data):
    X, y = data
    loaded = load_model(cv_run.checkpoint)
    assert isinstance(loaded.model, SpecMoEEnsemble) and loaded.model.n_members == 3
    sa, sb = cv_run.model.state_dict(), loaded.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ev = evaluate(cv_run.checkpoint, X, y, SFREQ_IN, CH_NAMES)
    Xp = torch.from_numpy(preprocess_trials(X, SFREQ_IN, loaded.config.signal))
    outputs, gates = predict(cv_run.model, Xp)
    np.testing.assert_array_equal(ev.outputs, outputs.softmax(dim=1).numpy())
    np.testing.assert_array_equal(ev.gates, gates.numpy())
    assert ev.gates.shape == (len(X), MOE.n_experts)
    # The runtime's path: one window at a time, the PSD computed outside the engine.
    model = loaded.model
    psd = welch_psd(Xp, model.sfreq, model.nperseg).float()
    engine = build_engine(model, (Xp[:1].contiguous(), psd[:1].contiguous()), "torch")
    assert engine.n_experts == MOE.n_experts and engine.n_outputs == 2
    for i in range(len(X)):
        probs, gate_means = engine(Xp[i : i + 1].contiguous(), psd[i : i + 1].contiguous())
        np.testing.assert_allclose(probs.numpy(), ev.outputs[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(gate_means.numpy(), ev.gates[i], rtol=0, atol=1e-6)


def test_ensemble_exports_with_torch_export(cv_run):
    model = cv_run.model.eval()
    x = 0.2 * torch.randn(
        1, model.n_chans, model.n_times, generator=torch.Generator().manual_seed(1)
    )
    psd = welch_psd(x, model.sfreq, model.nperseg).float()
    module = DecodeModule(model).eval()
    exported = torch.export.export(module, (x, psd))
    with torch.no_grad():
        for got, want in zip(exported.module()(x, psd), module(x, psd), strict=True):
            torch.testing.assert_close(got, want)


def test_ensemble_runs_in_the_onnx_engine(cv_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = cv_run.model
    x = 0.2 * torch.randn(
        1, model.n_chans, model.n_times, generator=torch.Generator().manual_seed(2)
    )
    psd = welch_psd(x, model.sfreq, model.nperseg).float()
    engine = build_engine(model, (x, psd), "onnx", tmp_path)  # parity vs eager checked inside
    assert engine.name == "onnx" and engine.parity.max_abs_diff <= 1e-4
    probs, _ = engine(x, psd)
    with torch.no_grad():
        want = model(x, psd).softmax(-1)[0]
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-4)


def test_unknown_ensemble_version_is_refused(cv_run, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(cv_run.checkpoint, copy)
    meta = json.loads((copy / META_FILE).read_text())
    meta["ensemble"]["version"] = 99
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"version 99.*upgrade rtmoe"):
        load_specmoe(copy)


def test_folds_copy_the_pretrained_experts(tmp_path, monkeypatch):
    """Each fold starts from the pretrained experts and fine-tunes its own copy."""
    from rtmoe.checkpoint import load_checkpoint
    from rtmoe.offline import finetune as finetune_mod

    starts = []
    fit = finetune_mod._fit

    def recording_fit(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(finetune_mod, "_fit", recording_fit)
    config = Config().replace(model=model_config("tiny"))
    paths = []
    for k in range(2):
        torch.manual_seed(k)
        expert = build_model("tiny").train()
        with torch.no_grad():
            expert(0.2 * torch.randn(8, 4, 600))
        paths.append(save_checkpoint(tmp_path / f"e{k}", expert, config, kind=EXPERT_KIND))
    X, y = _trials(4, seed=1)
    cfg = FinetuneConfig(epochs=1, freeze_epochs=0, batch_size=8, folds=2)
    result = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=paths, cfg=cfg, progress=False
    )  # fmt: skip
    a, b = (list(m.expert_parameters()) for m in result.model.members)
    assert {p.data_ptr() for p in a}.isdisjoint(p.data_ptr() for p in b)
    assert any(not torch.equal(p, q) for p, q in zip(a, b, strict=True))  # trained apart
    assert len(starts) == 2
    for k, path in enumerate(paths):
        pretrained = load_checkpoint(path).weights
        for start in starts:  # the second fold too: not the first fold's fine-tuned experts
            prefix = f"experts.{k}."
            ours = {n[len(prefix) :]: v for n, v in start.items() if n.startswith(prefix)}
            assert ours and all(torch.equal(v, pretrained[f"encoder.{n}"]) for n, v in ours.items())


# -- folds = 1: as before --------------------------------------------------------------


def test_one_fold_is_the_single_split_model(data, tmp_path):
    X, y = data
    cfg = FinetuneConfig(**QUICK, val_fraction=0.25, seed=2)
    assert FinetuneConfig().folds == 1
    result = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, model_name="tiny", cfg=cfg, moe=MOE,
        out=tmp_path / "one", progress=False,
    )  # fmt: skip
    assert type(result.model) is SpecMoE and result.cv is None and result.oof_outputs is None
    (fold,) = result.folds
    train, val = stratified_split(encode_labels(y)[0], 0.25, 2)
    assert np.array_equal(fold.train_idx, train) and np.array_equal(fold.val_idx, val)
    assert result.history is fold.history and result.best_epoch == fold.best_epoch
    meta = json.loads((result.checkpoint / META_FILE).read_text())
    assert "ensemble" not in meta and "cv" not in meta
    assert meta["best_epoch"] == result.best_epoch and meta["n_val"] == len(val)
    loaded = load_specmoe(result.checkpoint)
    assert type(loaded.model) is SpecMoE


def test_shipped_single_model_still_loads():
    loaded = load_model("default")
    assert type(loaded.model) is SpecMoE and "ensemble" not in loaded.checkpoint.meta


def test_folds_must_be_positive():
    from rtmoe.config import ConfigError

    with pytest.raises(ConfigError, match=r"finetune\.folds=0"):
        FinetuneConfig(folds=0)


def test_cli_folds_prints_the_cv_estimate_and_saves_the_ensemble(data, tmp_path, capsys):
    import argparse

    from rtmoe.offline import finetune as finetune_mod

    X, y = data
    npz = tmp_path / "trials.npz"
    np.savez(npz, X=X, y=y, sfreq=SFREQ_IN, ch_names=np.array(CH_NAMES))
    recipe = tmp_path / "cv.toml"
    recipe.write_text("[finetune]\nepochs = 1\nfreeze_epochs = 0\nbatch_size = 8\n")
    out = tmp_path / "model"
    argv = ["--data", str(npz), "--out", str(out), "--config", str(recipe), "--folds", "2"]
    argv += ["--model-name", "tiny", "--n-experts", "1", "--quiet", "--device", "cpu"]
    argv += ["--l-freq", "none", "--h-freq", "none", "--notch-freq", "none"]
    parser = argparse.ArgumentParser()
    finetune_mod.command.add_arguments(parser)
    assert finetune_mod.command.run(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "CV estimate (2 stratified folds, 12 trials" in printed
    assert "balanced accuracy" in printed and "ensemble of 2 fold models" in printed
    loaded = load_model(out)
    assert isinstance(loaded.model, SpecMoEEnsemble) and loaded.model.n_members == 2
    assert loaded.config.finetune.folds == 2


def test_calibration_refuses_an_ensemble_base(cv_run):
    from rtmoe.calibration.fit import FitError, fit_subject

    loaded = load_model(cv_run.checkpoint)
    X = np.zeros((20, loaded.task.n_chans, loaded.task.n_times), np.float32)
    with pytest.raises(FitError, match=r"ensemble of 3 fold models.*--folds 1"):
        fit_subject(loaded, X, np.repeat([0, 1], 10), loaded.task.labels)


def test_live_runtime_decodes_the_ensemble_at_every_hop(tmp_path):
    """`rtmoe stream`'s loop on a real LSL outlet: each decode is the ensemble's mean
    probabilities (and mean gates) on the same window of the whole-stream preprocessing."""
    pytest.importorskip("pylsl")
    pytest.importorskip("zmq")
    import test_runtime as live

    from rtmoe.models.specmoe import TaskConfig, build_specmoe, ensemble_meta, specmoe_meta

    # With the waveform readout too: the live window must feed it as offline.
    config = Config().replace(model=model_config("tiny"), moe={"n_experts": 2, "erp_segments": 4})
    task = TaskConfig(
        name="synthetic", ch_names=live.MODEL_CHANS, n_times=live.N_TIMES, labels=("a", "b")
    )
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        member = build_specmoe(config, task, config.moe).train()
        with torch.no_grad():  # BatchNorm statistics of EEG-scaled input
            for _ in range(3):
                member(0.3 * torch.randn(8, task.n_chans, live.N_TIMES))
        members.append(member.eval())
    ensemble = SpecMoEEnsemble(members).eval()
    meta = specmoe_meta(task) | ensemble_meta(ensemble)
    path = save_checkpoint(tmp_path / "ens", ensemble, config, kind="specmoe", meta=meta)
    pusher = live.Pusher(("C3", "Cz", "C4"), 200.0, duration_s=1.6)
    runtime, _, decodes, _ = live._run(path, pusher, 2.0)
    assert isinstance(runtime.loaded.model, SpecMoEEnsemble) and runtime.engine.n_experts == 2
    assert len(decodes) >= 8 and list(decodes[0].gates) == ["expert_0", "expert_1"]
    live._offline_check(runtime, pusher, decodes, index=np.array([0, 2, 1]))
    # The ensemble's output is the members' mean probabilities, so decodes are too.
    x = 0.3 * torch.randn(1, task.n_chans, live.N_TIMES)
    with torch.no_grad():
        mean_p = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(x).softmax(-1), mean_p)


def test_regression_folds_average_outputs(tmp_path):
    X, _ = _trials(6, seed=5)
    target = np.linspace(0, 1, len(X))
    cfg = FinetuneConfig(**QUICK, folds=3)
    result = finetune(
        X, target, SFREQ_IN, CH_NAMES, signal=SIGNAL, model_name="tiny", cfg=cfg,
        moe=MoEConfig(n_experts=1), regression=True, out=tmp_path / "reg", progress=False,
    )  # fmt: skip
    assert set(result.cv) == {"pearson_r", "r2", "rmse"}
    loaded = load_specmoe(result.checkpoint)
    assert loaded.checkpoint.meta["ensemble"]["combine"] == "mean_outputs"
    Xp = torch.from_numpy(preprocess_trials(X, SFREQ_IN, loaded.config.signal))
    with torch.no_grad():
        want = torch.stack([m(Xp) for m in loaded.model.members]).mean(0)
    ev = evaluate(loaded, X, target, SFREQ_IN, CH_NAMES)
    np.testing.assert_allclose(ev.outputs, want.numpy(), rtol=0, atol=1e-6)
