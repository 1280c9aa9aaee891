"""The one interface every broker adapter implements (sim, IBKR, Alpaca).

The gateway talks to a broker only through this interface; it has already verified the
guardian's approval before ``submit`` is called. Adapters report everything that happens
to an order as order events (``OrderAccepted``, ``OrderRejected``, ``OrderFilled``,
``OrderCanceled``), each fill with a unique execution id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BookOrder,
    BookPosition,
    IdSource,
    Message,
    OrderAccepted,
    OrderCanceled,
    OrderRejected,
    PositionSnapshot,
    SubmitOrder,
)


class BrokerError(RuntimeError):
    """A broker failure that the gateway must handle (disconnect, protocol error)."""


class BrokerAdapter(Protocol):
    """What the gateway needs from a broker."""

    name: str

    def submit(self, order: SubmitOrder, now_ns: int) -> list[Message]:
        """Send an (already approved) order; return the immediate events."""
        ...

    def cancel(self, order_id: str, now_ns: int) -> list[Message]:
        """Cancel a working order; return the events (``OrderCanceled`` when it worked)."""
        ...

    def on_bars(self, batch: BarBatch) -> list[Message]:
        """New market data: return the events it caused (fills for a simulated broker)."""
        ...

    def poll(self, now_ns: int) -> list[Message]:
        """Events that arrived from the broker since the last call (fills, statuses)."""
        ...

    def positions(self) -> dict[str, int]:
        """Non-zero positions, by symbol."""
        ...

    def account(self, now_ns: int) -> AccountSnapshot:
        """The account, marked to the latest prices."""
        ...

    def position_snapshots(self, symbols: list[str], now_ns: int) -> list[PositionSnapshot]:
        """Snapshots of the given symbols' positions."""
        ...

    def book(self) -> tuple[list[BookPosition], list[BookOrder]]:
        """Every open position and working order, as the broker sees them."""
        ...


# -- EVENT BUILDERS shared by the adapters ----------------------------------------------

Held = Mapping[str, tuple[int, float, float]]
"""Positions as ``symbol -> (quantity, average price, market price)``."""


def _about(ids: IdSource, order: SubmitOrder, now_ns: int) -> dict[str, Any]:
    """The fields every event about ``order`` carries: its envelope and the order's ids."""
    return {
        "msg_id": ids.next(),
        "ts_event": now_ns,
        "ts_init": now_ns,
        "correlation_id": order.msg_id,
        "order_id": order.order_id,
        "shard": order.shard,
        "symbol": order.symbol,
    }


def accepted(ids: IdSource, order: SubmitOrder, broker_order_id: str, now_ns: int) -> OrderAccepted:
    return OrderAccepted(
        **_about(ids, order, now_ns),
        side=order.side,
        quantity=order.quantity,
        broker_order_id=broker_order_id,
    )


def canceled(
    ids: IdSource, order: SubmitOrder, filled: int, reason: str, now_ns: int
) -> OrderCanceled:
    return OrderCanceled(
        **_about(ids, order, now_ns),
        filled_quantity=filled,
        reason=reason,
    )


def rejected(
    ids: IdSource, order: SubmitOrder, code: str, detail: str, now_ns: int
) -> OrderRejected:
    return OrderRejected(
        **_about(ids, order, now_ns),
        reason_code=code,
        detail=detail,
    )


def snapshots_from(
    ids: IdSource, held: Held, symbols: list[str], now_ns: int
) -> list[PositionSnapshot]:
    """Snapshots of ``symbols`` from a broker's positions (flat where it holds nothing)."""
    out = []
    for s in symbols:
        q, avg, px = held.get(s, (0, 0.0, 0.0))
        out.append(
            PositionSnapshot(
                msg_id=ids.next(),
                ts_event=now_ns,
                ts_init=now_ns,
                symbol=s,
                quantity=q,
                avg_price=avg,
                market_price=px,
                unrealized_pnl=(px - avg) * q,
                realized_pnl=0.0,
            )
        )
    return out


def book_from(
    held: Held, working: Iterable[tuple[SubmitOrder, int]]
) -> tuple[list[BookPosition], list[BookOrder]]:
    """The book from a broker's positions and its working orders (order, filled so far)."""
    positions = [
        BookPosition(symbol=s, quantity=q, avg_price=avg, market_price=px)
        for s, (q, avg, px) in sorted(held.items())
        if q
    ]
    orders = [
        BookOrder(
            order_id=o.order_id,
            symbol=o.symbol,
            side=o.side,
            remaining=o.quantity - filled,
            price=o.limit_price or 0.0,
            purpose=o.purpose,
        )
        for o, filled in working
    ]
    return positions, orders
