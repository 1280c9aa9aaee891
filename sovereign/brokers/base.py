"""The one interface every broker adapter implements (sim, IBKR, Alpaca).

The gateway talks to a broker only through this interface; it has already verified the
guardian's approval before ``submit`` is called. Adapters report everything that happens
to an order as order events (``OrderAccepted``, ``OrderRejected``, ``OrderFilled``,
``OrderCanceled``), each fill with a unique execution id.
"""

from __future__ import annotations

from typing import Protocol

from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BookOrder,
    BookPosition,
    Message,
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
