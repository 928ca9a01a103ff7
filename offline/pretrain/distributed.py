"""DistributedDataParallel plumbing: ranks, collectives, generator states, replica check.

``torchrun --nproc_per_node N -m rtmoe.cli pretrain ...`` (any number of nodes): every
rank takes a disjoint slice of each epoch's batches; only rank 0 writes. One process
without torchrun is world size 1 and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rtmoe.checkpoint import rng_state
from rtmoe.command import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    owns_group: bool  # this call created the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> tuple[DistInfo, torch.device]:
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
    return DistInfo(rank, world, local_rank, owns), dev


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_rng(info: DistInfo, device: torch.device) -> dict[str, torch.Tensor]:
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


def check_replicas_agree(model: torch.nn.Module, info: DistInfo, dev: torch.device) -> None:
    """DDP keeps replicas identical; a mismatch means a bug, so fail loudly."""
    with torch.no_grad():
        local = torch.stack([p.double().sum() for p in model.parameters()]).sum()
    parts = [torch.empty_like(local) for _ in range(info.world)]
    dist.all_gather(parts, local.to(dev))
    if any(not torch.equal(parts[0], p) for p in parts):
        raise RuntimeError(f"DDP replicas diverged: weight sums {[float(p) for p in parts]}")
