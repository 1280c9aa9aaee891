"""The strategies' entry signals, each written once over a block of bar times.

Every function takes (K, N) arrays (K bar times of N symbols) and answers (K, N): the bar
path calls it with K = 1 (``core.signals``), a speculative chunk with the chunk's bars
(``core.chunks``). Whether a symbol may act on its signal (flat, nothing pending) is the
caller's: bar by bar that is the trade book's state, in a chunk the walk from trade to
trade.
"""

from __future__ import annotations

import numpy as np


def breakout_signal(
    ready: np.ndarray,
    close: np.ndarray,
    prior_high: np.ndarray,
    volume: np.ndarray,
    volume_median: np.ndarray,
) -> np.ndarray:
    """The breakout preset's entry: a close above the previous ``breakout_window`` highs on
    volume above their median, once the ATR and both windows are ``ready``. A NaN median
    (not taken at that bar) never signals."""
    with np.errstate(invalid="ignore"):
        return ready & (close > prior_high) & (volume > volume_median)
