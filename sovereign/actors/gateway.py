"""GatewayActor: the only actor that talks to a broker.

It refuses any SubmitOrder whose guardian approval does not verify (bad signature, order
differs from what was signed, expired, or already used), tracks every order's lifecycle in
the order manager (duplicate order ids refused, fills deduplicated by execution id), and
publishes fills, position snapshots for what changed, and an account snapshot per step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

import msgspec

from sovereign.actors.base import Actor
from sovereign.brokers.base import BrokerAdapter, rejected
from sovereign.core.calendar import session_date
from sovereign.core.risk import ApprovalVerifier
from sovereign.execution.order_manager import OrderManager
from sovereign.memory.state_store import open_state_store
from sovereign.messages import (
    BarBatch,
    BookSnapshot,
    CancelOrder,
    Message,
    Notification,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    SessionEnded,
    SessionStarted,
    SubmitOrder,
)


class GatewayActor(Actor):
    role = "gateway"
    accepts = frozenset(
        {
            BarBatch,
            SubmitOrder,
            CancelOrder,
            SessionStarted,
            SessionEnded,
        }
    )

    def __init__(
        self,
        index: int,
        broker_factory: Callable[[], BrokerAdapter],
        secret: bytes,
        *,
        state_dir: str = "",
        account_key: str = "",
        redis_url: str = "",
    ) -> None:
        super().__init__(index)
        # Built here, inside the actor's process: a broker holds sockets and state that
        # must not be pickled across processes.
        self.broker = broker_factory()
        self.verifier = ApprovalVerifier(secret)
        self.orders = OrderManager()
        self.clock = 0
        self.session_date = ""
        self.state_dir = state_dir
        self.account_key = account_key
        self.redis_url = redis_url
        # What our own fills say each position should be; checked against the broker.
        self.expected: dict[str, int] = {}
        self._mismatch: dict[str, tuple[int, int]] = {}

    def receive(self, messages: list[Message]) -> list[Message]:
        out: list[Message] = []
        touched: list[str] = []
        saw_bars = False
        # A real broker's events arrive on their own time: collect them first.
        out.extend(self._track(self.broker.poll(self.clock), touched))
        for msg in messages:
            match msg:
                case BarBatch():
                    saw_bars = True
                    self.clock = max(self.clock, msg.ts_event)
                    self.session_date = session_date(msg.ts)
                    out.extend(self._track(self.broker.on_bars(msg), touched))
                case SubmitOrder():
                    out.extend(self._submit(msg, touched))
                case CancelOrder():
                    out.extend(self._cancel(msg, touched))
                case SessionStarted():
                    self._restore_account()
                    self.expected = {s: q for s, q in self.broker.positions().items() if q}
                case SessionEnded():
                    self._save_account()
                    self.counters.update(self.orders.counters)
                    self.counters.update(_int_counters(getattr(self.broker, "counters", {})))
                    self.counters.update(
                        {f"refused_{k}": v for k, v in self.verifier.refused.items()}
                    )
                    out.append(self.broker.account(msg.ts_event))
                    out.append(self.stats(msg.ts_event))
                case _:
                    pass
        if touched and not saw_bars:
            # After bars the whole book follows, with every position: snapshots of the
            # touched ones would only repeat it.
            out.extend(self.broker.position_snapshots(sorted(set(touched)), self.clock))
        if saw_bars:
            out.extend(self._check_positions())
            # The book first: whoever reads the account snapshot already knows the book.
            positions, working = self.broker.book()
            out.append(
                BookSnapshot(
                    msg_id=self.ids.next(),
                    ts_event=self.clock,
                    ts_init=self.clock,
                    positions=positions,
                    working=working,
                    session_date=self.session_date,
                )
            )
            account = self.broker.account(self.clock)
            out.append(msgspec.structs.replace(account, session_date=self.session_date))
        return out

    def _check_positions(self) -> list[Message]:
        """Our fills and the broker's positions must agree; say so once when they do not."""
        if not getattr(self.broker, "connected", True):
            return []
        held = self.broker.positions()
        out: list[Message] = []
        if not self._mismatch and held == self.expected:
            return out  # the usual case, checked in one comparison
        for symbol in sorted(set(held) | set(self.expected)):
            ours, theirs = self.expected.get(symbol, 0), held.get(symbol, 0)
            if ours == theirs:
                self._mismatch.pop(symbol, None)
                continue
            if self._mismatch.get(symbol) == (ours, theirs):
                continue
            self._mismatch[symbol] = (ours, theirs)
            self.count("position_mismatches")
            self.log.error("%s: our fills say %d, the broker says %d", symbol, ours, theirs)
            out.append(
                Notification(
                    msg_id=self.ids.next(),
                    ts_event=self.clock,
                    ts_init=self.clock,
                    kind="position_mismatch",
                    level="critical",
                    title=f"{symbol}: our fills say {ours}, {self.broker.name} says {theirs}",
                    text="the broker's position is what the guardian uses; investigate",
                )
            )
        return out

    # -- NAMED ACCOUNTS -----------------------------------------------------------------

    def _restore_account(self) -> None:
        if not self.account_key or not hasattr(self.broker, "restore"):
            return
        with closing(open_state_store(self.state_dir, self.redis_url)) as store:
            doc = store.get(self.account_key)
        if doc is not None:
            self.broker.restore(doc)
            self.count("account_restored")

    def _save_account(self) -> None:
        if not self.account_key or not hasattr(self.broker, "snapshot"):
            return
        with closing(open_state_store(self.state_dir, self.redis_url)) as store:
            store.put(self.account_key, self.broker.snapshot())

    def _submit(self, order: SubmitOrder, touched: list[str]) -> list[Message]:
        reason = self.verifier.check(order, self.clock)
        if reason is not None:
            self.log.warning("refused order %s: %s", order.order_id, reason)
            return [self._reject(order, reason, "the guardian's approval did not verify")]
        if not self.orders.register(order):
            return [self._reject(order, "DUPLICATE_ORDER_ID", "this order id was already sent")]
        return self._track(self.broker.submit(order, self.clock), touched)

    def _cancel(self, cancel: CancelOrder, touched: list[str]) -> list[Message]:
        rec = self.orders.get(cancel.order_id)
        if rec is None or rec.state.terminal:
            self.count("cancel_unknown_or_done")
            return []
        return self._track(self.broker.cancel(cancel.order_id, self.clock), touched)

    def _track(self, events: list[Message], touched: list[str]) -> list[Message]:
        """Run broker events through the order manager; drop duplicates."""
        out: list[Message] = []
        for ev in events:
            match ev:
                case OrderFilled():
                    if self.orders.on_fill(ev):
                        out.append(ev)
                        touched.append(ev.symbol)
                        signed = ev.quantity if ev.side == "BUY" else -ev.quantity
                        held = self.expected.get(ev.symbol, 0) + signed
                        # Flat symbols leave the map, so that it compares directly with
                        # the broker's positions, which name only what is held.
                        if held:
                            self.expected[ev.symbol] = held
                        else:
                            self.expected.pop(ev.symbol, None)
                case OrderAccepted():
                    if self.orders.on_accepted(ev):
                        out.append(ev)
                case OrderCanceled():
                    if self.orders.on_canceled(ev):
                        out.append(ev)
                case OrderRejected():
                    self.orders.on_rejected(ev)
                    out.append(ev)
                case _:
                    out.append(ev)
        return out

    def _reject(self, order: SubmitOrder, code: str, detail: str) -> OrderRejected:
        self.count(f"rejected_{code}")
        return rejected(self.ids, order, code, detail, self.clock)


def _int_counters(counters: object) -> dict[str, int]:
    """A broker's counters (a dict or a dataclass), the integer ones."""
    import dataclasses

    items = (
        dataclasses.asdict(counters).items()  # type: ignore[call-overload]
        if dataclasses.is_dataclass(counters)
        else dict(counters).items()  # type: ignore[call-overload]
    )
    return {f"broker_{k}": int(v) for k, v in items if isinstance(v, int | bool)}
