"""Accuracy benchmark: SpecMoE, its ablations and peers on the dev train→test splits.

    python bench/accuracy.py --experts runs/default            # full table
    python bench/accuracy.py --models eegnet peers             # EEGNet + MiniRocket + Riemann
    python bench/accuracy.py --models defaults                 # what `rtmoe finetune` gives

For each development data set (SelfRegulationSCP1, FingerMovements, HandMovementDirection)
every method is fitted on the TRAIN split only (neural models: their validation split is
carved from the train trials) and scored once on the TEST split:

- ``rtmoe finetune, defaults``: the command itself with only ``--dataset`` and
  ``--seed`` (fresh experts, every other setting its default), :func:`defaults_row`;
- SpecMoE: the recipe's three pretrained experts (``--experts DIR`` holds
  ``expert0..2`` from ``offline/recipes/default_model.py``), fine-tuned with the
  recipe's ``[moe]``/``[finetune]`` settings. On SCP1 the recipe's own fine-tuned
  ``DIR/default`` is reused when present (the shipped model);
- ablations: no pretraining (three fresh experts), one expert (expert0), no PSD gate
  (plain concatenation);
- EEGNet-8,2 (Lawhern et al. 2018), written here from the paper's architecture
  (:class:`EEGNet`; braindecode cannot be imported beside torch 2.13), trained from
  scratch at each recording's native rate (:func:`eegnet_row`);
- peers (optional bench dependencies ``aeon``, ``pyriemann``): MiniRocket
  (``aeon`` MiniRocketClassifier, raw values at the native rate) and Riemannian tangent
  space (OAS covariances → tangent space → logistic regression). Without them the
  table shows DATA.md's figures for these rows, marked as such (not re-run).

Fine-tuned SpecMoE checkpoints go to ``--work`` and are reused by a later run (delete the
folder to retrain). The table holds test accuracy, balanced accuracy, Cohen's kappa and
AUROC (macro one-vs-rest for more than two classes) for every row; neural rows are run
with every ``--seeds`` seed and shown as mean ± sd over seeds and as the seed ensemble
(mean of the seeds' probabilities). ``--out`` also writes the results (weighted F1 too)
as JSON.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtmoe.config import Config, load_config  # noqa: E402
from rtmoe.metrics import classification_metrics  # noqa: E402
from rtmoe.offline.corpus.devdata import ALL_DEV_DATASETS, load_dev_split  # noqa: E402
from rtmoe.offline.evaluate import evaluate  # noqa: E402
from rtmoe.offline.finetune import TASK_SIGNALS, finetune  # noqa: E402

DATASETS = ALL_DEV_DATASETS  # SCP1, FingerMovements, HandMovementDirection
RECIPE = ROOT / "offline" / "recipes" / "default_model.toml"
SPECMOE_ROWS = ("SpecMoE", "no pretraining", "one expert", "no PSD gate")
DEFAULTS_ROW = "rtmoe finetune, defaults"
EEGNET_ROW = "EEGNet-8,2 (bench)"
NEURAL_ROWS = (DEFAULTS_ROW, *SPECMOE_ROWS, EEGNET_ROW)
PEER_ROWS = ("MiniRocket (aeon)", "Riemann TS + LR (pyriemann)")
MODELS = ("defaults", "specmoe", "eegnet", "peers")
METRIC_KEYS = ("accuracy", "balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc")
TABLE_KEYS = ("accuracy", "balanced_accuracy", "cohen_kappa", "auroc")
#: Peer figures from ../shared/DATA.md (test accuracy, balanced accuracy), shown only
#: when aeon / pyriemann are not installed, under a row name that says so.
DATA_MD_PEERS: dict[str, dict[str, tuple[float, float]]] = {
    "MiniRocket (aeon)": {
        "SelfRegulationSCP1": (0.918, 0.918),
        "FingerMovements": (0.570, 0.572),
        "HandMovementDirection": (0.392, 0.387),
    },
    "Riemann TS + LR (pyriemann)": {
        "SelfRegulationSCP1": (0.553, 0.554),
        "FingerMovements": (0.550, 0.551),
        "HandMovementDirection": (0.338, 0.375),
    },
}
NOT_RUN = " [DATA.md figure, not run]"
#: Diagnostic rows (transductive, not part of any method): see :func:`recenter`.
RECENTERED = " + session re-centering †"
DIAGNOSTIC_ROWS = ("SpecMoE" + RECENTERED, "MiniRocket (aeon)" + RECENTERED)


def recenter(X_test: np.ndarray, X_train: np.ndarray) -> np.ndarray:
    """Shift every test channel by its train-minus-test mean (µV); labels are not used.

    SCP1's test session sits 14-23 µV lower than the train session in both classes,
    which moves trials across a decision boundary learnt on absolute slow-potential
    levels. Removing the per-electrode offset difference estimated from *unlabelled*
    test trials (a session baseline, as a live system could estimate from its first
    minutes) measures how much of a method's test error is that offset.

    Parameters
    ----------
    X_test : ndarray, shape (n_test, n_chans, n_times)
    X_train : ndarray, shape (n_train, n_chans, n_times)

    Returns
    -------
    ndarray, shape (n_test, n_chans, n_times)
    """
    offset = X_train.mean(axis=(0, 2)) - X_test.mean(axis=(0, 2))
    return X_test + offset[None, :, None]


def _metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    m = classification_metrics(y_true, proba)
    return {k: m[k] for k in METRIC_KEYS}


def _indices(y: np.ndarray, labels: list[str]) -> np.ndarray:
    return np.array([labels.index(v) for v in y], dtype=np.int64)


# -- EEGNet-8,2 --------------------------------------------------------------------------
class EEGNet(nn.Module):
    """EEGNet-8,2 of Lawhern et al. (2018), J. Neural Eng. 15 056013, Table 2.

    Block 1: temporal convolution (``F1`` filters, kernel ``sfreq / 2`` samples, "same"
    padding, no bias) → BatchNorm → depthwise spatial convolution over all electrodes
    (depth multiplier ``D``, max-norm 1 per filter, no bias) → BatchNorm → ELU → average
    pooling 4 → dropout. Block 2: separable convolution (depthwise kernel 16 + pointwise
    to ``F2`` filters, no bias) → BatchNorm → ELU → average pooling 8 → dropout.
    Classifier: flatten → dense layer (max-norm 0.25 per unit) → softmax (applied by the
    loss / at prediction). BatchNorm as Keras' (momentum 0.99, eps 1e-3). The max-norm
    constraints are applied after every optimiser step (:meth:`apply_max_norm`), as
    Keras does.

    Parameters
    ----------
    n_chans, n_times : int
        Electrodes and samples per trial.
    n_outputs : int
        Classes.
    sfreq : float
        Rate in Hz; sets the temporal kernel (``round(sfreq / 2)`` samples, 0.5 s).
    F1, D, F2 : int
        Temporal filters, spatial filters per temporal filter, pointwise filters.
    drop_prob : float
        Dropout (the paper: 0.5 within-subject, 0.25 cross-subject).

    Shapes: input (batch, n_chans, n_times) → logits (batch, n_outputs).
    """

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        n_outputs: int,
        sfreq: float,
        *,
        F1: int = 8,
        D: int = 2,
        F2: int = 16,
        drop_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if n_times < 32:
            raise ValueError(f"n_times={n_times}: EEGNet pools by 32; give trials >= 32 samples")
        kernel = max(1, round(sfreq / 2))
        bn = {"momentum": 0.01, "eps": 1e-3}  # Keras momentum 0.99
        # Keras "same": (kernel - 1) // 2 zeros before, the rest after.
        self.pad = nn.ZeroPad2d(((kernel - 1) // 2, kernel // 2, 0, 0))
        self.temporal = nn.Conv2d(1, F1, (1, kernel), bias=False)
        self.bn1 = nn.BatchNorm2d(F1, **bn)
        self.spatial = nn.Conv2d(F1, F1 * D, (n_chans, 1), groups=F1, bias=False)
        self.bn2 = nn.BatchNorm2d(F1 * D, **bn)
        self.pool1 = nn.AvgPool2d((1, 4))
        self.drop1 = nn.Dropout(drop_prob)
        self.pad16 = nn.ZeroPad2d((7, 8, 0, 0))
        self.separable_depth = nn.Conv2d(F1 * D, F1 * D, (1, 16), groups=F1 * D, bias=False)
        self.separable_point = nn.Conv2d(F1 * D, F2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(F2, **bn)
        self.pool2 = nn.AvgPool2d((1, 8))
        self.drop2 = nn.Dropout(drop_prob)
        self.classifier = nn.Linear(F2 * ((n_times // 4) // 8), n_outputs)
        self.kernel, self.F1, self.D = kernel, F1, D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.temporal(self.pad(x.unsqueeze(1))))  # (batch, F1, n_chans, n_times)
        # The depthwise spatial convolution as one batched matmul (the same sums as
        # ``self.spatial(x)``; grouped conv2d is several times slower on CPU).
        w = self.spatial.weight.view(self.F1, self.D, -1)  # (F1, D, n_chans)
        x = (w @ x).flatten(1, 2).unsqueeze(2)  # (batch, F1 * D, 1, n_times)
        x = self.drop1(self.pool1(nn.functional.elu(self.bn2(x))))
        x = self.bn3(self.separable_point(self.separable_depth(self.pad16(x))))
        x = self.drop2(self.pool2(nn.functional.elu(x)))
        return self.classifier(x.flatten(1))

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Max-norm 1 on each spatial filter, 0.25 on each dense unit's weights."""
        w = self.spatial.weight  # (F1 * D, 1, n_chans, 1): one norm per filter
        w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=1.0))
        v = self.classifier.weight  # (n_outputs, n_features): one norm per unit
        v.copy_(torch.renorm(v, p=2, dim=0, maxnorm=0.25))


