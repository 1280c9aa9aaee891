"""Market data and regime messages."""

from __future__ import annotations

import numpy as np

from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN, RegimeName, regime_name
from sovereign.messages.base import Message, NDArray

__all__ = ["REGIME_NAMES", "REGIME_UNKNOWN", "RegimeName", "regime_name"]


class Bar(Message, frozen=True, gc=False):
    """One OHLCV bar for one symbol. ``ts`` is the bar start (ns, UTC).

    ``volume`` is NaN when the source has none (IB MIDPOINT bars report -1 volume).
    """

    symbol: str
    ts: int
    interval_s: int
    open: float
    high: float
    low: float
    close: float
    volume: float


_BAR_COLUMNS = ("open", "high", "low", "close", "volume")


class BarBatch(Message, frozen=True, gc=False):
    """The bars of many symbols that share one bar start time, in columns.

    Each column is raw little-endian bytes (``NDArray``): ``symbols`` is a fixed-width byte
    string column, the prices and volume are float64. Only symbols that have a bar at
    ``ts`` are present. Shards map the symbols column onto their universe once per batch
    with a vectorised search, so no per-symbol Python objects are created on the hot path.
    ``warmup`` marks history replayed when a live session starts: indicators learn from it,
    but nothing is traded on it.
    """

    ts: int
    interval_s: int
    symbols: NDArray
    open: NDArray
    high: NDArray
    low: NDArray
    close: NDArray
    volume: NDArray
    shard: int = -1
    warmup: bool = False

    def __post_init__(self) -> None:
        n = self.symbols.shape
        if len(n) != 1 or not self.symbols.dtype.startswith("|S"):
            raise ValueError("BarBatch.symbols must be a 1-D fixed-width byte string column")
        for name in _BAR_COLUMNS:
            col: NDArray = getattr(self, name)
            if col.shape != n or col.dtype != "<f8":
                raise ValueError(
                    f"BarBatch.{name} must be <f8 with shape {n}, got {col.dtype} {col.shape}"
                )
        if self.interval_s <= 0:
            raise ValueError(f"BarBatch.interval_s must be positive, got {self.interval_s}")

    def __len__(self) -> int:
        return self.symbols.shape[0]

    @classmethod
    def from_arrays(
        cls,
        *,
        msg_id: str,
        ts: int,
        interval_s: int,
        symbols: np.ndarray | NDArray,
        open: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        shard: int = -1,
        ts_init: int | None = None,
        correlation_id: str = "",
        warmup: bool = False,
    ) -> BarBatch:
        """Build a batch from numpy columns; ``ts_event`` is the bar close. A symbols
        column already on the wire (``NDArray``) is taken as it is: a replay sends the same
        one every step."""
        f8 = np.float64
        return cls(
            msg_id=msg_id,
            ts_event=ts + interval_s * 1_000_000_000,
            ts_init=ts + interval_s * 1_000_000_000 if ts_init is None else ts_init,
            correlation_id=correlation_id,
            ts=ts,
            interval_s=interval_s,
            symbols=symbols
            if isinstance(symbols, NDArray)
            else NDArray.from_numpy(np.asarray(symbols, dtype="S")),
            open=NDArray.from_numpy(np.asarray(open, dtype=f8)),
            high=NDArray.from_numpy(np.asarray(high, dtype=f8)),
            low=NDArray.from_numpy(np.asarray(low, dtype=f8)),
            close=NDArray.from_numpy(np.asarray(close, dtype=f8)),
            volume=NDArray.from_numpy(np.asarray(volume, dtype=f8)),
            shard=shard,
            warmup=warmup,
        )


class RegimeUpdate(Message, frozen=True, gc=False):
    """The regime of each symbol after the bar at ``ts``.

    ``codes`` is ``|u1`` (an index into ``REGIME_NAMES`` or 255 while warming up) and
    ``probabilities`` is ``<f4`` with shape (n, 4) in the order of ``REGIME_NAMES``.
    ``market`` is the regime of the whole universe (the most common known label).
    """

    ts: int
    symbols: NDArray
    codes: NDArray
    probabilities: NDArray
    market: str
    model: str
    shard: int = -1

    def __post_init__(self) -> None:
        n = self.symbols.shape
        if len(n) != 1 or not self.symbols.dtype.startswith("|S"):
            raise ValueError("RegimeUpdate.symbols must be a 1-D byte string column")
        if self.codes.shape != n or self.codes.dtype != "|u1":
            raise ValueError("RegimeUpdate.codes must be |u1 with one code per symbol")
        if self.probabilities.shape != (n[0], len(REGIME_NAMES)):
            raise ValueError("RegimeUpdate.probabilities must have shape (n, 4)")
        if self.probabilities.dtype != "<f4":
            raise ValueError("RegimeUpdate.probabilities must be <f4")
