"""Feeds turn market data into one BarBatch per shard per bar time.

``ReplayFeed`` replays a loaded (validated, split-adjusted) frame: it pivots the data once
into (time x symbol) arrays per shard, then builds each step's batches by slicing them, so
the per-step cost is a few numpy views and one small Struct per shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sovereign.core.bars import clean_rows
from sovereign.messages import BarBatch, BarChunk, IdSource, NDArray

_COLUMNS = ("open", "high", "low", "close", "volume")


def deal_symbols(symbols: Sequence[str], shards: int) -> list[list[str]]:
    """Deal sorted symbols to shards round robin; never more shards than symbols."""
    ordered = sorted(set(symbols))
    n = max(1, min(shards, len(ordered)))
    return [ordered[i::n] for i in range(n)]


class ReplayFeed:
    """Bars of a historical frame, step by step, split by shard."""

    def __init__(
        self, frame: pd.DataFrame, shard_symbols: list[list[str]], interval_s: int
    ) -> None:
        self.interval_s = int(interval_s)
        self.shard_symbols = shard_symbols
        self.timestamps = np.unique(frame["ts"].to_numpy(dtype=np.int64))
        self._ids = IdSource("feed")
        t_index = np.searchsorted(self.timestamps, frame["ts"].to_numpy(dtype=np.int64))
        symbol_col = frame["symbol"].to_numpy()
        self._shards: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, NDArray]] = []
        for symbols in shard_symbols:
            col = {s: j for j, s in enumerate(symbols)}
            sym_index = pd.Series(symbol_col).map(col).to_numpy()
            rows = ~pd.isna(sym_index)
            j = sym_index[rows].astype(np.int64)
            t = t_index[rows]
            shape = (len(self.timestamps), len(symbols))
            present = np.zeros(shape, dtype=bool)
            present[t, j] = True
            arrays: dict[str, np.ndarray] = {}
            for name in _COLUMNS:
                a = np.full(shape, np.nan)
                a[t, j] = frame[name].to_numpy(dtype=np.float64)[rows]
                arrays[name] = a
            width = max((len(s.encode()) for s in symbols), default=1)
            names = np.array([s.encode() for s in symbols], dtype=f"S{width}")
            self._shards.append((present, arrays, names, NDArray.from_numpy(names)))

        self._clean_run: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.timestamps)

    def clean_run(self, step: int) -> int:
        """How many bar times from ``step`` on can travel in one ``BarChunk``: every bar
        present is clean (finite, passing the shards' bar checks, with a finite volume),
        the same symbols have a bar at each of them (a symbol not listed yet, or no more,
        is absent from the whole run: its columns are NaN), and every shard has a bar."""
        if self._clean_run is None:
            n = len(self.timestamps)
            clean = np.ones(n, dtype=bool)
            same = np.ones(n, dtype=bool)  # the symbols present are those of the bar before
            for present, arrays, _, _ in self._shards:
                o, h, lo, c, v = (arrays[k] for k in _COLUMNS)
                good, _ = clean_rows(o, h, lo, c, v)
                clean &= (~present | (good & np.isfinite(v))).all(axis=1) & present.any(axis=1)
                same[1:] &= (present[1:] == present[:-1]).all(axis=1)
            # run[t]: from a clean t, up to the next bar time that is not clean or whose
            # symbols differ from those of the bar before it.
            breaks = ~(clean & same)
            marks = np.where(breaks, np.arange(n), n)
            next_break = np.r_[np.minimum.accumulate(marks[::-1])[::-1][1:], n] if n else marks
            self._clean_run = np.r_[np.where(clean, next_break - np.arange(n), 0), 0].astype(
                np.int64
            )
        return int(self._clean_run[step])

    def bars_in(self, step: int, length: int) -> int:
        """How many bars the ``length`` bar times from ``step`` hold, all shards."""
        return sum(int(p[step : step + length].sum()) for p, _, _, _ in self._shards)

    def chunk(
        self, step: int, length: int, chunk: int, sizes: dict[tuple[bytes, int], int] | None = None
    ) -> list[BarChunk]:
        """One ``BarChunk`` per shard: ``length`` bar times from ``step`` (a clean run).
        ``sizes``: the guardian's sizes of entries (symbol, bar in the chunk) from an
        earlier speculation of these bars, handed to the shards that trade them."""
        ts = np.ascontiguousarray(self.timestamps[step : step + length], dtype=np.int64)
        ts_col = NDArray.from_numpy(ts)
        end = int(ts[-1]) + self.interval_s * 1_000_000_000
        out = []
        for shard, (_, arrays, names, all_names) in enumerate(self._shards):
            cols = {k: NDArray.from_numpy(v[step : step + length]) for k, v in arrays.items()}
            out.append(
                BarChunk(
                    msg_id=self._ids.next(),
                    ts_event=end,
                    ts_init=end,
                    chunk=chunk,
                    shard=shard,
                    interval_s=self.interval_s,
                    ts=ts_col,
                    symbols=all_names,
                    sizes=self._sizes(names, length, sizes),
                    **cols,
                )
            )
        return out

    @staticmethod
    def _sizes(
        names: np.ndarray, length: int, sizes: dict[tuple[bytes, int], int] | None
    ) -> NDArray | None:
        """A shard's entry sizes as a (length, n) column (-1: none known)."""
        if not sizes:
            return None
        out = np.full((length, names.shape[0]), -1, dtype=np.int64)
        column = {name: j for j, name in enumerate(names.tolist())}
        for (symbol, bar), quantity in sizes.items():
            j = column.get(symbol)
            if j is not None and 0 <= bar < length:
                out[bar, j] = quantity
        return NDArray.from_numpy(out)

    def panel(self, shard: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A shard's bars as (time x symbol) arrays: which cells have a bar, and the OHLCV
        columns (NaN where there is none)."""
        present, arrays, _, _ = self._shards[shard]
        return present, arrays

    def batches(self, step: int) -> list[BarBatch | None]:
        """One batch per shard for this step (None where the shard has no bars)."""
        ts = int(self.timestamps[step])
        out: list[BarBatch | None] = []
        for shard, (present, arrays, names, all_names) in enumerate(self._shards):
            row = present[step]
            if not row.any():
                out.append(None)
                continue
            if row.all():
                cols = {k: v[step] for k, v in arrays.items()}
                symbols: np.ndarray | NDArray = all_names  # the same column every step
            else:
                cols = {k: v[step][row] for k, v in arrays.items()}
                symbols = names[row]
            out.append(
                BarBatch.from_arrays(
                    msg_id=self._ids.next(),
                    ts=ts,
                    interval_s=self.interval_s,
                    symbols=symbols,
                    shard=shard,
                    **cols,
                )
            )
        return out
