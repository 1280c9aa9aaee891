"""Cash, positions and P&L accounting (average-cost method).

Pure bookkeeping: fills in, marks in, numbers out. Quantities are whole shares, signed
(positive long). Realised P&L is booked when a fill reduces a position, against the
average entry price; commissions are tracked apart and subtracted from cash when paid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class Position:
    """One symbol's position."""

    symbol: str
    quantity: int = 0
    avg_price: float = 0.0
    realized_pnl: float = 0.0
    market_price: float = math.nan

    @property
    def market_value(self) -> float:
        price = self.market_price if math.isfinite(self.market_price) else self.avg_price
        return self.quantity * price

    @property
    def unrealized_pnl(self) -> float:
        if self.quantity == 0 or not math.isfinite(self.market_price):
            return 0.0
        return (self.market_price - self.avg_price) * self.quantity


def ordered_sum(values: Iterable[float]) -> float:
    """The sum of ``values`` added in ascending order, one at a time.

    It does not depend on the order the values come in (the same multiset, the same bits),
    and a whole matrix of them is summed at once with a sort and ``np.add.accumulate``
    along its rows (``sovereign.brokers.sim_chunk.ordered_row_sums``): a chunked backtest
    gets, for every bar, the equity a replay bar by bar computes, to the last bit. Zeros
    change nothing, so a row may carry the symbols not held.
    """
    total = 0.0
    for v in sorted(values):
        total += v
    return total


class Portfolio:
    """An account: cash plus positions, marked to the latest price of each symbol."""

    __slots__ = ("cash", "commissions", "open", "positions", "realized_pnl")

    def __init__(self, cash: float) -> None:
        if not math.isfinite(cash):
            raise ValueError(f"cash must be finite, got {cash!r}")
        self.cash = float(cash)
        self.commissions = 0.0
        self.realized_pnl = 0.0
        self.positions: dict[str, Position] = {}
        # The positions with a non-zero quantity, kept in step with ``positions``: the
        # account figures are taken every bar and should not walk every symbol ever held.
        self.open: dict[str, Position] = {}

    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol)
        return pos

    def quantity(self, symbol: str) -> int:
        pos = self.positions.get(symbol)
        return 0 if pos is None else pos.quantity

    def apply_fill(
        self, symbol: str, side: str, quantity: int, price: float, commission: float
    ) -> float:
        """Book a fill; return the realised P&L it produced (before commission)."""
        if quantity <= 0:
            raise ValueError(f"fill quantity must be positive, got {quantity}")
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"fill price must be positive and finite, got {price!r}")
        signed = quantity if side == "BUY" else -quantity
        pos = self.position(symbol)
        realized = 0.0
        old = pos.quantity
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):
            # Opening or adding: the average price moves.
            pos.avg_price = (pos.avg_price * abs(old) + price * quantity) / abs(new)
        else:
            closed = min(abs(old), quantity)
            direction = 1 if old > 0 else -1
            realized = (price - pos.avg_price) * closed * direction
            if abs(signed) > abs(old):
                # Flipped through zero: the remainder opens at the fill price.
                pos.avg_price = price
            elif new == 0:
                pos.avg_price = 0.0
        pos.quantity = new
        self._sync(pos)
        pos.realized_pnl += realized
        if old == 0 or not math.isfinite(pos.market_price):
            # A position opened from flat is worth its fill price until the next mark: a
            # mark left from an earlier position in the symbol is stale, and the equity the
            # position cap is measured against would count it (found by the guardian's
            # property test: a reopened position kept its pre-gap mark).
            pos.market_price = price
        self.realized_pnl += realized
        self.cash -= signed * price + commission
        self.commissions += commission
        return realized

    def set_position(
        self, symbol: str, quantity: int, avg_price: float, realized_pnl: float, mark: float
    ) -> None:
        """Restore a position as it was stored (no fill, no cash movement)."""
        pos = self.position(symbol)
        pos.quantity, pos.avg_price = int(quantity), float(avg_price)
        pos.realized_pnl, pos.market_price = float(realized_pnl), float(mark)
        self._sync(pos)

    def _sync(self, pos: Position) -> None:
        if pos.quantity:
            self.open[pos.symbol] = pos
        else:
            self.open.pop(pos.symbol, None)

    def mark(self, symbol: str, price: float) -> None:
        """Set the latest price of a symbol we hold (ignored when we hold nothing)."""
        pos = self.positions.get(symbol)
        if pos is not None and math.isfinite(price) and price > 0:
            pos.market_price = price

    def figures(self) -> tuple[float, float, float, float]:
        """Equity, unrealised P&L, gross and net exposure, in one pass over the positions
        (each is otherwise a pass of its own, and an account snapshot is taken every bar).

        Every sum is ``ordered_sum``: it does not depend on the order of the positions. A
        chunked backtest sums each bar's positions as columns and must get the very same
        equity, to the last bit, as a step-by-step replay; the properties below use the
        same sums, so they are equal too."""
        values: list[float] = []
        unrealized: list[float] = []
        isfinite = math.isfinite
        for p in self.open.values():
            mark = p.market_price
            if isfinite(mark):
                values.append(p.quantity * mark)
                unrealized.append((mark - p.avg_price) * p.quantity)
            else:
                values.append(p.quantity * p.avg_price)
        net = ordered_sum(values)
        # Long positions only (the usual case): the gross exposure is the net one.
        gross = net if all(v >= 0 for v in values) else ordered_sum(map(abs, values))
        return self.cash + net, ordered_sum(unrealized), gross, net

    @property
    def unrealized_pnl(self) -> float:
        return ordered_sum(p.unrealized_pnl for p in self.open.values())

    @property
    def equity(self) -> float:
        return self.cash + ordered_sum(p.market_value for p in self.open.values())

    @property
    def gross_exposure(self) -> float:
        return ordered_sum(abs(p.market_value) for p in self.open.values())

    @property
    def net_exposure(self) -> float:
        return ordered_sum(p.market_value for p in self.open.values())

    @property
    def open_positions(self) -> int:
        return len(self.open)
