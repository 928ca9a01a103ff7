"""The live decoder: LSL source → signal chain → device ring → engine → ZeroMQ.

Modules: ``loop`` (`Runtime`), ``cli`` (``rtmoe stream``), ``demo``, ``plugins``. Nothing is
imported here, so importing a submodule does not pull in the loop, engines and torch.
"""
