"""Fine-tuning SpecMoE on labelled trials (SPEC §5) and the ``rtmoe finetune`` command.

Trials in µV are preprocessed by the same function as the pretraining corpora and the
live path (resample to ``signal.sfreq``, causal filter, divide by ``signal.unit_uv``),
with the :class:`SignalConfig` the caller gives (``rtmoe finetune``: the ``[signal]`` of
``--config``, by default the shipped recipe's, never chosen from a file name).
A stratified, seeded validation split is carved from the training trials; the epoch
with the best validation weighted F1 (regression: lowest RMSE) is
saved as a ``specmoe`` checkpoint holding everything needed to decode live: weights,
the signal/spectral/expert config, electrodes, window length and label map.

With ``finetune.folds = k > 1`` the trials are cut into k stratified folds instead
(:func:`stratified_folds`); k models are trained, each on k-1 folds with its epoch
picked on the fold it did not see, and saved together as one
:class:`~rtmoe.models.specmoe.SpecMoEEnsemble` (mean probabilities). Every trial is
then predicted once by the model that never trained on it: those out-of-fold
predictions give the CV estimate (``FinetuneResult.cv``, ``meta.json``'s ``cv``).

``FinetuneConfig`` (rtmoe.config) holds the optimisation settings;
meanwhile checkpoints store it in ``meta.json`` under ``finetune``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtmoe.checkpoint import (
    EXPERT_KIND,
    CheckpointError,
    checkpoint_identity,
    load_checkpoint,
)
from rtmoe.cli import Command, UserError
from rtmoe.config import (
    CHANNEL_POOLS,
    Config,
    ConfigError,
    FinetuneConfig,
    MoEConfig,
    SignalConfig,
    add_config_arguments,
    config_from_args,
    load_config,
)
from rtmoe.errors import BadValueError
from rtmoe.folds import fold_assignment
from rtmoe.models.registry import MODEL_SIZES, load_expert, model_config
from rtmoe.models.shipped import SHIPPED_MODELS, load_model, shipped_path
from rtmoe.models.spechinet import SpecHiNet, SpecHiNetEncoder
from rtmoe.models.specmoe import (
    SPECMOE_KIND,
    SpecMoE,
    SpecMoEEnsemble,
    TaskConfig,
    build_specmoe,
    ensemble_meta,
    specmoe_meta,
)
from rtmoe.offline import commands as offline_commands
from rtmoe.offline.augment import Augmentation
from rtmoe.offline.data import add_data_arguments, load_trials
from rtmoe.signal import preprocess_trials

#: Preprocessing the recipe and bench use per development task (chosen by task, never by
#: file name; the CLI takes its filters from ``--config`` and the options). SCP1's
#: classes live below 1 Hz, so no high-pass; FingerMovements is sampled at 100 Hz, so
#: nothing above its 50 Hz
#: Nyquist limit can be filtered, and its readiness potential is slow too.
TASK_SIGNALS: dict[str, SignalConfig] = {
    "SelfRegulationSCP1": SignalConfig(l_freq=None, h_freq=75.0, notch_freq=50.0),
    "FingerMovements": SignalConfig(l_freq=None, h_freq=None, notch_freq=None),
}


@dataclass(frozen=True)
class FoldResult:
    """One trained model of :func:`finetune`: its split, epochs and the epoch it kept.

    Attributes
    ----------
    train_idx, val_idx : ndarray of int
        Trials it trained on and picked its epoch on (disjoint).
    history : list of dict
        One entry per epoch: ``epoch``, ``train_loss``, ``val_loss``, validation
        metrics, ``lr`` and ``experts_frozen``.
    best_epoch : int
        1-based epoch of the kept weights.
    stopped : str
        ``"completed"``, ``"early stop"`` or ``"time budget"``: why training ended.
    val_outputs : Tensor, shape (len(val_idx), n_outputs)
        The kept weights' logits (or outputs) on ``val_idx``, on the CPU.
    """

    train_idx: np.ndarray
    val_idx: np.ndarray
    history: list[dict[str, Any]]
    best_epoch: int
    stopped: str
    val_outputs: torch.Tensor

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1]


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model : SpecMoE or SpecMoEEnsemble
        The best epoch's model, in eval mode; with ``folds > 1`` the ensemble of the
        folds' models.
    config : Config
        Signal (the task's preprocessing), spectral and expert settings.
    task : TaskConfig
    moe : MoEConfig
    history : list of dict
        One entry per epoch (of the first fold's model with ``folds > 1``): ``epoch``,
        ``train_loss``, ``val_loss``, validation metrics, ``lr`` and ``experts_frozen``.
    best_epoch : int
        1-based epoch of the saved weights (of the first fold's model).
    checkpoint : Path or None
        Where the checkpoint was written (``out``), else None.
    stopped : str
        Why training ended (``"completed"``, ``"early stop"``, ``"time budget"``); with
        ``folds > 1`` the first of ``time budget``, ``early stop`` that any fold had.
    folds : tuple of FoldResult
        Every trained model (one with ``folds = 1``).
    cv : dict or None
        ``folds > 1``: metrics (``rtmoe.metrics``) of the out-of-fold predictions, every
        trial predicted by the one model that never trained on it; else None.
    oof_outputs : ndarray, shape (n_trials, n_outputs), or None
        ``folds > 1``: those out-of-fold logits (or regression outputs).
    """

    model: SpecMoE | SpecMoEEnsemble
    config: Config
    task: TaskConfig
    moe: MoEConfig
    history: list[dict[str, Any]]
    best_epoch: int
    checkpoint: Path | None
    stopped: str = "completed"  # or "early stop" / "time budget": why training ended
    folds: tuple[FoldResult, ...] = ()
    cv: dict[str, float] | None = None
    oof_outputs: np.ndarray | None = None

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1]


