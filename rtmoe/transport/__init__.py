"""Wire messages (pure JSON encode/decode) and the ZeroMQ publisher of decodes.

``rtmoe.transport.messages`` has no zmq import; the publisher imports zmq when created.
"""

from rtmoe.transport.messages import (
    SCHEMA_VERSION,
    TOPIC_DECODE,
    TOPIC_PREVIEW,
    TOPIC_STATUS,
    DecodeMessage,
    PreviewMessage,
    ProtocolError,
    RuntimeState,
    StatusError,
    StatusMessage,
    decode,
    encode,
    encode_single_frame,
)
from rtmoe.transport.publisher import DEFAULT_ADDRESS, Heartbeat, ZmqPublisher

__all__ = [
    "DEFAULT_ADDRESS",
    "SCHEMA_VERSION",
    "TOPIC_DECODE",
    "TOPIC_PREVIEW",
    "TOPIC_STATUS",
    "DecodeMessage",
    "Heartbeat",
    "PreviewMessage",
    "ProtocolError",
    "RuntimeState",
    "StatusError",
    "StatusMessage",
    "ZmqPublisher",
    "decode",
    "encode",
    "encode_single_frame",
]
