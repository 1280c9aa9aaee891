"""The simulated broker's fill model: prices, commissions and volume caps.

One definition for everything that fills on paper: the simulated broker
(``brokers.sim``), its chunked execution (``brokers.sim_chunk``) and the shadow book
(``core.shadow``), which follows skipped entries as the broker would have filled them.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

from sovereign.domain.settings import SimConfig

F = TypeVar("F", float, np.ndarray)


def commission_for(quantity: int, price: float, config: SimConfig) -> float:
    """IBKR-style fixed commission for one fill."""
    value = quantity * price
    fee = max(quantity * config.commission_per_share, config.commission_min)
    if config.commission_max_pct > 0:
        fee = min(fee, value * config.commission_max_pct)
    return round(fee, 6)


def market_price(open_: F, side: str, config: SimConfig) -> F:
    """A market order's fill price: the open, moved against the order by the slippage
    (of one open, or of an array of them, element by element: the same arithmetic)."""
    slip = config.slippage_bps / 10_000.0
    return open_ * (1 + slip) if side == "BUY" else open_ * (1 - slip)


def volume_cap(volume: float, config: SimConfig) -> int | None:
    """The most one fill may take of a bar (None: its volume is unknown, not capped)."""
    if math.isnan(volume):
        return None
    return math.floor(volume * config.max_volume_share)
