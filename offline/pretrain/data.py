"""What each pretraining step sees: held-out split, batch plan, seeds, the loader.

Everything random is a pure function of the seed: the batch order of an epoch of
``(seed, expert, ORDER_STREAM, epoch)``, the masks of a micro-batch of ``(seed, expert,
TRAIN_STREAM, step, micro, rank)``, the validation masks of ``(seed, expert, VAL_STREAM,
batch)`` (:func:`derive_seed`, :func:`seeded_generator`). Every batch holds segments of
one shape (a group of the corpus).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rtmoe.config import PretrainConfig
from rtmoe.offline.corpus.shards import ShardCorpus

#: Seed streams, so training and validation masks never share random numbers.
TRAIN_STREAM, VAL_STREAM, ORDER_STREAM, INIT_STREAM = range(4)


def derive_seed(*words: int) -> int:
    """A 63-bit seed that is a pure function of the non-negative integers ``words``."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> 1)


def seeded_generator(*words: int) -> torch.Generator:
    """A CPU torch generator seeded with :func:`derive_seed` of ``words``."""
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


class SegmentBatches(torch.utils.data.Dataset):
    """Stacked segments of each planned batch, (batch, n_chans, n_times) float32."""

    def __init__(self, corpus: ShardCorpus, batches: Sequence[np.ndarray]) -> None:
        self.corpus = corpus
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        rows = [self.corpus.segment(int(i)) for i in self.batches[k]]
        return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))


def make_loader(
    corpus: ShardCorpus, batches: Sequence[np.ndarray], cfg: PretrainConfig, device: torch.device
) -> torch.utils.data.DataLoader:
    # An own generator: a DataLoader iterator otherwise draws from the global torch RNG,
    # which would make a resumed run's dropout differ from an uninterrupted one.
    return torch.utils.data.DataLoader(
        SegmentBatches(corpus, batches),
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )
