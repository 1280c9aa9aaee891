"""A shard's fixed, sorted universe of symbols and the mapping of batch rows onto it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Universe:
    """Sorted symbols with a vectorised lookup of batch symbol columns.

    ``locate`` maps a column of byte-string symbols to universe indices (-1 for symbols
    outside the universe). When a batch carries exactly the universe, in order, the map is
    the identity and costs one ``bytes`` comparison.
    """

    __slots__ = ("array", "identity", "index", "itemsize", "names", "symbols")

    def __init__(self, symbols: Sequence[str]) -> None:
        unique = sorted(set(symbols))
        if len(unique) != len(symbols):
            raise ValueError("universe symbols must be unique")
        self.symbols: list[str] = unique
        self.index: dict[str, int] = {s: i for i, s in enumerate(unique)}
        self.names = np.array(unique, dtype=object)
        width = max((len(s.encode()) for s in unique), default=1)
        self.itemsize = width
        self.array = np.array([s.encode() for s in unique], dtype=f"S{width}")
        # ``locate``'s answer when a column is the universe itself (callers may test ``is``).
        self.identity = np.arange(len(unique), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.symbols)

    def locate(self, column: np.ndarray) -> np.ndarray:
        """Indices of ``column``'s symbols in the universe, -1 where unknown."""
        if column.dtype == self.array.dtype and column.tobytes() == self.array.tobytes():
            return self.identity
        col = column.astype(self.array.dtype) if column.dtype.itemsize <= self.itemsize else column
        idx = np.searchsorted(self.array, col)
        idx = np.minimum(idx, max(len(self.array) - 1, 0))
        found = (self.array[idx] == column) if len(self.array) else np.zeros(len(column), bool)
        return np.where(found, idx, -1).astype(np.int64)