@dataclasses.dataclass(frozen=True)
class EEGNetRecipe:
    """How :func:`train_eegnet` fits EEGNet-8,2 (the paper's training, CPU-capped).

    Adam at 1e-3 (Keras defaults otherwise), categorical cross-entropy with
    inverse-frequency class weights (as the authors' reference code does), batch 16 (the
    authors' example), ``max_epochs`` epochs (the paper: 500; 300 here, a CPU cap); the
    weights of the epoch with the lowest validation loss are kept (the paper's
    "validation stopping"). ``patience`` (off by default, as in the paper) stops after
    that many epochs without a lower one: with 50, two of five FingerMovements seeds
    stopped at epoch 51-56 on a validation loss that had not left its first-epoch value
    (validation balanced accuracy 0.5, a train-only sign), while the seeds that ran on
    found their best epoch at 102-254. The validation trials are a
    stratified ``val_fraction`` of the TRAIN split, drawn per seed; the test split is
    never looked at. Inputs are the raw values divided by one scalar, the train split's
    standard deviation (so µV and MEG file units alike reach unit scale; offsets kept).
    """

    max_epochs: int = 300
    patience: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.25
    drop_prob: float = 0.5  # all three dev sets are within-subject (train/test same people)


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, val)``: ``round(fraction * n_k)`` (≥ 1) trials of each class to val.

    Parameters
    ----------
    y : ndarray, shape (n_trials,), int class indices
    fraction : float in (0, 1)

    Returns
    -------
    fit, val : ndarray of int, disjoint, together ``arange(n_trials)``, each sorted
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must lie in (0, 1)")
    val = []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        if len(idx) < 2:
            raise ValueError(f"class {k} has {len(idx)} trial(s); need >= 2 to split")
        val.append(idx[: min(len(idx) - 1, max(1, round(fraction * len(idx))))])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val_idx), val_idx


