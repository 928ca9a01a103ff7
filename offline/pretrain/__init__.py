"""Self-supervised pretraining of one SpecHi-Net expert (SPEC §3-§4): ``rtmoe pretrain``.

Expert k trains on partition k of the corpus's recordings (``partition_recordings``);
a seeded share of that partition's recordings is held out to measure reconstruction.
Every batch holds segments of one shape. The model sees the spectrally MASKED signal
and is scored against the ORIGINAL one (the public release does the opposite, SPEC §7).

Everything random is a pure function of the seed (`data`); only dropout uses the global
torch generator, whose state is checkpointed. So ``--resume`` continues the same loss
curve, bit for bit on the same machine.

Modules, the way MAE separates its engine from its main:

- `loss`: the reconstruction loss (pure maths);
- `data`: held-out split, batch plan, seed streams, the loader;
- `distributed`: DistributedDataParallel ranks and collectives;
- `checkpointing`: the run folder (checkpoints, ``LATEST``, history, loss curve), resume;
- `loop`: the engine (`pretrain_expert`, one optimiser step, validation);
- `main`: the ``rtmoe pretrain`` command (arguments, config, report).

Several processes (``torchrun --nproc_per_node N -m rtmoe.cli pretrain ...``, any number
of nodes) run DistributedDataParallel: every rank takes a disjoint slice of each epoch's
batches; only rank 0 writes.
"""

from rtmoe.offline.pretrain.checkpointing import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    KEEP_CHECKPOINTS,
    PLOT_FILE,
    plot_history,
)
from rtmoe.offline.pretrain.data import batch_plan, derive_seed, split_holdout
from rtmoe.offline.pretrain.loop import (
    NonFiniteLossError,
    PretrainResult,
    cosine_lr,
    pretrain_expert,
)
from rtmoe.offline.pretrain.loss import (
    OUTPUT_NAMES,
    aux_target,
    identity_output,
    loss_stft_params,
    output_loss,
    reconstruction_loss,
)
from rtmoe.offline.pretrain.main import command

__all__ = [
    "CHECKPOINT_DIR",
    "HISTORY_FILE",
    "KEEP_CHECKPOINTS",
    "OUTPUT_NAMES",
    "PLOT_FILE",
    "NonFiniteLossError",
    "PretrainResult",
    "aux_target",
    "batch_plan",
    "command",
    "cosine_lr",
    "derive_seed",
    "identity_output",
    "loss_stft_params",
    "output_loss",
    "plot_history",
    "pretrain_expert",
    "reconstruction_loss",
    "split_holdout",
]
