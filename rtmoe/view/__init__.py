"""``rtmoe view``: the operator's live page in a browser, attached to a running runtime.

:class:`~rtmoe.view.server.ViewServer` subscribes to a runtime's ZeroMQ ``rtmoe.decode``
and ``rtmoe.status`` topics (as any subscriber does) and serves one page (HTML and
JavaScript shipped in this package, drawn with the browser's canvas; no CDN) on
127.0.0.1, to which it pushes every message as Server-Sent Events. Standard library and
pyzmq only: no torch, no numpy.
"""

from rtmoe.view.server import DEFAULT_PORT, ViewServer

__all__ = ["DEFAULT_PORT", "ViewServer"]