def train_eegnet(
    X: np.ndarray,
    y: np.ndarray,
    sfreq: float,
    n_classes: int,
    seed: int,
    recipe: EEGNetRecipe = EEGNetRecipe(),
    progress: bool = False,
) -> tuple[EEGNet, dict[str, Any], float]:
    """Fit EEGNet-8,2 on train trials only; model selection on a split of them.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times), native rate ``sfreq`` Hz
    y : ndarray, shape (n_trials,), int class indices
    seed : int
        Seeds the weights, the validation split and the batch order.
    progress : bool
        Show a tqdm bar over epochs (stderr) with the best validation loss so far.

    Returns
    -------
    model : EEGNet
        The lowest-validation-loss epoch's weights, in eval mode.
    info : dict
        ``best_epoch`` (1-based), ``epochs_run``, ``val_loss``, ``val_balanced_accuracy``.
    scale : float
        The input divisor (train standard deviation) to apply to any trials fed later.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fit, val = stratified_split(y, recipe.val_fraction, rng)
    scale = float(X[fit].std())
    Xt = torch.as_tensor(X / scale, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    model = EEGNet(X.shape[1], X.shape[2], n_classes, sfreq, drop_prob=recipe.drop_prob)
    counts = np.bincount(y[fit], minlength=n_classes).astype(np.float64)
    weight = torch.as_tensor(
        counts.sum() / (n_classes * np.maximum(counts, 1)), dtype=torch.float32
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optim = torch.optim.Adam(model.parameters(), lr=recipe.lr, eps=1e-7)  # Keras' eps
    best = (math.inf, 0, copy.deepcopy(model.state_dict()), float("nan"))
    epoch = 0
    bar = tqdm(total=recipe.max_epochs, desc=f"EEGNet seed {seed}", unit="ep", disable=not progress)
    for epoch in range(1, recipe.max_epochs + 1):
        bar.update()
        model.train()
        order = fit[rng.permutation(len(fit))]
        for start in range(0, len(order), recipe.batch_size):
            batch = torch.as_tensor(order[start : start + recipe.batch_size])
            if len(batch) < 2:  # BatchNorm needs two trials
                continue
            optim.zero_grad()
            loss_fn(model(Xt[batch]), yt[batch]).backward()
            optim.step()
            model.apply_max_norm()
        model.eval()
        with torch.no_grad():
            logits = model(Xt[val])
            val_loss = float(loss_fn(logits, yt[val]))
        if val_loss < best[0]:
            proba = torch.softmax(logits, dim=1).numpy()
            val_bacc = classification_metrics(y[val], proba)["balanced_accuracy"]
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()), val_bacc)
            bar.set_postfix(best_epoch=epoch, val_loss=f"{val_loss:.3f}", refresh=False)
        elif recipe.patience is not None and epoch - best[1] >= recipe.patience:
            break
    bar.close()
    model.load_state_dict(best[2])
    model.eval()
    info = {
        "best_epoch": best[1],
        "epochs_run": epoch,
        "val_loss": best[0],
        "val_balanced_accuracy": best[3],
    }
    return model, info, scale


def eegnet_row(
    name: str, seed: int, recipe: EEGNetRecipe = EEGNetRecipe(), progress: bool = False
) -> tuple[dict[str, Any], np.ndarray]:
    """Train EEGNet-8,2 from scratch on ``name``'s train split; score the test split once.

    Returns
    -------
    metrics : dict
        Test metrics, the selected epoch, its validation loss / balanced accuracy, minutes.
    proba : ndarray, shape (n_test, n_classes)
        Test class probabilities (for seed ensembles).
    """
    train, test = load_dev_split(name, "train"), load_dev_split(name, "test")
    labels = sorted(set(train.y.tolist()))
    started = time.monotonic()
    model, info, scale = train_eegnet(
        train.X, _indices(train.y, labels), train.sfreq, len(labels), seed, recipe, progress
    )
    with torch.no_grad():
        proba = torch.softmax(model(torch.as_tensor(test.X / scale)), dim=1).numpy()
    metrics = _metrics(_indices(test.y, labels), proba)
    return metrics | info | {"minutes": (time.monotonic() - started) / 60}, proba


def specmoe_row(
    row: str, name: str, experts_dir: Path | None, cfg: Config, work: Path, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Fine-tune one SpecMoE variant on ``name``'s train split.

    Returns
    -------
    metrics : dict
        Test metrics, the best epoch's validation balanced accuracy, minutes, checkpoint.
    proba : ndarray, shape (n_test, n_classes)
        Test class probabilities (for seed ensembles).
    """
    train, test = load_dev_split(name, "train"), load_dev_split(name, "test")
    experts = [experts_dir / f"expert{k}" for k in range(cfg.moe.n_experts)] if experts_dir else []
    moe = cfg.moe
    if row == "no pretraining":
        experts = []
    elif row == "one expert":
        experts = experts[:1]
        moe = dataclasses.replace(moe, n_experts=1)
    elif row == "no PSD gate":
        moe = dataclasses.replace(moe, use_psd_gate=False)
    if row != "no pretraining" and not experts:
        raise SystemExit(f"row {row!r} needs pretrained experts: pass --experts DIR")
    ft = dataclasses.replace(cfg.finetune, seed=seed)
    shipped = experts_dir / "default" if experts_dir else None
    reuse = (
        row == "SpecMoE"
        and name == "SelfRegulationSCP1"
        and seed == cfg.finetune.seed
        and shipped is not None
        and (shipped / "meta.json").exists()
    )
    started = time.monotonic()
    checkpoint = shipped if reuse else work / f"{name}-{row.replace(' ', '_')}-seed{seed}"
    if not (checkpoint / "meta.json").exists():  # an earlier run's fine-tune is reused
        finetune(
            train.X,
            train.y,
            train.sfreq,
            train.ch_names,
            signal=TASK_SIGNALS.get(name, cfg.signal),  # HandMovementDirection: the recipe's
            experts=experts,
            model_name=cfg.model.name,
            cfg=ft,
            moe=moe,
            task_name=name,
            out=checkpoint,
            progress=False,
        )
    ev = evaluate(checkpoint, test.X, test.y, test.sfreq, test.ch_names)
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    metrics = {
        **{k: ev.metrics[k] for k in METRIC_KEYS},
        "val_balanced_accuracy": meta["best_val"]["val_balanced_accuracy"],
        "best_epoch": meta["best_epoch"],
        "minutes": (time.monotonic() - started) / 60,
        "checkpoint": str(checkpoint),
    }
    return metrics, ev.outputs