def encode_labels(
    y: np.ndarray, labels: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices of ``y`` and the label map.

    Parameters
    ----------
    y : ndarray, shape (n_trials,)
        Class labels (compared as strings).
    labels : sequence of str, optional
        The label map (index order). Default: the sorted distinct values of ``y``.

    Raises
    ------
    BadValueError
        ``y`` holds a label not in ``labels``, a listed label never occurs, or there
        are fewer than two classes.
    """
    y = np.asarray(y).astype(str)
    present = sorted(set(y.tolist()))
    labels = tuple(present) if labels is None else tuple(str(v) for v in labels)
    unknown = sorted(set(present) - set(labels))
    unused = [v for v in labels if v not in set(present)]
    if unknown or unused:
        raise BadValueError(
            f"labels {list(labels)} do not match the data's labels {present} (unknown: "
            f"{unknown}, never occurring: {unused}); give the label file of this data set "
            "or omit it"
        )
    if len(labels) < 2:
        raise BadValueError(f"the data hold one class {labels}; classification needs two")
    index = {v: i for i, v in enumerate(labels)}
    return np.array([index[v] for v in y], dtype=np.int64), labels


def stratified_split(
    y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's share: ``round(val_fraction · n_k)`` (≥ 1) per class.

    Parameters
    ----------
    y : ndarray, shape (n_trials,), int class indices
        For regression pass ``np.zeros(n_trials, int)`` (a plain random split).

    Returns
    -------
    train_idx, val_idx : ndarray of int, sorted
    """
    rng = np.random.default_rng(seed)
    val = []
    for k in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == k))
        if len(members) < 2:
            raise BadValueError(
                f"class index {k} has {len(members)} trial; a validation split needs at least "
                "2 trials per class; add trials or drop the class"
            )
        n_val = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        val.append(members[:n_val])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val_idx), val_idx


def stratified_folds(
    y: np.ndarray, n_folds: int, seed: int, labels: Sequence[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, val_idx)`` of each fold of :func:`fold_assignment`, sorted.

    The ``val_idx`` of the folds partition the trials; each fold's ``train_idx`` is the
    rest.
    """
    fold_of = fold_assignment(y, n_folds, seed, labels, fix="lower finetune.folds or add trials")
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_folds)]


def fold_seed(seed: int, fold: int) -> int:
    """Seed of fold ``fold``'s initialisation and batches (k-fold runs)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def load_experts(
    paths: Sequence[str | Path],
) -> tuple[list[SpecHiNet | SpecHiNetEncoder], Config]:
    """Pretrained experts and the config of the first; all must share one ModelConfig.

    One path may instead name a fine-tuned SpecMoE (a shipped model such as ``default``,
    or a ``rtmoe finetune --out`` folder): its experts, as its fine-tuning left them.
    """
    if len(paths) == 1 and _names_specmoe(paths[0]):
        loaded = load_model(str(paths[0]))
        if not isinstance(loaded.model, SpecMoE):
            raise CheckpointError(
                f"--experts {paths[0]} is a {loaded.model.n_members}-fold ensemble; take the "
                "experts of a single model (a checkpoint of finetune.folds = 1)"
            )
        return [copy.deepcopy(e) for e in loaded.model.experts], loaded.config
    experts, configs = [], []
    for path in paths:
        experts.append(load_expert(path, kind=EXPERT_KIND))
        configs.append(load_checkpoint(path).config)
    if len({c.model for c in configs}) > 1:
        raise CheckpointError(
            f"expert checkpoints {[str(p) for p in paths]} have different model configs "
            f"(sizes {[c.model.name for c in configs]}); use experts pretrained with one size"
        )
    return experts, configs[0]


