"""The shipped default model: loads by name, documented task, decodes real SCP1 test trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtmoe.checkpoint import WEIGHTS_FILE, absolute_paths
from rtmoe.models.shipped import SHIPPED_MODELS, UnknownModelError, load_model, shipped_path
from rtmoe.models.specmoe import SPECMOE_KIND

SCP1_CHANNELS = ("A1-Cz", "A2-Cz", "C3f", "C3p", "C4f", "C4p")


@pytest.fixture(scope="module")
def default():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("default")
    torch.set_num_threads(previous)


def test_default_is_shipped_with_a_model_card():
    path = shipped_path("default")
    assert (path / WEIGHTS_FILE).is_file()
    card = (path / "MODEL_CARD.md").read_text()
    for section in ("## Data and recipe", "## Test metrics", "## Limits"):
        assert section in card
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    assert size_mb < 8, f"shipped model is {size_mb:.1f} MB; keep package data small"


def test_default_config_and_task_are_the_documented_ones(default):
    assert default.checkpoint.kind == SPECMOE_KIND
    task, signal = default.task, default.config.signal
    assert task.ch_names == SCP1_CHANNELS
    assert task.labels == ("negativity", "positivity")
    assert (task.n_times, signal.sfreq) == (700, 200.0)  # 3.5 s at 200 Hz
    assert signal.l_freq is None  # slow cortical potentials kept
    assert default.moe.n_experts == 3 and default.moe.use_psd_gate
    assert default.config.model.name == "small"
    assert not absolute_paths(default.checkpoint.meta)  # nothing of the machine it was built on
    assert not default.model.training


def test_path_is_accepted_and_unknown_names_are_listed(default):
    again = load_model(shipped_path("default"))
    assert again.task == default.task
    assert load_model(default).model is default.model  # a loaded model passes through
    with pytest.raises(UnknownModelError, match="default"):
        load_model("no-such-model")
    with pytest.raises(UnknownModelError, match=r"\['default'\]") as err:
        shipped_path("nope")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert set(SHIPPED_MODELS) == {"default"}


def test_default_decodes_real_scp1_test_trials(default):
    # 60 test trials (30 per class): chance is 0.5; the card reports ~0.85 on all 293.
    # With 60 trials, 0.7 is > 3 standard errors above chance.
    from rtmoe.offline.corpus.devdata import load_dev_split
    from rtmoe.offline.evaluate import evaluate

    test = load_dev_split("SelfRegulationSCP1", "test")
    rng = np.random.default_rng(0)
    pick = np.concatenate(
        [
            rng.choice(np.flatnonzero(test.y == label), 30, replace=False)
            for label in default.task.labels
        ]
    )
    ev = evaluate(default, test.X[pick], test.y[pick], test.sfreq, test.ch_names)
    assert ev.metrics["balanced_accuracy"] >= 0.7, ev.metrics
    assert ev.metrics["auroc"] >= 0.8, ev.metrics
