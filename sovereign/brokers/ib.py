"""Interactive Brokers through ib_async: the connection and the order adapter.

Layers, as ib_async itself is layered: ``IBConnection`` (the socket, reconnect with
exponential backoff) -> ``IBBroker`` (orders, executions, commissions, positions, account)
and the bar sources in ``sovereign.brokers.ib_bars`` (historical bars, paced, and streams).

Identity. IB's ``orderId`` is unique only per client id and session, and can roll back
after the nightly reset; ``permId`` is account-wide. Every order carries our client order
id in ``orderRef``, and is keyed on it (and on ``permId`` once known). Executions are
de-duplicated by ``execId``.

Reconnection. After a drop the adapter reconnects with backoff and, before trading
resumes, reconciles: open orders (re-bound by ``orderRef``), executions since the drop
(``reqExecutions``: fills that happened while we were away are reported then, once), orders
TWS no longer knows (they end ``LOST_IN_FLIGHT`` — a known state — rather than hanging),
and positions. Submits while disconnected are refused (``BROKER_DISCONNECTED``), never
queued blindly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sovereign.brokers.base import accepted, book_from, canceled, rejected, snapshots_from
from sovereign.brokers.pacing import Backoff
from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BookOrder,
    BookPosition,
    IdSource,
    Message,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    PositionSnapshot,
    SubmitOrder,
)

log = logging.getLogger("sovereign.brokers.ib")

PAPER_TWS_PORT = 7497
PAPER_GATEWAY_PORT = 4002


@dataclass(frozen=True, slots=True)
class IBSettings:
    """How to reach TWS / IB Gateway.

    ``port`` defaults to the paper TWS port (7497; IB Gateway paper is 4002).
    ``max_requests`` is ib_async's client-side throttle (45 messages per second is IB's
    limit; 0 turns it off, for emulators only). ``historical_pacing`` keeps historical-data
    requests inside IB's pacing rules (off only for emulators, which do not enforce them).
    """

    host: str = "127.0.0.1"
    port: int = PAPER_TWS_PORT
    client_id: int = 1
    account: str = ""
    connect_timeout_s: float = 5.0
    max_requests: int = 45
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    historical_pacing: bool = True


class IBConnection:
    """One ib_async connection with reconnect and backoff."""

    def __init__(self, settings: IBSettings, *, clock: Callable[[], float] = time.time) -> None:
        from ib_async import IB

        self.settings = settings
        self.clock = clock
        self.ib = IB()
        self.ib.client.MaxRequests = settings.max_requests
        self.backoff = Backoff(settings.backoff_initial_s, 2.0, settings.backoff_max_s)
        self.disconnected_at: float | None = None
        self.connects = 0
        self.failures = 0

    @property
    def connected(self) -> bool:
        return bool(self.ib.isConnected())

    def ensure(self) -> bool:
        """Connected now? Tries to (re)connect when the backoff allows."""
        if self.connected:
            return True
        now = self.clock()
        if self.disconnected_at is None:
            self.disconnected_at = now
        if not self.backoff.due(now):
            return False
        # Let ib_async finish processing the drop first, or the stale disconnect cancels the
        # new connection attempt.
        self.pump(0.0)
        try:
            self.ib.connect(
                self.settings.host,
                self.settings.port,
                clientId=self.settings.client_id,
                timeout=self.settings.connect_timeout_s,
                account=self.settings.account,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.failures += 1
            delay = self.backoff.failed(now)
            log.warning("IB connect failed (%s); next attempt in %.1f s", exc, delay)
            self._safe_disconnect()
            return False
        except Exception as exc:  # ib_async raises asyncio/ValueError variants too
            self.failures += 1
            delay = self.backoff.failed(now)
            log.warning("IB connect failed (%r); next attempt in %.1f s", exc, delay)
            self._safe_disconnect()
            return False
        self.backoff.succeeded()
        self.connects += 1
        return True

    def outage_s(self) -> float:
        """How long the connection has been down (0 when up)."""
        if self.connected or self.disconnected_at is None:
            return 0.0
        return self.clock() - self.disconnected_at

    def mark_down(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = self.clock()

    def pump(self, seconds: float = 0.0) -> None:
        """Let ib_async process what arrived (its callbacks run here)."""
        try:
            self.ib.sleep(seconds)
        except Exception as exc:  # a broken socket surfaces here
            log.warning("IB event loop: %r", exc)

    def _safe_disconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.ib.disconnect()
        # On a socket that is already gone, ib_async's disconnect fails in write_eof and
        # leaves the transport set; IB.__del__ would then disconnect again when the object
        # is collected and raise where nothing can catch it. Drop the transport for good.
        conn = self.ib.client.conn
        transport = getattr(conn, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()
            conn.transport = None

    def close(self) -> None:
        self._safe_disconnect()


def stock(symbol: str) -> Any:
    from ib_async import Stock

    return Stock(symbol, "SMART", "USD")


# -- ORDERS -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Tracked:
    order: SubmitOrder
    trade: Any = None
    perm_id: int = 0
    acked: bool = False
    done: bool = False
    filled: int = 0
    submitted_at: float = 0.0


@dataclass(slots=True)
class IBCounters:
    reconnects: int = 0
    reconciled_fills: int = 0
    lost_in_flight: int = 0
    refused_disconnected: int = 0
    duplicate_executions: int = 0
    errors: int = 0
    position_mismatches: int = 0
    by_error: dict[int, int] = field(default_factory=dict)


class IBBroker:
    """The BrokerAdapter for TWS / IB Gateway."""

    name = "ib"

    def __init__(self, settings: IBSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = IBConnection(settings, clock=clock)
        self.settings = settings
        self.clock = clock
        self._ids = IdSource("ib")
        self._events: list[Message] = []
        self._orders: dict[str, _Tracked] = {}
        self._by_perm: dict[int, str] = {}
        self._seen_exec: set[str] = set()
        self._contracts: dict[str, Any] = {}
        self._was_connected = False
        self._last_portfolio: dict[str, tuple[int, float, float]] = {}
        self._recovering = False
        self._last_values: dict[str, float] = {}
        self.counters = IBCounters()
        ib = self.conn.ib
        ib.orderStatusEvent += self._on_status
        ib.commissionReportEvent += self._on_commission
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnect
        self.conn.ensure()
        if self.conn.connected:
            self._was_connected = True

    # -- COMMANDS -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.conn.connected

    def submit(self, order: SubmitOrder, now_ns: int) -> list[Message]:
        if not self.conn.ensure():
            self.counters.refused_disconnected += 1
            return [self._reject(order, "BROKER_DISCONNECTED", "IB is not connected")]
        from ib_async import LimitOrder, MarketOrder

        kwargs = {
            "orderRef": order.order_id,
            "tif": order.time_in_force,
            "account": self.settings.account,
        }
        if order.order_type == "LIMIT":
            ib_order = LimitOrder(order.side, order.quantity, order.limit_price, **kwargs)
        else:
            ib_order = MarketOrder(order.side, order.quantity, **kwargs)
        tracked = _Tracked(order, submitted_at=self.clock())
        self._orders[order.order_id] = tracked
        try:
            tracked.trade = self.conn.ib.placeOrder(self._contract(order.symbol), ib_order)
        except Exception as exc:  # the socket broke under us: the order's fate is unknown
            log.error("placeOrder %s failed: %r", order.order_id, exc)
            self.conn.mark_down()
            return []  # reconciliation decides what happened to it
        return []

    def cancel(self, order_id: str, now_ns: int) -> list[Message]:
        tracked = self._orders.get(order_id)
        if tracked is None or tracked.done or tracked.trade is None:
            return []
        if not self.conn.ensure():
            return []
        try:
            self.conn.ib.cancelOrder(tracked.trade.order)
        except Exception as exc:
            log.error("cancelOrder %s failed: %r", order_id, exc)
        return []

    def on_bars(self, batch: BarBatch) -> list[Message]:
        return []  # fills come from IB, not from our bars

    def poll(self, now_ns: int) -> list[Message]:
        """Pump the connection; reconcile after a reconnect; return the events."""
        up = self.conn.ensure()
        if up and not self._was_connected:
            self.counters.reconnects += 1
            self._reconcile(now_ns)
        self._was_connected = up
        if up:
            self.conn.pump(0.0)
        events, self._events = self._events, []
        return events

    def adopt(self, orders: list[tuple[SubmitOrder, int]], executions: set[str]) -> None:
        """Take over the working orders of a gateway that crashed (its restored order
        manager: each order and what it had filled, and every execution it had booked).
        The next poll reconciles them as after a reconnect: bound again by ``orderRef``,
        fills made meanwhile reported once, orders IB does not know ended LOST_IN_FLIGHT."""
        for order, filled in orders:
            self._orders[order.order_id] = _Tracked(order, filled=filled, submitted_at=self.clock())
        self._seen_exec |= set(executions)
        self._was_connected = False
        self._recovering = True

    # -- IB CALLBACKS -------------------------------------------------------------------

    def _order_id_of(self, trade: Any) -> str | None:
        ref = getattr(trade.order, "orderRef", "") or ""
        if ref in self._orders:
            return ref
        return self._by_perm.get(getattr(trade.order, "permId", 0))

    def _on_status(self, trade: Any) -> None:
        order_id = self._order_id_of(trade)
        if order_id is None:
            return
        t = self._orders[order_id]
        t.trade = trade
        perm = int(getattr(trade.order, "permId", 0) or 0)
        if perm:
            t.perm_id = perm
            self._by_perm[perm] = order_id
        status = trade.orderStatus.status
        now = self._now_ns()
        if status in ("PreSubmitted", "Submitted") and not t.acked:
            t.acked = True
            self._events.append(accepted(self._ids, t.order, str(perm or trade.order.orderId), now))
        elif (
            status in ("Cancelled", "ApiCancelled", "Inactive") and not t.done and _rejected(trade)
        ):
            # IB rejects with error 201, and ib_async reports that as a cancel first.
            t.done = True
            reason = _last_error(trade) or "rejected by IB"
            self._events.append(self._reject(t.order, "BROKER_REJECTED", reason))
        elif status in ("Cancelled", "ApiCancelled") and not t.done:
            t.done = True
            self._events.append(self._canceled(t, "canceled at IB"))
        elif status == "Inactive" and not t.done:
            t.done = True
            reason = _last_error(trade) or "IB made the order inactive"
            self._events.append(self._reject(t.order, "BROKER_REJECTED", reason))

    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        self._emit_fill(fill, report)

    def _emit_fill(self, fill: Any, report: Any) -> None:
        ex = fill.execution
        if ex.execId in self._seen_exec:
            self.counters.duplicate_executions += 1
            return
        order_id = ex.orderRef if ex.orderRef in self._orders else self._by_perm.get(ex.permId)
        if order_id is None:
            return  # not ours (manual TWS trading, another client)
        self._seen_exec.add(ex.execId)
        if self._recovering:
            # It happened while we were away (ib_async may report it during connect).
            self.counters.reconciled_fills += 1
        t = self._orders[order_id]
        qty = round(ex.shares)
        t.filled += qty
        if t.filled >= t.order.quantity:
            t.done = True
        now = self._now_ns()
        ts = int(ex.time.timestamp() * 1e9) if isinstance(ex.time, datetime) else now
        self._events.append(
            OrderFilled(
                msg_id=self._ids.next(),
                ts_event=ts,
                ts_init=now,
                correlation_id=t.order.msg_id,
                order_id=order_id,
                execution_id=ex.execId,
                shard=t.order.shard,
                symbol=t.order.symbol,
                side=t.order.side,
                quantity=qty,
                price=float(ex.price),
                commission=float(report.commission) if report is not None else 0.0,
                cum_quantity=t.filled,
                leaves_quantity=max(0, t.order.quantity - t.filled),
                purpose=t.order.purpose,
                liquidity=str(getattr(ex, "exchange", "")),
            )
        )

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        self.counters.errors += 1
        self.counters.by_error[code] = self.counters.by_error.get(code, 0) + 1
        if code in (1100, 504, 502):
            self.conn.mark_down()
        log.info("IB error %s (req %s): %s", code, req_id, message)

    def _on_disconnect(self) -> None:
        self.conn.mark_down()
        self._was_connected = False
        self._recovering = True

    # -- RECONCILIATION -----------------------------------------------------------------

    def _reconcile(self, now_ns: int) -> None:
        """After a reconnect: bind open orders, recover missed fills, settle the lost."""
        from ib_async import ExecutionFilter

        ib = self.conn.ib
        open_refs: set[str] = set()
        for trade in ib.openTrades():
            ref = getattr(trade.order, "orderRef", "")
            if ref in self._orders:
                open_refs.add(ref)
                t = self._orders[ref]
                t.trade = trade
                if trade.order.permId:
                    t.perm_id = trade.order.permId
                    self._by_perm[trade.order.permId] = ref
        # All of today's executions (IB keeps a day): those we saw are dropped by execId.
        # No time filter: TWS stamps executions with its own clock, not ours.
        fills = ib.reqExecutions(ExecutionFilter())
        # ib_async hands back a second Fill object for an execution it had already seen,
        # with an empty commission report; the real report stays on the first one.
        reports = {
            f.execution.execId: f.commissionReport
            for f in ib.fills()
            if f.commissionReport is not None and f.commissionReport.execId
        }
        for fill in fills:
            report = reports.get(fill.execution.execId, fill.commissionReport)
            self._emit_fill(fill, report)
        completed = {getattr(t.order, "orderRef", "") for t in ib.trades() if t.isDone()}
        for order_id, t in self._orders.items():
            if t.done or order_id in open_refs:
                continue
            if t.filled >= t.order.quantity:
                t.done = True
                continue
            if order_id in completed:
                t.done = True
                self._events.append(self._canceled(t, "ended at IB while disconnected"))
                continue
            # TWS does not know it: it never arrived, or died with the old session.
            t.done = True
            self.counters.lost_in_flight += 1
            self._events.append(
                self._reject(
                    t.order,
                    "LOST_IN_FLIGHT",
                    "the connection dropped before IB confirmed the order; it is not working "
                    "and never filled",
                )
            )
        self.conn.disconnected_at = None
        self._recovering = False

    # -- QUERIES ------------------------------------------------------------------------

    def account(self, now_ns: int) -> AccountSnapshot:
        values: dict[str, float] = {}
        for v in self.conn.ib.accountValues(self.settings.account):
            if v.currency in ("USD", "BASE", ""):
                try:
                    values.setdefault(v.tag, float(v.value))
                except ValueError:
                    continue
        if values:
            self._last_values = values
        else:
            values = dict(self._last_values)  # disconnected: the last account seen
        positions = self._portfolio()
        gross = sum(abs(q * p) for q, _, p in positions.values())
        net = sum(q * p for q, _, p in positions.values())
        return AccountSnapshot(
            msg_id=self._ids.next(),
            ts_event=now_ns,
            ts_init=now_ns,
            cash=values.get("TotalCashValue", values.get("CashBalance", 0.0)),
            equity=values.get("NetLiquidation", 0.0),
            realized_pnl=values.get("RealizedPnL", 0.0),
            unrealized_pnl=values.get("UnrealizedPnL", 0.0),
            gross_exposure=gross,
            net_exposure=net,
            commissions=0.0,
            open_positions=sum(1 for q, _, _ in positions.values() if q),
        )

    def _portfolio(self) -> dict[str, tuple[int, float, float]]:
        """symbol -> (quantity, average cost, market price).

        While disconnected, the last book seen: ib_async forgets its state with the
        socket, and an empty book would let the guardian approve a position we hold.
        """
        if not self.conn.connected:
            return dict(self._last_portfolio)
        out: dict[str, tuple[int, float, float]] = {}
        for item in self.conn.ib.portfolio(self.settings.account):
            out[item.contract.symbol] = (
                int(item.position),
                float(item.averageCost),
                float(item.marketPrice),
            )
        for p in self.conn.ib.positions(self.settings.account):
            sym = p.contract.symbol
            if sym not in out:
                out[sym] = (int(p.position), float(p.avgCost), float(p.avgCost))
        self._last_portfolio = out
        return out

    def position_snapshots(self, symbols: list[str], now_ns: int) -> list[PositionSnapshot]:
        return snapshots_from(self._ids, self._portfolio(), symbols, now_ns)

    def book(self) -> tuple[list[BookPosition], list[BookOrder]]:
        return book_from(
            self._portfolio(), ((t.order, t.filled) for t in self._orders.values() if not t.done)
        )

    def positions(self) -> dict[str, int]:
        return {s: q for s, (q, _, _) in self._portfolio().items() if q}

    def close(self) -> None:
        self.conn.close()

    # -- HELPERS ------------------------------------------------------------------------

    def _contract(self, symbol: str) -> Any:
        c = self._contracts.get(symbol)
        if c is None:
            c = stock(symbol)
            try:
                qualified = self.conn.ib.qualifyContracts(c)
                if qualified:
                    c = qualified[0]
            except Exception as exc:
                log.warning("qualifying %s failed: %r", symbol, exc)
            self._contracts[symbol] = c
        return c

    def _now_ns(self) -> int:
        return int(self.clock() * 1e9)

    def _canceled(self, t: _Tracked, reason: str) -> OrderCanceled:
        return canceled(self._ids, t.order, t.filled, reason, self._now_ns())

    def _reject(self, order: SubmitOrder, code: str, detail: str) -> OrderRejected:
        return rejected(self._ids, order, code, detail, self._now_ns())


_REJECTION_CODES = frozenset({201, 103, 110, 161, 200, 203, 321, 387, 10147})


def _rejected(trade: Any) -> bool:
    return any(
        getattr(e, "errorCode", 0) in _REJECTION_CODES for e in getattr(trade, "log", []) or []
    )


def _last_error(trade: Any) -> str:
    for entry in reversed(getattr(trade, "log", []) or []):
        if getattr(entry, "message", ""):
            return str(entry.message)
    return ""