def _names_specmoe(path: str | Path) -> bool:
    """A shipped model's name, or a checkpoint folder of kind ``specmoe``."""
    path = _checkpoint_folder(path)
    return path.is_dir() and load_checkpoint(path).kind == SPECMOE_KIND


def _checkpoint_folder(path: str | Path) -> Path:
    """``path``, or the shipped model's folder when it names one (and is no folder here)."""
    if str(path) in SHIPPED_MODELS and not Path(path).exists():
        return shipped_path(str(path))
    return Path(path)


def _task_config(
    base: Config, signal: SignalConfig, experts_given: bool, model_name: str
) -> Config:
    """The saved config: the experts' (or a fresh size's) with the task's signal."""
    if experts_given:
        for name in ("sfreq", "unit_uv"):
            ours, theirs = getattr(signal, name), getattr(base.signal, name)
            if ours != theirs:
                raise BadValueError(
                    f"signal.{name}={ours} differs from the experts' pretraining value "
                    f"{theirs}; the experts only understand inputs at {name}={theirs}"
                )
        return base.replace(signal=signal)
    return Config().replace(signal=signal, model=model_config(model_name))


def data_unit_uv(x_uv: np.ndarray) -> float:
    """Model unit of trials ``x_uv (n_trials, n_chans, n_times)`` in µV (``unit_from_data``).

    The median over trials and electrodes of the within-trial standard deviation, to three
    significant digits: offsets and a few bad electrodes do not move it.
    """
    sd = float(np.median(x_uv.std(axis=-1)))
    if not np.isfinite(sd) or sd <= 0:
        raise BadValueError(
            f"the trials' median standard deviation is {sd:g}: the data are flat; check the "
            "recording, or set finetune.unit_from_data = false and a signal.unit_uv"
        )
    return float(f"{sd:.3g}")


