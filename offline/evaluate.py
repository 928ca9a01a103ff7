"""Evaluating a fine-tuned SpecMoE checkpoint and the ``rtmoe evaluate`` command.

The checkpoint alone defines the preprocessing (its ``signal`` config), the electrodes,
the window length and the label map; trials in µV at any rate are brought to that form,
and trials the model cannot take (missing electrodes, another window length, unknown
labels) are refused with an error naming the fix. Besides the metrics it draws the
confusion matrix and the mean gate activation of every expert for every true class.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtmoe.adaptation import recentre_in_order
from rtmoe.cli import Command
from rtmoe.config import Config, ConfigError, add_config_arguments, config_from_args
from rtmoe.errors import BadValueError, UserError
from rtmoe.metrics import classification_metrics, confusion_matrix, regression_metrics
from rtmoe.models.shipped import load_model
from rtmoe.models.specmoe import LoadedSpecMoE, TaskConfig
from rtmoe.offline import commands as offline_commands
from rtmoe.offline.data import add_data_arguments, load_trials
from rtmoe.offline.finetune import predict
from rtmoe.signal import map_channels, preprocess_trials


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    metrics : dict of str to float
        Classification: balanced accuracy, kappa, weighted F1, AUROC, AUPRC, accuracy;
        regression: Pearson r, R², RMSE.
    labels : tuple of str
        The checkpoint's label map (empty for regression).
    y_true : ndarray, shape (n_trials,) int class indices, or (n_trials, n_targets)
    outputs : ndarray, shape (n_trials, n_outputs)
        Class probabilities, or regression predictions.
    gates : ndarray, shape (n_trials, n_experts)
        Gate activation of each expert averaged over electrodes and features.
    confusion : ndarray, shape (n_classes, n_classes) or None
        Rows true, columns predicted.
    gates_per_class : ndarray, shape (n_classes, n_experts) or None
        Mean of ``gates`` over the trials of each true class (nan for an absent class).
    """

    metrics: dict[str, float]
    labels: tuple[str, ...]
    y_true: np.ndarray
    outputs: np.ndarray
    gates: np.ndarray
    confusion: np.ndarray | None
    gates_per_class: np.ndarray | None


def _targets(y: np.ndarray, task: TaskConfig) -> np.ndarray:
    if task.regression:
        return np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y).astype(str)
    unknown = sorted(set(y.tolist()) - set(task.labels))
    if unknown:
        raise BadValueError(
            f"the data hold labels {unknown} that the checkpoint does not know (its labels: "
            f"{list(task.labels)}); evaluate on data of the task it was fine-tuned for"
        )
    index = {label: i for i, label in enumerate(task.labels)}
    return np.array([index[v] for v in y], dtype=np.int64)


