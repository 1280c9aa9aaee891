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
        """How many bar times from ``step`` on have a clean bar (finite, passing the
        shards' bar checks, with a finite volume) for every symbol of every shard: the
        bar times that can travel in a ``BarChunk``."""
        if self._clean_run is None:
            clean = np.ones(len(self.timestamps), dtype=bool)
            for present, arrays, _, _ in self._shards:
                o, h, lo, c, v = (arrays[k] for k in _COLUMNS)
                good, _ = clean_rows(o, h, lo, c, v)
                clean &= (present & good & np.isfinite(v)).all(axis=1)
            # run[t]: the length of the clean run starting at t (0 where t is not clean):
            # the distance to the next bar time that is not clean.
            n = len(clean)
            marks = np.where(clean, n, np.arange(n))
            next_bad = np.minimum.accumulate(marks[::-1])[::-1] if n else marks
            self._clean_run = np.r_[next_bad - np.arange(n), 0].astype(np.int64)
        return int(self._clean_run[step])

    def chunk(self, step: int, length: int, chunk: int) -> list[BarChunk]:
        """One ``BarChunk`` per shard: ``length`` bar times from ``step`` (all clean)."""
        ts = np.ascontiguousarray(self.timestamps[step : step + length], dtype=np.int64)
        ts_col = NDArray.from_numpy(ts)
        end = int(ts[-1]) + self.interval_s * 1_000_000_000
        out = []
        for shard, (_, arrays, _, all_names) in enumerate(self._shards):
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
                    **cols,
                )
            )
        return out

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
