"""The breakout strategy as a bare numpy loop: the speed and correctness reference.

Vectorised across symbols, one Python iteration per bar time, no actors, messages,
guardian or broker. Its trades must equal the full pipeline's (``--strategy breakout``)
trade for trade: same signal rule, same fills (next bar's open), same exits. The rules
are those of ``sovereign.config.breakout_preset``; per bar time, in order:

1. orders decided at the previous close fill at this bar's open;
2. the indicators take this bar (ATR over the last 14 true ranges including this one;
   the highest high and the median volume of the 20 bars *before* this one);
3. every open position counts one more bar; a position whose low reached its stop, high
   its target, or that has been held 50 bars, exits at the next open;
4. a flat symbol with nothing pending enters at the next open if close > prior high and
   volume > prior median volume (ATR frozen at this bar).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ReferenceTrades:
    symbol: np.ndarray  # column index
    entry_bar: np.ndarray
    exit_bar: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    reason: np.ndarray  # 0 stop, 1 target, 2 max hold

    def __len__(self) -> int:
        return int(self.symbol.size)


def breakout_reference(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    window: int = 20,
    atr_period: int = 14,
    stop_mult: float = 1.5,
    target_mult: float = 3.0,
    max_hold: int = 50,
) -> ReferenceTrades:
    """Closed trades of the breakout strategy on (T, N) arrays of bars (no gaps)."""
    t_bars, n = close.shape
    quantity = np.zeros(n, dtype=bool)
    entry_pending = np.zeros(n, dtype=bool)
    exit_pending = np.zeros(n, dtype=bool)
    signal_atr = np.zeros(n)
    stop = np.zeros(n)
    target = np.zeros(n)
    held = np.zeros(n, dtype=np.int64)
    entry_bar = np.zeros(n, dtype=np.int64)
    entry_price = np.zeros(n)
    exit_reason = np.zeros(n, dtype=np.int64)
    tr_window = np.zeros((atr_period, n))
    high_ring = np.zeros((window, n))
    vol_ring = np.zeros((window, n))
    prev_close = np.full(n, np.nan)
    out: list[tuple[np.ndarray, ...]] = []
    for t in range(t_bars):
        o = open_[t]
        # 1. fills at the open
        if entry_pending.any():
            filled = entry_pending
            entry_price[filled] = o[filled]
            stop[filled] = o[filled] - stop_mult * signal_atr[filled]
            target[filled] = o[filled] + target_mult * signal_atr[filled]
            held[filled] = 0
            entry_bar[filled] = t
            quantity |= filled
            entry_pending = np.zeros(n, dtype=bool)
        if exit_pending.any():
            idx = np.flatnonzero(exit_pending)
            out.append(_closed(idx, t, entry_bar, entry_price, o, exit_reason))
            quantity[idx] = False
            exit_pending = np.zeros(n, dtype=bool)
        # 2. indicators
        h, lo, c, v = high[t], low[t], close[t], volume[t]
        tr = np.fmax(h, prev_close) - np.fmin(lo, prev_close)
        # The window oldest first, summed in that order (the pipeline's ATR, to the bit).
        tr_window[:-1] = tr_window[1:]
        tr_window[-1] = tr
        prev_close = c
        atr = tr_window.cumsum(axis=0)[-1] / atr_period
        ready = t >= window  # 20 previous bars (and so 14 true ranges) exist
        prior_high = high_ring.max(axis=0)
        # 3. exits
        held[quantity] += 1
        if quantity.any():
            stop_hit = lo <= stop
            target_hit = h >= target
            fire = quantity & (stop_hit | target_hit | (held >= max_hold))
            exit_reason[fire] = np.where(stop_hit[fire], 0, np.where(target_hit[fire], 1, 2))
            exit_pending = fire
        # 4. entries
        if ready:
            flat = ~quantity & ~entry_pending & ~exit_pending
            candidates = np.flatnonzero(flat & (c > prior_high))
            if candidates.size:
                median = np.median(vol_ring[:, candidates], axis=0)
                go = candidates[v[candidates] > median]
                entry_pending[go] = True
                signal_atr[go] = atr[go]
        high_ring[t % window] = h
        vol_ring[t % window] = v
    return _trades(out)


def _closed(
    idx: np.ndarray,
    t: int,
    entry_bar: np.ndarray,
    entry_price: np.ndarray,
    exit_price: np.ndarray,
    exit_reason: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """The trades of symbols ``idx`` exiting at bar ``t``, copied out of the live state."""
    return (
        idx,
        entry_bar[idx].copy(),
        np.full(idx.size, t),
        entry_price[idx].copy(),
        exit_price[idx].copy(),
        exit_reason[idx].copy(),
    )


def _trades(out: list[tuple[np.ndarray, ...]]) -> ReferenceTrades:
    """Join the per-bar batches of closed trades into one :class:`ReferenceTrades`."""
    if not out:
        empty_i = np.zeros(0, dtype=np.int64)
        empty_f = np.zeros(0)
        return ReferenceTrades(empty_i, empty_i, empty_i, empty_f, empty_f, empty_i)
    cols = [np.concatenate(parts) for parts in zip(*out, strict=True)]
    return ReferenceTrades(*cols)
