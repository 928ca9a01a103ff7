"""Entry-point stubs of offline/'s subcommands (group ``rtmoe.commands``).

Standard library only: ``rtmoe --help`` lists these help lines without importing the
training code or torch. See :class:`rtmoe.command.LazyCommand`.
"""

from rtmoe.command import LazyCommand

pretrain = LazyCommand(
    help="pretrain one SpecHi-Net expert on its partition of a corpus",
    target="rtmoe.offline.pretrain:command",
)
prepare = LazyCommand(
    help="build a sharded pretraining corpus from EEG recordings (or --dev)",
    target="rtmoe.offline.corpus.cli:command",
)
mask_preview = LazyCommand(
    help="draw a development trial before and after Gaussian spectral masking (PNG)",
    target="rtmoe.offline.masking_preview:command",
)
finetune = LazyCommand(
    help="fine-tune SpecMoE on labelled trials (dev data set or .npz)",
    target="rtmoe.offline.finetune:command",
)
evaluate = LazyCommand(
    help="evaluate a fine-tuned SpecMoE checkpoint: metrics, confusion matrix, gate plot",
    target="rtmoe.offline.evaluate:command",
)
