"""msgpack on the wire: one reused typed encoder and decoder per channel.

A channel carries a *batch*: a msgpack array of tagged messages, one per actor call, so
Ray ships one bytes object per step instead of many small objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from sovereign.messages.base import Message, MessageDecodeError

# Everything msgspec can raise on hostile input, plus what a Struct's __post_init__ raises
# (msgspec wraps ValueError/TypeError from it as ValidationError, but be defensive).
_DECODE_FAILURES = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    MemoryError,
)


class Codec:
    """Encode and decode message batches of a fixed union of message types."""

    __slots__ = ("_batch_decoder", "_encoder", "_one_decoder", "name")

    def __init__(self, types: Sequence[type[Message]], name: str = "messages") -> None:
        if not types:
            raise ValueError("a codec needs at least one message type")
        union: Any = types[0] if len(types) == 1 else _union(types)
        self.name = name
        self._encoder = msgspec.msgpack.Encoder()
        self._batch_decoder = msgspec.msgpack.Decoder(list[union])
        self._one_decoder = msgspec.msgpack.Decoder(union)

    def encode(self, message: Message) -> bytes:
        return self._encoder.encode(message)

    def encode_batch(self, messages: Sequence[Message]) -> bytes:
        return self._encoder.encode(list(messages))

    def decode(self, data: bytes | bytearray | memoryview) -> Message:
        try:
            return self._one_decoder.decode(data)
        except _DECODE_FAILURES as exc:
            raise MessageDecodeError(f"{self.name}: cannot decode message: {exc}") from None

    def decode_batch(self, data: bytes | bytearray | memoryview) -> list[Message]:
        try:
            return self._batch_decoder.decode(data)
        except _DECODE_FAILURES as exc:
            raise MessageDecodeError(f"{self.name}: cannot decode message batch: {exc}") from None


def _union(types: Sequence[type[Message]]) -> Any:
    import functools
    import operator

    return functools.reduce(operator.or_, types)
