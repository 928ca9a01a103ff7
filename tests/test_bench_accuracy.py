"""The accuracy bench's aggregation: seed means, seed ensembles, the table and re-centring."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rtmoe.offline.metrics import classification_metrics

BENCH = Path(__file__).resolve().parents[1] / "bench" / "accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
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
        return {"balanced_accuracy": acc, "cohen_kappa": 0.1, "weighted_f1": 0.5, "auroc": 0.6}

    results = {
        "SelfRegulationSCP1": {
            "MiniRocket (aeon)": metrics(0.9) | {"auroc": float("nan")},
            "no pretraining, ensemble of 2 seeds": metrics(0.84),
            "no pretraining, mean of 2 seeds": metrics(0.83) | {"sd": {"balanced_accuracy": 0.02}},
            "SpecMoE, mean of 2 seeds": metrics(0.79) | {"sd": {"balanced_accuracy": 0.04}},
            "SpecMoE": metrics(0.8),
            "SpecMoE, ensemble of 2 seeds": metrics(0.81),
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
        "MiniRocket (aeon)",
    ]
    assert "0.830 ± 0.020" in lines[5]
    assert lines[-1].endswith("| — |")  # MiniRocket has no AUROC


def test_recenter_moves_each_test_channel_to_the_train_mean(bench):
    rng = np.random.default_rng(1)
    train = rng.normal(30.0, 5.0, size=(10, 3, 50))
    test = rng.normal(-5.0, 5.0, size=(8, 3, 50))
    shifted = bench.recenter(test, train)
    np.testing.assert_allclose(shifted.mean(axis=(0, 2)), train.mean(axis=(0, 2)))
    offset = shifted - test  # one constant per channel, labels never used
    np.testing.assert_allclose(offset, np.broadcast_to(offset[:1, :, :1], offset.shape))
