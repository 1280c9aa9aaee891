"""A trade's records and the one definition of its exit and its close.

The trade book (``core.signals``), the shadow book (``core.shadow``) and the chunk kernel
(``core.chunks``) all keep their trades in these records, decide exits with
:func:`exit_reasons` and close trades with :func:`closed_trade`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN


class ClosedTrade(NamedTuple):
    """A finished round trip (see ``TradeClosed`` for the meaning of the fields).

    A named tuple: immutable like a frozen dataclass and built four times faster, which
    counts when a chunk closes thousands of trades at once."""

    trade_id: str
    symbol: str
    quantity: int
    entry_ts: int
    exit_ts: int
    entry_price: float
    exit_price: float
    pnl: float
    commission: float
    return_pct: float
    bars_held: int
    exit_reason: str
    regime: str
    confidence: float
    features: dict[str, float | int | str | bool | None]


EXIT_REASONS: tuple[str, ...] = ("late_fill", "stop", "target", "regime_change", "max_hold")
"""Why a trade is left, in the order the reasons take precedence (``exit_code``'s codes)."""


def exit_code(
    high: np.ndarray,
    low: np.ndarray,
    regime: np.ndarray,
    *,
    stop: np.ndarray,
    target: np.ndarray,
    entry_regime: np.ndarray,
    held: np.ndarray,
    max_hold: np.ndarray,
    on_regime_change: bool,
    late: np.ndarray | None = None,
) -> np.ndarray:
    """The one definition of an exit, element by element over arrays of any (broadcast)
    shape: the index in ``EXIT_REASONS`` of the first reason for a trade to leave at a bar
    close, -1 for none. ``held`` is the bars held through that bar. The trade book and the
    shadow book ask it for one bar (``exit_reasons``); a speculative chunk (``core.chunks``)
    asks it for each open trade's bars ahead at once."""
    # Written from the last reason to the first, so that the first that applies stands.
    code = np.where(held >= max_hold, EXIT_REASONS.index("max_hold"), -1)
    if on_regime_change:
        changed = (regime != entry_regime) & (regime != REGIME_UNKNOWN)
        code = np.where(changed, EXIT_REASONS.index("regime_change"), code)
    code = np.where(high >= target, EXIT_REASONS.index("target"), code)
    code = np.where(low <= stop, EXIT_REASONS.index("stop"), code)
    if late is not None:
        code = np.where(late, EXIT_REASONS.index("late_fill"), code)
    return code


def exit_reasons(
    candidates: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    regime_codes: np.ndarray,
    *,
    stop: np.ndarray,
    target: np.ndarray,
    entry_regime: np.ndarray,
    bars_held: np.ndarray,
    max_hold: np.ndarray,
    on_regime_change: bool,
    late: np.ndarray | None = None,
) -> list[tuple[int, str]]:
    """The exits of one bar: ``(symbol index, reason)`` for every candidate (a symbol in a
    trade with no exit pending) that must leave (``exit_code``)."""
    code = exit_code(
        high,
        low,
        regime_codes,
        stop=stop,
        target=target,
        entry_regime=entry_regime,
        held=bars_held,
        max_hold=max_hold,
        on_regime_change=on_regime_change,
        late=late,
    )
    fire = np.flatnonzero(candidates & (code >= 0))
    return [(i, EXIT_REASONS[c]) for i, c in zip(fire.tolist(), code[fire].tolist(), strict=True)]


@dataclass(slots=True)
class Trade:
    """One symbol's open trade, from its first entry fill until flat."""

    trade_id: str
    regime_code: int
    confidence: float
    atr: float
    features: dict[str, float | int | str | bool | None]
    entry_ts: int = 0
    entry_qty: int = 0
    entry_cost: float = 0.0
    exit_qty: int = 0
    exit_proceeds: float = 0.0
    commission: float = 0.0
    exit_reason: str = ""
    filled_once: bool = False
    stop_mult: float = 1.5
    target_mult: float = 3.0


def closed_trade(trade: Trade, symbol: str, ts: int, bars_held: int) -> ClosedTrade:
    """A finished round trip from its booked fills: the one definition of a trade's close,
    for the trade book and the shadow book (whose trades carry the same fields)."""
    pnl = trade.exit_proceeds - trade.entry_cost - trade.commission
    return ClosedTrade(
        trade_id=trade.trade_id,
        symbol=symbol,
        quantity=trade.entry_qty,
        entry_ts=trade.entry_ts,
        exit_ts=ts,
        entry_price=trade.entry_cost / trade.entry_qty,
        exit_price=trade.exit_proceeds / trade.exit_qty,
        pnl=pnl,
        commission=trade.commission,
        return_pct=pnl / trade.entry_cost if trade.entry_cost else 0.0,
        bars_held=bars_held,
        exit_reason=trade.exit_reason or "unknown",
        regime=REGIME_NAMES[trade.regime_code]
        if trade.regime_code < len(REGIME_NAMES)
        else "Unknown",
        confidence=trade.confidence,
        features=trade.features,
    )


@dataclass(slots=True)
class Order:
    index: int
    purpose: str  # "OPEN" or "CLOSE"
    reason: str = ""
    age: int = 0  # bar closes seen since the order was decided
    cancel_sent: bool = False
    filled: int = 0
    # The order's quantity as asked (0: the guardian sizes it), then as the guardian
    # approved it: a speculative chunk assumes it is the strategy's own (``core.chunks``).
    quantity: int = 0
