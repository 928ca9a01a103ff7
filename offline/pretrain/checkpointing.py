"""A pretraining run's folder: checkpoints, ``LATEST``, history and loss curve; resume.

Output folder::

    LATEST                     names the newest checkpoint (rtmoe.checkpoint)
    checkpoints/step-XXXXXXXX  checkpoints: weights, optimizer, RNG, data position
    history.json               train loss per step, validation per epoch
    loss_curve.png

Optimizer and every rank's generator states are checkpointed, so ``--resume``
continues the same loss curve, bit for bit on the same machine.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from rtmoe.checkpoint import (
    EXPERT_KIND,
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    load_weights,
    optimizer_state,
    save_checkpoint,
    set_rng_state,
    write_latest,
)
from rtmoe.command import UserError
from rtmoe.config import Config, config_hash
from rtmoe.offline.pretrain.distributed import DistInfo, gather_rng

HISTORY_FILE = "history.json"


PLOT_FILE = "loss_curve.png"


CHECKPOINT_DIR = "checkpoints"


#: Checkpoints kept in ``checkpoints/`` (the newest ones); older ones are deleted.
KEEP_CHECKPOINTS = 2


@dataclass
class Position:
    """Where training stands: optimiser steps done, current epoch, its steps done."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def save_run(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    meta_base: dict[str, Any],
    pos: Position,
    history: dict[str, list[dict[str, Any]]],
    info: DistInfo,
    dev: torch.device,
) -> Path:
    """Write history, a checkpoint and LATEST (rank 0); every rank must call it."""
    rng = gather_rng(info, dev)  # collective
    ckpt_dir = out_dir / CHECKPOINT_DIR / f"step-{pos.step:08d}"
    if info.main:
        # History first: on resume it is cut back to the checkpoint's step, so a crash
        # between the two writes loses nothing.
        _write_json(out_dir / HISTORY_FILE, history)
        opt_tensors, opt_spec = optimizer_state(optimizer)
        meta = {
            **meta_base,
            "position": {"step": pos.step, "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch},
            "optimizer": opt_spec,
            "last_val": history["val"][-1] if history["val"] else None,
        }
        save_checkpoint(
            ckpt_dir, model, cfg, kind=EXPERT_KIND, extra_state={**opt_tensors, **rng}, meta=meta
        )
        write_latest(out_dir, f"{CHECKPOINT_DIR}/{ckpt_dir.name}")
        old = sorted((out_dir / CHECKPOINT_DIR).glob("step-*"))[:-KEEP_CHECKPOINTS]
        for path in old:
            shutil.rmtree(path)
        plot_history(history, out_dir / PLOT_FILE)
    if info.world > 1:
        dist.barrier()
    return ckpt_dir


def resume_run(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    meta_base: dict[str, Any],
    info: DistInfo,
    dev: torch.device,
) -> tuple[Position, dict[str, list[dict[str, Any]]]]:
    try:
        ckpt = load_checkpoint(out_dir)
    except CheckpointError:
        raise UserError(
            f"--resume: {out_dir} holds no pretraining checkpoint; drop --resume to start a new run"
        ) from None
    meta = ckpt.meta
    if ckpt.kind != EXPERT_KIND:
        raise UserError(f"--resume: {ckpt.path} is a {ckpt.kind!r}, not a {EXPERT_KIND!r}")
    # Compare the run's config as this version reads it (fields added since then take
    # their defaults), not meta's hash of the tree as it was saved.
    if config_hash(ckpt.config) != config_hash(cfg):
        raise UserError(
            f"--resume: the config differs from the one of {ckpt.path} in "
            f"{_config_diff(ckpt.config, cfg)}; resume with that run's config (it is in "
            f"{ckpt.path}/config.toml)"
        )
    for key in ("expert", "world_size", "corpus", "partition", "schedule"):
        now, then = json.loads(json.dumps(meta_base[key])), meta[key]
        if key == "corpus":  # the corpus may have moved: compare its content only
            now, then = ({k: v for k, v in d.items() if k != "root"} for d in (now, then))
        if now != then:
            raise UserError(
                f"--resume: {key} is {meta_base[key]!r} now but {meta[key]!r} in "
                f"{ckpt.path}; resume with the same --expert, corpus and number of processes"
            )
    load_weights(model, ckpt)
    load_optimizer_state(optimizer, ckpt.state, meta["optimizer"])
    set_rng_state(ckpt.state, dev, prefix=f"rank{info.rank}.")
    pos = Position(**meta["position"])
    history = {"train": [], "val": []}
    if (out_dir / HISTORY_FILE).exists():
        saved = json.loads((out_dir / HISTORY_FILE).read_text())
        history = {k: [h for h in v if h["step"] <= pos.step] for k, v in saved.items()}
    return pos, history


def _config_diff(a: Config, b: Config) -> list[str]:
    from rtmoe.config import to_dict

    da, db = to_dict(a), to_dict(b)
    return [
        f"{s}.{k}: {da[s][k]!r} -> {db[s].get(k)!r}"
        for s in da
        for k in da[s]
        if da[s][k] != db.get(s, {}).get(k)
    ]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def plot_history(history: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """Loss curves: training loss per step, held-out model vs masked-input per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = [h["step"] for h in history["train"]], [h["loss"] for h in history["train"]]
    ax_train.plot(steps, losses, lw=0.6, alpha=0.5, label="per step")
    if len(losses) >= 20:  # batches of different shapes differ in loss: show a running mean
        w = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax_train.plot(steps[w - 1 :], smooth, lw=1.5, label=f"mean of {w} steps")
        ax_train.legend()
    ax_train.set(xlabel="optimiser step", ylabel="loss", title="training (masked → original)")
    val = [h for h in history["val"] if "model_loss" in h]
    steps = [h["step"] for h in val]
    few = len(val) <= 40  # markers only while they stay legible
    ax_val.plot(steps, [h["model_loss"] for h in val], "o-" if few else "-", label="model")
    baseline = [h["baseline_loss"] for h in val]
    ax_val.plot(steps, baseline, "s--" if few else "--", label="masked input itself")
    ax_val.set(xlabel="optimiser step", ylabel="loss", title="held-out reconstruction")
    ax_val.legend()
    for ax in (ax_train, ax_val):
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