def defaults_row(name: str, work: Path, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """``rtmoe finetune --dataset NAME --seed S`` as a user runs it, scored on the test split.

    Every other setting is the command's default (the recipe TOML, fresh experts), so
    this row measures what a new user gets, not a bench-side recipe.
    """
    from rtmoe.cli import main as rtmoe_main

    test = load_dev_split(name, "test")
    checkpoint = work / f"{name}-defaults-seed{seed}"
    started = time.monotonic()
    if not (checkpoint / "meta.json").exists():  # an earlier run's fine-tune is reused
        argv = ["finetune", "--dataset", name, "--out", str(checkpoint), "--seed", str(seed)]
        if rtmoe_main([*argv, "--quiet"]) != 0:
            raise SystemExit(f"rtmoe {' '.join(argv)} failed")
    ev = evaluate(checkpoint, test.X, test.y, test.sfreq, test.ch_names)
    meta = json.loads((checkpoint / "meta.json").read_text())
    metrics = {
        **{k: ev.metrics[k] for k in METRIC_KEYS},
        "best_epoch": meta.get("best_epoch"),
        "minutes": (time.monotonic() - started) / 60,
        "checkpoint": str(checkpoint),
    }
    return metrics, ev.outputs


def seed_rows(
    row: str, per_seed: list[dict[str, Any]], probas: list[np.ndarray], y_test: np.ndarray
) -> dict[str, dict[str, Any]]:
    """``row``'s mean ± sd over seeds, and the ensemble averaging the seeds' probabilities."""
    keys = METRIC_KEYS
    n = len(per_seed)
    mean = {k: float(np.mean([m[k] for m in per_seed])) for k in keys}
    sd = {k: float(np.std([m[k] for m in per_seed], ddof=1)) for k in keys}
    return {
        f"{row}, mean of {n} seeds": mean | {"sd": sd, "seeds": per_seed},
        f"{row}, ensemble of {n} seeds": _metrics(y_test, np.mean(probas, axis=0)),
    }


def recentered_specmoe_row(name: str, checkpoint: str | Path) -> dict[str, Any]:
    """Test metrics of a fine-tuned checkpoint on re-centred test trials (diagnostic)."""
    train, test = load_dev_split(name, "train"), load_dev_split(name, "test")
    ev = evaluate(checkpoint, recenter(test.X, train.X), test.y, test.sfreq, test.ch_names)
    return {k: ev.metrics[k] for k in METRIC_KEYS}


def peer_row(row: str, name: str, seed: int) -> dict[str, Any]:
    """Fit a peer on the raw train trials (µV, native rate); test metrics."""
    train, test = load_dev_split(name, "train"), load_dev_split(name, "test")
    if row.endswith(RECENTERED):
        test = dataclasses.replace(test, X=recenter(test.X, train.X))
    labels = sorted(set(train.y.tolist()))
    y_train, y_test = _indices(train.y, labels), _indices(test.y, labels)
    started = time.monotonic()
    if row.startswith("MiniRocket"):
        from aeon.classification.convolution_based import MiniRocketClassifier

        clf = MiniRocketClassifier(random_state=seed)
        clf.fit(train.X.astype(np.float64), y_train)
        pred = clf.predict(test.X.astype(np.float64))
        # Its ridge classifier gives no probabilities: scores from the predicted labels.
        proba = np.eye(len(labels))[pred]
    else:
        from pyriemann.estimation import Covariances
        from pyriemann.tangentspace import TangentSpace
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        clf = make_pipeline(
            Covariances(estimator="oas"),
            TangentSpace(metric="riemann"),
            LogisticRegression(max_iter=1000),
        )
        clf.fit(train.X.astype(np.float64), y_train)
        proba = clf.predict_proba(test.X.astype(np.float64))
    out = _metrics(y_test, proba)
    if row.startswith("MiniRocket"):
        out["auroc"] = float("nan")  # hard labels: no ranking to score
    return out | {"minutes": (time.monotonic() - started) / 60}


def peers_installed() -> bool:
    """Whether the peers' optional bench dependencies (aeon, pyriemann) import."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("aeon", "pyriemann", "sklearn"))


def data_md_peer_row(row: str, name: str) -> dict[str, Any]:
    """DATA.md's figure for a peer that was not run here (accuracy, balanced accuracy)."""
    acc, bacc = DATA_MD_PEERS[row][name]
    nan = float("nan")
    return {"accuracy": acc, "balanced_accuracy": bacc, "cohen_kappa": nan, "auroc": nan}


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per method; accuracy, balanced accuracy, κ, AUROC per set."""
    names = [n for n in DATASETS if n in results]
    present = {r for n in names for r in results[n]}
    # Each neural row, then its "…, mean of N seeds" and "…, ensemble of N seeds" rows.
    neural = [
        r
        for base in NEURAL_ROWS
        for r in (base, *sorted((r for r in present if r.startswith(f"{base}, ")), reverse=True))
    ]
    peers = [r for base in PEER_ROWS for r in (base, base + NOT_RUN)]
    rows = [r for r in (*neural, *peers, *DIAGNOSTIC_ROWS) if r in present]
    head = "| method | " + " | ".join(f"{n} acc | bal. acc | κ | AUROC" for n in names)
    lines = [head + " |", "|---" * (1 + len(TABLE_KEYS) * len(names)) + "|"]
    for r in rows:
        cells = []
        for n in names:
            m = results[n].get(r)
            if m is None:
                cells += ["—"] * len(TABLE_KEYS)
                continue
            for k in TABLE_KEYS:
                v = m.get(k, float("nan"))
                cell = f"{v:.3f}" if np.isfinite(v) else "—"
                sd = m.get("sd", {}).get(k)
                if sd is not None and k in ("accuracy", "balanced_accuracy"):
                    cell += f" ± {sd:.3f}"
                cells.append(cell)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_group(
    results: dict[str, dict[str, Any]],
    row: str,
    runs: list[tuple[dict[str, Any], np.ndarray]],
    y_test: np.ndarray,
    seeds: list[int],
) -> None:
    """Store ``row``'s seed mean and ensemble rows (one seed: the single run only)."""
    if len(runs) == 1:
        results[row] = runs[0][0] | {"seed": seeds[0]}
        return
    results |= seed_rows(row, [m for m, _ in runs], [p for _, p in runs], y_test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--experts", type=Path, help="recipe run folder with expert0..2")
    parser.add_argument("--config", type=Path, default=RECIPE, help="recipe TOML")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="which groups of rows to run (specmoe: fine-tunes, slow on CPU)",
    )
    parser.add_argument("--rows", nargs="+", help="subset of the SpecMoE rows")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of every neural row"
    )
    parser.add_argument("--eegnet-max-epochs", type=int, default=EEGNetRecipe.max_epochs)
    parser.add_argument(
        "--eegnet-patience",
        type=int,
        default=EEGNetRecipe.patience,
        help="stop EEGNet after N epochs without a lower validation loss (None: never)",
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench_accuracy"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument(
        "--table-from",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="run nothing: print the table of earlier --out files (e.g. one per data set)",
    )
    args = parser.parse_args(argv)
    if args.table_from:
        merged: dict[str, dict[str, dict[str, Any]]] = {}
        for path in args.table_from:
            for name, rows in json.loads(path.read_text()).items():
                merged.setdefault(name, {}).update(rows)
        print(format_table(merged))
        return 0
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    specmoe_rows = (args.rows or list(SPECMOE_ROWS)) if "specmoe" in args.models else []
    eegnet = EEGNetRecipe(max_epochs=args.eegnet_max_epochs, patience=args.eegnet_patience)
    run_peers = "peers" in args.models and peers_installed()
    if "peers" in args.models and not run_peers:
        print("aeon/pyriemann not installed: peer rows show DATA.md's figures, not re-run")
    peer_rows = [*PEER_ROWS, DIAGNOSTIC_ROWS[1]] if run_peers else []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in args.datasets:
        results[name] = {}
        labels = sorted(set(load_dev_split(name, "train").y.tolist()))
        y_test = _indices(load_dev_split(name, "test").y, labels)
        if "defaults" in args.models:
            runs = []
            for seed in args.seeds:
                runs.append(defaults_row(name, args.work, seed))
                print(f"{name} {DEFAULTS_ROW} seed {seed}: {json.dumps(runs[-1][0])}", flush=True)
            _seed_group(results[name], DEFAULTS_ROW, runs, y_test, args.seeds)
        for row in specmoe_rows:
            runs = []
            for seed in args.seeds:
                runs.append(specmoe_row(row, name, args.experts, cfg, args.work, seed))
                print(f"{name} {row} seed {seed}: {json.dumps(runs[-1][0])}", flush=True)
            if row == "SpecMoE" and len(runs) > 1:
                results[name][row] = runs[0][0]  # first seed; on SCP1 the shipped model
            _seed_group(results[name], row, runs, y_test, args.seeds)
        if "SpecMoE" in specmoe_rows:
            checkpoint = results[name]["SpecMoE"]["checkpoint"]  # the first seed's
            results[name][DIAGNOSTIC_ROWS[0]] = recentered_specmoe_row(name, checkpoint)
        if "eegnet" in args.models:
            runs = []
            for seed in args.seeds:
                runs.append(eegnet_row(name, seed, eegnet, progress=sys.stderr.isatty()))
                print(f"{name} {EEGNET_ROW} seed {seed}: {json.dumps(runs[-1][0])}", flush=True)
            _seed_group(results[name], EEGNET_ROW, runs, y_test, args.seeds)
        for row in peer_rows:
            results[name][row] = peer_row(row, name, args.seeds[0])
            print(f"{name} {row}: {json.dumps(results[name][row])}", flush=True)
        if "peers" in args.models and not run_peers:
            for row in PEER_ROWS:
                results[name][row + NOT_RUN] = data_md_peer_row(row, name)
    print(format_table(results))
    if "SpecMoE" in specmoe_rows or run_peers:
        print("† test trials shifted by the train-minus-test channel means (label-free): a")
        print("  diagnostic of the session offset, not a method (see recenter()).")
    if run_peers:
        print("MiniRocket predicts hard labels: no AUROC.")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
