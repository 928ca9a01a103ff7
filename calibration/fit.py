"""Fitting a subject's adaptation: alignment, then head (and gate) fine-tuning, chosen by CV.

Alignment (unsupervised, from the subject's own windows, labels unused):

- ``"none"``: the windows as preprocessed.
- ``"ea"``: Euclidean alignment, scale-preserving: with ``R`` the mean over trials of the
  channel covariance (each window's channel means removed), shrunk towards its average
  eigenvalue by ``EA_SHRINKAGE`` (nearly collinear montages make ``R`` close to
  singular), the matrix is ``M = sqrt(tr(R)/C) · R^{-1/2}``: the aligned windows have an
  identity-shaped mean covariance at the subject's average power, so the model keeps
  seeing amplitudes of the size it was trained on. ``M`` mixes channels linearly and
  identically at every sample; live, it is applied to every preprocessed chunk
  (`rtmoe.signal.apply_alignment`), which equals applying it to every window.

Tuning (which weights change):

- ``"base"``: none (the base model as it is; only when the classes are the base's);
- ``"head"``: the gates and the head; experts frozen;
- ``"partial"``: also the top of every expert (bottleneck convolution and attention).

BatchNorm statistics and the experts' dropout stay as in the base model (eval mode)
in every setting, so a profile never changes how the base model normalises its input.
Every (alignment, tuning) pair is scored by stratified k-fold cross-validation on the
subject's trials (balanced accuracy of the pooled held-out predictions); the best is
refitted on all trials. The whole fit is bounded by ``max_minutes``.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtmoe.errors import UserError
from rtmoe.folds import fold_assignment
from rtmoe.metrics import classification_metrics, confusion_matrix
from rtmoe.models.specmoe import LoadedSpecMoE, MoEFeatures, SpecMoE, SpecMoEEnsemble
from rtmoe.profiles import resize_head
from rtmoe.signal import apply_alignment

ALIGNMENTS: tuple[str, ...] = ("none", "ea")
TUNINGS: tuple[str, ...] = ("base", "head", "partial")
#: Shrinkage of the mean covariance towards tr(R)/C · I before the inverse square root.
EA_SHRINKAGE = 1e-3
#: Share of ``max_minutes`` given to cross-validation; the rest to the final fit.
CV_SHARE = 0.8


class FitError(UserError, ValueError):
    """The trials cannot support a fit (too few per class); the message says what to add."""


@dataclass(frozen=True)
class FitResult:
    """What `fit_subject` returns.

    Attributes
    ----------
    model : SpecMoE
        Fitted on all trials with the chosen settings, eval mode.
    alignment : ndarray, shape (n_chans, n_chans), or None
    settings : dict
        ``alignment``, ``tuning``, ``epochs``, ``lr``, ``n_folds``, ``seed``.
    metrics : dict
        Cross-validated metrics of the chosen settings (`rtmoe.metrics`), with
        ``confusion`` (rows true, columns predicted) and ``n_trials``.
    candidates : list of dict
        Every candidate's settings, balanced accuracy, per-fold accuracies, epochs run.
    labels : tuple of str
    """

    model: SpecMoE
    alignment: np.ndarray | None
    settings: dict[str, Any]
    metrics: dict[str, Any]
    candidates: list[dict[str, Any]]
    labels: tuple[str, ...]


def ea_matrix(X: np.ndarray, shrinkage: float = EA_SHRINKAGE) -> np.ndarray:
    """Scale-preserving Euclidean-alignment matrix of a set of windows.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times)

    Returns
    -------
    ndarray, shape (n_chans, n_chans), float32, symmetric
        ``M`` such that the mean covariance of ``M @ X`` is ``tr(R)/C · I`` up to the
        shrinkage.
    """
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(axis=2, keepdims=True)
    R = np.einsum("nct,ndt->cd", centred, centred) / (X.shape[0] * X.shape[2])
    n_chans = R.shape[0]
    level = np.trace(R) / n_chans
    R = (1 - shrinkage) * R + shrinkage * level * np.eye(n_chans)
    w, V = np.linalg.eigh(R)
    return (np.sqrt(level) * (V / np.sqrt(w)) @ V.T).astype(np.float32)


@torch.no_grad()
def cached_features(model: SpecMoE, x: torch.Tensor, batch_size: int = 64) -> MoEFeatures:
    """`SpecMoE.forward_features` of windows ``x (n, C, T)`` in eval mode, batch by batch.

    With the experts frozen this is everything the gates and head read, so head-only
    training computes it once and runs `SpecMoE.forward_head` on slices of it
    (``features.take(rows)``) every epoch.
    """
    model.eval()
    return MoEFeatures.cat(
        [model.forward_features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def trainable_parameters(model: SpecMoE, tuning: str) -> list[torch.nn.Parameter]:
    """The parameters ``tuning`` changes (see the module docstring)."""
    if tuning == "base":
        return []
    params = list(model.head_parameters())
    if tuning == "partial":
        for expert in model.experts:
            params += list(expert.bottleneck_conv.parameters())
            params += list(expert.bottleneck_attn.parameters())
    elif tuning != "head":
        raise ValueError(f"tuning={tuning!r} must be one of {TUNINGS}")
    return params


def train(
    model: SpecMoE,
    x: torch.Tensor,
    y: torch.Tensor,
    tuning: str,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    time_limit_s: float,
    features: MoEFeatures | None = None,
) -> int:
    """Fine-tune ``model`` in place on windows ``x (n, C, T)`` and classes ``y (n,)``.

    Class-weighted cross-entropy, Adam (amsgrad). Stops after ``epochs`` or once
    ``time_limit_s`` has passed at the end of an epoch; returns the epochs run. With
    ``tuning="head"`` the frozen experts run once (or ``features``, the
    `cached_features` of ``x``, are used) and every epoch trains `SpecMoE.forward_head`
    on their output.
    """
    params = trainable_parameters(model, tuning)
    if not params:
        return 0
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    head_only = tuning == "head"
    if head_only and features is None:
        features = cached_features(model, x)
    with torch.no_grad():
        psd = None if head_only else model.psd(x)
    n_classes = model.n_outputs
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = len(y) / (n_classes * counts.clamp(min=1))
    optimizer = torch.optim.Adam(params, lr=lr, amsgrad=True)
    gen = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    model.eval()
    model.head.train()  # head dropout only; BatchNorm statistics stay the base model's
    done = 0
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            if head_only:
                out = model.forward_head(features.take(batch))
            else:
                out = model(x[batch], psd[batch])
            loss = F.cross_entropy(out, y[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        done += 1
        if time.monotonic() - started > time_limit_s:
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return done


@torch.no_grad()
def predict_proba(
    model: SpecMoE,
    x: torch.Tensor,
    batch_size: int = 64,
    features: MoEFeatures | None = None,
) -> np.ndarray:
    """Class probabilities ``(n, n_outputs)`` of windows ``x (n, C, T)`` (eval mode).

    ``features``: the `cached_features` of ``x`` (under this model's experts), fed to
    `SpecMoE.forward_head` instead of running the experts again.
    """
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        rows = slice(i, i + batch_size)
        logits = model(x[rows]) if features is None else model.forward_head(features.take(rows))
        out.append(logits.softmax(dim=1))
    return torch.cat(out).double().numpy()


def fit_subject(
    base: LoadedSpecMoE,
    X: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    *,
    alignments: Sequence[str] = ALIGNMENTS,
    tunings: Sequence[str] = TUNINGS,
    n_folds: int = 5,
    min_trials_per_class: int = 10,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 32,
    max_minutes: float = 3.0,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Choose alignment and tuning by cross-validation, then fit on all trials.

    Parameters
    ----------
    base : LoadedSpecMoE
        The base model (not modified).
    X : ndarray, shape (n_trials, n_chans, n_times), model units
        Unaligned windows (`rtmoe.calibration.epochs.epoch_recording`).
    y : ndarray, shape (n_trials,), int
    labels : sequence of str
        Class names; when they are not the base model's labels, the head's last layer
        starts afresh and ``"base"`` is not a candidate.
    n_folds : int
        Folds of the cross-validation (fewer when a class has fewer trials).
    min_trials_per_class : int
        Fewer trials in any class is a `FitError`.
    max_minutes : float
        Wall-clock bound of the whole fit: ``CV_SHARE`` of it for the cross-validation,
        shared by the runs that train through the experts (``"partial"``), the rest for
        the final fit. Head-only runs reuse the experts' features and take seconds.

    Raises
    ------
    FitError
        Too few trials per class, or ``base`` is a k-fold ensemble.
    """
    if isinstance(base.model, SpecMoEEnsemble):
        raise FitError(
            f"the base model {base.checkpoint.path} is an ensemble of "
            f"{base.model.n_members} fold models (finetune.folds={base.model.n_members}); "
            "calibration tunes one model's head: pass a model fine-tuned with --folds 1"
        )
    started = time.monotonic()
    labels = tuple(labels)
    counts = np.bincount(y, minlength=len(labels))
    short = {lab: int(n) for lab, n in zip(labels, counts, strict=True) if n < min_trials_per_class}
    if short:
        raise FitError(
            f"too few trials per class: {short} (need at least {min_trials_per_class} each; "
            f"all: {dict(zip(labels, counts.tolist(), strict=True))}); record more trials "
            "(run the same command again to resume the session) or lower "
            "--min-trials-per-class"
        )
    n_folds = int(min(n_folds, counts.min()))
    same_head = labels == tuple(base.task.labels)
    tunings = [t for t in tunings if same_head or t != "base"]
    if not tunings:
        raise FitError(
            f"classes {list(labels)} differ from the model's {list(base.task.labels)}, so the "
            "head must be trained; allow tuning 'head' or 'partial'"
        )
    say = on_progress or (lambda _: None)
    folds = fold_assignment(y, n_folds, seed, labels, fix="lower --folds or record more trials")
    y_t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    cv_deadline = started + 60 * max_minutes * CV_SHARE
    heavy_left = sum(t == "partial" for t in tunings) * len(alignments) * n_folds

    def fresh() -> SpecMoE:
        model = copy.deepcopy(base.model).cpu()
        torch.manual_seed(seed)  # the same fresh head in every fold and candidate
        return resize_head(model, len(labels))

    common = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    candidates = []
    for alignment in alignments:
        proba = {t: np.zeros((len(y), len(labels))) for t in tunings}
        epochs_run: dict[str, list[int]] = {t: [] for t in tunings}
        for k in range(n_folds):
            train_idx, test_idx = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            matrix = ea_matrix(X[train_idx]) if alignment == "ea" else None
            x = torch.from_numpy(apply_alignment(X, matrix))
            # The base experts' features serve every candidate that keeps them frozen.
            feats = cached_features(base.model.cpu(), x)
            for tuning in tunings:
                model = fresh()
                frozen = tuning != "partial"
                if not frozen:
                    limit_s = max(0.0, cv_deadline - time.monotonic()) / max(1, heavy_left)
                    heavy_left -= 1
                epochs_run[tuning].append(
                    train(
                        model,
                        x[train_idx],
                        y_t[train_idx],
                        tuning,
                        seed=seed + k,
                        time_limit_s=math.inf if frozen else limit_s,
                        features=feats.take(train_idx) if frozen else None,
                        **common,
                    )
                )
                proba[tuning][test_idx] = predict_proba(
                    model, x[test_idx], features=feats.take(test_idx) if frozen else None
                )
        for tuning in tunings:
            m = classification_metrics(y, proba[tuning])
            fold_acc = [
                float(np.mean(proba[tuning][folds == k].argmax(1) == y[folds == k]))
                for k in range(n_folds)
            ]
            candidates.append(
                {
                    "alignment": alignment,
                    "tuning": tuning,
                    "balanced_accuracy": m["balanced_accuracy"],
                    "accuracy": m["accuracy"],
                    "fold_accuracy": fold_acc,
                    "epochs_run": epochs_run[tuning],
                    "_proba": proba[tuning],
                }
            )
            say(
                f"  CV {alignment:>4} + {tuning:<7}: balanced accuracy "
                f"{m['balanced_accuracy']:.3f} (folds {', '.join(f'{a:.2f}' for a in fold_acc)}"
                f"; epochs {epochs_run[tuning]})"
            )
    # Ties go to the simpler setting (listed first: no alignment, fewer weights changed).
    best = max(candidates, key=lambda c: c["balanced_accuracy"])
    proba = best.pop("_proba")
    for c in candidates:
        c.pop("_proba", None)
    matrix = ea_matrix(X) if best["alignment"] == "ea" else None
    model = fresh()
    final_epochs = int(np.median(best["epochs_run"])) if best["tuning"] != "base" else 0
    remaining_s = 60 * max_minutes - (time.monotonic() - started)
    train(
        model, torch.from_numpy(apply_alignment(X, matrix)), y_t, best["tuning"],
        seed=seed, time_limit_s=max(0.0, remaining_s), **{**common, "epochs": final_epochs},
    )  # fmt: skip
    metrics = classification_metrics(y, proba)
    metrics["confusion"] = confusion_matrix(y, proba.argmax(1), len(labels)).tolist()
    metrics["n_trials"] = len(y)
    settings = {
        "alignment": best["alignment"],
        "tuning": best["tuning"],
        "epochs": final_epochs,
        "lr": lr,
        "batch_size": batch_size,
        "n_folds": n_folds,
        "seed": seed,
        "max_minutes": max_minutes,
        "fit_s": round(time.monotonic() - started, 1),
    }
    return FitResult(model.eval(), matrix, settings, metrics, candidates, labels)


def score_windows(
    model: SpecMoE, alignment: np.ndarray | None, X: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """Metrics of a fitted model (with its alignment) on windows ``X`` and classes ``y``.

    ``X (n, n_chans, n_times)`` are preprocessed windows in model units, as
    `rtmoe.calibration.epochs.epoch_recording` cuts them; raw trials of a data set are
    scored by `rtmoe.offline.evaluate.evaluate` (the one ``evaluate``).
    """
    proba = predict_proba(model, torch.from_numpy(apply_alignment(X, alignment)))
    metrics = classification_metrics(y, proba)
    metrics["confusion"] = confusion_matrix(y, proba.argmax(1), proba.shape[1]).tolist()
    metrics["predictions"] = proba.argmax(1).tolist()
    return metrics


def confusion_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """A confusion-matrix figure (rows true, columns predicted) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.9 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
