"""Fine-tuning and evaluation: freezing, reload parity, learning, CLI, input errors."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from rtmoe.checkpoint import (
    EXPERT_KIND,
    CheckpointError,
    absolute_paths,
    load_checkpoint,
    save_checkpoint,
)
from rtmoe.config import Config, FinetuneConfig, MoEConfig, SignalConfig
from rtmoe.models.registry import build_model, model_config
from rtmoe.models.specmoe import SPECMOE_KIND, SpecMoE, load_specmoe
from rtmoe.offline import evaluate as evaluate_mod
from rtmoe.offline import finetune as finetune_mod
from rtmoe.offline.evaluate import evaluate
from rtmoe.offline.finetune import (
    encode_labels,
    finetune,
    init_fresh_batchnorm,
    load_experts,
    predict,
    stratified_split,
)
from rtmoe.signal import preprocess_trials

SFREQ_IN = 100.0  # resampled to 200 Hz by the task's SignalConfig
CH_NAMES = ("C3", "Cz", "C4")
SIGNAL = SignalConfig(l_freq=None, h_freq=None, notch_freq=None)
QUICK = FinetuneConfig(epochs=3, freeze_epochs=2, batch_size=8, val_fraction=0.25)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: OpenMP threads only add overhead, and stall on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _trials(n_per_class: int, seed: int, n_times: int = 100):
    """Class "alpha" carries 10 Hz, class "beta" 22 Hz, on 3 channels in µV."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SFREQ_IN
    X, y = [], []
    for label, f in (("alpha", 10.0), ("beta", 22.0)):
        for _ in range(n_per_class):
            phase = rng.uniform(0, 2 * np.pi, size=(3, 1))
            X.append(20 * np.sin(2 * np.pi * f * t + phase) + 5 * rng.normal(size=(3, n_times)))
            y.append(label)
    return np.stack(X).astype(np.float32), np.array(y)


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Two tiny expert checkpoints, as `rtmoe pretrain` writes them."""
    root = tmp_path_factory.mktemp("experts")
    config = Config().replace(model=model_config("tiny"))
    paths = []
    for k in range(2):
        torch.manual_seed(k)
        model = build_model("tiny").train()
        with torch.no_grad():  # BatchNorm statistics, as pretraining leaves them
            for _ in range(3):
                model(0.2 * torch.randn(8, 4, 600))
        paths.append(save_checkpoint(root / f"e{k}", model, config, kind=EXPERT_KIND))
    return paths


@pytest.fixture(scope="module")
def data():
    return _trials(8, seed=0)


@pytest.fixture(scope="module")
def run(experts, data, tmp_path_factory):
    X, y = data
    out = tmp_path_factory.mktemp("ft") / "ckpt"
    result = finetune(
        X,
        y,
        SFREQ_IN,
        CH_NAMES,
        signal=SIGNAL,
        experts=experts,
        cfg=QUICK,
        task_name="synthetic",
        out=out,
        progress=False,
    )
    return result


def _expert_weights(model, k: int) -> dict[str, torch.Tensor]:
    prefix = f"experts.{k}."
    return {n[len(prefix) :]: v for n, v in model.state_dict().items() if n.startswith(prefix)}


def test_frozen_epochs_leave_experts_bit_identical(experts, data):
    X, y = data
    cfg = FinetuneConfig(epochs=2, freeze_epochs=2, batch_size=8, val_fraction=0.25)
    frozen = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=experts, cfg=cfg, progress=False
    )
    assert [h["experts_frozen"] for h in frozen.history] == [True, True]
    for k, path in enumerate(experts):
        source = {
            n.removeprefix("encoder."): v
            for n, v in load_checkpoint(path).weights.items()
            if n.startswith("encoder.")
        }
        ours = _expert_weights(frozen.model, k)
        assert source.keys() == ours.keys()  # parameters and BatchNorm statistics
        assert all(torch.equal(source[n], ours[n]) for n in source)


def test_a_fine_tuned_specmoe_gives_its_experts(run, data):
    """--experts FOLDER (or a shipped name) of a fine-tuned SpecMoE: training starts from
    its experts as fine-tuning left them (frozen here, so they stay bit-identical)."""
    X, y = data
    cfg = FinetuneConfig(epochs=1, freeze_epochs=1, batch_size=8, val_fraction=0.25)
    moe = MoEConfig(n_experts=run.model.n_experts)
    again = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=[run.checkpoint], cfg=cfg, moe=moe,
        progress=False,
    )  # fmt: skip
    for k in range(run.model.n_experts):
        source, ours = _expert_weights(run.model, k), _expert_weights(again.model, k)
        assert source.keys() == ours.keys()
        assert all(torch.equal(source[n], ours[n]) for n in source)
    assert again.model.experts[0] is not run.model.experts[0]  # a copy, not the same modules
    shipped, config = load_experts(["default"])  # the shipped model's three experts
    assert len(shipped) == 3 and config.model.name == "small"


def test_finetune_from_the_shipped_model_records_where_its_experts_came_from(data, tmp_path):
    X, y = data
    cfg = FinetuneConfig(epochs=1, freeze_epochs=1, batch_size=8, val_fraction=0.25)
    result = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=["default"], cfg=cfg,
        out=tmp_path / "ckpt", progress=False,
    )  # fmt: skip
    (source,) = load_checkpoint(result.checkpoint).meta["experts"]
    assert source["name"] == "default" and result.model.n_experts == 3


def test_experts_train_after_unfreezing(run, experts, data):
    assert [h["experts_frozen"] for h in run.history] == [True, True, False]
    X, y = data
    cfg = FinetuneConfig(epochs=1, freeze_epochs=0, batch_size=8, val_fraction=0.25)
    moved = finetune(
        X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=experts[:1], cfg=cfg, progress=False
    )
    source = load_checkpoint(experts[0]).weights
    weights = _expert_weights(moved.model, 0)
    changed = [n for n in weights if not torch.equal(weights[n], source[f"encoder.{n}"])]
    assert any(n.endswith("conv.weight") for n in changed)
    assert any(n.endswith("running_var") for n in changed)


def test_fresh_batchnorm_starts_from_the_data():
    torch.manual_seed(0)
    pretrained = build_model("tiny")
    pretrained.encoder.down1_short.conv1.norm.num_batches_tracked += 1  # "seen data"
    model = SpecMoE([pretrained, build_model("tiny")], 3, 200, 200.0, 2)
    x = 0.2 * torch.randn(6, 3, 200)
    seen = {}
    bn = model.experts[1].down1_short.conv1.norm
    bn.register_forward_hook(lambda m, i, o: seen.setdefault("input", i[0]))
    kept = model.experts[0].down1_short.conv1.norm.running_var.clone()
    n = init_fresh_batchnorm(model, x, model.psd(x), batch_size=64)
    n_norms = sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert n == n_norms - 1  # all but the "pretrained" layer, gate_norm included
    torch.testing.assert_close(bn.running_var, seen["input"].var(dim=(0, 2)))
    assert bn.momentum == 0.1
    assert torch.equal(model.experts[0].down1_short.conv1.norm.running_var, kept)


def test_reload_gives_identical_predictions(run, data, experts):
    X, y = data
    loaded = load_specmoe(run.checkpoint)
    assert loaded.checkpoint.kind == SPECMOE_KIND
    assert loaded.task == run.task
    assert loaded.task.labels == ("alpha", "beta") and loaded.task.ch_names == CH_NAMES
    assert loaded.task.n_times == 200 and loaded.config.signal == SIGNAL
    assert loaded.moe.n_experts == 2
    x = torch.from_numpy(preprocess_trials(X, SFREQ_IN, SIGNAL))
    out_mem, gates_mem = predict(run.model, x)
    out_disk, gates_disk = predict(loaded.model, x)
    assert torch.equal(out_mem, out_disk) and torch.equal(gates_mem, gates_disk)
    # evaluate() takes µV trials at the source rate and reaches the same outputs.
    result = evaluate(run.checkpoint, X, y, SFREQ_IN, CH_NAMES)
    np.testing.assert_array_equal(result.outputs, out_mem.softmax(dim=1).numpy())
    meta = loaded.checkpoint.meta
    assert meta["best_epoch"] == run.best_epoch and loaded.config.finetune.epochs == 3
    # The experts are named by folder and content, never by a path of this machine.
    assert [e["name"] for e in meta["experts"]] == ["e0", "e1"]
    for ident, path in zip(meta["experts"], experts, strict=True):
        assert ident["weights_sha256"] == load_checkpoint(path).meta["weights_sha256"]
    assert not absolute_paths(meta)


def test_learns_a_spectral_task():
    # Two classes differing only in frequency: far above chance on unseen trials.
    X, y = _trials(16, seed=1)
    cfg = FinetuneConfig(epochs=15, freeze_epochs=0, batch_size=8, val_fraction=0.25)
    result = finetune(
        X,
        y,
        SFREQ_IN,
        CH_NAMES,
        signal=SIGNAL,
        model_name="tiny",
        cfg=cfg,
        moe=MoEConfig(n_experts=1),
        progress=False,
    )
    X_test, y_test = _trials(16, seed=2)
    x = torch.from_numpy(preprocess_trials(X_test, SFREQ_IN, SIGNAL))
    pred = predict(result.model, x)[0].argmax(dim=1).numpy()
    accuracy = np.mean(np.array(result.task.labels)[pred] == y_test)
    assert accuracy >= 0.85, (accuracy, result.history[-1])


def test_stratified_split_is_seeded_and_stratified():
    y = np.array([0] * 30 + [1] * 10)
    train, val = stratified_split(y, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == 40
    assert np.bincount(y[val]).tolist() == [6, 2]
    np.testing.assert_array_equal(val, stratified_split(y, 0.2, seed=3)[1])
    assert not np.array_equal(val, stratified_split(y, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="at least 2 trials per class"):
        stratified_split(np.array([0, 0, 0, 1]), 0.2, seed=0)


def test_label_errors(experts, data):
    X, y = data
    assert encode_labels(y)[1] == ("alpha", "beta")
    assert encode_labels(y, ["beta", "alpha"])[0][0] == 1
    with pytest.raises(ValueError, match=r"unknown: \['beta'\].*never occurring: \['gamma'\]"):
        encode_labels(y, ["alpha", "gamma"])
    with pytest.raises(ValueError, match="one class"):
        encode_labels(np.array(["a", "a"]))
    with pytest.raises(ValueError, match="15 labels for 16 trials"):
        finetune(X, y[:-1], SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=experts, cfg=QUICK)
    with pytest.raises(ValueError, match="ch_names has 2 names"):
        finetune(X, y, SFREQ_IN, CH_NAMES[:2], signal=SIGNAL, experts=experts, cfg=QUICK)


def test_checkpoint_errors(experts, data, run, tmp_path):
    X, y = data
    with pytest.raises(CheckpointError, match="'specmoe' checkpoint, not the 'spechinet-expert'"):
        finetune(X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=[run.checkpoint, experts[0]])
    with pytest.raises(CheckpointError, match="not a fine-tuned 'specmoe'"):
        load_specmoe(experts[0])
    other = save_checkpoint(
        tmp_path / "small",
        build_model("small"),
        Config().replace(model=model_config("small")),
        kind=EXPERT_KIND,
    )
    with pytest.raises(CheckpointError, match="different model configs"):
        finetune(X, y, SFREQ_IN, CH_NAMES, signal=SIGNAL, experts=[experts[0], other])
    with pytest.raises(ValueError, match=r"signal\.sfreq=250\.0 differs"):
        signal = SignalConfig(sfreq=250.0, l_freq=None, h_freq=None, notch_freq=None)
        finetune(X, y, SFREQ_IN, CH_NAMES, signal=signal, experts=experts, cfg=QUICK)


def test_evaluate_refuses_what_the_checkpoint_cannot_take(run, data):
    X, y = data
    with pytest.raises(ValueError, match=r"n_times=200 \(1 s\)"):
        evaluate(run.checkpoint, X[..., :80], y, SFREQ_IN, CH_NAMES)
    with pytest.raises(ValueError, match=r"missing channel\(s\) \['C4'\]"):
        evaluate(run.checkpoint, X[:, :2], y, SFREQ_IN, CH_NAMES[:2])
    with pytest.raises(ValueError, match=r"labels \['gamma'\]"):
        evaluate(run.checkpoint, X, np.where(y == "beta", "gamma", y), SFREQ_IN, CH_NAMES)
    # Extra electrodes in another order are fine: they are selected by name.
    reordered = evaluate(run.checkpoint, X[:, ::-1], y, SFREQ_IN, CH_NAMES[::-1])
    direct = evaluate(run.checkpoint, X, y, SFREQ_IN, CH_NAMES)
    np.testing.assert_array_equal(reordered.outputs, direct.outputs)
    assert direct.confusion.sum() == len(y) and direct.gates_per_class.shape == (2, 2)


def test_regression(tmp_path):
    X, _ = _trials(6, seed=3)
    target = np.linspace(0, 1, len(X))
    cfg = FinetuneConfig(epochs=2, freeze_epochs=1, batch_size=8, val_fraction=0.25)
    result = finetune(
        X,
        target,
        SFREQ_IN,
        CH_NAMES,
        signal=SIGNAL,
        model_name="tiny",
        cfg=cfg,
        moe=MoEConfig(n_experts=1),
        regression=True,
        out=tmp_path / "reg",
        progress=False,
    )
    assert {"val_rmse", "val_r2", "val_pearson_r"} <= set(result.history[0])
    loaded = load_specmoe(result.checkpoint)
    assert loaded.task.regression and loaded.task.n_outputs == 1
    metrics = evaluate(loaded, X, target, SFREQ_IN, CH_NAMES).metrics
    assert set(metrics) == {"pearson_r", "r2", "rmse"} and np.isfinite(metrics["rmse"])


def _cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.command.add_arguments(parser)
    return module.command.run(parser.parse_args(argv))


def test_cli_finetune_and_evaluate(experts, data, tmp_path, capsys):
    X, y = data
    npz = tmp_path / "trials.npz"
    np.savez(npz, X=X, y=y, sfreq=SFREQ_IN, ch_names=np.array(CH_NAMES))
    labels = tmp_path / "labels.txt"
    labels.write_text("beta\nalpha\n")
    out = tmp_path / "model"
    argv = [
        "--data",
        str(npz),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--experts",
        *map(str, experts),
        "--epochs",
        "1",
        "--freeze-epochs",
        "1",
        "--batch-size",
        "8",
        "--l-freq",
        "none",
        "--h-freq",
        "none",
        "--notch-freq",
        "none",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert _cli(finetune_mod, argv) == 0
    loaded = load_specmoe(out)
    assert loaded.task.labels == ("beta", "alpha") and loaded.config.signal == SIGNAL
    eval_out = tmp_path / "eval"
    argv = ["--model", str(out), "--data", str(npz), "--out", str(eval_out), "--device", "cpu"]
    assert _cli(evaluate_mod, argv) == 0
    printed = capsys.readouterr().out
    assert "balanced_accuracy" in printed and "auprc" in printed
    metrics = json.loads((eval_out / "metrics.json").read_text())
    assert 0 <= metrics["balanced_accuracy"] <= 1
    for png in ("confusion.png", "gates.png"):
        assert (eval_out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("left\nright\n")
    with pytest.raises(ValueError, match="do not match the data's labels"):
        _cli(finetune_mod, ["--data", str(npz), "--labels", str(wrong), "--out", str(out)])


def test_scp1_keeps_its_slow_potentials():
    from rtmoe.offline.corpus.devdata import load_dev_split

    trials = load_dev_split("SelfRegulationSCP1", "train")
    X = trials.X[:8]
    signal = finetune_mod.TASK_SIGNALS["SelfRegulationSCP1"]
    Xp = preprocess_trials(X, trials.sfreq, signal)
    assert Xp.shape == (8, 6, 700)  # 3.5 s at 200 Hz
    # No high-pass: each trial's mean level (the class information) survives, in 100 µV.
    np.testing.assert_allclose(Xp.mean(-1), X.mean(-1) / 100, atol=0.02)


# -- CLI defaults and input errors (no training: `finetune` is replaced where possible) --
def _parser():
    parser = argparse.ArgumentParser(prog="rtmoe finetune")
    finetune_mod.command.add_arguments(parser)
    return parser


def _npz(tmp_path, name, X, y, sfreq=SFREQ_IN):
    path = tmp_path / name
    np.savez(path, X=X, y=y, sfreq=sfreq, ch_names=np.array(CH_NAMES))
    return path


def _resolved(argv: list[str], capsys, tmp_path) -> Config:
    """The settings `rtmoe finetune argv` resolves (its --print-config, read back)."""
    from rtmoe.config import load_config

    with pytest.raises(SystemExit) as exc:
        _cli(finetune_mod, [*argv, "--print-config"])
    assert exc.value.code == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(capsys.readouterr().out)
    return load_config(printed)


#: Options that make a real run take a second without touching what the tests check.
SMALL_RUN = ["--model-name", "tiny", "--n-experts", "1", "--batch-size", "8", "--quiet"]


def test_cli_defaults_are_the_recipe_whatever_the_file_name(data, tmp_path, capsys):
    from rtmoe.checkpoint import CONFIG_FILE
    from rtmoe.config import load_config

    recipe = load_config(finetune_mod.recipe_path())
    X, y = data
    for name in ("train.npz", "SelfRegulationSCP1.npz", "FingerMovements.npz"):
        npz = _npz(tmp_path, name, X, y)
        out = tmp_path / f"model-{name}"
        argv = ["--data", str(npz), "--out", str(out)]
        tree = _resolved(argv, capsys, tmp_path)
        assert tree.signal == recipe.signal  # one default, never chosen by the file's name
        assert tree.moe == recipe.moe and tree.model.name == "small"
        ft = recipe.finetune
        assert tree.finetune == dataclasses.replace(ft, freeze_epochs=0)  # fresh: no freeze
        assert (ft.epochs, ft.early_stop_patience, ft.freeze_epochs) == (40, 12, 3)
        # and a real run trains with what was resolved
        assert _cli(finetune_mod, [*argv, *SMALL_RUN, "--epochs", "2"]) == 0
        saved = load_config(out / CONFIG_FILE)
        assert saved.signal == recipe.signal
        assert saved.finetune == dataclasses.replace(tree.finetune, epochs=2, batch_size=8)
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert "filters: high-pass none, low-pass none, notch none" in last
        assert "ran all 2 epochs" in last or "early stop" in last
    # Options override single values; 'none' disables.
    argv = ["--data", str(npz), "--out", str(tmp_path / "m"), "--h-freq", "30"]
    argv += ["--early-stop", "none", "--epochs", "5", "--freeze-epochs", "2"]
    tree = _resolved(argv, capsys, tmp_path)
    assert tree.signal.h_freq == 30.0
    ft = tree.finetune
    assert (ft.epochs, ft.freeze_epochs, ft.early_stop_patience) == (5, 2, None)


def test_cli_freezes_pretrained_experts_by_the_recipe(experts, data, tmp_path, capsys):
    npz = _npz(tmp_path, "t.npz", *data)
    argv = ["--data", str(npz), "--out", str(tmp_path / "m"), "--experts", *map(str, experts)]
    assert _resolved(argv, capsys, tmp_path).finetune.freeze_epochs == 3
    with pytest.raises(finetune_mod.UserError, match="--model-name small but the --experts"):
        _cli(finetune_mod, [*argv, "--model-name", "small"])
    assert not (tmp_path / "m").exists()  # refused before training


def test_cli_help_shows_defaults_and_no_missing_docs():
    text = _parser().format_help()
    assert "DATA.md" not in text
    for shown in ("(40)", "(3) with --experts, 0 for fresh experts", "(12)", "default: train"):
        assert shown in " ".join(text.split())


def test_cli_split_with_data_is_an_argparse_error(tmp_path, capsys):
    for argv in (["--data", "x.npz", "--split", "test"], ["--split", "train", "--data", "x.npz"]):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args([*argv, "--out", "o"])
        assert exc.value.code == 2
    assert "--split applies to --dataset only" in capsys.readouterr().err


@pytest.mark.parametrize("sfreq", [100.0, 128.0])
def test_cli_filters_above_nyquist_are_refused_before_training(data, tmp_path, sfreq):
    X, y = data
    npz = _npz(tmp_path, "t.npz", X, y, sfreq=sfreq)
    toml = tmp_path / "c.toml"
    toml.write_text("[signal]\nl_freq = 0.3\nh_freq = 75.0\nnotch_freq = 50.0\n")
    argv = ["--data", str(npz), "--out", str(tmp_path / "m"), "--config", str(toml)]
    expected = {100.0: "--h-freq none --notch-freq none", 128.0: "--h-freq none"}[sfreq]
    with pytest.raises(ValueError, match=rf"Nyquist frequency {sfreq / 2:g} Hz.*{expected}"):
        _cli(finetune_mod, argv)
    assert not (tmp_path / "m").exists()  # refused before training
    # The same check guards the function (bench, recipe, notebooks).
    with pytest.raises(ValueError, match=r"h_freq=75 Hz.*Nyquist"):
        finetune(X, y, sfreq, CH_NAMES, signal=SignalConfig(), model_name="tiny", cfg=QUICK)


def test_cli_one_class_label_file(data, tmp_path):
    npz = _npz(tmp_path, "t.npz", *data)
    labels = tmp_path / "labels.txt"
    labels.write_text("alpha\n")
    out = tmp_path / "o"
    with pytest.raises(finetune_mod.UserError, match="at least two distinct class names"):
        _cli(finetune_mod, ["--data", str(npz), "--labels", str(labels), "--out", str(out)])
    assert not out.exists()  # refused before training


def test_recording_shorter_than_the_window_is_refused(data):
    X, y = data
    with pytest.raises(ValueError, match=r"0\.2 s\) are shorter than the model's minimum"):
        finetune(X[..., :20], y, SFREQ_IN, CH_NAMES, signal=SIGNAL, model_name="tiny", cfg=QUICK)


def test_time_budget_stop_is_reported(data, tmp_path, capsys):
    npz = _npz(tmp_path, "t.npz", *data)
    argv = ["--data", str(npz), "--out", str(tmp_path / "m"), "--model-name", "tiny"]
    argv += ["--n-experts", "1", "--batch-size", "8", "--val-fraction", "0.25", "--quiet"]
    argv += ["--max-minutes", "1e-9", "--epochs", "3", "--device", "cpu"]
    assert _cli(finetune_mod, argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "stopped by --max-minutes 1e-09 after epoch 1 of 3" in last
    assert json.loads((tmp_path / "m" / "meta.json").read_text())["stopped"] == "time budget"