def evaluate(
    model: str | Path | LoadedSpecMoE,
    X: np.ndarray,
    y: np.ndarray,
    sfreq: float,
    ch_names: Sequence[str],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    adapt_s: float = 0.0,
) -> Evaluation:
    """Metrics, confusion matrix and gate summaries of a checkpoint on labelled trials.

    Parameters
    ----------
    model : str, path or LoadedSpecMoE
        A shipped model's name, a ``specmoe`` checkpoint folder, or a loaded model
        (`rtmoe.models.shipped.load_model`).
    X : ndarray, shape (n_trials, n_chans, n_times), µV
    y : ndarray, shape (n_trials,)
        Class labels (or regression targets).
    sfreq : float
        Rate of ``X`` in Hz.
    ch_names : sequence of str, length n_chans
        Must include the checkpoint's electrodes (other channels are ignored).
    adapt_s : float
        Session adaptation as live with ``runtime.adapt_s`` (`rtmoe.adaptation`): the
        trials are taken as consecutive decodes in their order, one window length apart;
        meaningful only when that is the recording's order. 0: off.
    """
    loaded = load_model(model, device)
    task = loaded.task
    if len(y) != len(X):
        raise BadValueError(f"{len(y)} labels for {len(X)} trials; give one label per trial")
    targets = _targets(y, task)
    # The live rule (T7 feeds T3): what decodes live is what evaluates.
    fix = "record these electrodes or fine-tune a model for this montage"
    rows = map_channels(ch_names, task.ch_names, fix=fix)
    Xp = preprocess_trials(np.asarray(X)[:, rows], sfreq, loaded.config.signal)
    if Xp.shape[-1] != task.n_times:
        sfreq_model = loaded.config.signal.sfreq
        raise BadValueError(
            f"trials of {np.asarray(X).shape[-1]} samples at {sfreq:g} Hz give "
            f"{Xp.shape[-1]} samples at {sfreq_model:g} Hz, but the checkpoint takes windows "
            f"of n_times={task.n_times} ({task.n_times / sfreq_model:g} s); cut the trials "
            "to that length"
        )
    param = next(loaded.model.parameters())
    x = torch.from_numpy(Xp).to(param.device)
    outputs, gates = predict(loaded.model, x, batch_size=batch_size)
    gates_np = gates.numpy()
    if task.regression:
        return Evaluation(
            regression_metrics(targets, outputs.numpy()),
            (),
            targets,
            outputs.numpy(),
            gates_np,
            None,
            None,
        )
    proba = outputs.softmax(dim=1).numpy()
    if adapt_s > 0:
        proba = recentre_in_order(proba, adapt_s, task.n_times / loaded.config.signal.sfreq)
    n_classes = len(task.labels)
    with np.errstate(invalid="ignore"):
        per_class = np.stack(
            [
                gates_np[targets == k].mean(axis=0)
                if (targets == k).any()
                else np.full(gates_np.shape[1], np.nan)
                for k in range(n_classes)
            ]
        )
    return Evaluation(
        classification_metrics(targets, proba),
        task.labels,
        targets,
        proba,
        gates_np,
        confusion_matrix(targets, proba.argmax(axis=1), n_classes),
        per_class,
    )


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str) -> None:
    """Confusion matrix PNG: counts and row-normalised colour (recall per true class)."""
    from matplotlib.figure import Figure

    recall = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2.0))
    ax = fig.add_subplot()
    image = ax.imshow(recall, vmin=0, vmax=1, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        colour = "white" if recall[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count}\n{recall[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_gates(
    gates_per_class: np.ndarray, labels: Sequence[str], path: str | Path, title: str
) -> None:
    """Grouped bars: mean gate activation of each expert (x) for each true class (colour)."""
    from matplotlib.figure import Figure

    n_classes, n_experts = gates_per_class.shape
    width = 0.8 / n_classes
    fig = Figure(figsize=(2 + 1.5 * n_experts, 3.5))
    ax = fig.add_subplot()
    for k in range(n_classes):
        ax.bar(
            np.arange(n_experts) + (k - (n_classes - 1) / 2) * width,
            gates_per_class[k],
            width,
            label=labels[k],
        )
    ax.set(
        xticks=range(n_experts),
        xticklabels=[f"expert {i + 1}" for i in range(n_experts)],
        ylabel="mean gate activation",
        ylim=(0, 1),
        title=title,
    )
    ax.legend(title="true class", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="specmoe checkpoint")
    add_data_arguments(parser, "test")
    parser.add_argument(
        "--out", type=Path, help="folder for metrics.json and the PNGs (default: beside --model)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--adapt-s",
        type=float,
        default=0.0,
        help="score with session adaptation as `rtmoe stream --adapt-s` (trials taken as "
        "consecutive decodes in file order, one window apart; only meaningful if that is "
        "the recording's order); default 0: off",
    )
    add_config_arguments(
        parser,
        sections=("signal",),
        base_note="the checkpoint's own tree (--model)",
        config_help="TOML whose [signal] (filters) replaces the checkpoint's, field by field "
        "(an ablation: the model was trained with its own)",
    )


def _checkpoint_signal(model: LoadedSpecMoE):
    """The tree evaluated with: the checkpoint's; [signal] filters may differ, not the
    rate or the unit the model was trained at."""

    def check(cfg: Config) -> Config:
        for name in ("sfreq", "unit_uv"):
            ours, theirs = getattr(cfg.signal, name), getattr(model.config.signal, name)
            if ours != theirs:
                raise ConfigError(
                    f"signal.{name}={ours} differs from the checkpoint's {theirs}; the model "
                    f"only takes inputs at that value: leave signal.{name} out"
                )
        return cfg

    return check


def _run(args: argparse.Namespace) -> int:
    loaded = load_model(str(args.model), args.device)  # a shipped name or a folder
    tree = config_from_args(args, base=loaded.config, finish=_checkpoint_signal(loaded))
    loaded = dataclasses.replace(loaded, config=tree)
    trials, _ = load_trials(args.dataset, args.data, args.split)
    if not args.adapt_s >= 0:
        raise UserError(f"--adapt-s {args.adapt_s:g} must be >= 0 seconds (0: off)")
    result = evaluate(
        loaded,
        trials.X,
        trials.y,
        trials.sfreq,
        trials.ch_names,
        device=args.device,
        adapt_s=args.adapt_s,
    )
    tag = f"{trials.name}-{args.split}" if args.dataset else trials.name
    out = args.out or args.model.parent / f"{args.model.name}-eval-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    adapted = f", session adaptation adapt_s={args.adapt_s:g}" if args.adapt_s else ""
    print(f"{args.model} on {tag} ({len(trials.X)} trials{adapted})")
    for name, value in result.metrics.items():
        print(f"  {name:18s} {value:.4f}")
    (out / "metrics.json").write_text(
        json.dumps(
            {"model": str(args.model), "data": tag, "adapt_s": args.adapt_s, **result.metrics},
            indent=2,
        )
    )
    if result.confusion is not None:
        plot_confusion(result.confusion, result.labels, out / "confusion.png", tag)
        plot_gates(result.gates_per_class, result.labels, out / "gates.png", tag)
    print(f"  wrote {out}")
    return 0


command = Command(
    help=offline_commands.evaluate.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
