"""The training engine of one expert: the run, its optimiser steps, validation.

``pretrain_expert`` is the whole run (what ``rtmoe pretrain`` calls); ``train_step`` one
optimiser step over micro-batches, ``validate`` the held-out masked reconstruction. The
model sees the spectrally MASKED signal and is scored against the ORIGINAL one (the
public release does the opposite, SPEC §7). Data, loss, distribution and the run folder
are the sibling modules.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from rtmoe.checkpoint import LATEST_FILE, load_checkpoint
from rtmoe.command import UserError
from rtmoe.config import Config, PretrainConfig
from rtmoe.dsp.masking import spectral_mask
from rtmoe.models.registry import build_model
from rtmoe.offline.corpus.shards import ShardCorpus, partition_recordings
from rtmoe.offline.pretrain.checkpointing import Position, resume_run, save_run
from rtmoe.offline.pretrain.data import (
    INIT_STREAM,
    ORDER_STREAM,
    TRAIN_STREAM,
    VAL_STREAM,
    SegmentBatches,
    batch_plan,
    derive_seed,
    make_loader,
    seeded_generator,
    split_holdout,
)
from rtmoe.offline.pretrain.distributed import (
    DistInfo,
    all_sum,
    check_replicas_agree,
    setup_distributed,
)
from rtmoe.offline.pretrain.loss import identity_output, reconstruction_loss


class NonFiniteLossError(UserError):
    """The loss or gradient norm became NaN/inf; nothing was written for that step."""


@dataclass(frozen=True)
class PretrainResult:
    """What ``pretrain_expert`` did.

    Attributes
    ----------
    out_dir : Path
    checkpoint : Path
        The newest checkpoint (also named by ``out_dir/LATEST``).
    step : int
        Optimiser steps done in total (including those before a resume).
    epoch : int
        Completed epochs.
    stop_reason : {"completed", "max_steps", "max_minutes"}
    train_losses : list of float
        Loss of every optimiser step from the start of the run.
    val : list of dict
        One entry per validation: ``step``, ``epoch``, ``model_loss``, ``baseline_loss``.
    """

    out_dir: Path
    checkpoint: Path
    step: int
    epoch: int
    stop_reason: str
    train_losses: list[float]
    val: list[dict[str, Any]]


def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): cosine from ``lr`` to ``min_lr``.

    Step 0 gets ``lr`` and step ``total_steps - 1`` gets ``min_lr``.
    """
    if total_steps <= 1:
        return lr
    progress = min(step, total_steps - 1) / (total_steps - 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def pretrain_expert(
    corpus_root: str | Path,
    out_dir: str | Path,
    cfg: Config,
    expert: int,
    *,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain SpecHi-Net expert ``expert`` on its partition of a sharded corpus.

    Parameters
    ----------
    corpus_root : str or Path
        A corpus written by ``rtmoe prepare`` (``ShardCorpus``).
    out_dir : str or Path
        Run folder (see the module docstring); must hold no run unless ``resume``.
    cfg : Config
        ``model`` (size), ``pretrain`` (optimisation), ``mask``/``spectral`` (masking),
        ``corpus.n_partitions``/``corpus.seed`` (which recordings), ``signal.sfreq``.
    expert : int
        Index in ``[0, cfg.corpus.n_partitions)``.
    max_steps : int, optional
        Stop (with a checkpoint) once this many optimiser steps are done in total,
        counting steps done before a resume. The cosine schedule still spans all
        ``cfg.pretrain.epochs``, so a stopped run resumes on the same curve.
    max_minutes : float, optional
        Stop (with a checkpoint) after this many minutes of this call.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default CUDA when present (under torchrun,
        ``cuda:LOCAL_RANK``).
    resume : bool
        Continue from ``out_dir/LATEST`` with the same config, corpus and world size.
    progress : bool
        tqdm bar with loss and windows/s (rank 0).

    Returns
    -------
    PretrainResult
    """
    pc = cfg.pretrain
    out_dir = Path(out_dir)
    info, dev = setup_distributed(device)
    try:
        return _pretrain(
            corpus_root, out_dir, cfg, pc, expert, info, dev, max_steps, max_minutes, resume,
            progress,
        )  # fmt: skip
    finally:
        if info.owns_group:
            dist.destroy_process_group()


def _pretrain(
    corpus_root: str | Path,
    out_dir: Path,
    cfg: Config,
    pc: PretrainConfig,
    expert: int,
    info: DistInfo,
    dev: torch.device,
    max_steps: int | None,
    max_minutes: float | None,
    resume: bool,
    progress: bool,
) -> PretrainResult:
    started = time.monotonic()
    n_parts = cfg.corpus.n_partitions
    if not 0 <= expert < n_parts:
        raise UserError(
            f"expert={expert} is out of range for corpus.n_partitions={n_parts}; give 0 to "
            f"{n_parts - 1}"
        )
    corpus = ShardCorpus(corpus_root)
    if corpus.sfreq != cfg.signal.sfreq:
        raise UserError(
            f"corpus {corpus_root} holds {corpus.sfreq} Hz segments but signal.sfreq="
            f"{cfg.signal.sfreq}; rebuild the corpus or set signal.sfreq={corpus.sfreq}"
        )
    partition = partition_recordings(corpus.recording_ids, n_parts, cfg.corpus.seed)[expert]
    train_recs, val_recs = split_holdout(
        partition, pc.holdout_fraction, derive_seed(pc.seed, expert)
    )
    train_set = corpus.subset(corpus.indices_for(train_recs))
    val_set = corpus.subset(corpus.indices_for(val_recs))
    train_groups = [g.indices for g in train_set.groups]
    val_batches = batch_plan([g.indices for g in val_set.groups], pc.batch_size, None)

    # Equal batch counts on every rank (DDP needs the same number of backward passes).
    n_global = len(batch_plan(train_groups, pc.batch_size, None))
    per_rank = n_global // info.world
    if per_rank == 0:
        raise UserError(
            f"expert {expert}'s {len(train_set)} training segments make {n_global} batches "
            f"of pretrain.batch_size={pc.batch_size}, fewer than the {info.world} "
            "processes; lower pretrain.batch_size or run fewer processes"
        )
    accum = min(pc.accum_steps, per_rank)  # a tiny corpus still gets optimiser steps
    steps_per_epoch = math.ceil(per_rank / accum)
    total_steps = steps_per_epoch * pc.epochs

    torch.manual_seed(derive_seed(pc.seed, expert, INIT_STREAM))
    model = build_model(cfg.model, sfreq=cfg.signal.sfreq, init_std=pc.init_std)
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
    # Dropout draws from the global generator: a different stream on every rank.
    torch.manual_seed(derive_seed(pc.seed, expert, INIT_STREAM, info.rank + 1))

    meta_base = {
        "expert": expert,
        "n_experts": n_parts,
        "world_size": info.world,
        "corpus": {
            "root": Path(corpus_root).resolve().name,  # a name: no machine path
            "config_hash": corpus.index.get("config_hash"),
            "n_segments": len(corpus),
        },
        "partition": {
            "train_recordings": train_recs,
            "val_recordings": val_recs,
            "n_train_segments": len(train_set),
            "n_val_segments": len(val_set),
        },
        "schedule": {
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "accum_steps": accum,
            "batches_per_rank": per_rank,
        },
    }
    pos = Position()
    history: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    if resume:
        pos, history = resume_run(out_dir, model, optimizer, cfg, meta_base, info, dev)
    elif (out_dir / LATEST_FILE).exists():
        raise UserError(
            f"{out_dir} already holds a pretraining run; pass --resume to continue it or "
            "choose another --out folder"
        )
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    net: torch.nn.Module = model
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    amp = dev.type == "cuda" and pc.amp

    bar = tqdm(
        total=total_steps,
        initial=pos.step,
        desc=f"pretrain expert {expert}",
        unit="step",
        disable=not (progress and info.main),
        dynamic_ncols=True,
    )
    # A resumed run may already have reached max_steps: then it only reports.
    stop_reason = "max_steps" if max_steps is not None and pos.step >= max_steps else "completed"
    checkpoint = None
    try:
        while pos.epoch < pc.epochs and stop_reason == "completed":
            rng = np.random.default_rng(derive_seed(pc.seed, expert, ORDER_STREAM, pos.epoch))
            plan = batch_plan(train_groups, pc.batch_size, rng)[: per_rank * info.world]
            mine = plan[info.rank :: info.world]
            loader = iter(make_loader(train_set, mine[pos.step_in_epoch * accum :], pc, dev))
            while pos.step_in_epoch < steps_per_epoch and stop_reason == "completed":
                n_micro = min(accum, per_rank - pos.step_in_epoch * accum)
                tick = time.monotonic()
                loss, grad_norm, n_windows = train_step(
                    net, model, optimizer, loader, n_micro, pos.step, cfg, expert, info, dev,
                    amp, cosine_lr(pos.step, total_steps, pc.lr, pc.min_lr),
                )  # fmt: skip
                pos.step += 1
                pos.step_in_epoch += 1
                history["train"].append(
                    {
                        "step": pos.step,
                        "epoch": pos.epoch,
                        "loss": loss,
                        "lr": optimizer.param_groups[0]["lr"],
                        "grad_norm": grad_norm,
                    }
                )
                rate = n_windows / max(time.monotonic() - tick, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", win_s=f"{rate:.1f}", epoch=pos.epoch)
                stop_reason = reason_to_stop(pos.step, max_steps, started, max_minutes, info, dev)
            epoch_done = pos.step_in_epoch == steps_per_epoch
            val = validate(model, val_set, val_batches, cfg, expert, info, dev, amp)
            history["val"].append({"step": pos.step, "epoch": pos.epoch, **val})
            if info.main and val:
                bar.write(
                    f"epoch {pos.epoch} step {pos.step}: held-out loss {val['model_loss']:.4g}"
                    f" (masked-input baseline {val['baseline_loss']:.4g})"
                )
            if epoch_done:
                pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
            checkpoint = save_run(
                out_dir, model, optimizer, cfg, meta_base, pos, history, info, dev
            )
    finally:
        bar.close()
    if info.world > 1:
        check_replicas_agree(model, info, dev)
    if checkpoint is None:  # resumed a run that had already finished
        checkpoint = load_checkpoint(out_dir).path
    return PretrainResult(
        out_dir=out_dir,
        checkpoint=checkpoint,
        step=pos.step,
        epoch=pos.epoch,
        stop_reason=stop_reason,
        train_losses=[h["loss"] for h in history["train"]],
        val=history["val"],
    )


def train_step(
    net: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterator[torch.Tensor],
    n_micro: int,
    step: int,
    cfg: Config,
    expert: int,
    info: DistInfo,
    dev: torch.device,
    amp: bool,
    lr: float,
) -> tuple[float, float, int]:
    """One optimiser step over ``n_micro`` micro-batches; returns (loss, grad norm, windows).

    The loss is the mean over micro-batches and ranks. Raises NonFiniteLossError before
    the optimiser touches the weights.
    """
    pc = cfg.pretrain
    net.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss_sum, n_windows = 0.0, 0
    for micro in range(n_micro):
        x = next(loader).to(dev, non_blocking=True)
        gen = seeded_generator(pc.seed, expert, TRAIN_STREAM, step, micro, info.rank)
        x_masked, _ = spectral_mask(x, cfg.signal.sfreq, cfg.spectral, cfg.mask, gen)
        # Gradients are all-reduced once per optimiser step, on the last micro-batch.
        sync = micro == n_micro - 1 or info.world == 1
        with (
            contextlib.nullcontext() if sync else net.no_sync(),
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp),
        ):
            output = net(x_masked)
        loss, _ = reconstruction_loss(output, x, pc)
        (loss / n_micro).backward()
        loss_sum += float(loss.detach())
        n_windows += x.shape[0]
    loss_sum, n_windows = all_sum([loss_sum, float(n_windows)], info, dev)
    mean_loss = loss_sum / (n_micro * info.world)
    params = list(model.parameters())
    if pc.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, pc.grad_clip))
    else:
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
        raise NonFiniteLossError(
            f"non-finite training loss {mean_loss} (gradient norm {grad_norm}) at optimiser "
            f"step {step}; nothing was saved for it. Lower pretrain.lr (now {pc.lr}) or "
            f"pretrain.grad_clip (now {pc.grad_clip}), set pretrain.amp=false if it runs "
            "in bfloat16, and check the corpus scale (signal.unit_uv, corpus.reject_uv); "
            "resume from the last checkpoint with --resume"
        )
    optimizer.step()
    return mean_loss, grad_norm, int(n_windows)


def reason_to_stop(
    step: int,
    max_steps: int | None,
    started: float,
    max_minutes: float | None,
    info: DistInfo,
    dev: torch.device,
) -> str:
    if max_steps is not None and step >= max_steps:
        return "max_steps"
    if max_minutes is not None:
        # Rank 0's clock decides, so every rank stops after the same step.
        late = float(info.main and (time.monotonic() - started) / 60 >= max_minutes)
        if all_sum([late], info, dev)[0] > 0:
            return "max_minutes"
    return "completed"


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    val_set: ShardCorpus,
    batches: Sequence[np.ndarray],
    cfg: Config,
    expert: int,
    info: DistInfo,
    dev: torch.device,
    amp: bool,
) -> dict[str, float]:
    """Masked-reconstruction loss of the model and of the masked input itself.

    Both are means over held-out windows; masks are the same at every validation. Runs
    the bare model (not the DDP wrapper), every rank on its share of the batches.
    """
    if not batches:
        return {}
    model.eval()
    pc = cfg.pretrain
    sums = [0.0, 0.0, 0.0]  # model, baseline, windows
    for b in range(info.rank, len(batches), info.world):
        x = SegmentBatches(val_set, batches)[b].to(dev)
        gen = seeded_generator(pc.seed, expert, VAL_STREAM, b)
        x_masked, _ = spectral_mask(x, cfg.signal.sfreq, cfg.spectral, cfg.mask, gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            output = model(x_masked)
        n = x.shape[0]
        sums[0] += n * float(reconstruction_loss(output, x, pc)[0])
        sums[1] += n * float(reconstruction_loss(identity_output(x_masked), x, pc)[0])
        sums[2] += n
    model_sum, baseline_sum, n = all_sum(sums, info, dev)
    return {"model_loss": model_sum / n, "baseline_loss": baseline_sum / n, "n_windows": int(n)}
