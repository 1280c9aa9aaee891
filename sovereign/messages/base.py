"""The message envelope and the columnar array type that every message builds on.

Every message is a frozen, tagged msgspec Struct. The tag is the class name, so a decoder
for a union of messages dispatches on it. Fields are keyword-only; new fields go last and
carry defaults, and a field's type never changes (msgspec schema-evolution rules), so an
older reader keeps decoding newer messages.
"""

from __future__ import annotations

import math
import re

import msgspec
import numpy as np


class MessageDecodeError(ValueError):
    """Raised when bytes cannot be decoded into a valid message.

    It covers unknown tags, wrong field types, values that fail validation, and truncated
    or random bytes. Nothing else escapes the decoder, so a receiving actor can count and
    drop a bad payload without crashing or corrupting its state.
    """


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True, gc=False):
    """The standard envelope.

    Parameters
    ----------
    msg_id
        Unique, deterministic id (``<source>:<sequence>``) so replays deduplicate.
    ts_event
        When the thing the message describes happened, in ns since the Unix epoch (UTC).
    ts_init
        When the message was created, in ns since the Unix epoch (UTC). In a replay this is
        the replay clock, never the wall clock, so replays are reproducible.
    correlation_id
        The ``msg_id`` of the message that caused this one, or empty.
    """

    msg_id: str
    ts_event: int
    ts_init: int
    correlation_id: str = ""


_DTYPE_RE = re.compile(r"^(<f8|<f4|<i8|<i4|<i2|<u8|<u4|<u2|\|u1|\|i1|\|b1|\|S([1-9][0-9]?))$")
MAX_ARRAY_BYTES = 1 << 30
_ITEMSIZE: dict[str, int] = {}


class NDArray(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A numeric column on the wire: raw little-endian bytes plus dtype and shape.

    Only fixed-width little-endian numeric dtypes, booleans and short fixed-width byte
    strings (``|S1`` .. ``|S99``, used for symbol columns) are accepted. Decoding checks that
    the byte length matches the shape, so a truncated column is a decode error, not a
    silent misread.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        itemsize = _ITEMSIZE.get(self.dtype)
        if itemsize is None:
            if not _DTYPE_RE.fullmatch(self.dtype):
                raise ValueError(f"unsupported array dtype {self.dtype!r}")
            # Every column of every message passes here: the regex and np.dtype once per
            # accepted dtype string (at most 110 of them), then a dict lookup.
            itemsize = _ITEMSIZE[self.dtype] = np.dtype(self.dtype).itemsize
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"array has {len(shape)} dimensions; at most 4 are allowed")
        if min(shape, default=0) < 0:
            raise ValueError(f"array shape {shape} has a negative dimension")
        expected = math.prod(shape) * itemsize
        if expected > MAX_ARRAY_BYTES:
            raise ValueError(f"array of shape {self.shape} exceeds {MAX_ARRAY_BYTES} bytes")
        if len(self.data) != expected:
            raise ValueError(
                f"array data is {len(self.data)} bytes; dtype {self.dtype} and shape "
                f"{self.shape} need {expected}"
            )

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> NDArray:
        """Wrap a numpy array, converting it to little-endian contiguous memory."""
        arr = np.asarray(array)
        if arr.dtype.kind in "fiu" and arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        return cls(dtype=arr.dtype.str, shape=arr.shape, data=arr.tobytes())

    def to_numpy(self) -> np.ndarray:
        """Return a read-only numpy view over the bytes (no copy)."""
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1


class IdSource:
    """Deterministic message ids: ``<source>:<n>`` with a per-source counter.

    Ids from a replay are identical on every runtime, which is what lets two runs of the
    same data be compared trade for trade, and a replayed command be recognised. ``n`` is
    the last number given out; a speculative chunk that is abandoned puts it back.
    """

    __slots__ = ("n", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}:{self.n}"

    def take(self, count: int) -> list[str]:
        """The next ``count`` ids, as ``count`` calls of ``next`` would give them."""
        first, prefix = self.n + 1, self.prefix
        self.n += count
        return [f"{prefix}:{n}" for n in range(first, self.n + 1)]
