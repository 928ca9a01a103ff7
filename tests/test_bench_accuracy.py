"""The accuracy bench: aggregation (seed means, ensembles, table, re-centring), the
EEGNet-8,2 peer and the HandMovementDirection development set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rtmoe.metrics import classification_metrics
from rtmoe.offline.corpus.devdata import load_dev_split

BENCH = Path(__file__).resolve().parents[1] / "bench" / "accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _proba(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(size=n)
    return np.stack([1 - p, p], axis=1)


def test_seed_rows_mean_sd_and_ensemble(bench):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=40)
    probas = [_proba(rng, 40) for _ in range(3)]
    per_seed = [bench._metrics(y, p) for p in probas]

    rows = bench.seed_rows("one expert", per_seed, probas, y)

    mean = rows["one expert, mean of 3 seeds"]
    accs = [m["balanced_accuracy"] for m in per_seed]
    assert mean["balanced_accuracy"] == pytest.approx(np.mean(accs))
    assert mean["sd"]["balanced_accuracy"] == pytest.approx(np.std(accs, ddof=1))
    ensemble = rows["one expert, ensemble of 3 seeds"]
    expected = classification_metrics(y, np.mean(probas, axis=0))
    assert ensemble["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert ensemble["auroc"] == pytest.approx(expected["auroc"])


def test_table_groups_each_row_with_its_seed_rows(bench):
    def metrics(acc: float) -> dict[str, float]:
        return {
            "accuracy": acc + 0.01,
            "balanced_accuracy": acc,
            "cohen_kappa": 0.1,
            "weighted_f1": 0.5,
            "auroc": 0.6,
        }

    results = {
        "SelfRegulationSCP1": {
            "MiniRocket (aeon)": metrics(0.9) | {"auroc": float("nan")},
            "no pretraining, ensemble of 2 seeds": metrics(0.84),
            "no pretraining, mean of 2 seeds": metrics(0.83) | {"sd": {"balanced_accuracy": 0.02}},
            "SpecMoE, mean of 2 seeds": metrics(0.79) | {"sd": {"balanced_accuracy": 0.04}},
            "SpecMoE": metrics(0.8),
            "SpecMoE, ensemble of 2 seeds": metrics(0.81),
            "EEGNet-8,2 (bench), mean of 2 seeds": metrics(0.7) | {"sd": {"accuracy": 0.03}},
            "EEGNet-8,2 (bench), ensemble of 2 seeds": metrics(0.72),
        }
    }
    lines = bench.format_table(results).splitlines()
    names = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]]
    assert names == [
        "SpecMoE",
        "SpecMoE, mean of 2 seeds",
        "SpecMoE, ensemble of 2 seeds",
        "no pretraining, mean of 2 seeds",
        "no pretraining, ensemble of 2 seeds",
        "EEGNet-8,2 (bench), mean of 2 seeds",
        "EEGNet-8,2 (bench), ensemble of 2 seeds",
        "MiniRocket (aeon)",
    ]
    assert lines[0].startswith("| method | SelfRegulationSCP1 acc | bal. acc | κ | AUROC |")
    assert "| 0.840 | 0.830 ± 0.020 | 0.100 | 0.600 |" in lines[5]
    assert "| 0.710 ± 0.030 | 0.700 |" in lines[7]
    assert lines[-1].endswith("| — |")  # MiniRocket has no AUROC


def test_recenter_moves_each_test_channel_to_the_train_mean(bench):
    rng = np.random.default_rng(1)
    train = rng.normal(30.0, 5.0, size=(10, 3, 50))
    test = rng.normal(-5.0, 5.0, size=(8, 3, 50))
    shifted = bench.recenter(test, train)
    np.testing.assert_allclose(shifted.mean(axis=(0, 2)), train.mean(axis=(0, 2)))
    offset = shifted - test  # one constant per channel, labels never used
    np.testing.assert_allclose(offset, np.broadcast_to(offset[:1, :, :1], offset.shape))


# -- EEGNet-8,2 ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_chans", "n_times", "sfreq", "n_outputs"),
    [(6, 896, 256.0, 2), (28, 50, 100.0, 2), (10, 400, 400.0, 4)],  # the three dev sets
)
def test_eegnet_forward_and_gradients_at_native_rates(bench, n_chans, n_times, sfreq, n_outputs):
    torch.manual_seed(0)
    model = bench.EEGNet(n_chans, n_times, n_outputs, sfreq)
    assert model.kernel == round(sfreq / 2)  # temporal kernel: half a second
    x = torch.randn(5, n_chans, n_times)
    logits = model(x)
    assert logits.shape == (5, n_outputs) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(5) % n_outputs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    # The matmul spatial step is the paper's depthwise convolution over all electrodes.
    model.eval()
    h = model.bn1(model.temporal(model.pad(x.unsqueeze(1))))
    w = model.spatial.weight.view(model.F1, model.D, n_chans)
    torch.testing.assert_close((w @ h).flatten(1, 2).unsqueeze(2), model.spatial(h))


def test_eegnet_max_norm(bench):
    model = bench.EEGNet(10, 400, 4, 400.0)
    with torch.no_grad():
        model.spatial.weight.mul_(100.0)
        model.classifier.weight.mul_(100.0)
    model.apply_max_norm()
    assert model.spatial.weight.flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    assert model.classifier.weight.norm(dim=1).max() <= 0.25 + 1e-5


def test_stratified_split_is_disjoint_and_per_class(bench):
    y = np.repeat([0, 1, 2, 3], [40, 40, 40, 8])
    fit, val = bench.stratified_split(y, 0.25, np.random.default_rng(0))
    assert not set(fit) & set(val)
    np.testing.assert_array_equal(np.sort(np.r_[fit, val]), np.arange(len(y)))
    np.testing.assert_array_equal(np.bincount(y[val]), [10, 10, 10, 2])


def test_train_eegnet_selects_on_train_split_only(bench):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 12)
    X = rng.normal(size=(24, 3, 64)).astype(np.float32)
    X[y == 1, 0] += 2.0
    recipe = bench.EEGNetRecipe(max_epochs=3, patience=2, batch_size=8)
    model, info, scale = bench.train_eegnet(X, y, 64.0, 2, seed=0, recipe=recipe)
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 3
    assert np.isfinite(info["val_loss"]) and scale > 0
    assert not model.training


# -- HandMovementDirection --------------------------------------------------------------
def test_hand_movement_direction_loader():
    train = load_dev_split("HandMovementDirection", "train")
    test = load_dev_split("HandMovementDirection", "test")
    assert train.X.shape == (160, 10, 400) and test.X.shape == (74, 10, 400)
    assert train.sfreq == test.sfreq == 400.0
    assert set(train.y) == set(test.y) == {"backward", "forward", "left", "right"}
    assert len(train.ch_names) == 10 and np.isfinite(train.X).all()
    # The unbalanced test split DATA.md describes (backward 15, forward 30, left 15, right 14).
    labels, counts = np.unique(test.y, return_counts=True)
    assert dict(zip(labels.tolist(), counts.tolist(), strict=True)) == {
        "backward": 15,
        "forward": 30,
        "left": 15,
        "right": 14,
    }


def test_held_out_recordings_are_refused():
    with pytest.raises(ValueError, match="independent evaluation"):
        load_dev_split("SelfRegulationSCP2", "train")
