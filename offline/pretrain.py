"""Self-supervised pretraining of one SpecHi-Net expert (SPEC §3-§4): ``rtmoe pretrain``.

Expert k trains on partition k of the corpus's recordings (``partition_recordings``);
a seeded share of that partition's recordings is held out to measure reconstruction.
Every batch holds segments of one shape. The model sees the spectrally MASKED signal
and is scored against the ORIGINAL one (the public release does the opposite, SPEC §7).

Everything random is a pure function of the seed: the batch order of an epoch of
``(seed, expert, epoch)``, the masks of a micro-batch of ``(seed, expert, step, micro,
rank)``, the validation masks of ``(seed, expert, batch)``; only dropout uses the global
torch generator, whose state is checkpointed. So ``--resume`` continues the same loss
curve, bit for bit on the same machine.

Output folder::

    LATEST                     names the newest checkpoint (rtmoe.checkpoint)
    checkpoints/step-XXXXXXXX  checkpoints: weights, optimizer, RNG, data position
    history.json               train loss per step, validation per epoch
    loss_curve.png

Several processes (``torchrun --nproc_per_node N -m rtmoe.cli pretrain ...``, any number
of nodes) run DistributedDataParallel: every rank takes a disjoint slice of each epoch's
batches; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from rtmoe.offline.corpus.shards import ShardCorpus, partition_recordings
from rtmoe.checkpoint import (
    EXPERT_KIND,
    LATEST_FILE,
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    load_weights,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_latest,
)
from rtmoe.cli import Command, UserError
from rtmoe.config import Config, PretrainConfig, SpectralConfig, config_hash, load_config
from rtmoe.dsp.masking import spectral_mask
from rtmoe.dsp.spectral import stft, stft_params
from rtmoe.models.registry import build_model, model_config
from rtmoe.models.spechinet import AUX_FACTORS, SpecHiNetOutput

HISTORY_FILE = "history.json"
PLOT_FILE = "loss_curve.png"
CHECKPOINT_DIR = "checkpoints"
#: Checkpoints kept in ``checkpoints/`` (the newest ones); older ones are deleted.
KEEP_CHECKPOINTS = 2
OUTPUT_NAMES = SpecHiNetOutput._fields  # recon_short, recon_long, aux_up1, aux_up2
# Seed streams, so training and validation masks never share random numbers.
_TRAIN, _VAL, _ORDER, _INIT = range(4)


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


# -- pure maths ---------------------------------------------------------------------------
def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): cosine from ``lr`` to ``min_lr``.

    Step 0 gets ``lr`` and step ``total_steps - 1`` gets ``min_lr``.
    """
    if total_steps <= 1:
        return lr
    progress = min(step, total_steps - 1) / (total_steps - 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def loss_stft_params(n_times: int, cfg: PretrainConfig) -> tuple[int, int]:
    """Frame length and hop of the spectral loss for an output of ``n_times`` samples.

    ``cfg.loss_n_fft`` / ``cfg.loss_hop`` samples (512 / 256), shrunk for shorter outputs
    by the rule of ``rtmoe.dsp.spectral.stft_params`` (largest even ``n_fft <= n_times``,
    same hop ratio).
    """
    # stft_params works in seconds; at sfreq = 1 seconds are samples.
    spectral = SpectralConfig(stft_window_s=cfg.loss_n_fft, stft_hop_s=cfg.loss_hop)
    return stft_params(n_times, 1.0, spectral)


def output_loss(pred: torch.Tensor, target: torch.Tensor, cfg: PretrainConfig) -> torch.Tensor:
    """MSE + ``cfg.spectral_loss_weight`` × mean squared STFT-magnitude difference.

    Parameters
    ----------
    pred, target : Tensor, shape (batch, n_chans, n_times)
        Model units; computed in float32 whatever the input dtype.

    Returns
    -------
    Tensor, scalar
        The spectral term is a mean over batch, channels, bins and frames; it is left out
        for outputs under 4 samples (no meaningful spectrum).
    """
    pred, target = pred.float(), target.float()
    loss = F.mse_loss(pred, target)
    n_times = target.shape[-1]
    if cfg.spectral_loss_weight and n_times >= 4:
        n_fft, hop = loss_stft_params(n_times, cfg)
        diff = stft(pred, n_fft, hop).abs() - stft(target, n_fft, hop).abs()
        loss = loss + cfg.spectral_loss_weight * diff.square().mean()
    return loss


def aux_target(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x (..., n_times)`` resampled to an auxiliary head's grid: block means.

    Sample j of an auxiliary output stands for input samples ``[j·factor, (j+1)·factor)``
    (the model zero-pads on the right and pools by ``factor``), so the target is the mean
    of x over that block; the last, partial block averages only the samples it holds.

    Returns
    -------
    Tensor, shape (..., ceil(n_times / factor))
    """
    lead, n_times = x.shape[:-1], x.shape[-1]
    pooled = F.avg_pool1d(x.reshape(-1, 1, n_times), factor, factor, ceil_mode=True)
    return pooled.reshape(*lead, -1)


def reconstruction_loss(
    output: SpecHiNetOutput, target: torch.Tensor, cfg: PretrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pretraining loss of SpecHi-Net's four outputs against the original signal.

    ``short + long + w1·aux_up1 + w2·aux_up2`` with ``(w1, w2) = cfg.aux_weights``
    (0.3, 0.2), each term :func:`output_loss`; auxiliary targets are :func:`aux_target`.

    Parameters
    ----------
    output : SpecHiNetOutput
        recon_short, recon_long (batch, n_chans, n_times), aux_up1, aux_up2.
    target : Tensor, shape (batch, n_chans, n_times)
        The ORIGINAL (unmasked) signal.
    cfg : PretrainConfig

    Returns
    -------
    total : Tensor, scalar float32
    parts : dict of str to float
        The unweighted loss of every output.
    """
    weights = (1.0, 1.0, *cfg.aux_weights)
    factors = (1, 1, *AUX_FACTORS)
    total = torch.zeros((), device=target.device)
    parts: dict[str, float] = {}
    for name, weight, factor in zip(OUTPUT_NAMES, weights, factors, strict=True):
        pred = getattr(output, name)
        goal = target if factor == 1 else aux_target(target, factor)
        if pred.shape != goal.shape:
            raise ValueError(
                f"output {name} has shape {tuple(pred.shape)} but the target needs "
                f"{tuple(goal.shape)}; the model's output lengths do not follow AUX_FACTORS"
            )
        loss = output_loss(pred, goal, cfg)
        total = total + weight * loss
        parts[name] = float(loss.detach())
    return total, parts


def identity_output(x_masked: torch.Tensor) -> SpecHiNetOutput:
    """The baseline "prediction": the masked input itself, aux heads as block means."""
    aux = (aux_target(x_masked, f) for f in AUX_FACTORS)
    return SpecHiNetOutput(x_masked, x_masked, *aux)


# -- data ---------------------------------------------------------------------------------
def derive_seed(*words: int) -> int:
    """A 63-bit seed that is a pure function of the non-negative integers ``words``."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> 1)


def _generator(*words: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*words))


def split_holdout(
    recordings: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split recordings into (train, held out); ``round(fraction · n)`` are held out.

    At least one recording is held out when ``fraction > 0`` and there are two or more;
    at least one is always kept for training. Both lists are sorted.
    """
    names = sorted(recordings)
    n_val = round(fraction * len(names))
    if fraction > 0 and len(names) > 1:
        n_val = min(max(n_val, 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[i] for i in order[:n_val]}
    return [r for r in names if r not in val], sorted(val)


def batch_plan(
    groups: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Cut groups of equal-shape segment indices into batches.

    With ``rng``: indices shuffled inside every group and the batches of all groups
    shuffled together; without: indices and groups in order (validation). A group's last
    batch may be smaller.
    """
    batches = []
    for idx in groups:
        idx = rng.permutation(idx) if rng is not None else np.asarray(idx)
        batches.extend(idx[i : i + batch_size] for i in range(0, len(idx), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class _Batches(torch.utils.data.Dataset):
    """Stacked segments of each planned batch, (batch, n_chans, n_times) float32."""

    def __init__(self, corpus: ShardCorpus, batches: Sequence[np.ndarray]) -> None:
        self.corpus = corpus
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        rows = [self.corpus.segment(int(i)) for i in self.batches[k]]
        return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))


def _loader(
    corpus: ShardCorpus, batches: Sequence[np.ndarray], cfg: PretrainConfig, device: torch.device
) -> torch.utils.data.DataLoader:
    # An own generator: a DataLoader iterator otherwise draws from the global torch RNG,
    # which would make a resumed run's dropout differ from an uninterrupted one.
    return torch.utils.data.DataLoader(
        _Batches(corpus, batches),
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )


# -- distributed --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int
    owns_group: bool  # this call created the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str | None) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU here; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return _Dist(rank, world, local_rank, owns), dev


def _all_sum(values: list[float], info: _Dist, device: torch.device) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _gather_rng(info: _Dist, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's generator states, keyed ``rank<r>.rng.*`` (collective)."""
    local = rng_state(device)
    if info.world == 1:
        return {f"rank0.{k}": v for k, v in local.items()}
    out = {}
    for key in sorted(local):
        t = local[key].to(device)
        parts = [torch.empty_like(t) for _ in range(info.world)]
        dist.all_gather(parts, t)
        out.update({f"rank{r}.{key}": p.cpu() for r, p in enumerate(parts)})
    return out


# -- the run ------------------------------------------------------------------------------
@dataclass
class _Position:
    """Where training stands: optimiser steps done, current epoch, its steps done."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


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
    cfg = cfg.validate()
    pc = cfg.pretrain
    out_dir = Path(out_dir)
    info, dev = _setup_distributed(device)
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
    info: _Dist,
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

    torch.manual_seed(derive_seed(pc.seed, expert, _INIT))
    model = build_model(cfg.model, sfreq=cfg.signal.sfreq, init_std=pc.init_std)
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
    # Dropout draws from the global generator: a different stream on every rank.
    torch.manual_seed(derive_seed(pc.seed, expert, _INIT, info.rank + 1))

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
    pos = _Position()
    history: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    if resume:
        pos, history = _resume(out_dir, model, optimizer, cfg, meta_base, info, dev)
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
            rng = np.random.default_rng(derive_seed(pc.seed, expert, _ORDER, pos.epoch))
            plan = batch_plan(train_groups, pc.batch_size, rng)[: per_rank * info.world]
            mine = plan[info.rank :: info.world]
            loader = iter(_loader(train_set, mine[pos.step_in_epoch * accum :], pc, dev))
            while pos.step_in_epoch < steps_per_epoch and stop_reason == "completed":
                n_micro = min(accum, per_rank - pos.step_in_epoch * accum)
                tick = time.monotonic()
                loss, grad_norm, n_windows = _train_step(
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
                stop_reason = _stop_reason(pos.step, max_steps, started, max_minutes, info, dev)
            epoch_done = pos.step_in_epoch == steps_per_epoch
            val = _validate(model, val_set, val_batches, cfg, expert, info, dev, amp)
            history["val"].append({"step": pos.step, "epoch": pos.epoch, **val})
            if info.main and val:
                bar.write(
                    f"epoch {pos.epoch} step {pos.step}: held-out loss {val['model_loss']:.4g}"
                    f" (masked-input baseline {val['baseline_loss']:.4g})"
                )
            if epoch_done:
                pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
            checkpoint = _save(out_dir, model, optimizer, cfg, meta_base, pos, history, info, dev)
    finally:
        bar.close()
    if info.world > 1:
        _check_replicas_agree(model, info, dev)
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


def _train_step(
    net: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterator[torch.Tensor],
    n_micro: int,
    step: int,
    cfg: Config,
    expert: int,
    info: _Dist,
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
        gen = _generator(pc.seed, expert, _TRAIN, step, micro, info.rank)
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
    loss_sum, n_windows = _all_sum([loss_sum, float(n_windows)], info, dev)
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


def _stop_reason(
    step: int,
    max_steps: int | None,
    started: float,
    max_minutes: float | None,
    info: _Dist,
    dev: torch.device,
) -> str:
    if max_steps is not None and step >= max_steps:
        return "max_steps"
    if max_minutes is not None:
        # Rank 0's clock decides, so every rank stops after the same step.
        late = float(info.main and (time.monotonic() - started) / 60 >= max_minutes)
        if _all_sum([late], info, dev)[0] > 0:
            return "max_minutes"
    return "completed"


@torch.no_grad()
def _validate(
    model: torch.nn.Module,
    val_set: ShardCorpus,
    batches: Sequence[np.ndarray],
    cfg: Config,
    expert: int,
    info: _Dist,
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
        x = _Batches(val_set, batches)[b].to(dev)
        gen = _generator(pc.seed, expert, _VAL, b)
        x_masked, _ = spectral_mask(x, cfg.signal.sfreq, cfg.spectral, cfg.mask, gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            output = model(x_masked)
        n = x.shape[0]
        sums[0] += n * float(reconstruction_loss(output, x, pc)[0])
        sums[1] += n * float(reconstruction_loss(identity_output(x_masked), x, pc)[0])
        sums[2] += n
    model_sum, baseline_sum, n = _all_sum(sums, info, dev)
    return {"model_loss": model_sum / n, "baseline_loss": baseline_sum / n, "n_windows": int(n)}


# -- checkpoints and history --------------------------------------------------------------
def _save(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    meta_base: dict[str, Any],
    pos: _Position,
    history: dict[str, list[dict[str, Any]]],
    info: _Dist,
    dev: torch.device,
) -> Path:
    """Write history, a checkpoint and LATEST (rank 0); every rank must call it."""
    rng = _gather_rng(info, dev)  # collective
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


def _resume(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    meta_base: dict[str, Any],
    info: _Dist,
    dev: torch.device,
) -> tuple[_Position, dict[str, list[dict[str, Any]]]]:
    try:
        ckpt = load_checkpoint(out_dir)
    except CheckpointError:
        raise UserError(
            f"--resume: {out_dir} holds no pretraining checkpoint; drop --resume to start a new run"
        ) from None
    meta = ckpt.meta
    if ckpt.kind != EXPERT_KIND:
        raise UserError(f"--resume: {ckpt.path} is a {ckpt.kind!r}, not a {EXPERT_KIND!r}")
    if meta["config_hash"] != config_hash(cfg):
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
    pos = _Position(**meta["position"])
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


def _check_replicas_agree(model: torch.nn.Module, info: _Dist, dev: torch.device) -> None:
    """DDP keeps replicas identical; a mismatch means a bug, so fail loudly."""
    with torch.no_grad():
        local = torch.stack([p.double().sum() for p in model.parameters()]).sum()
    parts = [torch.empty_like(local) for _ in range(info.world)]
    dist.all_gather(parts, local.to(dev))
    if any(not torch.equal(parts[0], p) for p in parts):
        raise RuntimeError(f"DDP replicas diverged: weight sums {[float(p) for p in parts]}")


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


# -- command line -------------------------------------------------------------------------
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="corpus folder from `rtmoe prepare`")
    parser.add_argument("--expert", type=int, required=True, help="expert index k")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, history)")
    parser.add_argument("--size", help="model size (tiny, small, paper); overrides --config")
    parser.add_argument("--config", help="TOML config (any subset of sections)")
    parser.add_argument("--epochs", type=int, help="overrides pretrain.epochs")
    parser.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _resolve_config(args: argparse.Namespace) -> Config:
    """--config, then --size and --epochs; a bare --resume reuses the run's config."""
    if args.resume and not (args.config or args.size or args.epochs):
        with contextlib.suppress(CheckpointError):
            return load_checkpoint(args.out).config
    cfg = load_config(args.config) if args.config else Config()
    if args.size:
        cfg = cfg.replace(model=model_config(args.size))
    if args.epochs is not None:
        cfg = cfg.replace(pretrain={"epochs": args.epochs})
    return cfg


def _run(args: argparse.Namespace) -> int:
    result = pretrain_expert(
        args.corpus,
        args.out,
        _resolve_config(args),
        args.expert,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.val[-1] if result.val else {}
        held_out = (
            f"; held-out loss {last['model_loss']:.4g} vs masked-input baseline "
            f"{last['baseline_loss']:.4g}"
            if "model_loss" in last
            else ""
        )
        print(
            f"expert {args.expert}: {result.stop_reason} after {result.step} steps "
            f"({result.epoch} epochs){held_out}; checkpoint {result.checkpoint}"
        )
    return 0


command = Command(
    help="pretrain one SpecHi-Net expert on its partition of a corpus",
    add_arguments=_add_arguments,
    run=_run,
)
