"""IB first, Alpaca when IB is gone: a broker adapter over two brokers.

Routing:
* new positions (BUY to open) go to the active broker — IB, or Alpaca while IB has been
  unreachable for longer than ``failover_after_s``;
* exits (SELL to close) go to the broker that holds the position, whichever is active: a
  position opened at IB is never "closed" at Alpaca, which would open a short there
  instead. If the broker that holds it is down, the exit is refused
  (``HOLDING_BROKER_DOWN``); the strategy asks again later;
* buys that add to a held position go to the broker that holds it (a position split
  across two brokers could not be closed by either in one order);
* cancels go to the broker the order went to.
When IB comes back, new positions go to it again; positions still open at Alpaca stay
there until they are closed. The account is the sum of both accounts, the book the union
of both books, so the guardian sizes against everything held anywhere and no position is
doubled. Every switch is a notification.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sovereign.brokers.base import rejected
from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BookOrder,
    BookPosition,
    IdSource,
    Message,
    Notification,
    OrderRejected,
    PositionSnapshot,
    SubmitOrder,
)

log = logging.getLogger("sovereign.brokers.failover")


class FailoverBroker:
    name = "ib+alpaca"

    def __init__(
        self,
        primary: Any,
        secondary: Any,
        *,
        failover_after_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.failover_after_s = failover_after_s
        self.clock = clock
        self.active = primary
        self._route: dict[str, Any] = {}
        self._ids = IdSource("failover")
        self._last_accounts: dict[str, AccountSnapshot] = {}
        self.switches = 0
        self._pending_notes: list[Message] = []
        self._check(int(clock() * 1e9))

    @property
    def connected(self) -> bool:
        return bool(getattr(self.active, "connected", True))

    # -- ROUTING ------------------------------------------------------------------------

    def _check(self, now_ns: int) -> None:
        primary_up = bool(getattr(self.primary, "connected", False))
        outage = self._outage(self.primary)
        if self.active is self.primary and not primary_up and outage >= self.failover_after_s:
            self.active = self.secondary
            self.switches += 1
            self._note(
                now_ns,
                "broker_failover",
                "critical",
                f"failover: {self.primary.name} unreachable for {outage:.1f} s; new positions "
                f"go to {self.secondary.name}",
            )
        elif self.active is self.secondary and primary_up:
            self.active = self.primary
            self.switches += 1
            self._note(
                now_ns,
                "broker_failback",
                "warning",
                f"failback: {self.primary.name} is back and reconciled; new positions go to "
                f"it again (positions at {self.secondary.name} stay there until closed)",
            )

    @staticmethod
    def _outage(broker: Any) -> float:
        if hasattr(broker, "outage_s"):
            return float(broker.outage_s())
        conn = getattr(broker, "conn", None)
        return float(conn.outage_s()) if conn is not None else 0.0

    def _holder(self, symbol: str, quantity: int) -> Any | None:
        for broker in (self.primary, self.secondary):
            if _positions(broker).get(symbol, 0) >= quantity:
                return broker
        return None

    def adopt(self, orders: list[tuple[SubmitOrder, int]], executions: set[str]) -> None:
        """A crashed gateway's working orders, each to the broker that has it: Alpaca if
        it knows the client order id, else IB (whose reconciliation ends the ones it does
        not know either)."""
        mine: dict[int, list[tuple[SubmitOrder, int]]] = {
            id(self.primary): [],
            id(self.secondary): [],
        }
        for order, filled in orders:
            knows = getattr(self.secondary, "knows", None)
            broker = self.secondary if knows is not None and knows(order.order_id) else self.primary
            mine[id(broker)].append((order, filled))
            self._route[order.order_id] = broker
        for broker in (self.primary, self.secondary):
            adopt = getattr(broker, "adopt", None)
            if adopt is not None:
                adopt(mine[id(broker)], executions)

    def submit(self, order: SubmitOrder, now_ns: int) -> list[Message]:
        self._check(now_ns)
        if order.side == "SELL":
            broker = self._holder(order.symbol, order.quantity)
            if broker is None:
                return [self._reject(order, "NO_SINGLE_HOLDER", "no broker holds all of it")]
            if not getattr(broker, "connected", True):
                return [
                    self._reject(
                        order,
                        "HOLDING_BROKER_DOWN",
                        f"the position is at {broker.name}, which is unreachable",
                    )
                ]
        else:
            holder = next(
                (b for b in (self.primary, self.secondary) if _positions(b).get(order.symbol)),
                None,
            )
            if holder is not None:
                # Adding to a position goes where it is held: a position split across two
                # brokers could not be closed in one order by either.
                if not getattr(holder, "connected", True):
                    return [
                        self._reject(
                            order,
                            "HOLDING_BROKER_DOWN",
                            f"{order.symbol} is held at {holder.name}, which is unreachable",
                        )
                    ]
                self._route[order.order_id] = holder
                return list(holder.submit(order, now_ns))
            broker = self.active
            if not getattr(broker, "connected", True):
                other = self.secondary if broker is self.primary else self.primary
                if not getattr(other, "connected", False):
                    return [self._reject(order, "NO_BROKER", "no broker is reachable")]
                broker = other
        self._route[order.order_id] = broker
        return list(broker.submit(order, now_ns))

    def cancel(self, order_id: str, now_ns: int) -> list[Message]:
        broker = self._route.get(order_id)
        return [] if broker is None else list(broker.cancel(order_id, now_ns))

    def on_bars(self, batch: BarBatch) -> list[Message]:
        return []

    def poll(self, now_ns: int) -> list[Message]:
        events = list(self.primary.poll(now_ns)) + list(self.secondary.poll(now_ns))
        self._check(now_ns)
        notes, self._pending_notes = self._pending_notes, []
        return events + notes

    # -- QUERIES ------------------------------------------------------------------------

    def account(self, now_ns: int) -> AccountSnapshot:
        parts = []
        for broker in (self.primary, self.secondary):
            if getattr(broker, "connected", False):
                snap = broker.account(now_ns)
                self._last_accounts[broker.name] = snap
            snap = self._last_accounts.get(broker.name)
            if snap is not None:
                parts.append(snap)
        return AccountSnapshot(
            msg_id=self._ids.next(),
            ts_event=now_ns,
            ts_init=now_ns,
            cash=sum(p.cash for p in parts),
            equity=sum(p.equity for p in parts),
            realized_pnl=sum(p.realized_pnl for p in parts),
            unrealized_pnl=sum(p.unrealized_pnl for p in parts),
            gross_exposure=sum(p.gross_exposure for p in parts),
            net_exposure=sum(p.net_exposure for p in parts),
            commissions=sum(p.commissions for p in parts),
            open_positions=sum(p.open_positions for p in parts),
        )

    def positions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for broker in (self.primary, self.secondary):
            for s, q in _positions(broker).items():
                out[s] = out.get(s, 0) + q
        return out

    def position_snapshots(self, symbols: list[str], now_ns: int) -> list[PositionSnapshot]:
        held = self.positions()
        return [
            PositionSnapshot(
                msg_id=self._ids.next(),
                ts_event=now_ns,
                ts_init=now_ns,
                symbol=s,
                quantity=held.get(s, 0),
                avg_price=0.0,
                market_price=0.0,
                unrealized_pnl=0.0,
                realized_pnl=0.0,
            )
            for s in symbols
        ]

    def book(self) -> tuple[list[BookPosition], list[BookOrder]]:
        merged: dict[str, BookPosition] = {}
        working: list[BookOrder] = []
        for broker in (self.primary, self.secondary):
            positions, orders = broker.book()
            working.extend(orders)
            for p in positions:
                prev = merged.get(p.symbol)
                if prev is None:
                    merged[p.symbol] = p
                else:
                    qty = prev.quantity + p.quantity
                    avg = (prev.avg_price * prev.quantity + p.avg_price * p.quantity) / qty
                    merged[p.symbol] = BookPosition(p.symbol, qty, avg, p.market_price)
        return [merged[s] for s in sorted(merged)], working

    def close(self) -> None:
        for broker in (self.primary, self.secondary):
            close = getattr(broker, "close", None)
            if close is not None:
                close()

    # -- HELPERS ------------------------------------------------------------------------

    def _note(self, now_ns: int, kind: str, level: str, text: str) -> None:
        log.warning(text)
        self._pending_notes.append(
            Notification(
                msg_id=self._ids.next(),
                ts_event=now_ns,
                ts_init=now_ns,
                kind=kind,
                level=level,  # type: ignore[arg-type]
                title=text.split(";")[0],
                text=text,
            )
        )

    def _reject(self, order: SubmitOrder, code: str, detail: str) -> OrderRejected:
        return rejected(self._ids, order, code, detail, int(self.clock() * 1e9))


def _positions(broker: Any) -> dict[str, int]:
    try:
        return dict(broker.positions())
    except Exception:  # an unreachable broker has no answer; its last known book is used
        return {}
