"""The order lifecycle: one record per client order id, fills deduplicated by execution id.

States: ``PENDING`` (submitted to the broker, not yet acknowledged) -> ``ACCEPTED`` ->
``PARTIALLY_FILLED`` -> ``FILLED``; or ``REJECTED`` / ``CANCELED`` from any working state.
A second submit with a known order id is a duplicate and is refused, so a retried command
never places a second order; a fill whose execution id was already seen is dropped, and a
fill that would exceed the order quantity is refused and counted, so the book never
over-fills. A fill that arrives after a cancel (the two crossed on the wire) is still
booked: it happened at the broker, and dropping it would desynchronise our positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from sovereign.messages.orders import (
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    SubmitOrder,
)


class OrderState(Enum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in (OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED)


@dataclass(slots=True)
class OrderRecord:
    order: SubmitOrder
    state: OrderState = OrderState.PENDING
    filled: int = 0
    avg_price: float = 0.0
    commission: float = 0.0
    executions: list[str] = field(default_factory=list)
    broker_order_id: str = ""

    @property
    def remaining(self) -> int:
        return self.order.quantity - self.filled


class OrderManager:
    """Tracks every order the gateway has sent and everything the broker said about it."""

    __slots__ = ("_done", "_executions", "counters", "orders", "settled")

    KEEP_DONE = 256
    """Orders that ended are kept whole, with their execution ids, this long (a fill can
    still cross a cancel on the wire, a broker may report an execution again); older ones
    only by id, which is all a duplicate check needs: an execution of one of those is
    unknown and never booked. A long session's order book, and its checkpoint, stay
    small."""

    def __init__(self) -> None:
        self.orders: dict[str, OrderRecord] = {}
        # Orders a speculative chunk submitted and filled in full: only their ids are kept
        # (a long backtest has hundreds of thousands), so a reused id is still refused.
        self.settled: set[str] = set()
        self._executions: set[str] = set()
        # Ids of the orders that ended, oldest first (see KEEP_DONE).
        self._done: dict[str, None] = {}
        self.counters: dict[str, int] = {
            "submitted": 0,
            "duplicate_submits": 0,
            "duplicate_fills": 0,
            "overfills_refused": 0,
            "unknown_order_events": 0,
            "fills_after_cancel": 0,
            "filled": 0,
            "canceled": 0,
            "rejected": 0,
        }

    def register(self, order: SubmitOrder) -> bool:
        """Record a new order; False (and counted) if the order id is already known."""
        if self.knows(order.order_id):
            self.counters["duplicate_submits"] += 1
            return False
        self.orders[order.order_id] = OrderRecord(order)
        self.counters["submitted"] += 1
        return True

    def knows(self, order_id: str) -> bool:
        return order_id in self.orders or order_id in self.settled

    def settle(self, order_ids: list[str]) -> None:
        """Record orders that were submitted and filled in full inside a committed chunk."""
        self.settled.update(order_ids)
        self.counters["submitted"] += len(order_ids)
        self.counters["filled"] += len(order_ids)

    def get(self, order_id: str) -> OrderRecord | None:
        return self.orders.get(order_id)

    def _ended(self, order_id: str) -> None:
        self._done[order_id] = None
        while len(self._done) > self.KEEP_DONE:
            oldest = next(iter(self._done))
            del self._done[oldest]
            rec = self.orders.pop(oldest, None)
            if rec is not None:
                self.settled.add(oldest)
                self._executions.difference_update(rec.executions)

    def working(self) -> list[OrderRecord]:
        return [r for r in self.orders.values() if not r.state.terminal]

    def on_accepted(self, event: OrderAccepted) -> bool:
        rec = self.orders.get(event.order_id)
        if rec is None:
            self.counters["unknown_order_events"] += 1
            return False
        if rec.state is OrderState.PENDING:
            rec.state = OrderState.ACCEPTED
            rec.broker_order_id = event.broker_order_id
        return True

    def on_fill(self, event: OrderFilled) -> bool:
        """Apply a fill; False if it is a duplicate, unknown, or would over-fill."""
        if event.execution_id in self._executions:
            self.counters["duplicate_fills"] += 1
            return False
        rec = self.orders.get(event.order_id)
        if rec is None:
            self.counters["unknown_order_events"] += 1
            return False
        if event.quantity <= 0 or event.quantity > rec.remaining:
            self.counters["overfills_refused"] += 1
            return False
        self._executions.add(event.execution_id)
        total = rec.filled + event.quantity
        rec.avg_price = (rec.avg_price * rec.filled + event.price * event.quantity) / total
        rec.filled = total
        rec.commission += event.commission
        rec.executions.append(event.execution_id)
        if rec.state is OrderState.CANCELED or rec.state is OrderState.REJECTED:
            # A fill can cross a cancel on the wire. It happened at the broker, so it is
            # booked; the order stays terminal.
            self.counters["fills_after_cancel"] += 1
        elif rec.filled == rec.order.quantity:
            rec.state = OrderState.FILLED
            self.counters["filled"] += 1
            self._ended(event.order_id)
        else:
            rec.state = OrderState.PARTIALLY_FILLED
        return True

    def on_canceled(self, event: OrderCanceled) -> bool:
        rec = self.orders.get(event.order_id)
        if rec is None:
            self.counters["unknown_order_events"] += 1
            return False
        if rec.state.terminal:
            return False
        rec.state = OrderState.CANCELED
        self.counters["canceled"] += 1
        self._ended(event.order_id)
        return True

    def on_rejected(self, event: OrderRejected) -> bool:
        rec = self.orders.get(event.order_id)
        if rec is None:
            # A refusal before registration (bad approval) is still worth counting.
            self.counters["rejected"] += 1
            return False
        if rec.state.terminal:
            return False
        rec.state = OrderState.REJECTED
        self.counters["rejected"] += 1
        self._ended(event.order_id)
        return True
