"""The strategy's trade book: what the broker's answers about its orders do to its trades.

A part of ``core.signals.ShardStrategy``: fills (its own orders', and those of orders it no
longer tracks: a halt's flattening, a late fill), denials and cancels move the positions,
the pending flags and the open trades, and close a trade when its position is flat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sovereign.core.indicators import ATR, SimpleATR
from sovereign.core.shadow import ShadowBook
from sovereign.core.trades import ClosedTrade, Order, Trade, closed_trade
from sovereign.core.universe import Universe
from sovereign.domain.regimes import REGIME_UNKNOWN
from sovereign.domain.settings import StrategyConfig


@dataclass(slots=True)
class StrategyCounters:
    bars: int = 0
    entries: int = 0
    exits: int = 0
    denied: int = 0
    no_volume_blocked: int = 0
    unknown_order_events: int = 0
    late_entry_fills: int = 0
    orphaned_orders: int = 0
    rule_skips: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class TradeBook:
    """The order events' side of ``ShardStrategy`` (these are the parts of it they move)."""

    universe: Universe
    config: StrategyConfig
    atr: ATR | SimpleATR
    quantity: np.ndarray
    pending_entry: np.ndarray
    pending_exit: np.ndarray
    bars_held: np.ndarray
    stop: np.ndarray
    target: np.ndarray
    entry_regime: np.ndarray
    exit_late_fill: np.ndarray
    trades: dict[int, Trade]
    orders: dict[str, Order]
    shadow: ShadowBook | None
    losing_streak: int
    counters: StrategyCounters
    _next_id: Callable[[str], str]  # ShardStrategy's

    def on_denied(self, order_id: str, ts: int) -> ClosedTrade | None:
        """The guardian denied the intent, or the gateway/broker rejected the order."""
        if order_id in self.orders:
            self.counters.denied += 1
        return self.on_canceled(order_id, ts)

    def on_canceled(self, order_id: str, ts: int) -> ClosedTrade | None:
        """An order stopped working; return the trade if that leaves it closed."""
        order = self.orders.pop(order_id, None)
        if order is None:
            return None
        i = order.index
        self._clear_pending(order)
        trade = self.trades.get(i)
        if trade is None:
            return None
        if not trade.filled_once:
            # The entry never filled: there is no trade to remember.
            del self.trades[i]
            self.entry_regime[i] = REGIME_UNKNOWN
            return None
        if self.quantity[i] == 0 and trade.exit_qty > 0 and not self.pending_exit[i]:
            return self._close(i, trade, ts)
        return None

    def on_fill(
        self,
        order_id: str,
        quantity: int,
        price: float,
        commission: float,
        leaves: int,
        ts: int,
    ) -> ClosedTrade | None:
        """Book a fill of one of our orders; return the trade if it is now closed."""
        order = self.orders.get(order_id)
        if order is None:
            self.counters.unknown_order_events += 1
            return None
        i = order.index
        trade = self.trades.get(i)
        if trade is None:
            self.counters.unknown_order_events += 1
            return None
        trade.commission += commission
        order.filled += quantity
        if order.purpose == "OPEN":
            self._book_entry(i, trade, quantity, price, ts)
        else:
            trade.exit_qty += quantity
            trade.exit_proceeds += quantity * price
            self.quantity[i] -= quantity
        if leaves == 0:
            self.orders.pop(order_id, None)
            self._clear_pending(order)
        if self.quantity[i] == 0 and trade.exit_qty > 0 and not self.pending_entry[i]:
            return self._close(i, trade, ts)
        return None

    def on_external_fill(
        self, symbol: str, side: str, quantity: int, price: float, commission: float, ts: int
    ) -> ClosedTrade | None:
        """A fill of an order the shard no longer tracks. A sale is the guardian flattening
        a position (a halt), or a late fill of an exit: it is booked as an exit of the open
        trade. A purchase is a late fill of an entry that was canceled or forgotten (a
        broker can report a fill after the cancel): the shares are held all the same, so
        they are booked into the trade, which leaves at the next bar close."""
        i = self.universe.index.get(symbol)
        if i is not None and side == "BUY":
            self._late_entry_fill(i, symbol, quantity, price, commission, ts)
            return None
        trade = self.trades.get(i) if i is not None else None
        if i is None or trade is None or side != "SELL":
            self.counters.unknown_order_events += 1
            return None
        trade.commission += commission
        trade.exit_qty += quantity
        trade.exit_proceeds += quantity * price
        trade.exit_reason = trade.exit_reason or "guardian_flatten"
        self.quantity[i] -= quantity
        if self.quantity[i] <= 0 and not self.pending_entry[i]:
            self.quantity[i] = 0
            self.pending_exit[i] = False
            for order_id in [k for k, o in self.orders.items() if o.index == i]:
                del self.orders[order_id]
            return self._close(i, trade, ts)
        return None

    def _late_entry_fill(
        self, i: int, symbol: str, quantity: int, price: float, commission: float, ts: int
    ) -> None:
        trade = self.trades.get(i)
        if trade is None:
            atr = float(self.atr.value[i])
            trade = self.trades[i] = Trade(
                trade_id=self._next_id(symbol),
                regime_code=REGIME_UNKNOWN,
                confidence=0.0,
                atr=atr,
                features={"late_fill": True},
                stop_mult=self.config.stop_atr_mult,
                target_mult=self.config.target_atr_mult,
            )
        trade.commission += commission
        self._book_entry(i, trade, quantity, price, ts)
        # The strategy had given these shares up: leave at the next close.
        self.exit_late_fill[i] = True
        self.counters.late_entry_fills += 1

    def _book_entry(self, i: int, trade: Trade, quantity: int, price: float, ts: int) -> None:
        """Add bought shares to the trade; stop and target follow the average price."""
        if not trade.filled_once:
            trade.filled_once = True
            trade.entry_ts = ts
            self.bars_held[i] = 0
        trade.entry_qty += quantity
        trade.entry_cost += quantity * price
        self.quantity[i] += quantity
        avg = trade.entry_cost / trade.entry_qty
        self.stop[i] = avg - trade.stop_mult * trade.atr
        self.target[i] = avg + trade.target_mult * trade.atr

    def _clear_pending(self, order: Order) -> None:
        if order.purpose == "OPEN":
            self.pending_entry[order.index] = False
        else:
            self.pending_exit[order.index] = False

    def _close(self, i: int, trade: Trade, ts: int) -> ClosedTrade:
        del self.trades[i]
        closed = closed_trade(trade, self.universe.symbols[i], ts, int(self.bars_held[i]))
        self.losing_streak = self.losing_streak + 1 if closed.pnl < 0 else 0
        self.stop[i] = self.target[i] = np.nan
        self.bars_held[i] = 0
        self.entry_regime[i] = REGIME_UNKNOWN
        self.exit_late_fill[i] = False
        acting = trade.features.get("rules_acting")
        scale = trade.features.get("size_scale")
        if self.shadow is not None and isinstance(acting, str) and isinstance(scale, float):
            self.shadow.scaled(closed, tuple(acting.split(",")), scale)
        return closed
