"""msgpack on the wire: one reused typed encoder and decoder per channel.

A channel carries a *batch*: a msgpack array of tagged messages, one per actor call, so
Ray ships one bytes object per step instead of many small objects.
"""

from __future__ import annotations

import functools
import operator
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

    __slots__ = ("_batch_decoder", "_encoder", "_filtered", "_one_decoder", "name", "types")

    def __init__(self, types: Sequence[type[Message]], name: str = "messages") -> None:
        if not types:
            raise ValueError("a codec needs at least one message type")
        union: Any = types[0] if len(types) == 1 else _union(types)
        self.name = name
        self.types: tuple[type[Message], ...] = tuple(types)
        self._filtered: dict[frozenset[type[Message]], Any] = {}
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

    def decode_batch_of(
        self, data: bytes | bytearray | memoryview, accepts: frozenset[type[Message]]
    ) -> list[Message]:
        """The messages of a batch whose type is in ``accepts``, in batch order.

        The others are skipped by the decoder without being built: each is matched to an
        empty stand-in with its tag, whose fields msgspec passes over at C speed, so a
        consumer that reads a few types of a large batch does not pay for the rest (a
        watcher's inbox decodes 2-3x faster). A malformed batch still fails whole with
        ``MessageDecodeError``; only the fields of skipped messages go unvalidated, and
        this consumer never reads them.
        """
        decoder = self._filtered.get(accepts)
        if decoder is None:
            decoder = self._filtered[accepts] = self._filtered_decoder(accepts)
        try:
            return [m for m in decoder.decode(data) if isinstance(m, Message)]
        except _DECODE_FAILURES as exc:
            raise MessageDecodeError(f"{self.name}: cannot decode message batch: {exc}") from None

    def _filtered_decoder(self, accepts: frozenset[type[Message]]) -> Any:
        unknown = accepts - set(self.types)
        if unknown:
            raise ValueError(f"{self.name} does not carry {sorted(t.__name__ for t in unknown)}")
        stand_ins = [_skipped(t.__name__) for t in self.types if t not in accepts]
        kept = [t for t in self.types if t in accepts]
        return msgspec.msgpack.Decoder(list[_union([*kept, *stand_ins])])


@functools.cache
def _skipped(tag: str) -> type[msgspec.Struct]:
    """An empty Struct tagged like a message type: decoding one skips all its fields."""
    return msgspec.defstruct(f"Skipped{tag}", [], tag=tag, frozen=True, gc=False)


def _union(types: Sequence[type[msgspec.Struct]]) -> Any:
    return functools.reduce(operator.or_, types)