@torch.no_grad()
def init_fresh_batchnorm(
    model: SpecMoE, x: torch.Tensor, psd: torch.Tensor, batch_size: int
) -> int:
    """Set the running statistics of BatchNorm layers that never saw data from ``x``.

    A fresh layer holds mean 0 / variance 1, but SPEC §3's N(0, 0.02) initialisation
    gives activations of variance ~1e-5 (and the log-PSD sits near -4): with momentum
    0.1, eval mode would normalise by a variance still dominated by the initial 1 after
    hundreds of steps, so validation (and frozen fresh experts) would see features
    shrunk ~100×. One pass over the training windows in train mode, with cumulative
    averaging, starts them at the data's statistics. Layers loaded from a pretrained
    checkpoint (``num_batches_tracked > 0``) are left untouched.

    Returns
    -------
    int
        The number of layers initialised.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    fresh = [m for m in norms if m.track_running_stats and int(m.num_batches_tracked) == 0]
    if not fresh:
        return 0
    was_training = model.training
    model.train()
    for m in norms:
        if m not in fresh:
            m.eval()
    momenta = [m.momentum for m in fresh]
    for m in fresh:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size], psd[start : start + batch_size])
    for m, momentum in zip(fresh, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return len(fresh)


@torch.no_grad()
def predict(
    model: SpecMoE, X: torch.Tensor, psd: torch.Tensor | None = None, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and per-expert gate means, in eval mode and batches.

    Parameters
    ----------
    X : Tensor, shape (n_trials, n_chans, n_times), model units, on the model's device
    psd : Tensor, shape (n_trials, n_chans, psd_bins), optional

    Returns
    -------
    outputs : Tensor, shape (n_trials, n_outputs), on the CPU
    gates : Tensor, shape (n_trials, n_experts), on the CPU
        Gate activations averaged over electrodes and features.
    """
    was_training = model.training
    model.eval()
    outputs, gates = [], []
    for start in range(0, len(X), batch_size):
        sl = slice(start, start + batch_size)
        out, g = model.forward_with_gates(X[sl], None if psd is None else psd[sl])
        outputs.append(out.float().cpu())
        gates.append(g.mean(dim=(2, 3)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs), torch.cat(gates)


def finetune(
    X: np.ndarray,
    y: np.ndarray,
    sfreq: float,
    ch_names: Sequence[str],
    *,
    signal: SignalConfig,
    experts: Sequence[str | Path] = (),
    model_name: str = "small",
    cfg: FinetuneConfig | None = None,
    moe: MoEConfig | None = None,
    labels: Sequence[str] | None = None,
    regression: bool = False,
    task_name: str = "task",
    out: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune SpecMoE on labelled trials and save the best epoch.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times), µV
    y : ndarray, shape (n_trials,)
        Class labels, or float targets (n_trials,) / (n_trials, n_targets) with
        ``regression=True``.
    sfreq : float
        Rate of ``X`` in Hz (resampled to ``signal.sfreq``).
    ch_names : sequence of str, length n_chans
    signal : SignalConfig
        The task's preprocessing; ``sfreq`` and ``unit_uv`` must be the experts'.
    experts : sequence of paths
        Pretrained expert checkpoints, or one fine-tuned SpecMoE to start from its experts
        (`load_experts`); their number sets ``moe.n_experts``. Empty: ``moe.n_experts``
        fresh experts of size ``model_name`` ("no pretraining").
    cfg : FinetuneConfig
    moe : MoEConfig
        Gate, pooling and head dropout (and the expert count without checkpoints).
    labels : sequence of str, optional
        The label map; default the sorted distinct labels of ``y``.
    out : path, optional
        Checkpoint directory (kind ``"specmoe"``) for the best epoch.
    device : str or torch.device
    progress : bool
        Show a tqdm bar over epochs.
    """
    from rtmoe.checkpoint import save_checkpoint
    from rtmoe.metrics import classification_metrics, regression_metrics

    cfg = cfg or FinetuneConfig()
    moe = moe or MoEConfig()
    X = np.asarray(X)
    if X.ndim != 3 or X.shape[1] != len(ch_names):
        raise BadValueError(
            f"X has shape {X.shape} but ch_names has {len(ch_names)} names; give X as "
            "(n_trials, n_chans, n_times) with one name per channel"
        )
    if len(y) != len(X):
        raise BadValueError(
            f"{len(y)} labels for {len(X)} trials; give one label per trial (check the label "
            "file belongs to this data)"
        )
    if cfg.waveform_loss and not moe.waveform_filters:
        raise ConfigError(
            f"finetune.waveform_loss={cfg.waveform_loss:g} weighs the waveform branch's loss, "
            "but moe.waveform_filters = 0 builds none; set moe.waveform_filters > 0 or "
            "finetune.waveform_loss = 0"
        )
    check_filters_below_nyquist(signal, sfreq)
    n_model = int(np.ceil(X.shape[-1] * signal.sfreq / sfreq))
    if n_model < MIN_TRIAL_S * signal.sfreq:
        raise BadValueError(
            f"trials of {X.shape[-1]} samples at {sfreq:g} Hz ({X.shape[-1] / sfreq:g} s) are "
            f"shorter than the model's minimum window of {MIN_TRIAL_S:g} s; give longer "
            "trials (epoch the recording with a longer window)"
        )
    if regression:
        targets = np.asarray(y, dtype=np.float32).reshape(len(X), -1)
        strata, label_map = np.zeros(len(X), dtype=np.int64), ()
    else:
        strata, label_map = encode_labels(y, labels)
    if cfg.folds == 1:
        splits = [stratified_split(strata, cfg.val_fraction, cfg.seed)]
    else:
        splits = stratified_folds(strata, cfg.folds, cfg.seed, label_map or None)

    loaded, base = load_experts(experts) if experts else (None, Config())
    if loaded is not None:  # their number sets the mixture's
        moe = dataclasses.replace(moe, n_experts=len(loaded))
    # Provenance, resolved now: a wrong path must not surface after the training.
    experts_ids = [checkpoint_identity(_checkpoint_folder(p)) for p in experts]
    config = _task_config(base, signal, bool(experts), model_name)
    Xp = preprocess_trials(X, sfreq, config.signal)
    if cfg.unit_from_data and not experts:
        unit_uv = data_unit_uv(Xp * config.signal.unit_uv)
        Xp = (Xp * (config.signal.unit_uv / unit_uv)).astype(np.float32)
        config = config.replace(signal={"unit_uv": unit_uv})
    task = TaskConfig(
        name=task_name,
        ch_names=tuple(ch_names),
        n_times=Xp.shape[-1],
        labels=label_map,
        regression=regression,
        n_targets=targets.shape[1] if regression else 1,
    )
    x_all = torch.from_numpy(Xp).to(device)
    y_all = torch.from_numpy(targets if regression else strata).to(device)
    augment = Augmentation(cfg, config.signal.sfreq, config.spectral, config.mask)
    started = time.monotonic()
    models, fits = [], []
    psd_all = None
    for fold, (train_idx, val_idx) in enumerate(splits):
        seed = cfg.seed if cfg.folds == 1 else fold_seed(cfg.seed, fold)
        torch.manual_seed(seed)
        # Each fold fine-tunes its own copy of the pretrained experts (training changes
        # the modules in place, so no fold may start from another's).
        fold_experts = copy.deepcopy(loaded) if loaded is not None and cfg.folds > 1 else loaded
        model = build_specmoe(config, task, moe, fold_experts).to(device)
        if psd_all is None:
            psd_all = model.psd(x_all)  # fixed per trial: computed once
        budget_s = None
        if cfg.max_minutes is not None:  # the whole budget, shared by the folds still to run
            budget_s = (60 * cfg.max_minutes - (time.monotonic() - started)) / (len(splits) - fold)
        desc = f"finetune {task_name}" + (f" fold {fold + 1}/{cfg.folds}" if cfg.folds > 1 else "")
        fits.append(
            _fit(
                model, x_all, psd_all, y_all, strata, train_idx, val_idx, cfg,
                n_classes=len(label_map), regression=regression, seed=seed,
                augment=augment, budget_s=budget_s, desc=desc, progress=progress,
            )
        )  # fmt: skip
        models.append(model)
    first = fits[0]
    cv, oof = None, None
    if cfg.folds == 1:
        model = models[0]
        meta_fit = {
            "best_epoch": first.best_epoch,
            "best_val": first.best,
            "history": first.history,
            "n_train": len(first.train_idx),
            "n_val": len(first.val_idx),
            "stopped": first.stopped,
        }
        stopped = first.stopped
    else:
        model = SpecMoEEnsemble(models, regression=regression).eval()
        oof_t = torch.empty((len(X), task.n_outputs))
        fold_of = np.empty(len(X), dtype=np.int64)
        for fold, fit in enumerate(fits):
            oof_t[torch.from_numpy(fit.val_idx)] = fit.val_outputs
            fold_of[fit.val_idx] = fold
        oof = oof_t.numpy()
        if regression:
            cv = regression_metrics(targets, oof)
        else:
            cv = classification_metrics(strata, oof_t.softmax(dim=1).numpy())
        stops = [f.stopped for f in fits]
        stopped = next((s for s in ("time budget", "early stop") if s in stops), "completed")
        meta_fit = {
            "best_epoch": [f.best_epoch for f in fits],
            "best_val": {f"val_{k}": v for k, v in cv.items()},  # the CV estimate
            "history": [f.history for f in fits],
            "n_train": len(X),
            "n_val": len(X),
            "stopped": stops,
            "cv": {
                "folds": cfg.folds,
                "metrics": cv,
                "fold_of_trial": fold_of.tolist(),
                "per_fold": [
                    {
                        "best_epoch": f.best_epoch,
                        "n_train": len(f.train_idx),
                        "n_val": len(f.val_idx),
                        "stopped": f.stopped,
                        "best_val": f.best,
                    }
                    for f in fits
                ],
            },
        }
    checkpoint = None
    if out is not None:
        meta = specmoe_meta(task) | meta_fit | {"experts": experts_ids}
        if isinstance(model, SpecMoEEnsemble):
            meta |= ensemble_meta(model)
        config = config.replace(moe=moe, finetune=cfg)
        checkpoint = save_checkpoint(out, model, config, kind=SPECMOE_KIND, meta=meta)
    return FinetuneResult(
        model, config, task, moe, first.history, first.best_epoch, checkpoint, stopped,
        folds=tuple(fits), cv=cv, oof_outputs=oof,
    )  # fmt: skip


def _fit(
    model: SpecMoE,
    x_all: torch.Tensor,
    psd_all: torch.Tensor,
    y_all: torch.Tensor,
    strata: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: FinetuneConfig,
    *,
    n_classes: int,
    regression: bool,
    seed: int,
    augment: Augmentation,
    budget_s: float | None,
    desc: str,
    progress: bool,
) -> FoldResult:
    """Train ``model`` on ``train_idx``, keep its best epoch on ``val_idx`` (in place).

    ``x_all (n_trials, n_chans, n_times)``, ``psd_all`` and ``y_all`` (class indices or
    targets) hold every trial on the model's device; ``strata`` the class indices.
    ``augment``: applied to every training batch when active.
    ``budget_s``: seconds after which training stops at the end of an epoch.
    """
    from tqdm.auto import tqdm

    from rtmoe.metrics import classification_metrics, regression_metrics

    device = x_all.device
    train_t = torch.from_numpy(train_idx).to(device)
    init_fresh_batchnorm(model, x_all[train_t], psd_all[train_t], cfg.batch_size)
    if regression:
        loss_fn = F.mse_loss
    else:
        counts = np.bincount(strata[train_idx], minlength=n_classes)
        weight = len(train_idx) / (n_classes * np.maximum(counts, 1))
        weight_t = torch.tensor(weight if cfg.class_weighted else np.ones_like(weight))
        weight_t = weight_t.float().to(device)

        def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, target, weight=weight_t)

    optimizer = torch.optim.Adam(
        [
            {"params": list(model.head_parameters()), "name": "head+gates"},
            {"params": list(model.expert_parameters()), "name": "experts"},
        ],
        lr=cfg.lr,
        amsgrad=True,
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device).manual_seed(seed)
    history: list[dict[str, Any]] = []
    best_key, best_state, best_epoch, best_outputs = None, None, 0, None
    val = torch.from_numpy(val_idx).to(device)
    target_val = y_all[val].cpu().numpy()
    started = time.monotonic()
    stopped = "completed"
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, disable=not progress)
    for epoch in bar:
        frozen = epoch <= cfg.freeze_epochs
        for p in model.expert_parameters():
            p.requires_grad_(not frozen)
        model.train()
        if frozen:
            model.experts.eval()  # frozen means frozen: no BatchNorm statistics update
        total = 0.0
        for batch in np.array_split(
            rng.permutation(train_idx), max(1, -(-len(train_idx) // cfg.batch_size))
        ):
            idx = torch.from_numpy(batch).to(device)
            if augment.active:  # the gates read the augmented window's PSD
                x, psd = augment(x_all[idx], generator), None
            else:
                x, psd = x_all[idx], psd_all[idx]
            loss = loss_fn(model(x, psd), y_all[idx])
            if cfg.waveform_loss:
                branch = loss_fn(model.waveform_branch(x), y_all[idx])
                loss = loss + cfg.waveform_loss * branch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        outputs, _ = predict(model, x_all[val], psd_all[val], cfg.batch_size)
        val_loss = loss_fn(outputs.to(device), y_all[val]).item()
        if regression:
            metrics = regression_metrics(target_val, outputs.numpy())
            key = (-metrics["rmse"], -val_loss)
        else:
            metrics = classification_metrics(target_val, outputs.softmax(dim=1).numpy())
            key = (metrics["weighted_f1"], -val_loss)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(train_idx),
                "val_loss": val_loss,
                **{f"val_{k}": v for k, v in metrics.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "experts_frozen": frozen,
            }
        )
        if best_key is None or key > best_key:
            best_key, best_epoch, best_outputs = key, epoch, outputs
            best_state = copy.deepcopy(model.state_dict())
        scheduler.step(val_loss)
        score = "rmse" if regression else "weighted_f1"
        bar.set_postfix(loss=f"{val_loss:.3f}", **{score: f"{metrics[score]:.3f}"})
        if cfg.early_stop_patience is not None and epoch - best_epoch >= cfg.early_stop_patience:
            stopped = "early stop"
            break
        if budget_s is not None and time.monotonic() - started > budget_s:
            if epoch < cfg.epochs:
                stopped = "time budget"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return FoldResult(train_idx, val_idx, history, best_epoch, stopped, best_outputs)


#: Shortest trial the model is fine-tuned on: below it the gate's Welch PSD holds a handful
#: of bins (0.25 s: 26 at 200 Hz) and the experts' downsampling leaves almost nothing.
MIN_TRIAL_S = 0.25


def check_filters_below_nyquist(signal: SignalConfig, sfreq: float) -> None:
    """Refuse filters at or above the recording's Nyquist frequency.

    Resampling up to ``signal.sfreq`` adds no content above ``sfreq / 2``, so such a
    filter does nothing there: a sign the settings were meant for another recording.

    Raises
    ------
    BadValueError
        Naming the filters and the options that fix it.
    """
    nyquist = sfreq / 2
    bad = {
        name: value
        for name, value in (
            ("l_freq", signal.l_freq), ("h_freq", signal.h_freq), ("notch_freq", signal.notch_freq)
        )
        if value is not None and value >= nyquist
    }  # fmt: skip
    if bad:
        listed = ", ".join(f"{k}={v:g} Hz" for k, v in bad.items())
        fix = " ".join(f"--{k.replace('_', '-')} none" for k in bad)
        raise BadValueError(
            f"{listed}: at or above the recording's Nyquist frequency {nyquist:g} Hz (sfreq "
            f"{sfreq:g} Hz): nothing there to filter; pass {fix} (or values below "
            f"{nyquist:g} Hz)"
        )


def describe_filters(signal: SignalConfig, *, unit: bool = True) -> str:
    """One line naming the preprocessing, e.g. ``high-pass 0.3 Hz, low-pass none, ...``.

    ``unit=False`` leaves out the model unit (before ``unit_from_data`` has set it).
    """

    def hz(value: float | None) -> str:
        return "none" if value is None else f"{value:g} Hz"

    return (
        f"high-pass {hz(signal.l_freq)}, low-pass {hz(signal.h_freq)}, notch "
        f"{hz(signal.notch_freq)}, resampled to {signal.sfreq:g} Hz"
    ) + (f", model unit {signal.unit_uv:g} µV" if unit else "")


def describe_cv(result: FinetuneResult) -> str:
    """The cross-validation estimate and each fold's epoch, for a k-fold :func:`finetune`."""
    cv = result.cv or {}
    if result.task.regression:
        names = (("rmse", "RMSE"), ("r2", "R²"), ("pearson_r", "Pearson r"))
    else:
        names = (
            ("balanced_accuracy", "balanced accuracy"),
            ("accuracy", "accuracy"),
            ("cohen_kappa", "kappa"),
            ("weighted_f1", "weighted F1"),
            ("auroc", "AUROC"),
        )
    scores = ", ".join(f"{label} {cv[k]:.3f}" for k, label in names if k in cv)
    epochs = ", ".join(str(f.best_epoch) for f in result.folds)
    ran = ", ".join(
        f"{len(f.history)}" + ("" if f.stopped == "completed" else f" ({f.stopped})")
        for f in result.folds
    )
    n_trials = sum(len(f.val_idx) for f in result.folds)
    return (
        f"CV estimate ({len(result.folds)} stratified folds, {n_trials} trials each predicted "
        f"by the fold model that never trained on it): {scores}; best epochs {epochs}; epochs "
        f"run {ran} of {result.config.finetune.epochs}"
    )


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def recipe_path() -> Path:
    """The shipped default model's recipe TOML: the single source of the CLI's defaults."""
    from rtmoe.offline import recipes

    return Path(recipes.__file__).with_name("default_model.toml")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    recipe = load_config(recipe_path())
    ft, moe = recipe.finetune, recipe.moe
    parser.description = (
        "Fine-tune SpecMoE on labelled trials. Every default is the shipped recipe "
        f"({recipe_path().name}): --config FILE replaces the sections and fields it names, "
        "options and --set override single values."
    )
    add_data_arguments(parser, "train")
    parser.add_argument("--labels", type=Path, help="label file: one class name per line")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument(
        "--experts",
        type=Path,
        nargs="*",
        default=[],
        help="pretrained expert checkpoints (rtmoe pretrain), or one fine-tuned SpecMoE to "
        "start from its experts: a shipped model name (default) or an rtmoe finetune --out "
        "folder",
    )
    parser.add_argument(
        "--model-name",
        help=f"expert size without --experts (from scratch); default: --config's "
        f"[model] name ({recipe.model.name})",
    )
    for name, value in (
        ("l-freq", recipe.signal.l_freq),
        ("h-freq", recipe.signal.h_freq),
        ("notch-freq", recipe.signal.notch_freq),
    ):
        parser.add_argument(
            f"--{name}",
            type=_optional_float,
            default=argparse.SUPPRESS,
            help=f"Hz or 'none'; default: --config's [signal] ({value or 'none'})",
        )
    options = (
        ("epochs", int, ft.epochs, "maximum epochs"),
        ("lr", float, ft.lr, "learning rate"),
        ("batch-size", int, ft.batch_size, "trials per batch"),
        ("val-fraction", float, ft.val_fraction, "share of trials held out for validation"),
        ("seed", int, ft.seed, "seed of the split, initialisation and batches"),
        (
            "folds",
            int,
            ft.folds,
            "1: pick the epoch on one --val-fraction split; k > 1: stratified k-fold CV, "
            "the k fold models saved as one ensemble, the CV estimate printed",
        ),
    )
    for name, type_, value, text in options:
        parser.add_argument(
            f"--{name}", type=type_, help=f"{text}; default: --config's [finetune] ({value})"
        )
    parser.add_argument(
        "--freeze-epochs",
        type=int,
        help=f"epochs with the experts frozen; default: --config's [finetune] "
        f"({ft.freeze_epochs}) with --experts, 0 for fresh experts",
    )
    parser.add_argument(
        "--early-stop",
        type=_optional_int,
        default=argparse.SUPPRESS,
        help="stop after N epochs without a better validation score, or 'none'; default: "
        f"--config's [finetune] ({ft.early_stop_patience or 'none'})",
    )
    parser.add_argument(
        "--max-minutes",
        type=_optional_float,
        default=argparse.SUPPRESS,
        help=f"time budget, or 'none'; default: --config's [finetune] ({ft.max_minutes or 'none'})",
    )
    parser.add_argument(
        "--n-experts",
        type=int,
        help=f"fresh experts without --experts; default: --config's [moe] ({moe.n_experts})",
    )
    parser.add_argument("--no-psd-gate", action="store_true", help="ablation: plain concat")
    parser.add_argument(
        "--channel-pool",
        choices=CHANNEL_POOLS,
        help=f"default: --config's [moe] ({moe.channel_pool})",
    )
    parser.add_argument(
        "--time-segments",
        type=int,
        help="average the expert features over K consecutive parts of the window (1: the "
        f"whole window, the paper's head); default: --config's [moe] ({moe.time_segments})",
    )
    parser.add_argument(
        "--erp-segments",
        type=int,
        help="0, or E: the head also reads each electrode's window averaged over E parts "
        f"(the decimated waveform); default: --config's [moe] ({moe.erp_segments})",
    )
    parser.add_argument(
        "--waveform-filters",
        type=int,
        help="0, or F: a learned branch over the window (EEGNet's temporal and spatial "
        f"filters, F of them) adds to the head; default: --config's [moe] "
        f"({moe.waveform_filters})",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: %(default)s",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(
        parser,
        sections=FINETUNE_SECTIONS,
        flags=FINETUNE_FLAGS,
        show_defaults=False,
        base_note=f"the shipped recipe {recipe_path().name}",
        config_help="TOML with any subset of [signal], [model], [moe] and [finetune], over the "
        f"shipped recipe {recipe_path()} (a whole recipe replaces it)",
    )


#: What `rtmoe finetune` reads of the tree ([model]: its size name; with --experts theirs).
FINETUNE_SECTIONS = ("signal", "model", "moe", "finetune")
#: Its flags that set one field each (dest → field).
FINETUNE_FLAGS = {
    "l_freq": "signal.l_freq",
    "h_freq": "signal.h_freq",
    "notch_freq": "signal.notch_freq",
    "model_name": "model.name",
    "epochs": "finetune.epochs",
    "lr": "finetune.lr",
    "batch_size": "finetune.batch_size",
    "val_fraction": "finetune.val_fraction",
    "seed": "finetune.seed",
    "folds": "finetune.folds",
    "freeze_epochs": "finetune.freeze_epochs",
    "early_stop": "finetune.early_stop_patience",
    "max_minutes": "finetune.max_minutes",
    "n_experts": "moe.n_experts",
    "channel_pool": "moe.channel_pool",
    "time_segments": "moe.time_segments",
    "erp_segments": "moe.erp_segments",
    "waveform_filters": "moe.waveform_filters",
}


def resolve_finetune_config(args: argparse.Namespace) -> Config:
    """The recipe < --config < options < --set, as `rtmoe finetune` runs it.

    Fresh experts (no --experts) start from ``freeze_epochs = 0`` (nothing to keep frozen)
    unless --config, --freeze-epochs or --set names it.
    """
    for text in args.set:
        if text.startswith("model.") and not text.startswith("model.name="):
            raise UserError(
                f"--set {text}: rtmoe finetune reads only model.name of [model] (a size: "
                f"{', '.join(MODEL_SIZES)}); with --experts their own [model] is used"
            )
    base = load_config(recipe_path())
    if not args.experts:
        base = base.replace(finetune={"freeze_epochs": 0})
    extra = {"moe.use_psd_gate": False} if args.no_psd_gate else {}

    def sized(cfg: Config) -> Config:  # fresh experts are built from the size name
        return cfg if args.experts else cfg.replace(model=model_config(cfg.model.name))

    return config_from_args(
        args,
        base=base,
        flags=extra,
        flag_names={"moe.use_psd_gate": "--no-psd-gate"},
        finish=sized,
    )


def _run(args: argparse.Namespace) -> int:
    model_name_given = args.model_name
    tree = resolve_finetune_config(args)  # before the data loads; --print-config exits here
    trials, labels = load_trials(args.dataset, args.data, args.split, args.labels)
    signal, cfg, moe = tree.signal, tree.finetune, tree.moe
    check_filters_below_nyquist(signal, trials.sfreq)
    model_name = tree.model.name
    if args.experts:
        _, expert_config = load_experts(args.experts)
        if model_name_given is not None and expert_config.model.name != model_name_given:
            raise UserError(
                f"--model-name {model_name_given} but the --experts are size "
                f"{expert_config.model.name!r}; drop --model-name or pass experts of that size"
            )
    source = args.config.name if args.config else recipe_path().name
    print(f"filters: {describe_filters(signal, unit=False)} (from {source} and options)")
    result = finetune(
        trials.X,
        trials.y,
        trials.sfreq,
        trials.ch_names,
        signal=signal,
        experts=args.experts,
        model_name=model_name,
        cfg=cfg,
        moe=moe,
        labels=labels,
        task_name=trials.name,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
    )
    if result.cv is not None:
        print(describe_cv(result))
        print(
            f"filters: {describe_filters(result.config.signal)}; saved {result.checkpoint} "
            f"(ensemble of {len(result.folds)} fold models, mean probabilities)"
        )
        return 0
    best = result.best
    n_run = len(result.history)
    if result.stopped == "time budget":
        stop = f"stopped by --max-minutes {cfg.max_minutes:g} after epoch {n_run} of {cfg.epochs}"
    elif result.stopped == "early stop":
        stop = (
            f"early stop after epoch {n_run} of {cfg.epochs} ({cfg.early_stop_patience} "
            "epochs without a better validation score)"
        )
    else:
        stop = f"ran all {cfg.epochs} epochs"
    print(
        f"best epoch {result.best_epoch}: val weighted F1 {best['val_weighted_f1']:.3f}, "
        f"balanced accuracy {best['val_balanced_accuracy']:.3f}; {stop}; filters: "
        f"{describe_filters(result.config.signal)}; saved {result.checkpoint}"
    )
    return 0


command = Command(
    help=offline_commands.finetune.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
